package console

import (
	"context"
	"fmt"
	"testing"

	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/consumerlimits"
	"github.com/levyhq/levy/pkg/limiter"
	"github.com/levyhq/levy/pkg/plan"
)

// usedIndex is an index of n consumers on a real local limiter, consumer
// i having used i%1000 units (every 7th on plan free, every 5th
// suspended).
func usedIndex(tb testing.TB, n int) *Index {
	tb.Helper()
	cat, err := plan.NewCatalog(
		&plan.Plan{Name: "pro", Model: plan.Tiered, Quota: &plan.Quota{Requests: 1000, Period: plan.Month, Enforcement: plan.Soft}},
		&plan.Plan{Name: "free", Model: plan.Freemium, Quota: &plan.Quota{Requests: 500, Period: plan.Month}})
	if err != nil {
		tb.Fatal(err)
	}
	lim, err := limiter.NewLocal(limiter.LocalConfig{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { lim.Close() })
	cs := make([]*apikey.Consumer, n)
	ctx := context.Background()
	for i := range cs {
		c := &apikey.Consumer{ID: fmt.Sprintf("c%06d", i), Plan: "pro", Suspended: i%5 == 0, Labels: map[string]string{"name": fmt.Sprintf("Company %d", i)}}
		if i%7 == 0 {
			c.Plan = "free"
		}
		cs[i] = c
		p, _ := cat.Get(c.Plan)
		q := consumerlimits.For(c, p, 0, 0).Quota
		q.Cost = int64(i % 1000)
		if q.Cost > 0 {
			if _, err := lim.Decide(ctx, []limiter.Limit{q}); err != nil {
				tb.Fatal(err)
			}
		}
	}
	ix := NewIndex(IndexConfig{
		Consumers: func(context.Context) ([]*apikey.Consumer, error) { return cs, nil },
		Catalog:   func() *plan.Catalog { return cat },
		Limiter:   lim,
	})
	if err := ix.Refresh(ctx); err != nil {
		tb.Fatal(err)
	}
	return ix
}

func TestIndexFiltersSortsAndPagesOnTheServer(t *testing.T) {
	ix := usedIndex(t, 3000)
	tests := []struct {
		name      string
		give      Query
		wantFirst string
		wantCount int
		wantPages int
	}{
		{"usage, most first", Query{Sort: SortUsage, Size: 50, Page: 1}, "c000999", 3000, 60},
		{"id, second page", Query{Sort: SortID, Size: 50, Page: 2}, "c000050", 3000, 60},
		{"search by name", Query{Search: "company 2999", Size: 50, Page: 1}, "c002999", 1, 1},
		{"search by id", Query{Search: "C0029", Sort: SortID, Size: 50, Page: 1}, "c002900", 100, 2},
		{"suspended free", Query{Plan: "free", Status: "suspended", Sort: SortID, Size: 50, Page: 1}, "c000000", 86, 2},
		{"percent: 497 of free's 500 comes first", Query{Sort: SortPercent, Size: 10, Page: 1}, "c000497", 3000, 300},
		{"past the last page", Query{Sort: SortID, Size: 50, Page: 99}, "", 3000, 60},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := ix.Query(tt.give)
			first := ""
			if len(res.Rows) > 0 {
				first = res.Rows[0].ID
			}
			if first != tt.wantFirst || res.Matched != tt.wantCount || res.Pages != tt.wantPages {
				t.Errorf("first %q, matched %d, pages %d; want %q, %d, %d", first, res.Matched, res.Pages, tt.wantFirst, tt.wantCount, tt.wantPages)
			}
		})
	}
	plans, top := ix.Totals(3)
	if len(plans) != 2 || plans[0].Plan != "free" || plans[0].Consumers != 429 || top[0].ID != "c000999" || top[0].Used != 999 {
		t.Errorf("totals %+v, top %+v", plans, top)
	}
}

// BenchmarkConsolePage1SortedByUsage100k is the console's list request:
// page 1 of 100,000 consumers sorted by usage, with a search that matches
// none and a plan filter. Measured on 2 shared cores: 0.22 ms for page 1
// unfiltered (every request counts its matches: a scan of positions),
// 0.67 ms with a plan filter, 2.1 ms with a search that matches none; a
// rebuild of the index (BenchmarkConsoleIndexRebuild100k: list, Peek in
// batches of 1000, four orders) 0.66 s, every 30 s off the request path.
func BenchmarkConsolePage1SortedByUsage100k(b *testing.B) {
	ix := usedIndex(b, 100_000)
	for _, bb := range []struct {
		name string
		q    Query
	}{
		{"all", Query{Sort: SortUsage, Size: PageSize, Page: 1}},
		{"plan-filter", Query{Sort: SortUsage, Plan: "free", Size: PageSize, Page: 1}},
		{"search-scans-all", Query{Sort: SortUsage, Search: "no such consumer", Size: PageSize, Page: 1}},
	} {
		b.Run(bb.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if res := ix.Query(bb.q); res.Matched == 0 && bb.q.Search == "" {
					b.Fatal("empty")
				}
			}
		})
	}
}

func BenchmarkConsoleIndexRebuild100k(b *testing.B) {
	ix := usedIndex(b, 100_000)
	b.ReportAllocs()
	for b.Loop() {
		if err := ix.Refresh(context.Background()); err != nil {
			b.Fatal(err)
		}
	}
}
