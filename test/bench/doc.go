// Package bench measures the throughput of levy's ext_authz Check against a
// no-op ext_authz server in the same run, so the figure that matters is a
// ratio that does not depend on the machine.
//
// Run it with
//
//	make bench
//
// which is go test -run '^$' -bench . -benchtime 3s -count 1 ./test/bench/.
// It prints two lines:
//
//	BenchmarkCheck/noop  ...  <checks/s>  <cpu-us/check>  <p50-us>  <p99-us>  ...
//	BenchmarkCheck/levy  ...  <checks/s>  <cpu-us/check>  <p50-us>  <p99-us>  ...
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
// Read it as: levy's checks/s divided by noop's checks/s. The target is at
// least 0.80. Client and servers share the CPUs, so a run on a busy machine
// or with few cores moves both figures; compare them within one run, never
// across runs. cpu-us/check is the CPU time of the whole process (callers
// and server) per call; it moves less than checks/s when other processes
// compete for the CPUs, so noop's cpu-us/check divided by levy's is a
// steadier estimate of the same ratio. Both figures charge levy for the
// callers' decoding of its larger response, which in production is Envoy's
// work, so they understate levy slightly. Use -count 5 to see the spread, and
// -cpuprofile with -bench Check/levy to see where the time goes.
package bench
