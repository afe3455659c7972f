package consumerlimits_test

import (
	"testing"
	"time"

	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/consumerlimits"
	"github.com/levyhq/levy/pkg/limiter"
	"github.com/levyhq/levy/pkg/plan"
)

// QuotaAt and LedgerAt point at the quota and the ledger in Slice, whichever
// of the rate and the ledger a plan and a window leave out.
func TestSliceHoldsEachLimitWhereItsIndexSays(t *testing.T) {
	rate := &plan.Rate{Requests: 10, Per: time.Second, Burst: 10}
	quota := &plan.Quota{Requests: 100, Period: plan.Month, Enforcement: plan.Hard}
	tests := []struct {
		name      string
		give      *plan.Plan
		window    time.Duration
		wantKinds []limiter.Kind
	}{
		{"rate quota ledger", &plan.Plan{Name: "pro", Model: plan.Tiered, Rate: rate, Quota: quota}, time.Minute,
			[]limiter.Kind{limiter.Bucket, limiter.Quota, limiter.Ledger}},
		{"quota ledger", &plan.Plan{Name: "pro", Model: plan.Tiered, Quota: quota}, time.Minute,
			[]limiter.Kind{limiter.Quota, limiter.Ledger}},
		{"rate usage", &plan.Plan{Name: "payg", Model: plan.PayG, Rate: rate}, 0,
			[]limiter.Kind{limiter.Bucket, limiter.Quota}},
		{"usage", &plan.Plan{Name: "payg", Model: plan.PayG}, 0,
			[]limiter.Kind{limiter.Quota}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := consumerlimits.For(&apikey.Consumer{ID: "acme", Plan: tt.give.Name}, tt.give, 3, tt.window)
			s := l.Slice()
			if len(s) != len(tt.wantKinds) {
				t.Fatalf("%d limits, want %d", len(s), len(tt.wantKinds))
			}
			for i, k := range tt.wantKinds {
				if s[i].Kind != k {
					t.Errorf("limit %d is %v, want %v", i, s[i].Kind, k)
				}
			}
			if got := s[l.QuotaAt()]; got.Key != l.Quota.Key || got.Cost != 3 {
				t.Errorf("QuotaAt %d holds %+v, want the quota at cost 3", l.QuotaAt(), got)
			}
			if (l.LedgerAt() >= 0) != (tt.window > 0) {
				t.Fatalf("LedgerAt %d with window %s", l.LedgerAt(), tt.window)
			}
			if at := l.LedgerAt(); at >= 0 && (s[at].Key != l.Ledger.Key || s[at].Cost != 3) {
				t.Errorf("LedgerAt %d holds %+v, want the ledger at cost 3", at, s[at])
			}
			if l.Rate != nil && l.Rate.Cost != 1 {
				t.Errorf("rate cost %d, want one token a request", l.Rate.Cost)
			}
		})
	}
}

// A plan without a quota still counts usage, softly and without a maximum.
func TestAPlanWithoutQuotaCountsUsageSoftly(t *testing.T) {
	q := consumerlimits.For(&apikey.Consumer{ID: "acme"}, &plan.Plan{Name: "payg", Model: plan.PayG}, 1, 0).Quota
	if !q.Soft || q.Max != 0 || q.Kind != limiter.Quota {
		t.Fatalf("usage counter %+v, want a soft quota without a maximum", q)
	}
}
