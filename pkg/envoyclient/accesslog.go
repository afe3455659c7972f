package envoyclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"google.golang.org/grpc"
)

// closeGrace is how long Close waits for the server to end the stream after the half-close
// before it resets the stream.
const closeGrace = 2 * time.Second

// ErrLoggerClosed is returned by Flush after Close.
var ErrLoggerClosed = errors.New("access logger closed")

// AccessLogConfig is the part of HttpGrpcAccessLogConfig and the bootstrap node that shows on
// the wire.
type AccessLogConfig struct {
	LogName         string // common_config.log_name
	NodeID, Cluster string // node.id, node.cluster
}

// AccessLogger is one Envoy worker's gRPC access logger (grpc_access_logger.h): it buffers
// entries, and each Flush sends them as one StreamAccessLogsMessage on the worker's stream.
// The stream is opened on the first flush; its first message carries the identifier, later
// ones do not. Responses are never read. When the server ends the stream (Envoy's
// onRemoteClose) the logger forgets it, and the next flush opens a new stream and sends the
// identifier again. A batch sent on a broken stream is lost. Use one AccessLogger per simulated
// worker; its methods are safe for concurrent use.
//
// Not modelled: the flush timer and buffer_size_bytes (call Flush), the write high-watermark
// that keeps a batch, and logs_dropped.
type AccessLogger struct {
	client alsv3.AccessLogServiceClient
	cfg    AccessLogConfig

	mu     sync.Mutex
	buf    []*accesslogdatav3.HTTPAccessLogEntry
	stream *alsStream
	closed bool
	wg     sync.WaitGroup // stream watchers
}

// alsStream is one StreamAccessLogs call.
type alsStream struct {
	s          grpc.ClientStreamingClient[alsv3.StreamAccessLogsMessage, alsv3.StreamAccessLogsResponse]
	cancel     context.CancelFunc
	done       chan struct{} // closed once the server has ended the stream
	err        error         // why it ended; read after done is closed
	identified bool          // the identifier has been sent
}

// NewAccessLogger returns a logger that opens its streams on conn.
func NewAccessLogger(conn grpc.ClientConnInterface, cfg AccessLogConfig) *AccessLogger {
	return &AccessLogger{client: alsv3.NewAccessLogServiceClient(conn), cfg: cfg}
}

// Log buffers entry for the next Flush. After Close it is dropped.
func (l *AccessLogger) Log(entry *accesslogdatav3.HTTPAccessLogEntry) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.closed {
		l.buf = append(l.buf, entry)
	}
}

// Buffered returns how many entries wait for the next Flush.
func (l *AccessLogger) Buffered() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buf)
}

// Flush sends the buffered entries as one message and clears the buffer whether or not that
// succeeded, as Envoy does. An empty buffer sends nothing. ctx is only checked before sending:
// the stream outlives it.
func (l *AccessLogger) Flush(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return ErrLoggerClosed
	}
	if len(l.buf) == 0 {
		return nil
	}
	batch := l.buf
	l.buf = nil
	if err := ctx.Err(); err != nil {
		return err
	}

	if st := l.stream; st != nil && st.ended() {
		l.stream = nil
		st.cancel()
	}
	if l.stream == nil {
		st, err := l.open()
		if err != nil {
			return fmt.Errorf("open access log stream: %w", err)
		}
		l.stream = st
	}
	st := l.stream
	msg := &alsv3.StreamAccessLogsMessage{
		LogEntries: &alsv3.StreamAccessLogsMessage_HttpLogs{
			HttpLogs: &alsv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: batch},
		},
	}
	if !st.identified {
		msg.Identifier = &alsv3.StreamAccessLogsMessage_Identifier{
			Node:    &corev3.Node{Id: l.cfg.NodeID, Cluster: l.cfg.Cluster, UserAgentName: "envoy"},
			LogName: l.cfg.LogName,
		}
	}
	err := st.s.Send(msg)
	st.identified = true
	if err != nil {
		l.stream = nil
		if errors.Is(err, io.EOF) { // the server ended the stream; its status says why
			<-st.done
			err = st.err
		}
		st.cancel()
		return fmt.Errorf("send access logs: %w", err)
	}
	return nil
}

// StreamClosed returns a channel that is closed once the server has ended the current stream
// (or at once if no stream is open). The next Flush after that opens a new stream.
func (l *AccessLogger) StreamClosed() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stream == nil {
		c := make(chan struct{})
		close(c)
		return c
	}
	return l.stream.done
}

// Close half-closes the stream, waits a little for the server to end it, and then resets it.
// Entries not yet flushed are dropped.
func (l *AccessLogger) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	l.buf = nil
	st := l.stream
	l.stream = nil
	l.mu.Unlock()

	var err error
	if st != nil {
		err = st.s.CloseSend()
		t := time.NewTimer(closeGrace)
		select {
		case <-st.done:
		case <-t.C:
		}
		t.Stop()
		st.cancel()
	}
	l.wg.Wait()
	return err
}

// open starts a stream and a watcher that notices when the server ends it. The watcher only
// waits for the end of the stream; the response, if any, is discarded as Envoy does.
func (l *AccessLogger) open() (*alsStream, error) {
	ctx, cancel := context.WithCancel(context.Background())
	s, err := l.client.StreamAccessLogs(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	st := &alsStream{s: s, cancel: cancel, done: make(chan struct{})}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		var resp alsv3.StreamAccessLogsResponse
		err := s.RecvMsg(&resp)
		if err == nil {
			err = io.EOF
		}
		st.err = err
		close(st.done)
	}()
	return st, nil
}

func (st *alsStream) ended() bool {
	select {
	case <-st.done:
		return true
	default:
		return false
	}
}
