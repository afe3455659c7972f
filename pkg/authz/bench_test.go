package authz_test

import (
	"context"
	"testing"
	"time"

	"github.com/levyhq/levy/pkg/authz"
	"github.com/levyhq/levy/pkg/envoyclient"
	"github.com/levyhq/levy/pkg/history"
	"github.com/levyhq/levy/pkg/limiter"
	"github.com/levyhq/levy/pkg/limiter/limitertest"
	"github.com/levyhq/levy/pkg/server/servertest"
)

// BenchmarkCheckEncode is one allowed Check in process, decided on the
// local store, and its answer written by Encode: what levy spends on a
// Check outside gRPC and the network. NewWindowEachCheck moves the clock a
// ledger window before every Check, so that no two land in one window.
func BenchmarkCheckEncode(b *testing.B) {
	for _, bb := range []struct {
		name string
		step time.Duration
	}{
		{"SameWindow", 0},
		{"NewWindowEachCheck", time.Minute},
	} {
		b.Run(bb.name, func(b *testing.B) {
			text, keys := servertest.WithKeys(b, testConfig)
			clock := limitertest.NewClock(limitertest.Start)
			lim, err := limiter.NewLocal(limiter.LocalConfig{Clock: clock.Now})
			if err != nil {
				b.Fatal(err)
			}
			defer lim.Close()
			srv := authz.New(authz.Config{Snapshot: servertest.Snapshot(b, text), Limiter: lim, Clock: clock.Now})
			req := envoyclient.BuildCheckRequest(&envoyclient.Request{Path: "/v1/items",
				Headers: []envoyclient.Header{{Name: "x-api-key", Value: keys["KEY_OPEN"]}}}, 1)
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				clock.Advance(bb.step)
				resp, err := srv.Check(ctx, req)
				if err != nil || resp.GetOkResponse() == nil {
					b.Fatalf("not allowed: %v %v", resp, err)
				}
				if _, ok := authz.Encode(resp); !ok {
					b.Fatal("Encode declined an allow")
				}
			}
		})
	}
}

// BenchmarkCheckHistory is one allowed Check in process with the usage
// history off and on: on adds the key's atomic counter (an atomic load of
// the counter, of its hour, and one add), nothing else. Parallel runs as
// many Checks at once as GOMAXPROCS, all on one key: the counter's worst
// case, every core adding to one cache line.
func BenchmarkCheckHistory(b *testing.B) {
	for _, parallel := range []bool{false, true} {
		for _, on := range []bool{false, true} {
			name := map[bool]string{false: "Off", true: "On"}[on]
			if parallel {
				name += "Parallel"
			}
			b.Run(name, func(b *testing.B) {
				text, keys := servertest.WithKeys(b, testConfig)
				clock := limitertest.NewClock(limitertest.Start)
				lim, err := limiter.NewLocal(limiter.LocalConfig{Clock: clock.Now})
				if err != nil {
					b.Fatal(err)
				}
				defer lim.Close()
				cfg := authz.Config{Snapshot: servertest.Snapshot(b, text), Limiter: lim, Clock: clock.Now}
				if on {
					cfg.History = history.NewRecorder()
				}
				srv := authz.New(cfg)
				req := envoyclient.BuildCheckRequest(&envoyclient.Request{Path: "/v1/items",
					Headers: []envoyclient.Header{{Name: "x-api-key", Value: keys["KEY_OPEN"]}}}, 1)
				ctx := context.Background()
				b.ReportAllocs()
				if !parallel {
					for b.Loop() {
						if resp, err := srv.Check(ctx, req); err != nil || resp.GetOkResponse() == nil {
							b.Fatalf("not allowed: %v %v", resp, err)
						}
					}
					return
				}
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if resp, err := srv.Check(ctx, req); err != nil || resp.GetOkResponse() == nil {
							b.Errorf("not allowed: %v %v", resp, err)
							return
						}
					}
				})
			})
		}
	}
}
