package limiter

import (
	"context"
	"reflect"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/levyhq/levy/pkg/await"
	"github.com/levyhq/levy/pkg/plan"
	"github.com/levyhq/levy/pkg/redistest"
)

// TestBatchDecidesAsIfEachWereAlone checks the batch script against the
// same requests decided one call at a time: requests that share a bucket,
// a quota and a usage window (one busy consumer), shadow and soft limits
// among them, get the same answers, and leave the same state, whether one
// script call decides them all or each has its own.
func TestBatchDecidesAsIfEachWereAlone(t *testing.T) {
	srv := redistest.Start(t)
	client := srv.Client()
	now := time.Date(2026, 11, 30, 23, 59, 58, 0, time.UTC)
	r := NewRedis(RedisConfig{Client: client, Clock: func() time.Time { return now }, Timeout: 5 * time.Second})
	t.Cleanup(func() { r.Close() })

	request := func(tag string, cost int64) []Limit {
		return []Limit{
			{Kind: Bucket, Name: "rate", Key: "{" + tag + "}:rate", Cost: cost, Requests: 4, Per: time.Minute},
			{Kind: Quota, Name: "quota", Key: "{" + tag + "}:quota", Cost: cost, Max: 9, Unit: plan.Month},
			{Kind: Quota, Name: "spend", Key: "{" + tag + "}:spend", Cost: cost, Max: 2, Soft: true, Cap: 6, Unit: plan.Month},
			{Kind: Bucket, Name: "watch", Key: "{" + tag + "}:watch", Cost: cost, Requests: 1, Per: time.Hour, Shadow: true},
			{Kind: Ledger, Name: "usage", Key: "{" + tag + "}:ledger", Cost: cost, WindowSize: time.Minute},
			// the same bucket twice in one request takes twice
			{Kind: Bucket, Name: "rate", Key: "{" + tag + "}:rate", Cost: cost, Requests: 4, Per: time.Minute},
		}
	}
	costs := []int64{1, 0, 1, 2, 1, 1, 3, 1}
	batch := func(tag string) [][]Limit {
		var b [][]Limit
		for _, c := range costs {
			b = append(b, request(tag, c))
		}
		return b
	}
	ctx := context.Background()
	together, _, err := r.runBatch(ctx, r.decideScript, batch("together"))
	if err != nil {
		t.Fatal(err)
	}
	var alone []requestAnswer
	for _, req := range batch("alone") {
		d, _, err := r.runBatch(ctx, r.decideScript, [][]Limit{req})
		if err != nil {
			t.Fatal(err)
		}
		alone = append(alone, d[0])
	}
	denials := 0
	for i := range costs {
		if !reflect.DeepEqual(together[i], alone[i]) {
			t.Fatalf("request %d (cost %d):\nin one call %+v\nalone       %+v", i+1, costs[i], together[i], alone[i])
		}
		if together[i].denied >= 0 {
			denials++
		}
	}
	if denials == 0 || denials == len(costs) {
		t.Fatalf("%d of %d requests denied: the batch should mix allows and denials", denials, len(costs))
	}
	// What they left is the same too: a check that takes nothing sees it.
	after := func(tag string) requestAnswer {
		d, _, err := r.runBatch(ctx, r.decideScript, [][]Limit{request(tag, 0)})
		if err != nil {
			t.Fatal(err)
		}
		return d[0]
	}
	if a, b := after("together"), after("alone"); !reflect.DeepEqual(a, b) {
		t.Fatalf("state left:\nby one call %+v\nby each     %+v", a, b)
	}
	var units []int64
	for _, tag := range []string{"together", "alone"} {
		u, err := client.HGet(ctx, "{"+tag+"}:ledger:"+strconv.FormatInt(now.Unix()/60*60, 10), "u").Int64()
		if err != nil {
			t.Fatal(err)
		}
		units = append(units, u)
	}
	if units[0] == 0 || units[0] != units[1] {
		t.Fatalf("usage counted by one call %d, by each %d", units[0], units[1])
	}
}

// TestMsgpackArrayDecodesInRedis checks the numbers batchArgs sends against
// the decoder the scripts use, Redis's cmsgpack, at each encoding's edges.
func TestMsgpackArrayDecodesInRedis(t *testing.T) {
	client := redistest.Start(t).Client()
	vals := []int64{0, 1, 127, 128, 255, 65535, 65536, 1<<32 - 1, 1 << 32, 1<<53 - 1, -1, -129, -(1 << 40)}
	var m msgpackArray
	m.add(vals[:3]...)
	m.add(vals[3:]...)
	// Each value back as a string, exactly (tostring would round large
	// numbers to 14 digits).
	got, err := client.Eval(context.Background(), `
local out = {}
for i, v in ipairs(cmsgpack.unpack(ARGV[1])) do out[i] = string.format("%.0f", v) end
return out`, nil, m.bytes()).StringSlice()
	if err != nil {
		t.Fatal(err)
	}
	want := make([]string, len(vals))
	for i, v := range vals {
		want[i] = strconv.FormatInt(v, 10)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Redis decoded %v, want %v", got, want)
	}
	var empty msgpackArray
	n, err := client.Eval(context.Background(), `return #cmsgpack.unpack(ARGV[1])`, nil, empty.bytes()).Int()
	if err != nil || n != 0 {
		t.Fatalf("empty array: %d values, %v", n, err)
	}
}

// TestUnpackIntsReadsRedisReplies checks unpackInts against what the
// scripts' cmsgpack.pack answers: each integer encoding, a fraction, and
// arrays whose length takes each header (fixarray, array 16, array 32).
func TestUnpackIntsReadsRedisReplies(t *testing.T) {
	client := redistest.Start(t).Client()
	ctx := context.Background()
	for _, tc := range []struct {
		script string
		want   func(i int) int64
		n      int
	}{
		{`return cmsgpack.pack({0, 127, 128, 255, 256, 65535, 65536, 4294967295, 4294967296, 9007199254740991,
			-1, -32, -33, -128, -129, -32768, -32769, -2147483648, -2147483649, 2.5, -2.5})`,
			func(i int) int64 {
				return []int64{0, 127, 128, 255, 256, 65535, 65536, 4294967295, 4294967296, 9007199254740991,
					-1, -32, -33, -128, -129, -32768, -32769, -2147483648, -2147483649, 2, -2}[i]
			}, 21},
		{`return cmsgpack.pack({})`, nil, 0},
		{`local t = {} for i = 1, 16 do t[i] = i end return cmsgpack.pack(t)`, func(i int) int64 { return int64(i + 1) }, 16},
		{`local t = {} for i = 1, 70000 do t[i] = i * 1000 end return cmsgpack.pack(t)`, func(i int) int64 { return int64(i+1) * 1000 }, 70000},
	} {
		s, err := client.Eval(ctx, tc.script, nil).Text()
		if err != nil {
			t.Fatal(err)
		}
		got, err := unpackInts(s)
		if err != nil || len(got) != tc.n {
			t.Fatalf("%.40s: %d values, %v; want %d", tc.script, len(got), err, tc.n)
		}
		for i, v := range got {
			if v != tc.want(i) {
				t.Fatalf("%.40s: value %d is %d, want %d", tc.script, i, v, tc.want(i))
			}
		}
		// Cut short anywhere, or with a byte too many, it is refused.
		for _, bad := range []string{s[:len(s)-1], s + "\x00", "", "\xc1"} {
			if len(bad) > 0 && bad == s {
				continue
			}
			if _, err := unpackInts(bad); err == nil {
				t.Fatalf("%.40s: %q was read", tc.script, bad)
			}
		}
	}
}

// keyCounter records the most keys one script call carried.
type keyCounter struct {
	Scripter
	mu  sync.Mutex
	max int
}

func (k *keyCounter) Process(ctx context.Context, cmd redis.Cmder) error {
	if args := cmd.Args(); len(args) > 2 {
		if n, ok := args[2].(int); ok {
			k.mu.Lock()
			k.max = max(k.max, n)
			k.mu.Unlock()
		}
	}
	return k.Scripter.Process(ctx, cmd)
}

// A script call holds Redis for everyone: a batch of requests with the
// most limits one may have is cut at maxBatchLimits, not maxBatch requests.
func TestBatchOfLargeRequestsIsBoundedByLimits(t *testing.T) {
	srv := redistest.Start(t)
	kc := &keyCounter{Scripter: srv.Client()}
	r := NewRedis(RedisConfig{Client: kc, Timeout: 5 * time.Second})
	t.Cleanup(func() { r.Close() })
	request := func(n int) []Limit {
		limits := make([]Limit, 64)
		for i := range limits {
			limits[i] = Limit{Kind: Bucket, Name: "d", Key: "r" + strconv.Itoa(n) + ":" + strconv.Itoa(i), Cost: 1, Requests: 100, Per: time.Second}
		}
		return limits
	}
	srv.Pause() // the queue fills behind the first call
	var wg sync.WaitGroup
	for n := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if d, err := r.Decide(context.Background(), request(n)); err != nil || !d.OK {
				t.Errorf("request %d: %v %v", n, d.OK, err)
			}
		}()
	}
	// A batch carries at most 4 of these requests: with 4 queued behind
	// the call Redis holds, the next batch is a full one.
	await.Until(t, 10*time.Second, func() bool { return len(r.batch.in) >= 4 }, "4 requests queued behind the paused Redis")
	srv.Resume()
	wg.Wait()
	const most = 256 // maxBatchLimits
	if kc.max > most || kc.max < 2*64 {
		t.Fatalf("the largest script call carried %d keys; want batches of several requests, at most %d keys", kc.max, most)
	}
}

// BenchmarkScriptCallByLimits is how long one script call holds Redis by
// the limits it carries: 256 (maxBatchLimits) against 4096 (64 requests of
// 64 limits, a batch without that bound).
//
//	go test ./pkg/limiter -run '^$' -bench BenchmarkScriptCallByLimits
func BenchmarkScriptCallByLimits(b *testing.B) {
	srv := redistest.Start(b)
	r := NewRedis(RedisConfig{Client: srv.Client(), Timeout: 5 * time.Second})
	b.Cleanup(func() { r.Close() })
	for _, requests := range []int{4, 64} {
		b.Run(strconv.Itoa(requests*64)+"-limits", func(b *testing.B) {
			batch := make([][]Limit, requests)
			for n := range batch {
				batch[n] = make([]Limit, 64)
				for i := range batch[n] {
					batch[n][i] = Limit{Kind: Bucket, Name: "d", Key: "r" + strconv.Itoa(n) + ":" + strconv.Itoa(i), Cost: 1, Requests: 1 << 30, Per: time.Second}
				}
			}
			for b.Loop() {
				if _, _, err := r.runBatch(context.Background(), r.decideScript, batch); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// repeatsKey finds two references to one key, whatever their parameter
// sets, in short requests and long ones.
func TestRepeatsKey(t *testing.T) {
	ref := func(key, set int64) int64 { return key<<refShift | set }
	long := make([]int64, 40)
	for i := range long {
		long[i] = ref(int64(i), 0)
	}
	for _, c := range []struct {
		refs []int64
		want int64
	}{
		{nil, 0},
		{[]int64{ref(0, 0)}, 0},
		{[]int64{ref(0, 0), ref(1, 0), ref(2, 1)}, 0},
		{[]int64{ref(0, 0), ref(1, 1), ref(0, 2)}, 1},
		{long, 0},
		{append(append([]int64(nil), long...), ref(39, 3)), 1},
	} {
		if got := repeatsKey(c.refs); got != c.want {
			t.Errorf("repeatsKey(%d refs) = %d, want %d", len(c.refs), got, c.want)
		}
	}
}
