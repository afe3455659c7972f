package redistest_test

import (
	"context"
	"testing"

	"go.uber.org/goleak"

	"github.com/levyhq/levy/pkg/redistest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Servers started at once, as the test binaries of several packages
// start theirs, each get a port of their own and answer as themselves:
// a port taken between the pick and redis-server's bind is picked again.
func TestManyServersStartAtOnce(t *testing.T) {
	for i := range 16 {
		t.Run("", func(t *testing.T) {
			t.Parallel()
			s := redistest.Start(t)
			c := s.Client()
			key := "server"
			if err := c.Set(context.Background(), key, i, 0).Err(); err != nil {
				t.Fatal(err)
			}
			if got, err := c.Get(context.Background(), key).Int(); err != nil || got != i {
				t.Fatalf("server %d reads %d (%v): another test's server answers on %s", i, got, err, s.Addr)
			}
		})
	}
}

// Clusters started at once need their cluster bus ports (10000 above)
// free too.
func TestClustersStartAtOnce(t *testing.T) {
	for range 3 {
		t.Run("", func(t *testing.T) {
			t.Parallel()
			c := redistest.StartCluster(t).Client(t)
			if err := c.Ping(context.Background()).Err(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// Clusters of fewer than three masters, which redis-cli --cluster create
// refuses, serve every slot too: keys in slots far apart are written
// through a cluster client (no CLUSTERDOWN, no endless MOVED), each
// stored once across the masters.
func TestClustersOfFewerMastersServeEverySlot(t *testing.T) {
	for _, masters := range []int{1, 2} {
		t.Run("", func(t *testing.T) {
			c := redistest.StartClusterOf(t, masters)
			cc := c.Client(t)
			ctx := context.Background()
			for _, key := range []string{"{a}", "{b}", "{c}", "{d}"} {
				if err := cc.Set(ctx, key, 1, 0).Err(); err != nil {
					t.Fatalf("%d masters: SET %s: %v", masters, key, err)
				}
			}
			var seen int
			for _, n := range c.Nodes {
				k, err := n.Client().DBSize(ctx).Result()
				if err != nil {
					t.Fatal(err)
				}
				seen += int(k)
			}
			if seen != 4 {
				t.Fatalf("%d masters hold %d keys, want 4", masters, seen)
			}
		})
	}
}
