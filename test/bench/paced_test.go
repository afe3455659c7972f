package bench

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
)

// BenchmarkRedisVersusPeerPaced measures levy's and the peer's latency at a
// load both can carry: half the peer's capacity, sent at a fixed rate to
// each in alternating slices, as BenchmarkRedisVersusPeer alternates them.
// A closed loop keeps 32 calls in flight whatever the server does, so its
// p99 is mostly the queue the callers build themselves; at a fixed rate
// below capacity, a server's p99 is its own, and a stall shows up as the
// calls that queue behind it. It is skipped without a peer.
func BenchmarkRedisVersusPeerPaced(b *testing.B) {
	e, levy, peer := versusTargets(b)
	// grpc-go callers, even with LEVY_BENCH_CALLER=h2: the lean caller
	// keeps its calls in flight and does not pace them.
	levy, peer = viaGRPC(levy), viaGRPC(peer)
	r := e.reqs[0] // 1desc
	rate := pacedLoad * capacity(b, peer, r.msgs)
	b.Run(r.name+"/grpc-go", func(b *testing.B) { pacedVersus(b, levy, peer, r.msgs, rate) })
}

// pacedLoad is the share of the peer's capacity the paced benchmark offers.
const pacedLoad = 0.5

// pacedCallers bounds how many paced calls are in flight. At half the
// peer's capacity on a small machine (some thousands of calls a second) a
// call is due every few hundred µs, so 64 callers ride out a stall of
// some 20ms before a call has to wait for a free one; such a wait is still
// counted, from the call's due time.
const pacedCallers = 64

// capacityTime is how long the peer's capacity is measured for: closed
// loop slices of capacitySlice calls until that much time has passed.
const (
	capacityTime  = 2 * time.Second
	capacitySlice = 1000
)

// capacity is t's calls/s in versus's closed loop: callers concurrent
// callers, each sending its next call when the last one comes back.
func capacity(b *testing.B, t *target, reqs []proto.Message) float64 {
	b.Helper()
	var sum result
	for sum.elapsed < capacityTime {
		res, err := run(t, reqs, callers, capacitySlice)
		if err != nil {
			b.Fatal(err)
		}
		sum.add(res)
	}
	return sum.rate()
}

// viaGRPC is t called through its grpc-go connections, not the lean
// caller's.
func viaGRPC(t *target) *target {
	v := *t
	v.h2 = nil
	return &v
}

// pacedVersus sends b.N calls of reqs at rate calls a second, half to each
// of a and c in alternating slices, and reports the rate offered, the
// rate each achieved, each one's p50 and p99 latency from the calls' due
// times and how late its calls were sent, and a's p99 over c's.
func pacedVersus(b *testing.B, a, c *target, reqs []proto.Message, rate float64) {
	n := max(b.N/(2*versusRounds), callers)
	sum := alternate(b, a, c, func(t *target) (result, error) { return runAt(t, reqs, pacedCallers, n, rate) })
	us := func(d time.Duration) float64 { return d.Seconds() * 1e6 }
	b.ReportMetric(rate, "offered-calls/s")
	for i, t := range []*target{a, c} {
		b.ReportMetric(sum[i].rate(), t.name+"-calls/s")
		b.ReportMetric(us(sum[i].hist.quantile(0.50)), t.name+"-p50-us")
		b.ReportMetric(us(sum[i].hist.quantile(0.99)), t.name+"-p99-us")
		b.ReportMetric(us(sum[i].late.quantile(0.50)), t.name+"-late-p50-us")
		b.ReportMetric(us(sum[i].late.quantile(0.99)), t.name+"-late-p99-us")
	}
	b.ReportMetric(us(sum[0].hist.quantile(0.99))/us(sum[1].hist.quantile(0.99)), "p99-x-"+c.name)
}

// pacer is an open loop's schedule: call i of a run (counted from 1, as
// run's callers take them) is due at start + (i-1)/rate, whenever the calls
// before it came back.
type pacer struct {
	start time.Time
	rate  float64 // calls a second
}

// due is when call i is to be sent. It is computed from start, not from
// the call before, so that a late call does not push back the ones after
// it.
func (p *pacer) due(i int64) time.Time {
	return p.start.Add(time.Duration(float64(i-1) * float64(time.Second) / p.rate))
}

// clock is the time callLoop reads and waits on.
type clock interface {
	Now() time.Time
	Sleep(time.Duration)
}

// wallClock is the clock of real runs.
type wallClock struct{}

func (wallClock) Now() time.Time        { return time.Now() }
func (wallClock) Sleep(d time.Duration) { time.Sleep(d) }

// callLoop is one of run's callers: it makes each call take hands it with
// call, and records how late it was sent and its latency, until no call
// is left or one fails.
//
// Closed loop (pace nil), a call is sent as soon as the caller's last one
// came back, never late, and its latency runs from its send. Paced, a call
// is sent at its due time, or at once if the caller comes to it late, and
// its latency runs from its due time: a call the caller could not send in
// time, as the calls before it were still waiting on the server, waited
// for the server as much as a call already sent. Measured from its send,
// that wait would vanish, and with it the queueing a stall causes
// (coordinated omission: a closed loop sends less exactly while the server
// is slow). How late it was sent is also the caller's own delay in waking
// up for it, which its latency counts too.
func callLoop(clk clock, pace *pacer, take func() (int64, bool), call func(i int64) error, record func(late, latency time.Duration)) error {
	for {
		i, ok := take()
		if !ok {
			return nil
		}
		from, late := clk.Now(), time.Duration(0)
		if pace != nil {
			due := pace.due(i)
			if wait := due.Sub(from); wait > 0 {
				clk.Sleep(wait)
			}
			from, late = due, clk.Now().Sub(due)
		}
		err := call(i)
		record(late, clk.Now().Sub(from))
		if err != nil {
			return fmt.Errorf("call %d: %w", i, err)
		}
	}
}

// fakeClock is a clock that moves only when a caller sleeps or a call
// takes time: a schedule checked to the nanosecond, without real sleeps.
type fakeClock struct{ now time.Time }

func (c *fakeClock) Now() time.Time        { return c.now }
func (c *fakeClock) Sleep(d time.Duration) { c.now = c.now.Add(d) }

// TestPacedLatencyRunsFromTheDueTime drives one caller over a fake clock,
// paced at 1,000 calls a second (due 1ms apart) and closed loop, with a
// server that stalls 5ms on the first call and 2.5ms on the eighth. Paced,
// the calls due during a stall go out late, their latencies count the
// time they waited behind it, and the caller is back on schedule once it
// has caught up (call 7 waits for its due time); a closed loop records
// only each call's own time.
func TestPacedLatencyRunsFromTheDueTime(t *testing.T) {
	const us = time.Microsecond
	start := time.Unix(1_700_000_000, 0)
	// took is how long the server takes over each call, by call number.
	took := []time.Duration{1: 5000 * us, 2: 100 * us, 3: 100 * us, 4: 100 * us, 5: 100 * us, 6: 100 * us, 7: 100 * us, 8: 2500 * us, 9: 100 * us}
	tests := []struct {
		name string
		pace *pacer
		// sent is when each call went out, from the start.
		sent     []time.Duration
		wantLate []time.Duration
		want     []time.Duration
	}{
		{
			name:     "paced",
			pace:     &pacer{start: start, rate: 1000}, // due at 0, 1, ..., 8ms
			sent:     []time.Duration{0, 5000 * us, 5100 * us, 5200 * us, 5300 * us, 5400 * us, 6000 * us, 7000 * us, 9500 * us},
			wantLate: []time.Duration{0, 4000 * us, 3100 * us, 2200 * us, 1300 * us, 400 * us, 0, 0, 1500 * us},
			want:     []time.Duration{5000 * us, 4100 * us, 3200 * us, 2300 * us, 1400 * us, 500 * us, 100 * us, 2500 * us, 1600 * us},
		},
		{
			name:     "closed loop",
			sent:     []time.Duration{0, 5000 * us, 5100 * us, 5200 * us, 5300 * us, 5400 * us, 5500 * us, 5600 * us, 8100 * us},
			wantLate: make([]time.Duration, 9),
			want:     took[1:],
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := &fakeClock{now: start}
			var next int64
			take := func() (int64, bool) {
				next++
				return next, next < int64(len(took))
			}
			var sent, late, got []time.Duration
			call := func(i int64) error {
				sent = append(sent, clk.now.Sub(start))
				clk.Sleep(took[i])
				return nil
			}
			record := func(l, d time.Duration) {
				late = append(late, l)
				got = append(got, d)
			}
			if err := callLoop(clk, tt.pace, take, call, record); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(sent, tt.sent) {
				t.Errorf("sent at %v, want %v", sent, tt.sent)
			}
			if !slices.Equal(late, tt.wantLate) {
				t.Errorf("late by %v, want %v", late, tt.wantLate)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("latencies %v, want %v", got, tt.want)
			}
		})
	}
}
