package server

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/levyhq/levy/pkg/config"
)

// BenchmarkLoadLargeDirectory loads a config file of 100,000 consumers with
// a key each, as levy serve does at start and at every reload (parse,
// validate, build the ext_authz snapshot), and reports what the snapshot
// keeps: live-MB is the heap still in use after a collection, with the
// config and the snapshot alive, and B/op what the load allocated on its
// way there.
//
//	go test -run '^$' -bench LoadLargeDirectory -benchtime 3x ./pkg/server/
func BenchmarkLoadLargeDirectory(b *testing.B) {
	const consumers = 100_000
	path := filepath.Join(b.TempDir(), "levy.yaml")
	var f strings.Builder
	f.WriteString("plans:\n  pro:\n    model: tiered\n    rate: {requests: 100, per: 1s, burst: 200}\n" +
		"    quota: {requests: 100000, period: month, enforcement: hard}\nconsumers:\n")
	for i := range consumers {
		sum := sha256.Sum256(fmt.Appendf(nil, "key%d", i))
		fmt.Fprintf(&f, "  - id: c%d\n    plan: pro\n    keys:\n      - hash: %s\n", i, hex.EncodeToString(sum[:]))
	}
	if err := os.WriteFile(path, []byte(f.String()), 0o600); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	var live uint64
	for range b.N {
		cfg, err := config.Load(path)
		if err != nil {
			b.Fatal(err)
		}
		snap, err := AuthzSnapshot(cfg, nil, nil, nil)
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		var before, after runtime.MemStats
		cfg, snap = nil, nil
		runtime.GC()
		runtime.ReadMemStats(&before)
		cfg, _ = config.Load(path)
		snap, _ = AuthzSnapshot(cfg, nil, nil, nil)
		runtime.GC()
		runtime.ReadMemStats(&after)
		runtime.KeepAlive(cfg)
		runtime.KeepAlive(snap)
		live = after.HeapAlloc - before.HeapAlloc
		b.StartTimer()
	}
	b.ReportMetric(float64(live)/(1<<20), "live-MB")
	b.ReportMetric(float64(live)/consumers, "live-B/consumer")
}
