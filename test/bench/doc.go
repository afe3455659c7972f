// Package bench measures the throughput of levy's ext_authz Check and
// RateLimitService ShouldRateLimit against no-op servers of the same APIs in
// the same run, so the figures that matter are ratios that do not depend on
// the machine.
//
// Run it with
//
//	make bench
//
// which is go test -run '^$' -bench . -benchtime 3s -count 3 ./test/bench/.
// Each count prints six lines:
//
//	BenchmarkCheck/noop  ...  <checks/s>  <cpu-us/check>  <p50-us>  <p99-us>  ...
//	BenchmarkCheck/levy  ...  <checks/s>  <cpu-us/check>  <p50-us>  <p99-us>  ...
//	BenchmarkShouldRateLimit/noop-1desc  ...  <calls/s>  <cpu-us/call>  <p50-us>  <p99-us>  ...
//	BenchmarkShouldRateLimit/levy-1desc  ...
//	BenchmarkShouldRateLimit/noop-3desc  ...
//	BenchmarkShouldRateLimit/levy-3desc  ...
//
// Both servers are real gRPC servers on 127.0.0.1:0 in the test process,
// registered with authv3.RegisterAuthorizationServer and built with the gRPC
// options levy serve uses. The no-op server answers every call with one
// prebuilt OK CheckResponse, so its figure is the cost of gRPC, protobuf and
// the loopback network on this machine; levy's figure adds key extraction,
// hashing, the directory lookup of an already known key, the local limiter's
// rate and quota decision, metrics, logging and building the allow response.
// levy runs as levy serve runs it: authz.New with limiter.NewLocal over a
// localstore in a temporary directory, a snapshot built from a config parsed
// with config.Parse, and an info-level JSON logger (writing to io.Discard).
//
// The clients send one CheckRequest, built once with envoy.BuildCheckRequest
// from a realistic request (x-api-key plus the headers a browser or SDK and
// Envoy add), from 32 concurrent callers over 4 shared connections. ns/op is
// wall time divided by calls, so with 32 callers it is not a call's latency;
// read checks/s for throughput and p50-us/p99-us for the latency of one call
// as the client saw it. Every levy response is checked to be an allow.
//
// The RLS servers are measured the same way. The no-op one answers with a
// prebuilt OK RateLimitResponse holding one OK status per descriptor; levy's
// is rls.New on the local limiter, with rules from a config's
// ratelimit.domains that a run never exhausts. The 1desc request is the
// descriptor Envoy's remote_address action sends, [(remote_address,
// 10.0.0.1)]; the 3desc request adds [(generic_key, items)] and the
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
package bench
