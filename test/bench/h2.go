package bench

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/protobuf/proto"
)

// callTimeout is the grpc-timeout the lean caller sends: Envoy's call
// timeout, one second in the benchmarks. Tests that check what the caller
// counts raise it: on a loaded machine a big call can take longer, and
// what they check is counting, not speed.
var callTimeout = "1S"

// The lean caller stands in for Envoy's gRPC client more closely than
// grpc-go's does. In production Envoy calls levy from its own cores, in
// C++, on an event loop per worker thread; here the callers share two
// cores with the server under test, and 32 grpc-go callers spend about as
// much CPU per call as the server they measure, which caps any server's
// throughput at the harness's. So the lean caller is an event loop per
// connection that speaks gRPC over HTTP/2 and nothing else: it keeps its
// share of the 32 calls in flight, and each time it has read all the
// server sent, it writes the next calls' HEADERS and DATA frames in one
// write. It keeps an HPACK dynamic table as Envoy's codec does, advertises
// Envoy's 256 MiB stream and connection windows, sends a grpc-timeout as
// Envoy does, and reads the response as wire bytes (see wire.go). Both
// servers of a comparison are called through it alike.

// envoyWindow is Envoy's default initial stream and connection window
// (http2_protocol_options), which the caller advertises.
const envoyWindow = 256 << 20

// h2Conn is one HTTP/2 connection carrying gRPC calls of one method,
// driven by one goroutine at a time.
type h2Conn struct {
	conn    net.Conn
	br      *bufio.Reader
	fr      *http2.Framer // reads frames from br
	out     bytes.Buffer  // frames to write at the next flush
	wf      *http2.Framer // writes frames into out
	enc     *hpack.Encoder
	block   bytes.Buffer // enc's output
	headers []hpack.HeaderField

	nextID  uint32
	sendWin int64 // the server's connection window for our DATA
	maxSend int64 // the server's stream window: one request's DATA must fit
	unacked int64 // DATA bytes received since our last connection WINDOW_UPDATE

	streams map[uint32]*h2Stream // in flight
	free    []*h2Stream
}

// h2Stream is one call in flight.
type h2Stream struct {
	start   time.Time
	data    []byte // the response's DATA bytes so far
	headers bool   // the response headers have come
}

// dialH2 opens a connection to addr for calls of method and sends the
// client preface with Envoy's windows.
func dialH2(addr, method string) (*h2Conn, error) {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	c := &h2Conn{
		conn: conn,
		br:   bufio.NewReaderSize(conn, 64<<10),
		headers: []hpack.HeaderField{
			{Name: ":method", Value: "POST"},
			{Name: ":scheme", Value: "http"},
			{Name: ":path", Value: method},
			{Name: ":authority", Value: addr},
			{Name: "content-type", Value: "application/grpc"},
			{Name: "te", Value: "trailers"},
			// Envoy sends its call timeout; the benchmarks give every
			// server one second, as they give levy's store (redisTimeout).
			{Name: "grpc-timeout", Value: callTimeout},
		},
		nextID:  1,
		sendWin: 65535, // RFC 9113's initial windows, until the server says otherwise
		maxSend: 65535,
		streams: map[uint32]*h2Stream{},
	}
	c.fr = http2.NewFramer(nil, c.br)
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.fr.MaxHeaderListSize = 1 << 20
	c.fr.SetReuseFrames()
	c.wf = http2.NewFramer(&c.out, nil)
	c.enc = hpack.NewEncoder(&c.block)
	c.out.WriteString(http2.ClientPreface)
	err = errors.Join(
		c.wf.WriteSettings(
			http2.Setting{ID: http2.SettingEnablePush, Val: 0},
			http2.Setting{ID: http2.SettingInitialWindowSize, Val: envoyWindow},
		),
		c.wf.WriteWindowUpdate(0, envoyWindow-65535),
		c.flush(),
	)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

// grpcMessage is req as one length-prefixed gRPC message, uncompressed.
func grpcMessage(req proto.Message) ([]byte, error) {
	b, err := proto.Marshal(req)
	if err != nil {
		return nil, err
	}
	msg := make([]byte, 5, 5+len(b))
	binary.BigEndian.PutUint32(msg[1:], uint32(len(b)))
	return append(msg, b...), nil
}

// drive keeps up to inflight calls of msgs (from grpcMessage) in flight on
// c, starting one for each call i that take claims, of msgs[i%len(msgs)],
// until take returns false and every call has ended. i is the run's count
// across connections, as grpc-go's callers send: connections that each
// counted their own would send one consumer's request on all of them at
// once, which a Redis batch then decides on one read of its keys. Each
// ended call is handed to done, with its latency and response message
// (valid during done only), or with why it failed; done returns false to
// start no more. drive returns when the connection fails.
func (c *h2Conn) drive(msgs [][]byte, inflight int, take func() (int64, bool), done func(time.Duration, []byte, error) bool) error {
	for _, msg := range msgs {
		if int64(len(msg)) > c.maxSend {
			return fmt.Errorf("a request of %d bytes exceeds the server's stream window of %d", len(msg), c.maxSend)
		}
	}
	msg := func(i int64) []byte { return msgs[i%int64(len(msgs))] }
	var wanted []int64 // calls taken, not yet started
	for len(wanted) < inflight {
		i, ok := take()
		if !ok {
			break
		}
		wanted = append(wanted, i)
	}
	for len(wanted) > 0 || len(c.streams) > 0 {
		started := 0
		for ; started < len(wanted) && c.sendWin >= int64(len(msg(wanted[started]))); started++ {
			if err := c.start(msg(wanted[started])); err != nil {
				return err
			}
		}
		// Keep those not started, in place: no allocation a call.
		wanted = append(wanted[:0], wanted[started:]...)
		if c.br.Buffered() == 0 { // all read: write what is due before waiting
			if err := c.flush(); err != nil {
				return err
			}
		}
		f, err := c.fr.ReadFrame()
		if err != nil {
			return err
		}
		id, resp, err := c.handle(f)
		if id == 0 {
			if err != nil {
				return err
			}
			continue
		}
		s := c.streams[id]
		delete(c.streams, id)
		more := done(time.Since(s.start), resp, err)
		c.free = append(c.free, s)
		if more {
			if i, ok := take(); ok {
				wanted = append(wanted, i)
			}
		}
	}
	return c.flush()
}

// start queues the HEADERS and DATA frames of a new call of msg.
func (c *h2Conn) start(msg []byte) error {
	id := c.nextID
	c.nextID += 2
	c.sendWin -= int64(len(msg))
	c.block.Reset()
	for _, f := range c.headers {
		c.enc.WriteField(f) // into a bytes.Buffer: never fails
	}
	var s *h2Stream
	if n := len(c.free); n > 0 {
		s, c.free = c.free[n-1], c.free[:n-1]
		s.data, s.headers = s.data[:0], false
	} else {
		s = &h2Stream{}
	}
	s.start = time.Now()
	c.streams[id] = s
	if err := c.wf.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.block.Bytes(), EndHeaders: true}); err != nil {
		return err
	}
	for { // DATA frames no larger than RFC 9113's initial SETTINGS_MAX_FRAME_SIZE
		n := min(len(msg), maxFrame)
		if err := c.wf.WriteData(id, n == len(msg), msg[:n]); err != nil {
			return err
		}
		if msg = msg[n:]; len(msg) == 0 {
			return nil
		}
	}
}

// maxFrame is the largest frame payload a peer must accept (RFC 9113 4.2).
const maxFrame = 16384

// flush writes the queued frames.
func (c *h2Conn) flush() error {
	if c.out.Len() == 0 {
		return nil
	}
	_, err := c.conn.Write(c.out.Bytes())
	c.out.Reset()
	return err
}

// handle acts on one frame from the server. When the frame ends a call in
// flight it returns the call's stream and its response message, or why the
// call failed; otherwise stream 0, and an error only if the connection
// cannot go on.
func (c *h2Conn) handle(f http2.Frame) (uint32, []byte, error) {
	switch f := f.(type) {
	case *http2.DataFrame:
		s := c.streams[f.StreamID]
		if s != nil { // else a call that already failed
			s.data = append(s.data, f.Data()...)
		}
		// Give back the connection window well before it runs out; a
		// stream's own window (envoyWindow) outlasts any one response.
		if c.unacked += int64(f.Length); c.unacked >= envoyWindow/2 {
			err := c.wf.WriteWindowUpdate(0, uint32(c.unacked))
			c.unacked = 0
			if err != nil {
				return 0, nil, err
			}
		}
		if s != nil && f.StreamEnded() {
			return f.StreamID, nil, errors.New("the response ended without trailers")
		}
	case *http2.MetaHeadersFrame:
		s := c.streams[f.StreamID]
		if s == nil { // a call that already failed
			return 0, nil, nil
		}
		if !s.headers && f.PseudoValue("status") != "200" {
			return f.StreamID, nil, fmt.Errorf("HTTP status %q", f.PseudoValue("status"))
		}
		s.headers = true
		if !f.StreamEnded() { // response headers: the message and trailers follow
			return 0, nil, nil
		}
		var status, message string
		for _, h := range f.RegularFields() {
			switch h.Name {
			case "grpc-status":
				status = h.Value
			case "grpc-message":
				message = h.Value
			}
		}
		if status != "0" {
			return f.StreamID, nil, fmt.Errorf("grpc-status %q: %s", status, message)
		}
		d := s.data
		if len(d) < 5 || d[0] != 0 || int(binary.BigEndian.Uint32(d[1:5])) != len(d)-5 {
			return f.StreamID, nil, fmt.Errorf("a response of %d bytes is not one uncompressed gRPC message", len(d))
		}
		return f.StreamID, d[5:], nil
	case *http2.RSTStreamFrame:
		if c.streams[f.StreamID] != nil {
			return f.StreamID, nil, fmt.Errorf("stream reset: %v", f.ErrCode)
		}
	case *http2.SettingsFrame:
		if f.IsAck() {
			return 0, nil, nil
		}
		if v, ok := f.Value(http2.SettingInitialWindowSize); ok {
			c.maxSend = int64(v)
		}
		return 0, nil, c.wf.WriteSettingsAck()
	case *http2.WindowUpdateFrame:
		if f.StreamID == 0 {
			c.sendWin += int64(f.Increment)
		}
	case *http2.PingFrame:
		if !f.IsAck() {
			return 0, nil, c.wf.WritePing(true, f.Data)
		}
	case *http2.GoAwayFrame:
		return 0, nil, fmt.Errorf("GOAWAY %v: %s", f.ErrCode, f.DebugData())
	}
	return 0, nil, nil
}
