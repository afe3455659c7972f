// Package bench measures the throughput of levy's ext_authz Check and
// RateLimitService ShouldRateLimit against no-op servers of the same APIs in
// the same run, so the figures that matter are ratios that do not depend on
// the machine; and, beside envoyproxy/ratelimit, ShouldRateLimit's latency
// at a fixed load.
//
// Run it with
//
//	make bench
//
// which is go test -run '^$' -bench . -benchtime 3s -count 3 -timeout 60m
// ./test/bench/ (all of them, with the peer's, can outlast go test's
// default timeout of 10 minutes; make bench BENCH=<pattern> runs some).
// Each count prints these six lines for levy on its local store, and the
// same six again for levy on Redis (BenchmarkCheckRedis,
// BenchmarkShouldRateLimitRedis; see On Redis below) and twice more on a
// Redis Cluster of one master and of three (see On a Redis Cluster):
//
//	BenchmarkCheck/noop  ...  <checks/s>  <cpu-us/check>  <p50-us>  <p99-us>  ...
//	BenchmarkCheck/levy  ...  <checks/s>  <cpu-us/check>  <p50-us>  <p99-us>  ...
//	BenchmarkShouldRateLimit/noop-1desc  ...  <calls/s>  <cpu-us/call>  <p50-us>  <p99-us>  ...
//	BenchmarkShouldRateLimit/levy-1desc  ...
//	BenchmarkShouldRateLimit/noop-3desc  ...
//	BenchmarkShouldRateLimit/levy-3desc  ...
//
// Both servers are real gRPC servers on 127.0.0.1:0 in the test process,
// built with the gRPC options levy serve uses and registered as levy serve
// registers levy (authz.Register: each CheckRequest read off the wire into
// an authz.Request, its headers and path, the rest skipped). The no-op
// server reads each request so and answers every call with one prebuilt OK
// CheckResponse, so its figure is the cost of gRPC, reading what levy reads
// and the loopback network on this machine; levy's figure adds key extraction,
// hashing, the directory lookup of an already known key, the local limiter's
// rate and quota decision, metrics, logging and building the allow response.
// levy runs as levy serve runs it: authz.New with limiter.NewLocal over a
// localstore in a temporary directory, a snapshot built from a config parsed
// with config.Parse, and an info-level JSON logger (writing to io.Discard).
//
// The clients send CheckRequests for 200 consumers, each with its own key
// (so its own bucket, quota counter and ledger window: on Redis, requests of
// one batch rarely share state, as in production), in turn, each built once
// with envoy.BuildCheckRequest from a realistic request (x-api-key plus the
// headers a browser or SDK and Envoy add), from 32 concurrent callers over 4
// shared connections. ns/op is
// wall time divided by calls, so with 32 callers it is not a call's latency;
// read checks/s for throughput and p50-us/p99-us for the latency of one call
// as the client saw it. Every levy response is checked to be an allow.
//
// The RLS servers are measured the same way. The no-op one answers with a
// prebuilt OK RateLimitResponse holding one OK status per descriptor; levy's
// is rls.New on the local limiter, with rules from a config's
// ratelimit.domains that a run never exhausts. The 1desc requests are the
// descriptor Envoy's remote_address action sends, [(remote_address,
// 10.0.x.y)], for 1,000 client addresses in turn (1,000 buckets); the 3desc
// requests add [(generic_key, items)] and the
// consumer's route from levy's ext_authz metadata, [(consumer, acme), (route,
// items)], which levy limits by acme's plan. Requests are built once with
// envoy.BuildRateLimitRequest, and every response is checked to be OK by
// reading overall_code off the wire.
//
// Read it as: levy's checks/s (calls/s for RLS) divided by noop's. The
// target is at least 0.80. Client and servers share the CPUs, so a run on a
// busy machine or with few cores moves both figures; compare them within one
// run, never across runs. cpu-us/check (cpu-us/call) is the CPU time of the
// whole process (callers and server) per call; it moves less than checks/s
// when other processes compete for the CPUs, so noop's cpu-us/check divided
// by levy's is a steadier estimate of the same ratio. The callers read
// responses as wire bytes rather than decoding them (see wire.go), as Envoy
// decodes in C++, so levy's larger responses cost the harness little. Use
// -count 5 to see the spread, and -cpuprofile with -bench Check/levy or
// -bench ShouldRateLimit/levy-3desc to see where the time goes.
//
// BenchmarkCheck measures a second no-op server, noop-plain: the same
// Noop with grpc-go's default server options and registration, so
// protobuf decodes each whole request, a goroutine serves each call and
// gRPC probes the connection's bandwidth. That is the no-op ext_authz server as it is usually written,
// and as a load test from outside would likely run it; noop is the
// stricter baseline, and the one whose ratio this package's figures quote
// first. On the 2-core VM noop-plain spent 27-33 cpu-us/check more than
// noop (BenchmarkCheckVersusNoop, one run).
//
// # Alternating with the no-op
//
// BenchmarkCheck's servers run one after the other, seconds apart, so a
// machine whose other load comes and goes moves one more than the other.
// BenchmarkCheckVersusNoop measures levy against each no-op server in ten
// alternating slices of one run (as BenchmarkRedisVersusPeer does, see
// below), levy first on its local store, then on a redis-server it
// starts:
//
//	BenchmarkCheckVersusNoop/local/noop        ...  <levy-calls/s>  <levy-cpu-us/call>  <levy-p99-us>  <noop-calls/s>  ...  <x-noop>
//	BenchmarkCheckVersusNoop/local/noop-plain  ...  <x-noop-plain>
//	BenchmarkCheckVersusNoop/redis/noop        ...  <levy-redis-cpu-us/call>  ...  <x-noop>
//	BenchmarkCheckVersusNoop/redis/noop-plain  ...
//
// x-noop is levy's checks/s over the no-op's: the ratio to read. On
// Redis, levy-redis-cpu-us/call is Redis's CPU per check during levy's
// slices, which cpu-us/call (this process's) leaves out.
//
// # From outside
//
// In this process, levy and the no-op share one Go runtime with the
// callers: one collector, paced by everything they allocate together,
// and levy serve's GOGC=400 applies to none of them. A load test from
// outside sees each server in its own process. BenchmarkCheckOutside
// builds levy (go build ./cmd/levy), runs levy serve on a config of the
// same 200 consumers, on its local store and then on Redis, and a plain
// no-op (noop-plain, this test binary re-run as a server), each in a
// process of its own, and calls them from this one (32 callers on 2
// connections) in alternating slices:
//
//	BenchmarkCheckOutside/local  ...  <levy-calls/s>  <levy-cpu-us/call>  ...  <noop-plain-calls/s>  ...  <x-noop-plain>
//	BenchmarkCheckOutside/redis  ...  <levy-redis-cpu-us/call>  ...  <x-noop-plain>
//
// Each cpu-us/call adds the server process's CPU (from /proc) to the
// callers' (its callers-cpu-us/call). levy serve gets store.timeout 1s on
// Redis (see redisTimeout).
//
// # With the portal in use
//
// The developer portal and the usage history it reads run in levy serve's
// process, beside the Check path. BenchmarkCheckPortal measures Check on a
// whole levy started in the benchmark's process as levy serve starts it
// (servertest.Start: the config file, the listeners, the admin API, the
// portal, the history keeper), on its local store, with the callers and
// the request of BenchmarkCheck, idle and in use in ten alternating
// slices of one run each (whichever goes first in a round takes turns),
// as BenchmarkRedisVersusPeer alternates levy and its peer, so that the
// machine's other load meets both alike:
//
//	BenchmarkCheckPortal  ...  <idle-checks/s>  <idle-cpu-us/check>  <idle-p50-us>  <idle-p99-us>
//	    <in-use-checks/s>  <in-use-cpu-us/check>  <in-use-p50-us>  <in-use-p99-us>  <page-ms>  <pages/s>  <x-idle>  ...
//
// (one line). Run them alone with
//
//	go test -run '^$' -bench CheckPortal -benchtime 3s -count 3 ./test/bench/
//
// In use adds four portal sessions, each signed in as the operator's
// customer is: a link minted through the admin API (POST
// /v1/consumers/bench/portal-links), opened and confirmed with a POST,
// then the session cookie. Each session loads in turn the overview, the
// usage page (this billing period by day, and the last 30 days by hour,
// its largest chart), the usage series as JSON, and the keys page with
// its per-key counts, pausing 100ms between two pages: far more than
// people clicking. LEVY_BENCH_PORTAL_PAUSE sets another pause (a Go
// duration; 0 loads pages back to back). An in-use slice starts the
// sessions, each on the page after the last one it loaded, and ends once
// its checks are done and the pages being loaded have come, so that no
// page's CPU spills into the next idle slice. The consumer starts with 30
// days of hours and days in its history, so the pages read and draw a
// month, and in both the history keeper flushes the checks' counts every
// second (usage.history.every: 1s, its shortest), which the pages read
// back.
//
// Read x-idle: in-use's checks/s over idle's, each summed over its ten
// slices: a ratio within one run, which the machine's other load moves
// far less than it moves checks/s between two runs. pages/s is the load
// the sessions made and page-ms a page's mean wall time, for a portal
// that stays usable. levy, its portal and the callers share one process
// and the machine's cores, so every page's CPU is taken from the checks:
// in-use-cpu-us/check counts the portal's CPU too, and it minus
// idle-cpu-us/check, times in-use-checks/s, is about the CPU the portal
// took a second. A fall in checks/s much larger than that share is the
// portal getting in the decisions' way (a lock, the garbage collector)
// rather than only sharing the cores; garbage the pages leave can still
// be collected during the next idle slice, which then pays for it too.
// Use -count 5 and read the spread of x-idle.
//
// On a 2-core VM loaded by other work, -count 3 each, back to back:
// with the usage page's chart executed through html/template once an
// element (the 30-day chart about 60ms of CPU a load), x-idle was
// 0.61-0.81 on the local store and 0.59-0.73 on Redis (0.21-0.44 when the
// machine was busier), at 31-37 pages/s, and the pages added 35-60
// cpu-us/check; with the chart written into a buffer and at most a
// week of bars (pkg/portal/chart.go), 0.83-0.94 and 0.85-0.94, at 39
// pages/s, adding 3-18 cpu-us/check.
//
// BenchmarkCheckPortalRedis is the same with levy on a redis-server the
// benchmark starts for it, with a store timeout of 1s as for
// BenchmarkCheckRedis; the history and the sessions are then read from
// Redis, whose CPU is not in cpu-us/check. TestPortalHarnessAllows runs
// both briefly under go test: every check allowed, every page a 200, and
// the checks' counts flushed and read back through the portal's series.
//
// # The lean caller
//
// In production Envoy calls levy from its own cores, in C++. Here the
// callers share the machine's cores with the server, and 32 grpc-go
// callers spend about as much CPU per call as the server they measure,
// which caps every server's throughput near the harness's own. The lean
// caller (h2.go) is closer to Envoy: an event loop per connection that
// keeps its share of the 32 calls in flight and speaks gRPC over HTTP/2
// and nothing else, writing each round of new calls in one write, with
// Envoy's 256 MiB windows, an HPACK dynamic table and a grpc-timeout. It
// costs about a third of grpc-go's CPU per call. LEVY_BENCH_CALLER=h2
// makes every benchmark call through it; BenchmarkRedisVersusPeer always
// runs both (sub-benchmarks .../grpc-go and .../h2).
//
// # On Redis
//
// BenchmarkCheckRedis and BenchmarkShouldRateLimitRedis run the same
// sub-benchmarks with levy deciding on Redis, as levy serve --store redis
// does: limiter.NewRedis over a redisstore.NewClient client, at most one
// Lua script call per decision. The Redis is a redis-server the benchmark starts on a
// free loopback port, or the one at LEVY_BENCH_REDIS_ADDR (host:port),
// which LEVY_BENCH_REDIS_FLUSH=1 empties (FLUSHALL) once first. levy's
// store timeout there is 1s, not its 50ms default: on a few shared cores a
// scheduling stall now and then outlasts 50ms, and a run would fail on a
// 503. Redis's own work is read from INFO before and after each run and
// reported per call:
//
//	redis-cmds/op      levy's EVALSHA and EVAL calls: at most 1 per
//	                   decision, fewer as concurrent decisions share one
//	redis-all-cmds/op  every command in INFO commandstats, which counts
//	                   the commands a script runs too (TIME, GET, SET ...);
//	                   decisions of one call on the same key read it and
//	                   write it once
//	redis-cpu-us/op    Redis's CPU time (used_cpu_sys + used_cpu_user)
//
// Redis runs in another process, so cpu-us/call does not include its CPU;
// redis-cpu-us/op is that part.
//
// # On a Redis Cluster
//
// BenchmarkCheckRedisCluster and BenchmarkShouldRateLimitRedisCluster run
// the same sub-benchmarks with levy deciding on a Redis Cluster, as levy
// serve --store redis --redis-cluster does: limiter.NewRedis with Cluster
// set, over the cluster client redisstore.NewClient builds from the
// masters' addresses. Each starts a cluster without replicas on free
// loopback ports (redistest.StartClusterOf), first of one master, then of
// three, and measures noop and levy on each:
//
//	BenchmarkCheckRedisCluster/masters=1/noop  ...  <checks/s>  <cpu-us/check>  ...
//	BenchmarkCheckRedisCluster/masters=1/levy  ...  <checks/s>  <cpu-us/check>  ...  <redis-cpu-us/op>  ...
//	BenchmarkCheckRedisCluster/masters=3/noop  ...
//	BenchmarkCheckRedisCluster/masters=3/levy  ...
//	BenchmarkShouldRateLimitRedisCluster/masters=1/noop-1desc  ...
//	... levy-1desc, noop-3desc, levy-3desc, then the same for masters=3
//
// Run them alone with
//
//	go test -run '^$' -bench RedisCluster -benchtime 2s -count 2 ./test/bench/
//
// or, with -bench 'CheckRedis|ShouldRateLimitRedis', beside the standalone
// Redis's. The Redis figures are read from every master, each with a
// client of its own, and summed: redis-cpu-us/op is the CPU of all the
// masters per decision, of which each master's core carries its share.
// An idle master spends about 3ms of CPU a second (its cron and the
// cluster bus), a few percent of redis-cpu-us/op at the rates reached here.
//
// One master differs from a standalone Redis by what cluster mode does,
// not by the number of nodes. levy batches concurrent decisions by hash
// slot, and each consumer's limits ({c:<id>}) and each client address
// have a slot of their own, so with 200 consumers (1,000 addresses) in
// turn almost every decision is a script call of its own: redis-cmds/op
// reads 1.00, where a standalone Redis decides a dozen in one call.
// Requests of one slot still share a call: 3desc's generic_key and
// consumer descriptors are the same in every request, so its
// redis-cmds/op is about 1.1, not 3. A batch's calls reach each master
// as one pipeline (limiter's runSlots), so a master reads them in one
// wakeup; redis-cmds/op counts the calls, not the round trips, and reads
// the same either way. Three masters get the same calls spread thinner,
// each reading fewer a wakeup, so their summed CPU per decision can be
// above one master's. The peer RLS is not measured on a cluster.
//
// Pipelining the calls, in four runs of each kind (two with the lean
// caller, LEVY_BENCH_CALLER=h2, two with grpc-go's) at load average 2 to
// 3 on the 2-core VM, took levy's cpu-us/check through the lean caller
// from 92-160 to 63-110, cpu-us/call from 93-130 to 46-73 (levy-1desc)
// and from 96-175 to 63-85 (levy-3desc); Redis's redis-cpu-us/op, both
// callers, from 49-93 to 38-60 (Check), 35-70 to 24-41 (1desc) and 43-87
// to 29-47 (3desc), masters=1 and masters=3 together. A standalone Redis
// measured 85-87 cpu-us/check and 26-30 redis-cpu-us/op for Check in the
// same session:
//
//	go test -run '^$' -bench RedisCluster -benchtime 2s -count 2 ./test/bench/
//	LEVY_BENCH_CALLER=h2 go test -run '^$' -bench RedisCluster -benchtime 2s -count 2 ./test/bench/
//	LEVY_BENCH_CALLER=h2 go test -run '^$' -bench 'CheckRedis$|ShouldRateLimitRedis$' -benchtime 2s -count 2 ./test/bench/
//
// The cluster benchmarks skip when redis-server (or, for three masters,
// redis-cli) is not installed; TestBenchHarnessAllows,
// TestRateLimitHarnessAllows and TestRedisCommandsCounted run on a
// three-master cluster too. README.md's Capacity and sizing turns these
// figures into cores and masters.
//
// # Against envoyproxy/ratelimit
//
// With LEVY_BENCH_PEER_RLS set to the gRPC host:port of an
// envoyproxy/ratelimit server deciding on the Redis at
// LEVY_BENCH_REDIS_ADDR, BenchmarkShouldRateLimitRedis also measures it as
// peer-1desc and peer-3desc, right after levy on the same request, with the
// same callers and checks, and reports redis-all-cmds/op and
// redis-cpu-us/op from the same Redis (a peer sub-benchmark is skipped when
// the variable is not set). Its cpu-us/call adds the server's CPU time,
// read from /proc, when LEVY_BENCH_PEER_PID is its process id, and is not
// reported otherwise; its B/op and allocs/op are the callers' alone. The
// peer's rules must match every descriptor with the limits levy reports
// (TestRateLimitHarnessAllows checks that); these are levy's, for its
// runtime config directory:
//
//	domain: bench
//	descriptors:
//	  - key: remote_address
//	    rate_limit: {unit: second, requests_per_unit: 4000000000}
//	  - key: generic_key
//	    value: items
//	    rate_limit: {unit: minute, requests_per_unit: 4000000000}
//	  - key: consumer
//	    descriptors:
//	      - key: route
//	        rate_limit: {unit: second, requests_per_unit: 1000000000}
//
// Run it with REDIS_SOCKET_TYPE=tcp, REDIS_URL at that Redis,
// USE_STATSD=false, DISABLE_STATS=true, its listeners on 127.0.0.1 (HOST,
// GRPC_HOST and DEBUG_HOST, beside PORT, GRPC_PORT and DEBUG_PORT), and
// these rules in $RUNTIME_ROOT/$RUNTIME_SUBDIRECTORY/config/bench.yaml
// with RUNTIME_WATCH_ROOT=false, then
//
//	LEVY_BENCH_REDIS_ADDR=127.0.0.1:<redis> LEVY_BENCH_PEER_RLS=127.0.0.1:<grpc> \
//	LEVY_BENCH_PEER_PID=<pid> go test -run '^$' -bench Redis -benchtime 3s -count 3 ./test/bench/
//
// or export the three variables and run make bench, which prints the
// peer's lines among the others (and, without LEVY_BENCH_PEER_RLS, says
// that they skip: go test -bench prints nothing for a skipped benchmark
// unless -v).
//
// Seconds apart on a shared machine, the two can meet different weather.
// BenchmarkRedisVersusPeer (in that -bench Redis) measures levy and the peer in
// ten alternating slices of one run instead, and reports levy-calls/s,
// peer-calls/s, their p99 and CPU per call (and, for a server in another
// process, callers-cpu-us/call: the benchmark process's own share), and
// x-peer, levy's calls/s over the peer's: the steadier figure. Whichever
// server runs first in a round gains a little (two identical levy serve
// processes measured 1.02-1.04), so the two take turns. With LEVY_BENCH_LEVY_RLS (and
// LEVY_BENCH_LEVY_PID) it measures a levy serve process at that address, on
// the same Redis with the rules of rateLimitConfig, instead of levy in the
// benchmark's process: both servers then pay for their own process, as in
// production, where levy in-process shares the callers' scheduler.
//
// The two do not decide alike, which the per-call Redis figures show:
// levy takes all of a request's limits in one atomic script (a GCRA bucket
// per second, minute or hour rule, read and written), the peer pipelines an
// INCRBY and an EXPIRE per descriptor on a fixed window.
//
// # At half the peer's capacity
//
// What levy must meet is a latency: at half the peer's capacity, levy's
// p99 no higher than the peer's. The closed loop cannot tell it. Its 32
// callers keep 32 calls in flight whatever the server does, so its p99 is
// mostly the queue the callers build themselves, at the server's full
// capacity; and as a caller sends only when its last call has come back,
// a server that stalls is sent fewer calls while it stalls, and only the
// calls already in flight show the stall (coordinated omission).
// BenchmarkRedisVersusPeerPaced (in -bench Redis, and in make bench)
// first measures the peer's capacity as versus does: the 1desc requests
// from 32 grpc-go callers, closed loop, for 2s. Then it sends the 1desc
// requests (1,000 addresses in turn) at half that rate, through grpc-go
// over the same connections, to levy and to the peer in ten alternating
// slices each, as BenchmarkRedisVersusPeer alternates them:
//
//	BenchmarkRedisVersusPeerPaced/1desc/grpc-go  ...  <levy-calls/s>  <levy-late-p50-us>  <levy-late-p99-us>
//	    <levy-p50-us>  <levy-p99-us>  <offered-calls/s>  <p99-x-peer>  <peer-calls/s>  <peer-late-p50-us>
//	    <peer-late-p99-us>  <peer-p50-us>  <peer-p99-us>
//
// (one line; go test sorts the figures by unit). A slice's calls are due
// one over the rate apart from its start, however the calls before them
// fared, and each goes out at its due time from the first of 64 callers
// free to send it (pacer and callLoop, paced_test.go). Its latency runs from its due
// time, not from its send, so a call held back behind a stall counts the
// time it waited. offered-calls/s is the rate sent at, half the peer's
// capacity, measured once per go test run, before the first count, so
// that every count offers the same. levy-calls/s and peer-calls/s are what
// each achieved, calls over the time from each slice's start to its last
// answer: just under the offered rate while a server keeps up, well under
// it, with latencies that grow through each slice, when it does not.
// p50-us and p99-us are the latencies from the due times, and p99-x-peer
// is levy's p99 over the peer's: at most 1 is levy's p99 no higher.
// late-p50-us and late-p99-us say how late calls left their callers. The
// median is the callers' own delay in waking up on time (Go's timers:
// 50-160µs on a 2-core VM at its quietest, a few hundred when busier;
// some tens of µs less for levy in the benchmark's process, whose server
// keeps the scheduler awake), which every latency includes; a late-p99-us near
// p99-us says the tail was calls waiting to be sent, as all 64 callers
// were waiting on a stalled server or the machine did not run them. ns/op
// is about one over the offered rate, so each server gets about half of
// -benchtime times the offered rate in calls.
//
// At half its capacity a server is idle much of the time, so its p99 is
// made of what happens around it: another process taking the cores, a
// garbage collection, a Redis call that waits. On a shared machine those
// come and go within seconds, and a count's p99 rests on the slowest 1%
// of a few thousand calls, so p99-x-peer spreads widely between counts.
// On a 2-core VM shared with other work, four runs of three counts at
// 1,990-3,190 calls/s: p99-x-peer 0.12-0.80 (median 0.33), levy's p99
// 3.2-23ms and the peer's 4.0-87ms, p50 0.57-1.34ms and 0.70-2.69ms; with
// levy as a levy serve process (below) 0.19-0.41, and the two alike in
// late-p50-us (105-137µs). Use -count 5 or more and read the median, with
// the latencies beside it:
//
//	LEVY_BENCH_REDIS_ADDR=127.0.0.1:<redis> LEVY_BENCH_PEER_RLS=127.0.0.1:<grpc> \
//	LEVY_BENCH_PEER_PID=<pid> go test -run '^$' -bench RedisVersusPeerPaced -benchtime 5s -count 5 ./test/bench/
//
// With LEVY_BENCH_LEVY_RLS it measures a levy serve process instead, as
// BenchmarkRedisVersusPeer does: both servers then run outside the
// callers' process, whose timers then wake alike for both.
//
// # The local store's write-behind
//
// On the local store, levy's sub-benchmarks also report what its
// write-behind did during the run (commits.go), from the same histograms
// levy serve exports on /metrics: commits/s (fsynced bbolt transactions),
// commit-us (their mean duration) and commit-ms-max, and the loss window,
// how long each commit's oldest change had been only in memory when the
// commit was durable: loss-ms-mean, loss-ms-p99 and loss-ms-max, the last
// two as the upper bounds of their histogram buckets. That window is what
// a SIGKILL at the worst moment would lose. The Check request changes the
// consumer's quota counter on every call; the RLS requests touch token
// buckets only, which live in memory, so they commit nothing.
package bench
