package usage

import (
	"context"
	"fmt"
	"math"
	"testing"

	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/levyhq/levy/pkg/envoyclient"
	"github.com/levyhq/levy/pkg/plan"
)

// wireCorpus is encoded entries: realistic ones, ones with fields
// missing, and hand-made encodings that exercise protobuf's merge rules.
func wireCorpus(t testing.TB) [][]byte {
	var msgs []*accesslogdatav3.HTTPAccessLogEntry
	for _, g := range []give{
		{consumer: "acme", plan: "payg"},
		{consumer: "acme", plan: "payg", status: 503, path: "/v1/search?q=x"},
		{consumer: "acme", plan: "payg", rateLimited: true},
		{consumer: "acme", plan: "payg", denied: 429},
		{consumer: "acme", plan: "payg", units: "7"},
		{plan: "payg", consumerHeader: "from-header", status: 500},
		{consumer: "acme", plan: "gold"},
		{consumer: "acme", plan: "payg", logType: accesslogdatav3.AccessLogType_DownstreamPeriodic},
		{consumer: "ąćme", plan: "free", status: 502, units: "3"},
		{consumer: "acme", plan: "payg", status: 500, ledger: LedgerKey("acme", Terms{Plan: "payg", Meter: "api_calls", Billed: true, Period: plan.Month}), window: t0},
		{consumer: "acme", plan: "payg", units: "9", ledger: LedgerKey("acme", Terms{Meter: "api_calls"}), window: t0, quota: QuotaKey("acme"), period: sec},
	} {
		msgs = append(msgs, entry(g))
	}
	noCode := entry(give{consumer: "acme", plan: "payg"})
	noCode.Response.ResponseCode = nil
	zeroCode := entry(give{consumer: "acme", plan: "payg"})
	zeroCode.Response.ResponseCode = wrapperspb.UInt32(0)
	intermediate := entry(give{consumer: "acme", plan: "payg"})
	intermediate.CommonProperties.IntermediateLogEntry = true
	kinds := entry(give{consumer: "acme", plan: "payg"})
	fields := kinds.CommonProperties.Metadata.FilterMetadata[envoyclient.ExtAuthzNamespace].Fields
	fields["consumer"] = structpb.NewNumberValue(3)
	fields["plan"] = structpb.NewBoolValue(true)
	fields["billable"] = structpb.NewStringValue("4")
	nan := entry(give{consumer: "acme", plan: "payg"})
	nan.CommonProperties.Metadata.FilterMetadata[envoyclient.ExtAuthzNamespace].Fields["billable"] = structpb.NewNumberValue(math.NaN())
	otherNS := entry(give{consumer: "acme", plan: "payg"})
	otherNS.CommonProperties.Metadata.FilterMetadata["envoy.filters.http.ratelimit"] = &structpb.Struct{
		Fields: map[string]*structpb.Value{"consumer": structpb.NewStringValue("impostor")}}
	oddWindow := entry(give{consumer: "acme", plan: "payg", ledger: LedgerKey("acme", Terms{Meter: "api_calls"}), window: t0})
	oddWindow.CommonProperties.Metadata.FilterMetadata[envoyclient.ExtAuthzNamespace].Fields["window"] = structpb.NewStringValue("1772366400")
	nanWindow := entry(give{consumer: "acme", plan: "payg", ledger: LedgerKey("acme", Terms{Meter: "api_calls"}), window: t0})
	nanWindow.CommonProperties.Metadata.FilterMetadata[envoyclient.ExtAuthzNamespace].Fields["window"] = structpb.NewNumberValue(math.NaN())
	oddPeriod := entry(give{consumer: "acme", plan: "payg", ledger: LedgerKey("acme", Terms{Meter: "api_calls"}), window: t0, quota: QuotaKey("acme"), period: t0})
	oddPeriod.CommonProperties.Metadata.FilterMetadata[envoyclient.ExtAuthzNamespace].Fields["period"] = structpb.NewNumberValue(-1)
	oddPeriod.CommonProperties.Metadata.FilterMetadata[envoyclient.ExtAuthzNamespace].Fields["quota"] = structpb.NewNumberValue(4)
	rewritten := entry(give{consumer: "acme", plan: "payg", path: "/internal/search"})
	rewritten.Request.OriginalPath = "/v1/search"
	msgs = append(msgs, noCode, zeroCode, intermediate, kinds, nan, otherNS, rewritten, oddWindow, nanWindow, oddPeriod,
		&accesslogdatav3.HTTPAccessLogEntry{}, &accesslogdatav3.HTTPAccessLogEntry{CommonProperties: &accesslogdatav3.AccessLogCommon{}})

	var out [][]byte
	for _, m := range msgs {
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	// Two encodings one after the other are one message, merged: last
	// scalar wins, maps replace by key, oneofs switch.
	n := len(out)
	for i := range n {
		out = append(out, append(append([]byte{}, out[i]...), out[(i+1)%n]...))
	}
	// Known fields with the wrong wire type are unknown fields.
	wrongType := protowire.AppendTag(nil, fEntryRequest, protowire.VarintType)
	wrongType = protowire.AppendVarint(wrongType, 7)
	wrongType = protowire.AppendTag(wrongType, fEntryCommon, protowire.Fixed32Type)
	wrongType = protowire.AppendFixed32(wrongType, 7)
	out = append(out, wrongType, append(append([]byte{}, out[0]...), wrongType...))
	return out
}

// TestWireFactsMatchDecodedFacts protects the Receiver's wire reading: it
// must see what a full decode sees.
func TestWireFactsMatchDecodedFacts(t *testing.T) {
	for i, b := range wireCorpus(t) {
		checkWireFacts(t, i, b)
	}
}

func FuzzWireFacts(f *testing.F) {
	for _, b := range wireCorpus(f) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) { checkWireFacts(t, 0, b) })
}

func checkWireFacts(t *testing.T, i int, b []byte) {
	t.Helper()
	var e accesslogdatav3.HTTPAccessLogEntry
	if err := proto.Unmarshal(b, &e); err != nil {
		return // the wire reading may be more lenient
	}
	var want, got facts
	want.fromEntry(&e, "x-levy-units", "x-consumer-id")
	if !got.fromWire(b, "x-levy-units", "x-consumer-id") {
		t.Fatalf("entry %d: wire reading failed where a full decode did not", i)
	}
	if got != want {
		t.Errorf("entry %d: facts from the wire\n%+v\ndecoded\n%+v", i, got, want)
	}
}

func TestWireReadingDoesNotAllocate(t *testing.T) {
	b, err := proto.Marshal(entry(give{consumer: "acme", plan: "payg", status: 503, units: "4"}))
	if err != nil {
		t.Fatal(err)
	}
	var f facts
	allocs := testing.AllocsPerRun(100, func() {
		f = facts{}
		f.fromWire(b, "x-levy-units", "x-consumer-id")
	})
	if allocs > 0 || f.consumer != "acme" {
		t.Errorf("fromWire: %v allocations, consumer %q; want 0, acme", allocs, f.consumer)
	}
}

// BenchmarkWireMessage measures the Receiver's decoding and settlement of
// one 100-entry message, without gRPC.
func BenchmarkWireMessage(b *testing.B) {
	cat := testCatalog(b)
	r := NewReceiver(ReceiverConfig{Ledger: newFakeLedger(), Catalog: func() *plan.Catalog { return cat }})
	defer r.Close(context.Background())
	var entries []*accesslogdatav3.HTTPAccessLogEntry
	for i := range 100 {
		g := give{consumer: fmt.Sprint("c", i%20), plan: "payg"}
		if i%10 == 0 {
			g.status = 503
		}
		entries = append(entries, entry(g))
	}
	msg, err := proto.Marshal(&accesslogv3.StreamAccessLogsMessage{LogEntries: &accesslogv3.StreamAccessLogsMessage_HttpLogs{
		HttpLogs: &accesslogv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: entries},
	}})
	if err != nil {
		b.Fatal(err)
	}
	m := &wireMessage{r: r, b: newBatch()}
	b.ReportAllocs()
	for b.Loop() {
		if err := m.Unmarshal(msg); err != nil {
			b.Fatal(err)
		}
		r.commit(m.b)
	}
	b.ReportMetric(float64(b.N*len(entries))/b.Elapsed().Seconds(), "entries/s")
}
