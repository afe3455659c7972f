package bench

import "testing"

// BenchmarkCheckVersusNoop measures Check on levy and on each no-op server
// in alternating slices of one run (see versus), levy on its local store
// and on Redis: on a machine whose other load comes and goes, the ratios it
// reports, x-noop and x-noop-plain (levy's checks/s over the no-op's),
// are steadier than those of BenchmarkCheck and BenchmarkCheckRedis, whose
// servers run one after the other.
func BenchmarkCheckVersusNoop(b *testing.B) {
	stores := []struct {
		name string
		open func(testing.TB) *store
	}{
		{"local", func(testing.TB) *store { return localStore() }},
		{"redis", redisStore},
	}
	for _, s := range stores {
		b.Run(s.name, func(b *testing.B) {
			env := newCheckEnv(b, s.open(b))
			levy := env.named("levy")
			for _, noop := range []string{"noop", "noop-plain"} {
				b.Run(noop, func(b *testing.B) { versus(b, levy, env.named(noop), env.reqs[0].msgs) })
			}
		})
	}
}
