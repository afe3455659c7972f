package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/levyhq/levy/pkg/billing"
)

func reconcileServer(t *testing.T, rep billing.ReconcileReport, got *http.Request) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		*got = *r.Clone(context.Background())
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(rep)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestReconcilePrintsTheTableAndExitsByTheDifference(t *testing.T) {
	start, end := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC), time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	ok := billing.ReconcileRow{Consumer: "acme", Meter: "api_calls", PeriodStart: start, PeriodEnd: end,
		Billed: 20, Target: 22, Pending: 2, Stripe: 20, Status: billing.StatusOK}
	missing := billing.ReconcileRow{Consumer: "beta", Meter: "api_calls", PeriodStart: start, PeriodEnd: end,
		Billed: 9, Target: 9, Stripe: 6, Difference: -3, Status: billing.StatusMissing}
	tests := []struct {
		name      string
		args      []string
		rep       billing.ReconcileReport
		wantCode  int // 0: no error
		wantQuery string
		wantLines []string
	}{
		{"agree", nil, billing.ReconcileReport{Period: "current", Rows: []billing.ReconcileRow{ok}}, 0, "",
			[]string{"CONSUMER  METER      PERIOD", "acme      api_calls  2026-11-01..2026-12-01  20           20      0           22           2        ok",
				"1 account (current periods): levy and Stripe agree"}},
		{"differ", []string{"--period", "2026-11", "--consumer", "beta"},
			billing.ReconcileReport{Period: "2026-11", Rows: []billing.ReconcileRow{missing}, Differences: 1}, exitDiffer,
			"consumer=beta&period=2026-11", []string{"beta      api_calls  2026-11-01..2026-12-01  9            6       -3          9            0        missing"}},
		{"stripe unreachable", nil, billing.ReconcileReport{Period: "current", Errors: 1,
			Rows: []billing.ReconcileRow{{Consumer: "acme", Meter: "api_calls", PeriodStart: start, PeriodEnd: end, Status: billing.StatusError, Note: "ask Stripe: 503"}}}, 1, "",
			[]string{"acme/api_calls: ask Stripe: 503"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var req http.Request
			srv := reconcileServer(t, tt.rep, &req)
			var out bytes.Buffer
			args := append([]string{"billing", "reconcile", "--admin-url", srv.URL, "--token", "t"}, tt.args...)
			err := run(context.Background(), args, &out, &out)
			code := 0
			var ee *exitError
			switch {
			case errors.As(err, &ee):
				code = ee.code
			case err != nil:
				code = 1
			}
			if code != tt.wantCode {
				t.Fatalf("exit %d (%v), want %d\n%s", code, err, tt.wantCode, out.String())
			}
			if req.Method != "GET" || req.URL.Path != "/v1/billing/reconcile" || req.URL.RawQuery != tt.wantQuery {
				t.Fatalf("called %s %s", req.Method, req.URL)
			}
			for _, want := range tt.wantLines {
				if !strings.Contains(out.String(), want) {
					t.Errorf("output lacks %q:\n%s", want, out.String())
				}
			}
		})
	}
}

func TestReconcileFixPostsAndBadPeriodsAreRefusedBeforeCalling(t *testing.T) {
	var req http.Request
	srv := reconcileServer(t, billing.ReconcileReport{Period: "2026-11"}, &req)
	var out bytes.Buffer
	if err := run(context.Background(), []string{"billing", "reconcile", "--admin-url", srv.URL, "--token", "t", "--fix", "--period", "2026-11"}, &out, &out); err != nil {
		t.Fatal(err)
	}
	if req.Method != "POST" || req.URL.Query().Get("fix") != "true" || req.URL.Query().Get("period") != "2026-11" {
		t.Fatalf("called %s %s", req.Method, req.URL)
	}
	req = http.Request{}
	err := run(context.Background(), []string{"billing", "reconcile", "--admin-url", srv.URL, "--token", "t", "--period", "November"}, &out, &out)
	if err == nil || !strings.Contains(err.Error(), "2026-11") || req.Method != "" {
		t.Fatalf("bad period: %v (called %q)", err, req.Method)
	}
}
