package usage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/levyhq/levy/pkg/await"
	"github.com/levyhq/levy/pkg/envoyclient"
	"github.com/levyhq/levy/pkg/envoyclient/envoytest"
	"github.com/levyhq/levy/pkg/plan"
	"github.com/levyhq/levy/pkg/telemetry"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// t0 is when the test requests started; adjustments carry it truncated to
// the second.
var (
	t0  = time.Date(2026, 3, 1, 12, 0, 0, 250_000_000, time.UTC)
	sec = t0.Truncate(time.Second)
)

// testCatalog: payg bills 429 and 5xx nothing and /v1/search costs 5;
// free has no meter; strict bills 429 (only 5xx are refunded).
func testCatalog(t testing.TB) *plan.Catalog {
	t.Helper()
	cat, err := plan.NewCatalog(
		&plan.Plan{Name: "payg", Model: plan.PayG, Meter: "api_calls", NonBillable: plan.DefaultNonBillable(),
			Costs: map[string]int64{"/v1/search": 5}},
		&plan.Plan{Name: "free", Model: plan.Freemium, NonBillable: plan.DefaultNonBillable()},
		&plan.Plan{Name: "strict", Model: plan.Tiered, Meter: "strict_calls",
			NonBillable: plan.NonBillable{Classes: map[int]bool{5: true}}},
	)
	if err != nil {
		t.Fatal(err)
	}
	return cat
}

// fakeLedger records adjustments; it fails the next `fail` calls.
type fakeLedger struct {
	mu    sync.Mutex
	adjs  []Adjustment
	calls int
	fail  int
	wrote chan struct{} // gets a value after every successful Adjust
}

func newFakeLedger() *fakeLedger { return &fakeLedger{wrote: make(chan struct{}, 100)} }

func (l *fakeLedger) Adjust(ctx context.Context, adjs []Adjustment) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.calls++
	if err := ctx.Err(); err != nil {
		return err
	}
	if l.fail > 0 {
		l.fail--
		return errors.New("ledger unavailable")
	}
	l.adjs = append(l.adjs, adjs...)
	select {
	case l.wrote <- struct{}{}:
	default:
	}
	return nil
}

func (l *fakeLedger) Due(context.Context, time.Time) ([]Window, error)      { return nil, nil }
func (l *fakeLedger) Prepare(context.Context, Window, int64) error          { return nil }
func (l *fakeLedger) Commit(context.Context, Window, int64, []Window) error { return nil }
func (l *fakeLedger) Reject(context.Context, Window, string, []Window) error {
	return nil
}
func (l *fakeLedger) Windows(context.Context, string, time.Time, time.Time) ([]Window, error) {
	return nil, nil
}

func (l *fakeLedger) failNext(n int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.fail = n
}

// totals sums what the ledger holds per consumer, meter and second, in a
// stable order.
func (l *fakeLedger) totals() []Adjustment {
	l.mu.Lock()
	defer l.mu.Unlock()
	return sumAdjustments(l.adjs)
}

func sumAdjustments(adjs []Adjustment) []Adjustment {
	type sumKey struct {
		consumer, meter string
		at              int64
	}
	byKey := map[sumKey]int64{}
	for _, a := range adjs {
		byKey[sumKey{a.Consumer, a.Meter, a.At.UnixNano()}] += a.Units
	}
	var out []Adjustment
	for k, units := range byKey {
		if units != 0 {
			out = append(out, Adjustment{Consumer: k.consumer, Meter: k.meter, At: time.Unix(0, k.at).UTC(), Units: units})
		}
	}
	slices.SortFunc(out, func(a, b Adjustment) int {
		return strings.Compare(fmt.Sprint(a.Consumer, a.Meter, a.At.UnixNano()), fmt.Sprint(b.Consumer, b.Meter, b.At.UnixNano()))
	})
	return out
}

// testEnv is a Receiver served on 127.0.0.1:0 and a connection to it.
type testEnv struct {
	r       *Receiver
	ledger  *fakeLedger
	metrics *telemetry.Metrics
	conn    *grpc.ClientConn
	logs    *observer.ObservedLogs
}

// newTestEnv serves a Receiver whose flush loop does not run during the
// test unless flushEvery is set.
func newTestEnv(t *testing.T, flushEvery time.Duration) *testEnv {
	t.Helper()
	if flushEvery == 0 {
		flushEvery = time.Hour
	}
	core, logs := observer.New(zapcore.DebugLevel)
	log := zap.New(zapcore.NewTee(core, zaptest.NewLogger(t).Core()))
	e := &testEnv{ledger: newFakeLedger(), metrics: telemetry.NewMetrics(), logs: logs}
	cat := testCatalog(t)
	e.r = NewReceiver(ReceiverConfig{
		Ledger:     e.ledger,
		Catalog:    func() *plan.Catalog { return cat },
		FlushEvery: flushEvery,
		Metrics:    e.metrics,
		Log:        log,
	})
	// Cleanups run last first: the server stops, then the receiver closes.
	t.Cleanup(func() {
		if err := e.r.Close(context.Background()); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	e.conn = envoytest.Loopback(t, func(g *grpc.Server) { accesslogv3.RegisterAccessLogServiceServer(g, e.r) })
	return e
}

// send logs each batch on one stream (one Flush each), as one Envoy worker
// does, then closes the logger and waits until the receiver has ended the
// stream, so every entry has been settled.
func (e *testEnv) send(t *testing.T, batches ...[]*accesslogdatav3.HTTPAccessLogEntry) {
	t.Helper()
	e.sendOn(t, e.logger("gw-1"), batches...)
	e.waitStreams(t, 0)
}

func (e *testEnv) logger(node string) *envoyclient.AccessLogger {
	return envoyclient.NewAccessLogger(e.conn, envoyclient.AccessLogConfig{LogName: "levy-billing", NodeID: node, Cluster: "ingress"})
}

func (e *testEnv) sendOn(t *testing.T, l *envoyclient.AccessLogger, batches ...[]*accesslogdatav3.HTTPAccessLogEntry) {
	t.Helper()
	for _, b := range batches {
		for _, entry := range b {
			l.Log(entry)
		}
		if err := l.Flush(context.Background()); err != nil {
			t.Fatalf("Flush: %v", err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatalf("close logger: %v", err)
	}
}

// waitStreams waits until n streams are open.
func (e *testEnv) waitStreams(t *testing.T, n float64) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%v open streams", n), func() bool { return gaugeValue(t, e.r.metrics.streams) == n })
}

// flush writes the pending adjustments and returns the ledger's totals.
func (e *testEnv) flush(t *testing.T) []Adjustment {
	t.Helper()
	if err := e.r.Flush(context.Background()); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	return e.ledger.totals()
}

// results returns levy_access_log_entries_total by result, without zeros.
func (e *testEnv) results(t *testing.T) map[string]int {
	t.Helper()
	out := map[string]int{}
	for i, c := range e.r.metrics.entries {
		var m dto.Metric
		if err := c.Write(&m); err != nil {
			t.Fatal(err)
		}
		if v := int(m.GetCounter().GetValue()); v > 0 {
			out[outcomeNames[i]] = v
		}
	}
	return out
}

func gaugeValue(t *testing.T, g interface{ Write(*dto.Metric) error }) float64 {
	t.Helper()
	var m dto.Metric
	if err := g.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetGauge().GetValue()
}

// waitFor polls cond until it holds, failing after 10 seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	await.Until(t, 10*time.Second, cond, what)
}

// give describes one request as Envoy logs it.
type give struct {
	consumer, plan string
	path           string
	status         int    // upstream status; default 200
	units          string // x-levy-units from the upstream; "" sends none
	denied         int    // levy's ext_authz denied with this status
	rateLimited    bool   // the ratelimit filter answered 429
	id             string // x-request-id; default a fresh one
	consumerHeader string // x-consumer-id on the upstream request (logged)
	logType        accesslogdatav3.AccessLogType
	ledger         string    // the ledger key levy's ext_authz named
	window         time.Time // and the window it counted the request in
	quota          string    // the quota counter it named
	period         time.Time // and that counter's period start
}

func entry(g give) *accesslogdatav3.HTTPAccessLogEntry {
	md := &structpb.Struct{Fields: map[string]*structpb.Value{
		"model":              structpb.NewStringValue("payg"),
		"key_id":             structpb.NewStringValue("key_1"),
		"ext_authz_duration": structpb.NewNumberValue(120),
	}}
	if g.consumer != "" {
		md.Fields["consumer"] = structpb.NewStringValue(g.consumer)
	}
	if g.plan != "" {
		md.Fields["plan"] = structpb.NewStringValue(g.plan)
	}
	if g.ledger != "" {
		md.Fields["ledger"] = structpb.NewStringValue(g.ledger)
		md.Fields["window"] = structpb.NewNumberValue(float64(g.window.Unix()))
	}
	if g.quota != "" {
		md.Fields["quota"] = structpb.NewStringValue(g.quota)
		md.Fields["period"] = structpb.NewNumberValue(float64(g.period.Unix()))
	}
	if g.id == "" {
		g.id = freshID()
	}
	path := g.path
	if path == "" {
		path = "/v1/items"
	}
	in := envoyclient.LogInput{
		Request: &envoyclient.Request{Path: path, RequestID: g.id, StartTime: t0,
			Headers: []envoyclient.Header{{Name: "x-api-key", Value: "lv_test"}}},
		Authz:                     &envoyclient.Outcome{Allowed: g.denied == 0, Status: g.denied, DynamicMetadata: md},
		UpstreamStatus:            g.status,
		AdditionalRequestHeaders:  []string{"x-consumer-id"},
		AdditionalResponseHeaders: []string{"x-levy-units"},
	}
	if g.consumerHeader != "" {
		in.Authz.UpstreamHeaders = envoyclient.Headers{{Name: ":method", Value: "GET"}, {Name: ":path", Value: path},
			{Name: "x-request-id", Value: g.id}, {Name: "x-consumer-id", Value: g.consumerHeader}}
	}
	if g.units != "" {
		in.ResponseHeaders = []envoyclient.Header{{Name: "X-Levy-Units", Value: g.units}}
	}
	if g.rateLimited {
		in.RateLimit = &envoyclient.RateLimitOutcome{Limited: true, Status: 429,
			ResponseHeaders: envoyclient.Headers{{Name: "x-envoy-ratelimited", Value: "true"}}}
	}
	e := envoyclient.HTTPLogEntry(in)
	if g.logType != 0 {
		e.CommonProperties.AccessLogType = g.logType
	}
	return e
}

var idCounter struct {
	sync.Mutex
	n int
}

func freshID() string {
	idCounter.Lock()
	defer idCounter.Unlock()
	idCounter.n++
	return fmt.Sprintf("00000000-0000-4000-8000-%012d", idCounter.n)
}

func entries(gs ...give) []*accesslogdatav3.HTTPAccessLogEntry {
	out := make([]*accesslogdatav3.HTTPAccessLogEntry, len(gs))
	for i, g := range gs {
		out[i] = entry(g)
	}
	return out
}

func adj(consumer, meter string, units int64) Adjustment {
	return Adjustment{Consumer: consumer, Meter: meter, At: sec, Units: units}
}

func TestSettlementAdjustsOnlyWhatAdmissionCountedWrongly(t *testing.T) {
	tests := []struct {
		name        string
		give        []give
		want        []Adjustment
		wantResults map[string]int
	}{
		{
			name:        "200 is unchanged",
			give:        []give{{consumer: "acme", plan: "payg"}},
			wantResults: map[string]int{"unchanged": 1},
		},
		{
			name: "500 refunds the units",
			give: []give{
				{consumer: "acme", plan: "payg", status: 500},
				{consumer: "acme", plan: "payg", status: 503, path: "/v1/search?q=x"},
			},
			want:        []Adjustment{adj("acme", "api_calls", -6)},
			wantResults: map[string]int{"settled": 2},
		},
		{
			name:        "429 from the ratelimit filter after an allow is refunded",
			give:        []give{{consumer: "acme", plan: "payg", rateLimited: true}},
			want:        []Adjustment{adj("acme", "api_calls", -1)},
			wantResults: map[string]int{"settled": 1},
		},
		{
			name:        "429 from the ratelimit filter is kept when the plan bills 429",
			give:        []give{{consumer: "acme", plan: "strict", rateLimited: true}},
			wantResults: map[string]int{"unchanged": 1},
		},
		{
			name: "levy's ext_authz denials were never counted",
			give: []give{
				{consumer: "acme", plan: "payg", denied: 429},
				{consumer: "acme", plan: "payg", denied: 403},
				{denied: 401},
			},
			wantResults: map[string]int{"skipped_denied": 3},
		},
		{
			name: "units header sets the cost",
			give: []give{
				{consumer: "acme", plan: "payg", units: "7"},
				{consumer: "acme", plan: "payg", units: "7"},
				{consumer: "beta", plan: "payg", units: "0", path: "/v1/search"},
				{consumer: "gamma", plan: "payg", units: "1", path: "/v1/search"},
			},
			want: []Adjustment{
				adj("acme", "api_calls", 12),
				adj("beta", "api_calls", -5),
				adj("gamma", "api_calls", -4),
			},
			wantResults: map[string]int{"settled": 4},
		},
		{
			name: "units header equal to the cost or unparsable changes nothing",
			give: []give{
				{consumer: "acme", plan: "payg", units: "5", path: "/v1/search"},
				{consumer: "acme", plan: "payg", units: "-3"},
				{consumer: "acme", plan: "payg", units: "lots"},
				{consumer: "acme", plan: "payg", units: "2,3"},
			},
			wantResults: map[string]int{"unchanged": 4},
		},
		{
			name:        "units header on a refunded status is ignored",
			give:        []give{{consumer: "acme", plan: "payg", units: "9", status: 502}},
			want:        []Adjustment{adj("acme", "api_calls", -1)},
			wantResults: map[string]int{"settled": 1},
		},
		{
			name:        "plan without a meter settles under meter empty",
			give:        []give{{consumer: "acme", plan: "free", status: 500}},
			want:        []Adjustment{adj("acme", "", -1)},
			wantResults: map[string]int{"settled": 1},
		},
		{
			name:        "consumer from the logged request header when the metadata has none",
			give:        []give{{plan: "payg", consumerHeader: "from-header", status: 500}},
			want:        []Adjustment{adj("from-header", "api_calls", -1)},
			wantResults: map[string]int{"settled": 1},
		},
		{
			name:        "metadata consumer wins over the header",
			give:        []give{{consumer: "acme", plan: "payg", consumerHeader: "other", status: 500}},
			want:        []Adjustment{adj("acme", "api_calls", -1)},
			wantResults: map[string]int{"settled": 1},
		},
		{
			name:        "no consumer is skipped",
			give:        []give{{plan: "payg", status: 500}},
			wantResults: map[string]int{"skipped_unattributed": 1},
		},
		{
			name: "unknown or missing plan is skipped",
			give: []give{
				{consumer: "acme", plan: "gold", status: 500},
				{consumer: "acme", status: 500},
			},
			wantResults: map[string]int{"skipped_unknown_plan": 2},
		},
		{
			name: "only the final entry of a request counts",
			give: []give{
				{consumer: "acme", plan: "payg", status: 500, logType: accesslogdatav3.AccessLogType_DownstreamPeriodic},
				{consumer: "acme", plan: "payg", status: 500, logType: accesslogdatav3.AccessLogType_UpstreamPoolReady},
				{consumer: "acme", plan: "payg", status: 500, logType: accesslogdatav3.AccessLogType_DownstreamEnd},
			},
			want:        []Adjustment{adj("acme", "api_calls", -1)},
			wantResults: map[string]int{"settled": 1, "skipped_partial": 2},
		},
		{
			name: "the same request logged twice is settled once",
			give: []give{
				{consumer: "acme", plan: "payg", status: 500, id: "dup-1"},
				{consumer: "acme", plan: "payg", status: 500, id: "dup-1"},
			},
			want:        []Adjustment{adj("acme", "api_calls", -1)},
			wantResults: map[string]int{"settled": 1, "skipped_duplicate": 1},
		},
		{
			name: "adjustments that cancel out write nothing",
			give: []give{
				{consumer: "acme", plan: "payg", status: 500, path: "/v1/search"},
				{consumer: "acme", plan: "payg", units: "6"},
			},
			wantResults: map[string]int{"settled": 2},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newTestEnv(t, 0)
			e.send(t, entries(tt.give...))
			assertAdjustments(t, e.flush(t), tt.want)
			assertResults(t, e.results(t), tt.wantResults)
		})
	}
}

func assertAdjustments(t *testing.T, got, want []Adjustment) {
	t.Helper()
	want = sumAdjustments(want)
	if !slices.EqualFunc(got, want, func(a, b Adjustment) bool {
		return a.Consumer == b.Consumer && a.Meter == b.Meter && a.At.Equal(b.At) && a.Units == b.Units
	}) {
		t.Errorf("ledger =\n%v\nwant\n%v", got, want)
	}
}

func assertResults(t *testing.T, got, want map[string]int) {
	t.Helper()
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("levy_access_log_entries_total = %v, want %v", got, want)
	}
}

func TestDuplicateAcrossStreamsIsSettledOnce(t *testing.T) {
	e := newTestEnv(t, 0)
	same := give{consumer: "acme", plan: "payg", status: 500, id: "retry-1"}
	// Two Envoy workers (or two access-log configs) log the same request.
	e.sendOn(t, e.logger("gw-1"), entries(same, give{consumer: "acme", plan: "payg", status: 500}))
	e.sendOn(t, e.logger("gw-2"), entries(same))
	e.waitStreams(t, 0)
	assertAdjustments(t, e.flush(t), []Adjustment{adj("acme", "api_calls", -2)})
	assertResults(t, e.results(t), map[string]int{"settled": 2, "skipped_duplicate": 1})
}

func TestLaterBatchesWithoutIdentifierAreSettled(t *testing.T) {
	e := newTestEnv(t, 0)
	// The identifier rides on the first message only; attribution comes
	// from each entry, so every batch counts.
	e.send(t,
		entries(give{consumer: "acme", plan: "payg", status: 500}),
		entries(give{consumer: "acme", plan: "payg", status: 500}, give{consumer: "beta", plan: "payg", status: 500}),
		entries(give{consumer: "beta", plan: "payg", status: 500}),
	)
	assertAdjustments(t, e.flush(t), []Adjustment{adj("acme", "api_calls", -2), adj("beta", "api_calls", -2)})
	logged := e.logs.FilterMessage("access log stream").All()
	if len(logged) != 1 {
		t.Fatalf("identifier logged %d times, want once", len(logged))
	}
	if f := logged[0].ContextMap(); f["node"] != "gw-1" || f["log_name"] != "levy-billing" {
		t.Errorf("identifier log fields = %v, want node gw-1 and log_name levy-billing", f)
	}
}

func TestMalformedEntriesAreCountedNotFatal(t *testing.T) {
	noCode := entry(give{consumer: "acme", plan: "payg", status: 500})
	noCode.Response.ResponseCode = nil
	noResponse := entry(give{consumer: "acme", plan: "payg", status: 500})
	noResponse.Response = nil
	noRequest := entry(give{consumer: "acme", plan: "payg", status: 500})
	noRequest.Request = nil
	noStart := entry(give{consumer: "acme", plan: "payg", status: 500})
	noStart.CommonProperties.StartTime = nil
	numberConsumer := entry(give{plan: "payg", status: 500})
	numberConsumer.CommonProperties.Metadata.FilterMetadata[envoyclient.ExtAuthzNamespace].Fields["consumer"] = structpb.NewNumberValue(7)
	emptyValues := entry(give{consumer: "acme", plan: "payg", status: 500})
	for _, k := range []string{"consumer", "plan", "billable"} {
		emptyValues.CommonProperties.Metadata.FilterMetadata[envoyclient.ExtAuthzNamespace].Fields[k] = &structpb.Value{}
	}
	stringBillable := entry(give{consumer: "acme", plan: "payg", status: 500})
	stringBillable.CommonProperties.Metadata.FilterMetadata[envoyclient.ExtAuthzNamespace].Fields["billable"] = structpb.NewStringValue("9")
	noMetadata := entry(give{consumer: "acme", plan: "payg", status: 500})
	noMetadata.CommonProperties.Metadata = nil

	e := newTestEnv(t, 0)
	e.send(t, []*accesslogdatav3.HTTPAccessLogEntry{
		{}, {CommonProperties: &accesslogdatav3.AccessLogCommon{}}, noCode, noResponse, noRequest, noStart,
		numberConsumer, emptyValues, noMetadata, stringBillable,
	})
	assertAdjustments(t, e.flush(t), []Adjustment{adj("acme", "api_calls", -1)})
	assertResults(t, e.results(t), map[string]int{
		"malformed": 6, "skipped_unattributed": 3, "settled": 1,
	})
}

func TestSettleToleratesNilInput(t *testing.T) {
	tests := []struct {
		name string
		give *accesslogdatav3.HTTPAccessLogEntry
		cat  *plan.Catalog
	}{
		{name: "nil entry", give: nil, cat: testCatalog(t)},
		{name: "empty entry", give: &accesslogdatav3.HTTPAccessLogEntry{}, cat: testCatalog(t)},
		{name: "nil catalog", give: entry(give{consumer: "acme", plan: "payg", status: 500}), cat: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if a, id, ok := Settle(tt.give, tt.cat, "x-levy-units", "x-consumer-id"); ok {
				t.Errorf("Settle = %v, %q, true; want not ok", a, id)
			}
		})
	}
}

func TestSettleReturnsRequestIDAndStartTime(t *testing.T) {
	start := time.Date(2026, 3, 1, 12, 0, 0, 123, time.UTC)
	e := entry(give{consumer: "acme", plan: "payg", status: 500, id: "req-42"})
	e.CommonProperties.StartTime = timestamppb.New(start)
	a, id, ok := Settle(e, testCatalog(t), "X-Levy-Units", "X-Consumer-Id")
	want := Adjustment{Consumer: "acme", Meter: "api_calls", At: start, Units: -1}
	if !ok || id != "req-42" || !a.At.Equal(want.At) || a.Units != want.Units || a.Consumer != want.Consumer || a.Meter != want.Meter {
		t.Errorf("Settle = %+v, %q, %v; want %+v, req-42, true", a, id, ok, want)
	}
}

func TestSettleUsesOriginalPathForCost(t *testing.T) {
	// The router rewrote /v1/search to /internal/search after ext_authz
	// priced it at 5.
	e := entry(give{consumer: "acme", plan: "payg", status: 500, path: "/internal/search"})
	e.Request.OriginalPath = "/v1/search"
	a, _, ok := Settle(e, testCatalog(t), "x-levy-units", "x-consumer-id")
	if !ok || a.Units != -5 {
		t.Errorf("Settle units = %d, %v; want -5, true", a.Units, ok)
	}
}

func TestLedgerFailureIsRetriedOnNextFlush(t *testing.T) {
	e := newTestEnv(t, 0)
	e.send(t, entries(give{consumer: "acme", plan: "payg", status: 500}, give{consumer: "beta", plan: "payg", status: 500}))
	e.ledger.failNext(1)
	if err := e.r.Flush(context.Background()); err == nil {
		t.Fatal("Flush with a failing ledger: want an error")
	}
	if got := e.ledger.totals(); len(got) != 0 {
		t.Fatalf("ledger after a failed write = %v, want nothing", got)
	}
	// More arrives for the same window before the retry.
	e.send(t, entries(give{consumer: "acme", plan: "payg", status: 500}))
	assertAdjustments(t, e.flush(t), []Adjustment{adj("acme", "api_calls", -2), adj("beta", "api_calls", -1)})
	// Nothing is written twice.
	assertAdjustments(t, e.flush(t), []Adjustment{adj("acme", "api_calls", -2), adj("beta", "api_calls", -1)})
}

func TestCloseFlushesEvenWhenItsContextIsDone(t *testing.T) {
	e := newTestEnv(t, 0)
	e.send(t, entries(give{consumer: "acme", plan: "payg", status: 500}))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := e.r.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	assertAdjustments(t, e.ledger.totals(), []Adjustment{adj("acme", "api_calls", -1)})
}

func TestFlushLoopWritesPeriodically(t *testing.T) {
	e := newTestEnv(t, 5*time.Millisecond)
	e.ledger.failNext(1) // the loop logs the failure and retries
	e.send(t, entries(give{consumer: "acme", plan: "payg", status: 500}))
	<-e.ledger.wrote
	assertAdjustments(t, e.ledger.totals(), []Adjustment{adj("acme", "api_calls", -1)})
}

func TestMetricsRegisterTwiceOnOneRegistry(t *testing.T) {
	m := telemetry.NewMetrics()
	a := NewReceiver(ReceiverConfig{Ledger: newFakeLedger(), Metrics: m, Log: zaptest.NewLogger(t)})
	b := NewReceiver(ReceiverConfig{Ledger: newFakeLedger(), Metrics: m, Log: zaptest.NewLogger(t)})
	defer a.Close(context.Background())
	defer b.Close(context.Background())
	if a.metrics.streams != b.metrics.streams {
		t.Error("second receiver got its own gauge, want the registered one")
	}
}

// fakeStream is a server stream that returns msgs, decoded as gRPC's proto
// codec does, then err.
type fakeStream struct {
	grpc.ServerStream
	ctx  context.Context
	msgs [][]byte // encoded StreamAccessLogsMessages
	err  error
	sent bool
}

func (s *fakeStream) Context() context.Context     { return s.ctx }
func (s *fakeStream) SetHeader(metadata.MD) error  { s.sent = true; return nil }
func (s *fakeStream) SendHeader(metadata.MD) error { s.sent = true; return nil }
func (s *fakeStream) SendMsg(any) error            { s.sent = true; return nil }
func (s *fakeStream) SendAndClose(*accesslogv3.StreamAccessLogsResponse) error {
	s.sent = true
	return nil
}

func (s *fakeStream) Recv() (*accesslogv3.StreamAccessLogsMessage, error) {
	m := &accesslogv3.StreamAccessLogsMessage{}
	return m, s.RecvMsg(m)
}

func (s *fakeStream) RecvMsg(m any) error {
	if len(s.msgs) == 0 {
		return s.err
	}
	b := s.msgs[0]
	s.msgs = s.msgs[1:]
	return proto.Unmarshal(b, protoadapt.MessageV2Of(m.(protoadapt.MessageV1)))
}

func encode(t *testing.T, m *accesslogv3.StreamAccessLogsMessage) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func httpLogs(t *testing.T, entries ...*accesslogdatav3.HTTPAccessLogEntry) []byte {
	return encode(t, &accesslogv3.StreamAccessLogsMessage{LogEntries: &accesslogv3.StreamAccessLogsMessage_HttpLogs{
		HttpLogs: &accesslogv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: entries},
	}})
}

func tcpLogs(t *testing.T) []byte {
	return encode(t, &accesslogv3.StreamAccessLogsMessage{LogEntries: &accesslogv3.StreamAccessLogsMessage_TcpLogs{
		TcpLogs: &accesslogv3.StreamAccessLogsMessage_TCPAccessLogEntries{LogEntry: []*accesslogdatav3.TCPAccessLogEntry{{}}},
	}})
}

func TestStreamEndsAnsweringOnlyAHalfClose(t *testing.T) {
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name       string
		ctx        context.Context
		give       [][]byte
		recvErr    error
		want       string // the handler's error; "" for nil
		wantAnswer bool
	}{
		{name: "sender half-closes", ctx: context.Background(), give: [][]byte{tcpLogs(t)}, recvErr: io.EOF, wantAnswer: true},
		{name: "stream cancelled", ctx: cancelled, recvErr: errors.New("transport closed"), want: context.Canceled.Error()},
		{name: "undecodable message", ctx: context.Background(), give: [][]byte{{0x12, 0x05, 0x0a}}, recvErr: io.EOF,
			want: errMalformedMessage.Error()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := NewReceiver(ReceiverConfig{Ledger: newFakeLedger(), Log: zaptest.NewLogger(t)})
			defer r.Close(context.Background())
			s := &fakeStream{ctx: tt.ctx, err: tt.recvErr, msgs: tt.give}
			got := ""
			if err := r.StreamAccessLogs(s); err != nil {
				got = err.Error()
			}
			if got != tt.want {
				t.Errorf("StreamAccessLogs = %q, want %q", got, tt.want)
			}
			if s.sent != tt.wantAnswer {
				t.Errorf("answered %v, want %v", s.sent, tt.wantAnswer)
			}
		})
	}
}

// A grpc-go client that ends its side of the stream gets the response the
// protocol promises, not "cardinality violation".
func TestHalfClosedStreamGetsAResponse(t *testing.T) {
	e := newTestEnv(t, 0)
	stream, err := accesslogv3.NewAccessLogServiceClient(e.conn).StreamAccessLogs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	msg := &accesslogv3.StreamAccessLogsMessage{
		Identifier: &accesslogv3.StreamAccessLogsMessage_Identifier{LogName: "levy-billing"},
		LogEntries: &accesslogv3.StreamAccessLogsMessage_HttpLogs{HttpLogs: &accesslogv3.StreamAccessLogsMessage_HTTPAccessLogEntries{
			LogEntry: entries(give{consumer: "acme", plan: "payg", status: 503})}},
	}
	if err := stream.Send(msg); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.CloseAndRecv(); err != nil {
		t.Fatalf("CloseAndRecv: %v", err)
	}
	assertAdjustments(t, e.flush(t), []Adjustment{adj("acme", "api_calls", -1)})
}

// Messages on one stream reuse gRPC's receive buffer: what a message
// settled must not change when the next one arrives in the same bytes.
func TestSettlementsOutliveTheirMessage(t *testing.T) {
	e := newTestEnv(t, 0)
	cat := testCatalog(t)
	payg, _ := cat.Get("payg")
	const rounds = 20 // the race detector makes sync.Pool drop buffers at random
	for _, metadata := range []bool{false, true} {
		g := func(consumer string, status int, units string) give {
			out := give{consumer: consumer, plan: "payg", status: status, units: units}
			if metadata {
				out.ledger, out.window = LedgerKey(consumer, TermsOf(payg)), sec
			}
			return out
		}
		var batches [][]*accesslogdatav3.HTTPAccessLogEntry
		for range rounds {
			// Same lengths, so the second message lands where the first was.
			batches = append(batches, entries(g("acme1", 500, ""), g("acme1", 500, ""), g("acme1", 200, "7")),
				entries(g("zeta9", 500, ""), g("zeta9", 200, "5"), g("zeta9", 500, "")))
		}
		e.sendOn(t, e.logger("gw-1"), batches...)
	}
	e.waitStreams(t, 0)
	assertAdjustments(t, e.flush(t), []Adjustment{adj("acme1", "api_calls", 2*rounds*4), adj("zeta9", "api_calls", 2*rounds*2)})
	assertResults(t, e.results(t), map[string]int{"settled": 2 * rounds * 6})
}

func TestLastLogEntriesMemberOfAMessageWins(t *testing.T) {
	// Protobuf oneof rules: in http_logs followed by tcp_logs, the
	// http_logs are gone; tcp_logs followed by http_logs keeps them.
	refund := func() []byte { return httpLogs(t, entry(give{consumer: "acme", plan: "payg", status: 500})) }
	m := telemetry.NewMetrics()
	l := newFakeLedger()
	cat := testCatalog(t)
	r := NewReceiver(ReceiverConfig{Ledger: l, Catalog: func() *plan.Catalog { return cat }, Metrics: m, Log: zaptest.NewLogger(t)})
	s := &fakeStream{ctx: context.Background(), err: io.EOF, msgs: [][]byte{
		append(refund(), tcpLogs(t)...),
		append(tcpLogs(t), refund()...),
	}}
	if err := r.StreamAccessLogs(s); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	assertAdjustments(t, l.totals(), []Adjustment{adj("acme", "api_calls", -1)})
}

func TestSettleWithoutUnitsAllocationsStayLow(t *testing.T) {
	e := entry(give{consumer: "acme", plan: "payg", status: 500})
	cat := testCatalog(t)
	allocs := testing.AllocsPerRun(100, func() {
		Settle(e, cat, "x-levy-units", "x-consumer-id")
	})
	if allocs > 0 {
		t.Errorf("Settle allocates %v times per entry, want 0", allocs)
	}
}

// windowless finds no window for anything until opened.
type windowless struct {
	fakeLedger
	open bool
}

func (l *windowless) Adjust(ctx context.Context, adjs []Adjustment) error {
	l.mu.Lock()
	open := l.open
	l.mu.Unlock()
	if !open {
		return &PartialError{Unmatched: adjs}
	}
	return l.fakeLedger.Adjust(ctx, adjs)
}

// A settlement whose window the store does not have yet (admitted by a
// replica while Redis was away) is kept and applied once the window is
// there; one whose window never comes is dropped after a while, counted.
func TestSettlementWaitsForItsWindowThenGivesUp(t *testing.T) {
	for _, opens := range []bool{true, false} {
		ledger := &windowless{fakeLedger: *newFakeLedger()}
		metrics := telemetry.NewMetrics()
		r := NewReceiver(ReceiverConfig{Ledger: ledger, Catalog: func() *plan.Catalog { return testCatalog(t) },
			FlushEvery: time.Hour, Metrics: metrics, Log: zaptest.NewLogger(t)})
		b := newBatch()
		cat := testCatalog(t)
		for _, e := range entries(give{consumer: "acme", plan: "payg", status: 500}, give{consumer: "acme", plan: "payg", status: 502}) {
			var f facts
			f.fromEntry(e, DefaultUnitsHeader, DefaultConsumerHeader)
			r.settleFacts(b, &f, cat, t0)
		}
		r.commit(b)
		for range r.maxUnmatchedTries - 1 {
			if err := r.Flush(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
		if opens {
			ledger.mu.Lock()
			ledger.open = true
			ledger.mu.Unlock()
		}
		r.Flush(context.Background())
		r.Close(context.Background())
		var want []Adjustment
		dropped := 2.0
		if opens {
			want, dropped = []Adjustment{adj("acme", "api_calls", -2)}, 0
		}
		assertAdjustments(t, ledger.totals(), want)
		if got := counterValue(t, r.metrics.unmatched); got != dropped {
			t.Fatalf("opens %v: %v dropped, want %v", opens, got, dropped)
		}
	}
}

// While the ledger cannot be written, the requests kept for it are
// bounded; their units are not.
func TestPendingRequestsAreBoundedWhileTheLedgerIsAway(t *testing.T) {
	ledger := newFakeLedger()
	ledger.failNext(1000)
	r := NewReceiver(ReceiverConfig{Ledger: ledger, Catalog: func() *plan.Catalog { return testCatalog(t) },
		FlushEvery: time.Hour, MaxPendingRequests: 10, Log: zaptest.NewLogger(t)})
	defer r.Close(context.Background())
	cat := testCatalog(t)
	for range 5 {
		b := newBatch()
		for _, e := range entries(give{consumer: "acme", plan: "payg", status: 500}, give{consumer: "acme", plan: "payg", status: 200, units: "4"},
			give{consumer: "acme", plan: "payg", status: 503}) {
			var f facts
			f.fromEntry(e, DefaultUnitsHeader, DefaultConsumerHeader)
			r.settleFacts(b, &f, cat, t0)
		}
		r.commit(b)
		r.Flush(context.Background()) // fails: kept
	}
	r.mu.Lock()
	n := r.pendingReqs
	var units int64
	for _, a := range r.pending {
		units += a.reported - a.refunded
	}
	r.mu.Unlock()
	if n > 10+2 || units != 5*(3-2) {
		t.Fatalf("%d requests kept for %d units, want at most 12 for 5", n, units)
	}
}

func counterValue(t *testing.T, c interface{ Write(*dto.Metric) error }) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// An access log whose metadata names another consumer's ledger cannot
// settle that consumer's usage: it settles its own consumer's.
func TestSettlementCannotReachAnotherConsumersLedger(t *testing.T) {
	e := newTestEnv(t, 0)
	payg, _ := testCatalog(t).Get("payg")
	forged := give{consumer: "acme", plan: "payg", status: 500, ledger: LedgerKey("beta", TermsOf(payg)), window: sec}
	prefixed := give{consumer: "acme", plan: "payg", status: 503, ledger: LedgerKey("acme2", TermsOf(payg)), window: sec}
	e.send(t, entries(forged, prefixed))
	got := e.flush(t)
	assertAdjustments(t, got, []Adjustment{adj("acme", "api_calls", -2)})
	for _, a := range e.ledger.adjs {
		if a.Key != LedgerKey("acme", TermsOf(payg)) {
			t.Fatalf("settled ledger %q", a.Key)
		}
	}
}

// Settlement moves the quota counter admission counted a request in, with
// its window: the ledger gets the counter's key and period from the access
// log, the consumer's own counter only, and only beside a known window.
// Requests of one window in two periods (a period edge inside a window)
// are two adjustments.
func TestSettlementNamesTheQuotaCounterAndPeriodAdmissionCounted(t *testing.T) {
	e := newTestEnv(t, 0)
	payg, _ := testCatalog(t).Get("payg")
	ledger := LedgerKey("acme", TermsOf(payg))
	march, april := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC), time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC)
	e.send(t, entries(
		give{consumer: "acme", plan: "payg", status: 500, ledger: ledger, window: sec, quota: QuotaKey("acme"), period: march},
		give{consumer: "acme", plan: "payg", units: "8", ledger: ledger, window: sec, quota: QuotaKey("acme"), period: march},
		give{consumer: "acme", plan: "payg", units: "3", ledger: ledger, window: sec, quota: QuotaKey("acme"), period: april},
		give{consumer: "acme", plan: "payg", status: 503, ledger: ledger, window: sec, quota: QuotaKey("beta"), period: march},
		give{consumer: "acme", plan: "payg", status: 502, quota: QuotaKey("acme"), period: march},
	))
	e.flush(t)
	type got struct {
		quota      string
		period     time.Time
		units      int64
		refunded   int64
		reported   int64
		knownStart bool
	}
	var gots []got
	for _, a := range e.ledger.adjs {
		gots = append(gots, got{a.Quota, a.QuotaStart, a.Units, a.Refunded, a.Reported, !a.Start.IsZero()})
	}
	slices.SortFunc(gots, func(a, b got) int { return strings.Compare(fmt.Sprint(a), fmt.Sprint(b)) })
	want := []got{
		{"", time.Time{}, -1, 1, 0, false},           // no window named: no counter either
		{"", time.Time{}, -1, 1, 0, true},            // beta's counter: not acme's to settle
		{QuotaKey("acme"), april, 2, 0, 2, true},     // 3 reported on 1
		{QuotaKey("acme"), march, 7 - 1, 1, 7, true}, // 8 reported on 1, and a refund
	}
	slices.SortFunc(want, func(a, b got) int { return strings.Compare(fmt.Sprint(a), fmt.Sprint(b)) })
	if fmt.Sprint(gots) != fmt.Sprint(want) {
		t.Fatalf("adjustments\n%v\nwant\n%v", gots, want)
	}
}
