package bench

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/levyhq/levy/pkg/envoyclient"
	"github.com/levyhq/levy/pkg/limiter"
	"github.com/levyhq/levy/pkg/plan"
	"github.com/levyhq/levy/pkg/redistest"
	"github.com/levyhq/levy/pkg/telemetry"
	"github.com/levyhq/levy/pkg/usage"
)

// alsBatch is how many entries each StreamAccessLogsMessage carries.
const alsBatch = 100

// BenchmarkALSIngest measures how many HTTP access-log entries levy's
// Receiver settles per second through real gRPC streams: one stream per
// GOMAXPROCS, as Envoy opens one per worker, each on its own connection,
// each sending batches of 100 realistic entries (envoyclient.HTTPLogEntry with
// levy's ext_authz metadata; mostly 200s, some 5xx, 429s from the
// ratelimit filter, ext_authz denials and upstream-reported units) with
// distinct request ids, into a Receiver with a no-op ledger.
//
// As in the Check benchmark, the load generator stands in for Envoy, which
// encodes in C++: each batch is marshalled once and every send copies it
// and writes fresh request ids into it, so the client costs a copy and
// gRPC framing, not protobuf encoding. entries/s is wall time; entries/s/core
// is entries per CPU-second of the whole process (senders included), the
// figure that does not depend on how many cores the machine has. The
// target is 200k entries/s/core.
func BenchmarkALSIngest(b *testing.B) {
	runALSIngest(b, &noopLedger{}, nil)
}

// BenchmarkALSIngestRedis is BenchmarkALSIngest with the Redis ledger on a
// redis-server of its own, as every replica that shares Redis runs it:
// each settled request is de-duplicated across replicas (its fingerprint
// added to its window's set in the adjust script). entries/s/core counts
// Redis's CPU too; redis-cpu-µs/entry is Redis's part.
func BenchmarkALSIngestRedis(b *testing.B) {
	srv := redistest.Start(b)
	client := srv.Client()
	ledger := limiter.NewRedisLedger(client, time.Minute)
	// The windows admission counted the template's requests in.
	start := alsStart.Truncate(time.Minute)
	for c := range alsConsumers {
		if err := ledger.AddUnits(context.Background(), alsLedgerKey(c), start, time.Minute, 1<<30, ""); err != nil {
			b.Fatal(err)
		}
	}
	runALSIngest(b, ledger, client)
	var refunded, reported int64
	for c := range alsConsumers {
		ws, err := ledger.Windows(context.Background(), alsConsumer(c), start, start.Add(time.Minute))
		if err != nil || len(ws) != 1 {
			b.Fatalf("windows %+v %v", ws, err)
		}
		refunded, reported = refunded+ws[0].Refunded, reported+ws[0].Reported
	}
	batches := int64((b.N + alsBatch - 1) / alsBatch)
	if refunded != 8*batches || reported != 10*batches {
		b.Fatalf("the ledger holds %d refunded and %d reported units, want %d and %d", refunded, reported, 8*batches, 10*batches)
	}
}

// runALSIngest sends b.N entries (whole batches) and reports the rates;
// with rdb set, Redis's CPU is counted too.
func runALSIngest(b *testing.B, ledger usage.Ledger, rdb *redis.Client) {
	metrics := telemetry.NewMetrics()
	cat := alsCatalog(b)
	r := usage.NewReceiver(usage.ReceiverConfig{
		Ledger:  ledger,
		Catalog: func() *plan.Catalog { return cat },
		Metrics: metrics,
		Log:     infoLogger(),
	})
	closed := false
	defer func() {
		if !closed {
			r.Close(context.Background())
		}
	}()
	addr := serve(b, func(g grpc.ServiceRegistrar) { alsv3.RegisterAccessLogServiceServer(g, r) })

	workers := runtime.GOMAXPROCS(0)
	tmpl := newALSTemplate(b)
	senders := make([]*alsSender, workers)
	for i := range senders {
		senders[i] = newALSSender(b, addr, tmpl, i)
	}

	batches := (b.N + alsBatch - 1) / alsBatch
	b.ResetTimer()
	start, cpu0, redis0 := time.Now(), processCPU(), redisCPU(b, rdb)
	var wg sync.WaitGroup
	errs := make([]error, workers)
	for i, s := range senders {
		n := batches / workers
		if i < batches%workers {
			n++
		}
		wg.Go(func() { errs[i] = s.run(n) })
	}
	wg.Wait()
	// Everything settled reaches the ledger: the last flush is part of
	// the work.
	closed = true
	if err := r.Close(context.Background()); err != nil {
		b.Fatal(err)
	}
	elapsed, cpu, redisUsed := time.Since(start), processCPU()-cpu0, redisCPU(b, rdb)-redis0
	b.StopTimer()
	if err := errors.Join(errs...); err != nil {
		b.Fatal(err)
	}

	sent := batches * alsBatch
	if got := entriesCounted(b, metrics); got[""] != sent || got["skipped_duplicate"] != 0 {
		b.Fatalf("receiver counted %v, want %d entries and no duplicates", got, sent)
	}
	b.ReportMetric(float64(sent)/elapsed.Seconds(), "entries/s")
	b.ReportMetric(float64(sent)/(cpu+redisUsed).Seconds(), "entries/s/core")
	if rdb != nil {
		b.ReportMetric(float64(redisUsed.Microseconds())/float64(sent), "redis-cpu-µs/entry")
	}
	b.ReportMetric(0, "ns/op")
}

// redisCPU is the CPU time rdb's server has used (INFO cpu), zero without
// one.
func redisCPU(b *testing.B, rdb *redis.Client) time.Duration {
	if rdb == nil {
		return 0
	}
	info, err := rdb.Info(context.Background(), "cpu").Result()
	if err != nil {
		b.Fatal(err)
	}
	var total float64
	for _, line := range strings.Split(info, "\r\n") {
		for _, f := range []string{"used_cpu_sys:", "used_cpu_user:"} {
			if v, ok := strings.CutPrefix(line, f); ok {
				x, _ := strconv.ParseFloat(v, 64)
				total += x
			}
		}
	}
	return time.Duration(total * float64(time.Second))
}

// BenchmarkSettle measures the settlement policy alone (usage.Settle) on
// the same entries, already decoded. The Receiver applies the same policy
// to fields it reads off the wire; pkg/usage's BenchmarkWireMessage
// measures that without gRPC.
func BenchmarkSettle(b *testing.B) {
	cat := alsCatalog(b)
	entries := alsEntries(b)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		usage.Settle(entries[i%len(entries)], cat, "x-levy-units", "x-consumer-id")
		i++
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "entries/s")
}

// TestALSHarnessCountsEveryEntry runs the ingest harness briefly and checks
// that the receiver settled what the entries say: the template's refunds,
// reported units and skips, once per distinct request.
func TestALSHarnessCountsEveryEntry(t *testing.T) {
	ledger := &noopLedger{}
	metrics := telemetry.NewMetrics()
	cat := alsCatalog(t)
	r := usage.NewReceiver(usage.ReceiverConfig{
		Ledger: ledger, Catalog: func() *plan.Catalog { return cat }, Metrics: metrics, Log: infoLogger(),
	})
	addr := serve(t, func(g grpc.ServiceRegistrar) { alsv3.RegisterAccessLogServiceServer(g, r) })
	tmpl := newALSTemplate(t)
	const rounds = 3
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range 2 {
		s := newALSSender(t, addr, tmpl, i)
		wg.Go(func() { errs[i] = s.run(rounds) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	sends := 2 * rounds
	want := map[string]int{"": sends * alsBatch}
	for _, g := range alsMix {
		want[g.result] += sends * g.n
	}
	got := entriesCounted(t, metrics)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("receiver counted %v, want %v", got, want)
	}
	// Per send: 5 refunds of 1 unit, 3 more refunds of 1 unit, 5 requests
	// that reported 3 units (+2 each).
	if u, want := ledger.totals(), int64(sends*(-5-3+5*2)); u != want {
		t.Errorf("ledger got units %d, want %d", u, want)
	}
}

// alsMix is one batch: how many entries of each kind, and what the
// receiver makes of them.
var alsMix = []struct {
	n      int
	result string
	give   alsGive
}{
	{n: 80, result: "unchanged", give: alsGive{status: 200}},
	{n: 4, result: "settled", give: alsGive{status: 200, units: "3"}},
	{n: 1, result: "settled", give: alsGive{status: 200, units: "3"}},
	{n: 5, result: "settled", give: alsGive{status: 503}},
	{n: 3, result: "settled", give: alsGive{rateLimited: true}},
	{n: 3, result: "skipped_denied", give: alsGive{denied: 429}},
	{n: 2, result: "skipped_unattributed", give: alsGive{status: 200, anonymous: true}},
	{n: 2, result: "unchanged", give: alsGive{status: 404}},
}

type alsGive struct {
	status      int
	units       string
	rateLimited bool
	denied      int
	anonymous   bool // no ext_authz metadata (failure_mode_allow)
}

// alsPlan is the template's plan.
func alsPlan() *plan.Plan {
	return &plan.Plan{
		Name: "pro", Model: plan.PayG, Meter: "api_requests", NonBillable: plan.DefaultNonBillable(),
		Costs: map[string]int64{"/v1/search": 5, "/v1/export": 20},
	}
}

func alsCatalog(tb testing.TB) *plan.Catalog {
	tb.Helper()
	cat, err := plan.NewCatalog(alsPlan())
	if err != nil {
		tb.Fatal(err)
	}
	return cat
}

// idPlaceholder is the request id every template entry starts with; each
// send overwrites it in place.
const idPlaceholder = "ffffffff-ffff-4fff-8fff-ffffffffffff"

// alsStart is when the template's requests start; alsConsumers how many
// consumers they are spread over.
var alsStart = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

const alsConsumers = 20

func alsConsumer(i int) string { return "consumer-" + strconv.Itoa(i%alsConsumers) }

// alsLedgerKey is the ledger key levy's ext_authz names for consumer i.
func alsLedgerKey(i int) string {
	return usage.LedgerKey(alsConsumer(i), usage.TermsOf(alsPlan()))
}

// alsEntries is one batch as Envoy logs it, in alsMix's proportions,
// spread over alsConsumers consumers, with the metadata levy's ext_authz
// gives an allowed request (its ledger key and window too).
func alsEntries(tb testing.TB) []*accesslogdatav3.HTTPAccessLogEntry {
	tb.Helper()
	start := alsStart
	var out []*accesslogdatav3.HTTPAccessLogEntry
	for _, m := range alsMix {
		for range m.n {
			i := len(out)
			g := m.give
			md := &structpb.Struct{Fields: map[string]*structpb.Value{
				"consumer":           structpb.NewStringValue(alsConsumer(i)),
				"plan":               structpb.NewStringValue("pro"),
				"model":              structpb.NewStringValue("payg"),
				"key_id":             structpb.NewStringValue("key_" + strconv.Itoa(i%alsConsumers)),
				"ledger":             structpb.NewStringValue(alsLedgerKey(i)),
				"window":             structpb.NewNumberValue(float64(start.Truncate(time.Minute).Unix())),
				"ext_authz_duration": structpb.NewNumberValue(183),
			}}
			in := envoyclient.LogInput{
				Request: &envoyclient.Request{
					Method: "GET", Scheme: "https", Authority: "api.example.com",
					Path: "/v1/items?limit=20&cursor=eyJpZCI6NDJ9", Protocol: "HTTP/2",
					SourceAddress: "203.0.113.7:51234", RequestID: idPlaceholder,
					StartTime: start.Add(time.Duration(i) * 7 * time.Millisecond),
					Headers: []envoyclient.Header{
						{Name: "x-api-key", Value: "lv_live_0123456789abcdef"},
						{Name: "user-agent", Value: "example-sdk-python/2.14.0 python/3.12.4 linux/x86_64"},
						{Name: "accept", Value: "application/json"},
						{Name: "x-forwarded-for", Value: "198.51.100.23, 203.0.113.7"},
						{Name: "traceparent", Value: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
					},
				},
				Authz:          &envoyclient.Outcome{Allowed: g.denied == 0, Status: g.denied, DynamicMetadata: md},
				UpstreamStatus: g.status,
				ResponseHeaders: []envoyclient.Header{
					{Name: "content-type", Value: "application/json"},
					{Name: "server", Value: "items-api"},
				},
				ResponseBodyBytes:         1432,
				RequestBodyBytes:          0,
				RouteName:                 "items",
				UpstreamCluster:           "items-api",
				Duration:                  18 * time.Millisecond,
				AdditionalRequestHeaders:  []string{"x-consumer-id"},
				AdditionalResponseHeaders: []string{"x-levy-units"},
			}
			if g.anonymous {
				in.Authz = nil
			}
			if g.units != "" {
				in.ResponseHeaders = append(in.ResponseHeaders, envoyclient.Header{Name: "x-levy-units", Value: g.units})
			}
			if g.rateLimited {
				in.RateLimit = &envoyclient.RateLimitOutcome{Limited: true, Status: 429,
					ResponseHeaders:     envoyclient.Headers{{Name: "x-envoy-ratelimited", Value: "true"}},
					ResponseCodeDetails: "request_rate_limited"}
			}
			out = append(out, envoyclient.HTTPLogEntry(in))
		}
	}
	if len(out) != alsBatch {
		tb.Fatalf("alsMix makes %d entries, want %d", len(out), alsBatch)
	}
	return out
}

// alsTemplate is one batch marshalled, with where its request ids are.
type alsTemplate struct {
	identifier []byte // the first message's identifier, as field 1
	batch      []byte // http_logs, as field 2
	ids        []int  // offsets of idPlaceholder, two per entry (stream_id, request_id)
}

func newALSTemplate(tb testing.TB) *alsTemplate {
	tb.Helper()
	batch, err := proto.Marshal(&alsv3.StreamAccessLogsMessage{LogEntries: &alsv3.StreamAccessLogsMessage_HttpLogs{
		HttpLogs: &alsv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: alsEntries(tb)},
	}})
	if err != nil {
		tb.Fatal(err)
	}
	id, err := proto.Marshal(&alsv3.StreamAccessLogsMessage{Identifier: &alsv3.StreamAccessLogsMessage_Identifier{
		Node:    &corev3.Node{Id: "gateway-7c9f-abcde", Cluster: "ingress", UserAgentName: "envoy"},
		LogName: "levy-billing",
	}})
	if err != nil {
		tb.Fatal(err)
	}
	t := &alsTemplate{identifier: id, batch: batch}
	for i := 0; i+len(idPlaceholder) <= len(batch); i++ {
		if string(batch[i:i+len(idPlaceholder)]) == idPlaceholder {
			t.ids = append(t.ids, i)
			i += len(idPlaceholder) - 1
		}
	}
	if len(t.ids) != 2*alsBatch {
		tb.Fatalf("found the request id %d times in the batch, want %d", len(t.ids), 2*alsBatch)
	}
	return t
}

// alsSender is one Envoy worker's stream on its own connection.
type alsSender struct {
	conn   *grpc.ClientConn
	tmpl   *alsTemplate
	worker int
	seq    uint64
}

func newALSSender(tb testing.TB, addr string, tmpl *alsTemplate, worker int) *alsSender {
	tb.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodecV2(rawCodec{})))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close() })
	return &alsSender{conn: conn, tmpl: tmpl, worker: worker}
}

var streamAccessLogs = &grpc.StreamDesc{StreamName: "StreamAccessLogs", ClientStreams: true}

// run sends n batches on a new stream, the identifier on the first, then
// half-closes it and waits until the receiver has ended it, so that every
// entry has been settled.
func (s *alsSender) run(n int) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := s.conn.NewStream(ctx, streamAccessLogs, "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs")
	if err != nil {
		return err
	}
	for i := range n {
		msg := s.next(i == 0)
		if err := st.SendMsg(msg); err != nil {
			return fmt.Errorf("send batch %d: %w", i, err)
		}
	}
	if err := st.CloseSend(); err != nil {
		return err
	}
	// The receiver answers a half-closed stream once it has settled it.
	var resp rawMessage
	if err := st.RecvMsg(&resp); err != nil {
		return err
	}
	return nil
}

// next is a copy of the batch with fresh request ids, the identifier in
// front when first.
func (s *alsSender) next(first bool) *rawMessage {
	var b []byte
	if first {
		b = append(b, s.tmpl.identifier...)
	}
	off := len(b)
	b = append(b, s.tmpl.batch...)
	for j, at := range s.tmpl.ids {
		if j%2 == 0 {
			s.seq++
		}
		// ffffffff-ffff-4fff-8fff-ffffffffffff: the worker in the first
		// group, a sequence number in the last.
		putHex(b[off+at:off+at+8], uint64(s.worker))
		putHex(b[off+at+24:off+at+36], s.seq)
	}
	return &rawMessage{b: b}
}

func putHex(dst []byte, v uint64) {
	const digits = "0123456789abcdef"
	for i := len(dst) - 1; i >= 0; i-- {
		dst[i] = digits[v&0xf]
		v >>= 4
	}
}

// rawMessage is a message already encoded.
type rawMessage struct{ b []byte }

// rawCodec sends rawMessages as they are and discards what it receives.
type rawCodec struct{}

var _ encoding.CodecV2 = rawCodec{}

func (rawCodec) Name() string { return "proto" }

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(*rawMessage)
	if !ok {
		return nil, fmt.Errorf("marshal %T", v)
	}
	return mem.BufferSlice{mem.SliceBuffer(m.b)}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	if m, ok := v.(*rawMessage); ok {
		m.b = data.Materialize()
	}
	return nil
}

// noopLedger accepts adjustments and keeps only their sums.
type noopLedger struct {
	mu    sync.Mutex
	units int64
}

func (l *noopLedger) Adjust(_ context.Context, adjs []usage.Adjustment) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, a := range adjs {
		l.units += a.Units
	}
	return nil
}

func (l *noopLedger) totals() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.units
}

func (l *noopLedger) Due(context.Context, time.Time) ([]usage.Window, error)            { return nil, nil }
func (l *noopLedger) Prepare(context.Context, usage.Window, int64) error                { return nil }
func (l *noopLedger) Commit(context.Context, usage.Window, int64, []usage.Window) error { return nil }
func (l *noopLedger) Reject(context.Context, usage.Window, string, []usage.Window) error {
	return nil
}
func (l *noopLedger) Windows(context.Context, string, time.Time, time.Time) ([]usage.Window, error) {
	return nil, nil
}

// entriesCounted reads levy_access_log_entries_total by result, without
// zeros; "" is the sum.
func entriesCounted(tb testing.TB, m *telemetry.Metrics) map[string]int {
	tb.Helper()
	families, err := m.Registry.Gather()
	if err != nil {
		tb.Fatal(err)
	}
	out := map[string]int{}
	for _, f := range families {
		if f.GetName() != "levy_access_log_entries_total" {
			continue
		}
		for _, c := range f.GetMetric() {
			if v := int(c.GetCounter().GetValue()); v > 0 {
				out[labelValue(c, "result")] += v
				out[""] += v
			}
		}
	}
	return out
}

func labelValue(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}
