package billing_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"

	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/await"
	"github.com/levyhq/levy/pkg/billing"
	"github.com/levyhq/levy/pkg/plan"
)

// handover is a lease this replica holds until it is handed to another.
type handover struct{ lost atomic.Bool }

func (h *handover) Hold(context.Context, string, time.Duration) (bool, error) {
	return !h.lost.Load(), nil
}
func (h *handover) Release(context.Context, string) error { return nil }

func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == name {
			return f.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("%s not registered", name)
	return 0
}

// A replica that hands the export lease to another stops reporting the
// export's lag and unbillable windows: only the holder knows them, and a
// value frozen at the handover would keep an alert firing (or a
// dashboard's max high) for as long as the old holder runs.
func TestReplicaWithoutTheLeaseReportsNoExportLag(t *testing.T) {
	r := newRig(t)
	r.people.set(&apikey.Consumer{ID: "nocard", Plan: "payg0"}) // kept, never exported: the lag grows
	r.admit(t, r.local, "nocard", 1)
	r.clock.Advance(2 * time.Minute)
	reg := prometheus.NewRegistry()
	lease := &handover{}
	e := billing.NewExporter(billing.ExporterConfig{
		Ledger: r.local, Consumer: r.people.get, Catalog: func() *plan.Catalog { return r.catalog }, Lease: lease, Holder: "a",
		APIKey: "sk_test_levy", APIBase: r.stripe.URL, Every: 10 * time.Millisecond, SettleDelay: 5 * time.Second,
		Log: zaptest.NewLogger(t), Clock: r.clock.Now, Registerer: reg,
	})
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { e.Run(ctx); close(done) }()
	defer func() { stop(); <-done }()

	waitGauges := func(lag, unbillable float64) {
		t.Helper()
		await.NoError(t, 5*time.Second, func() error {
			if l, u := gauge(t, reg, "levy_usage_export_lag_seconds"), gauge(t, reg, "levy_usage_unbillable_windows"); l != lag || u != unbillable {
				return fmt.Errorf("lag %v, unbillable %v; want %v, %v", l, u, lag, unbillable)
			}
			return nil
		}, "the lease gauges")
	}
	waitGauges(60, 1) // the window ended a minute ago
	lease.lost.Store(true)
	waitGauges(0, 0)
}
