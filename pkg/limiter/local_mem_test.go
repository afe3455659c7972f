package limiter_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/levyhq/levy/pkg/await"
	"github.com/levyhq/levy/pkg/limiter"
	"github.com/levyhq/levy/pkg/limiter/limitertest"
	"github.com/levyhq/levy/pkg/localstore"
	"github.com/levyhq/levy/pkg/plan"
)

// dayQuota is the limit pkg/rls builds for a RateLimitService rule with
// unit: day on remote_address, for one address.
func dayQuota(i int) limiter.Limit {
	addr := fmt.Sprintf("10.%d.%d.%d", i>>16&0xff, i>>8&0xff, i&0xff)
	return limiter.Limit{Kind: limiter.Quota, Name: "per-ip", Key: "{rl:edge.remote_address=" + addr + "}:q:day",
		Cost: 1, Max: 1000, Unit: plan.Day}
}

// BenchmarkLocalMemory is issue item 15's check: one request from each of
// LEVY_MEM_VALUES (default 1,000,000) distinct client addresses on a day
// quota, on the local store as levy serve runs it (a bbolt file written
// behind), from GOMAXPROCS goroutines. It reports
//
//   - decisions/s, and saved-s: until the last counter was on disk;
//   - then, every counter still in memory (counters-saved of them), after
//     a GC: the process's resident memory (rss-saved-MB) and live heap
//     (heap-saved-MB);
//   - then, once the counters are idle (the clock moves 10 minutes) and the
//     prune pass dropped them (counters-in-memory are left), after a GC:
//     rss-MB, of which rss-file-MB is bbolt's mapping of the file, and
//     heap-MB;
//   - the peak resident memory of the whole run (hwm-MB) and the data
//     file's size (file-MB).
//
// Run it alone, once (VALUES=n for another count):
//
//	make mem
func BenchmarkLocalMemory(b *testing.B) {
	n := memValues(b)
	for b.Loop() {
		dir := os.Getenv("LEVY_MEM_DIR") // to look at the file after
		if dir == "" {
			dir = b.TempDir()
		}
		db, err := localstore.Open(dir)
		if err != nil {
			b.Fatal(err)
		}
		clock := limitertest.NewClock(time.Date(2026, time.March, 14, 9, 0, 0, 0, time.UTC))
		l, err := limiter.NewLocal(limiter.LocalConfig{Clock: clock.Now, Counters: db})
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		fill(b, l, n)
		took := time.Since(start)
		if err := l.Flush(); err != nil {
			b.Fatal(err)
		}
		saved := time.Since(start)
		inUse := l.Counters()
		runtime.GC()
		debug.FreeOSMemory()
		var all runtime.MemStats
		runtime.ReadMemStats(&all)
		allRSS := procStatus(b)["VmRSS"]
		// Idle: past any eviction delay, within the same day.
		clock.Advance(10 * time.Minute)
		// What is kept after 5s is the figure, not a failure.
		_ = await.Poll(5*time.Second, func() error {
			if l.Counters() > 0 {
				return errors.New("counters kept")
			}
			return nil
		})
		kept := l.Counters()
		runtime.GC()
		debug.FreeOSMemory()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		st := procStatus(b)
		fi, err := os.Stat(filepath.Join(dir, "levy.db"))
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(n)/took.Seconds(), "decisions/s")
		b.ReportMetric(saved.Seconds(), "saved-s")
		b.ReportMetric(float64(inUse), "counters-saved")
		b.ReportMetric(allRSS/1024, "rss-saved-MB")
		b.ReportMetric(float64(all.HeapAlloc)/(1<<20), "heap-saved-MB")
		b.ReportMetric(st["VmRSS"]/1024, "rss-MB")
		b.ReportMetric(st["RssFile"]/1024, "rss-file-MB")
		b.ReportMetric(st["VmHWM"]/1024, "hwm-MB")
		b.ReportMetric(float64(ms.HeapAlloc)/(1<<20), "heap-MB")
		b.ReportMetric(float64(kept), "counters-in-memory")
		b.ReportMetric(float64(fi.Size())/(1<<20), "file-MB")

		// Every counter is still there, exactly.
		for _, i := range []int{0, n / 2, n - 1} {
			lim := dayQuota(i)
			lim.Cost = 0
			d, err := l.Decide(context.Background(), []limiter.Limit{lim})
			if err != nil || d.Statuses[0].Used != 1 {
				b.Fatalf("address %d after eviction: used %d (%v), want 1", i, d.Statuses[0].Used, err)
			}
		}
		if err := l.Close(); err != nil {
			b.Fatal(err)
		}
		db.Close()
	}
}

// BenchmarkLocalMemoryWithoutFile is BenchmarkLocalMemory on a local
// limiter without a data file (the fallback of on_store_error: allow):
// every counter of the day stays in memory, in its compact form. It
// reports rss-MB and heap-MB after a GC with all of them in memory (no
// peak: make mem runs it after BenchmarkLocalMemory, in one process).
func BenchmarkLocalMemoryWithoutFile(b *testing.B) {
	n := memValues(b)
	for b.Loop() {
		clock := limitertest.NewClock(time.Date(2026, time.March, 14, 9, 0, 0, 0, time.UTC))
		l, err := limiter.NewLocal(limiter.LocalConfig{Clock: clock.Now})
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		fill(b, l, n)
		took := time.Since(start)
		kept := l.Counters()
		runtime.GC()
		debug.FreeOSMemory()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		st := procStatus(b)
		b.ReportMetric(float64(n)/took.Seconds(), "decisions/s")
		b.ReportMetric(st["VmRSS"]/1024, "rss-MB")
		b.ReportMetric(float64(ms.HeapAlloc)/(1<<20), "heap-MB")
		b.ReportMetric(float64(kept), "counters-in-memory")
		l.Close()
	}
}

// memValues is LEVY_MEM_VALUES, by default a million.
func memValues(b *testing.B) int {
	n := 1_000_000
	if s := os.Getenv("LEVY_MEM_VALUES"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil {
			b.Fatalf("LEVY_MEM_VALUES: %v", err)
		}
		n = v
	}
	return n
}

// fill sends one request from each of n addresses, from GOMAXPROCS
// goroutines.
func fill(b *testing.B, l *limiter.Local, n int) {
	var wg sync.WaitGroup
	workers := runtime.GOMAXPROCS(0)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lim := make([]limiter.Limit, 1)
			for i := w; i < n; i += workers {
				lim[0] = dayQuota(i)
				if d, err := l.Decide(context.Background(), lim); err != nil || !d.OK {
					b.Errorf("address %d: %v %v", i, d.OK, err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// procStatus reads /proc/self/status's kB figures.
func procStatus(tb testing.TB) map[string]float64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if f := strings.Fields(v); ok && len(f) == 2 && f[1] == "kB" {
			n, _ := strconv.ParseFloat(f[0], 64)
			out[k] = n
		}
	}
	return out
}
