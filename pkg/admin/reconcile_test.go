package admin_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/levyhq/levy/api/apitest"
	"github.com/levyhq/levy/pkg/admin"
	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/billing"
	"github.com/levyhq/levy/pkg/plan"
)

// reconciler records the queries the API passes on and answers them.
type reconciler struct {
	mu      sync.Mutex
	queries []admin.ReconcileQuery
}

func (r *reconciler) reconcile(_ context.Context, q admin.ReconcileQuery) (any, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.queries = append(r.queries, q)
	switch q.Consumer {
	case "ghost":
		return nil, fmt.Errorf("consumer ghost: %w", apikey.ErrNotFound)
	case "nostripe":
		return nil, fmt.Errorf("%w: STRIPE_API_KEY is not set", admin.ErrUnavailable)
	case "broken":
		return nil, fmt.Errorf("redis: connection refused")
	}
	return billing.ReconcileReport{Period: "current", At: now, Rows: []billing.ReconcileRow{}}, nil
}

func (r *reconciler) last() admin.ReconcileQuery {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.queries[len(r.queries)-1]
}

func TestReconcileRouteReadsItsQueryAndAnswersProblems(t *testing.T) {
	rec := &reconciler{}
	h := admin.New(admin.Config{
		Store: newStore(t), Catalog: func() *plan.Catalog { return nil }, Hasher: func() apikey.Hasher { return hasher },
		Token: token, Log: zaptest.NewLogger(t), Reconcile: rec.reconcile,
	})
	srv := httptest.NewServer(apitest.Handler(t, h))
	defer srv.Close()
	nov := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name       string
		method     string
		query      string
		wantStatus int
		wantReason string               // the problem's reason, for errors
		want       admin.ReconcileQuery // what reaches Reconcile, for 200s
	}{
		{"current periods", "GET", "", 200, "", admin.ReconcileQuery{}},
		{"a month and a consumer", "GET", "?period=2026-11&consumer=acme", 200, "", admin.ReconcileQuery{Month: nov, Consumer: "acme"}},
		{"fix", "POST", "?period=2026-11&fix=true", 200, "", admin.ReconcileQuery{Month: nov, Fix: true}},
		{"POST without fix only compares", "POST", "", 200, "", admin.ReconcileQuery{}},
		{"fix on GET", "GET", "?fix=true", 400, "fix_needs_post", admin.ReconcileQuery{}},
		{"bad period", "GET", "?period=2026-13", 400, "invalid_period", admin.ReconcileQuery{}},
		{"a date is not a month", "GET", "?period=2026-11-01", 400, "invalid_period", admin.ReconcileQuery{}},
		{"bad fix", "POST", "?fix=maybe", 400, "invalid_fix", admin.ReconcileQuery{}},
		{"bad consumer id", "GET", "?consumer=a%20b", 400, "invalid_id", admin.ReconcileQuery{}},
		{"unknown parameter", "GET", "?month=2026-11", 400, "unknown_parameter", admin.ReconcileQuery{}},
		{"unknown consumer", "GET", "?consumer=ghost", 404, "consumer_not_found", admin.ReconcileQuery{}},
		{"no Stripe key", "GET", "?consumer=nostripe", 503, "reconcile_unavailable", admin.ReconcileQuery{}},
		{"the ledger fails", "GET", "?consumer=broken", 503, "store_unavailable", admin.ReconcileQuery{}},
		{"wrong method", "PUT", "", 405, "method_not_allowed", admin.ReconcileQuery{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest(tt.method, srv.URL+"/v1/billing/reconcile"+tt.query, nil)
			req.Header.Set("Authorization", "Bearer "+token)
			resp, err := srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			if tt.wantStatus != 200 {
				var p struct{ Reason string }
				if json.Unmarshal(body, &p) != nil || p.Reason != tt.wantReason || !strings.Contains(resp.Header.Get("Content-Type"), "problem+json") {
					t.Fatalf("problem %s, want %s", body, tt.wantReason)
				}
				return
			}
			if got := rec.last(); got != tt.want {
				t.Fatalf("query %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestReconcileRouteWithoutReconcilerIs503(t *testing.T) {
	h := admin.New(admin.Config{Store: newStore(t), Catalog: func() *plan.Catalog { return nil },
		Hasher: func() apikey.Hasher { return hasher }, Token: token})
	req := httptest.NewRequest("GET", "/v1/billing/reconcile", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	if w.Code != http.StatusServiceUnavailable {
		t.Fatalf("status %d: %s", w.Code, w.Body)
	}
}
