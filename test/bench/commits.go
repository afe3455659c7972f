package bench

import (
	"math"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// commitStats are the local store's write-behind histograms at one
// moment: commit durations and loss windows (see limiter.Local).
type commitStats struct {
	commits uint64
	busy    float64 // seconds spent in commits
	windows uint64
	lost    float64 // sum of the loss windows, seconds
	took    buckets
	window  buckets
}

// buckets is a Prometheus histogram's buckets: upper bounds and the
// count in each (not cumulative).
type buckets struct {
	bounds []float64
	counts []uint64
}

// readCommitStats gathers reg's write-behind histograms; zero for nil.
func readCommitStats(tb testing.TB, reg *prometheus.Registry) commitStats {
	tb.Helper()
	var s commitStats
	if reg == nil {
		return s
	}
	mfs, err := reg.Gather()
	if err != nil {
		tb.Fatal(err)
	}
	for _, mf := range mfs {
		if len(mf.GetMetric()) == 0 || mf.GetMetric()[0].Histogram == nil {
			continue
		}
		h := mf.GetMetric()[0].GetHistogram()
		switch mf.GetName() {
		case "levy_local_commit_duration_seconds":
			s.commits, s.busy, s.took = h.GetSampleCount(), h.GetSampleSum(), perBucket(h.GetBucket())
		case "levy_local_loss_window_seconds":
			s.windows, s.lost, s.window = h.GetSampleCount(), h.GetSampleSum(), perBucket(h.GetBucket())
		}
	}
	return s
}

func perBucket(bs []*dto.Bucket) buckets {
	h := buckets{bounds: make([]float64, len(bs)), counts: make([]uint64, len(bs))}
	var prev uint64
	for i, b := range bs {
		h.bounds[i], h.counts[i] = b.GetUpperBound(), b.GetCumulativeCount()-prev
		prev = b.GetCumulativeCount()
	}
	return h
}

// since is the observations of h not in old.
func (h buckets) since(old buckets) buckets {
	d := buckets{bounds: h.bounds, counts: make([]uint64, len(h.counts))}
	for i := range h.counts {
		d.counts[i] = h.counts[i]
		if i < len(old.counts) {
			d.counts[i] -= old.counts[i]
		}
	}
	return d
}

// quantile is the upper bound of the bucket that holds quantile q of n
// observations, +Inf beyond the last bound.
func (h buckets) quantile(q float64, n uint64) float64 {
	rank := max(uint64(q*float64(n)+0.5), 1)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return h.bounds[i]
		}
	}
	return math.Inf(1)
}

// since is what happened between old and s.
func (s commitStats) since(old commitStats) commitStats {
	return commitStats{commits: s.commits - old.commits, busy: s.busy - old.busy, took: s.took.since(old.took),
		windows: s.windows - old.windows, lost: s.lost - old.lost, window: s.window.since(old.window)}
}

// report adds the write-behind figures of a run that took elapsed:
//
//	commits/s      commits that wrote something
//	commit-us      their mean duration (one fsynced bbolt transaction),
//	commit-ms-max  the longest, as the upper bound of its histogram bucket
//	loss-ms-mean   the mean loss window: how long a commit's oldest change
//	               had been only in memory when the commit was durable
//	loss-ms-p99    the 99th percentile of it, and
//	loss-ms-max    its largest, both as the upper bound of their bucket
func (s commitStats) report(b *testing.B, elapsed time.Duration) {
	if s.commits == 0 {
		return
	}
	b.ReportMetric(float64(s.commits)/elapsed.Seconds(), "commits/s")
	b.ReportMetric(s.busy/float64(s.commits)*1e6, "commit-us")
	b.ReportMetric(s.took.quantile(1, s.commits)*1e3, "commit-ms-max")
	if s.windows == 0 {
		return
	}
	b.ReportMetric(s.lost/float64(s.windows)*1e3, "loss-ms-mean")
	b.ReportMetric(s.window.quantile(0.99, s.windows)*1e3, "loss-ms-p99")
	b.ReportMetric(s.window.quantile(1, s.windows)*1e3, "loss-ms-max")
}
