package rls_test

import (
	"context"
	"testing"
	"time"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"

	"github.com/levyhq/levy/pkg/envoyclient"
	"github.com/levyhq/levy/pkg/limiter"
	"github.com/levyhq/levy/pkg/rls"
)

// instant answers every decision at once with every limit allowed, so
// that BenchmarkDecide measures levy's RLS code alone.
type instant struct{}

func (instant) Decide(_ context.Context, limits []limiter.Limit) (limiter.Decision, error) {
	st := make([]limiter.Status, len(limits))
	for i := range st {
		st[i] = limiter.Status{OK: true, Limit: limits[i].Requests, Remaining: 1, Reset: time.Second}
	}
	return limiter.Decision{OK: true, Denied: -1, Statuses: st}, nil
}

// BenchmarkDecide is ShouldRateLimit without gRPC or a store, for the
// three descriptors of test/bench's 3desc request: the client address, a
// generic key and a consumer's route limited by its plan.
func BenchmarkDecide(b *testing.B) {
	cfg := mustConfig(b, levyYAML)
	srv := rls.New(rls.Config{Snapshot: snapshot(b, cfg, false), Limiter: instant{}})
	req := envoyclient.BuildRateLimitRequest("api", []envoyclient.Descriptor{
		{Entries: [][2]string{{"remote_address", "10.0.0.1"}}},
		{Entries: [][2]string{{"generic_key", "loose"}}},
		{Entries: [][2]string{{"consumer", "big"}, {"route", "items"}}},
	}, 0)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		resp, err := srv.ShouldRateLimit(ctx, req)
		if err != nil || resp.OverallCode != rlsv3.RateLimitResponse_OK || len(resp.Statuses) != 3 || resp.Statuses[2].CurrentLimit == nil {
			b.Fatalf("%v %v", resp, err)
		}
	}
}

// BenchmarkDecideAndEncode is ShouldRateLimit and the answer on the wire,
// for two descriptors of rules without metadata (levy's own encoder) and
// of rules with metadata (dynamic_metadata, encoded by protobuf).
func BenchmarkDecideAndEncode(b *testing.B) {
	for _, bm := range []struct {
		name  string
		descs []envoyclient.Descriptor
	}{
		{"plain", []envoyclient.Descriptor{d("generic_key", "plain"), d("remote_address", "10.0.0.1")}},
		{"metadata", []envoyclient.Descriptor{d("generic_key", "a"), d("generic_key", "b")}},
	} {
		b.Run(bm.name, func(b *testing.B) {
			srv := rls.New(rls.Config{Snapshot: snapshot(b, mustConfig(b, metadataYAML), false), Limiter: instant{}})
			req := envoyclient.BuildRateLimitRequest("api", bm.descs, 0)
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				resp, err := srv.ShouldRateLimit(ctx, req)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := rls.Codec.Marshal(resp); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
