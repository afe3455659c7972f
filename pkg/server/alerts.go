package server

import (
	"context"
	"time"

	"go.uber.org/zap"

	"github.com/levyhq/levy/pkg/alert"
	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/plan"
)

// newAlerter builds the usage alerter when alerts.url is set (nil, nil
// otherwise). Its metrics are registered at once, with a zero series for
// every threshold of the plans levy started with.
func (s *Server) newAlerter() (*alert.Alerter, error) {
	a := s.cfg.Alerts
	if !a.AlertsEnabled() || s.backend.alerts == nil {
		return nil, nil
	}
	return alert.New(alert.Config{
		Store:     s.backend.alerts,
		Consumers: s.eachConsumer,
		Catalog:   func() *plan.Catalog { return s.authz.Snapshot().Catalog },
		Usage:     s.backend.limiter,
		Lease:     s.backend.alertLease,
		Holder:    s.replicaID,
		URL:       a.URL,
		Secret:    []byte(a.Secret.Value()),
		Timeout:   time.Duration(a.Timeout),
		ScanEvery: time.Duration(a.ScanEvery),
		Retry: alert.Retry{Initial: time.Duration(a.Retry.Initial), Max: time.Duration(a.Retry.Max),
			MaxAge: time.Duration(a.Retry.MaxAge)},
		Registerer: s.metrics.Registry,
		Log:        s.log.Named("alerts"),
		Clock:      s.opts.Clock,
	})
}

// eachConsumer calls fn for every consumer in force: the config file's
// (as the store overrides them), then the store's own, a page at a time.
func (s *Server) eachConsumer(ctx context.Context, fn func(*apikey.Consumer) error) error {
	dir := s.authz.Snapshot().Directory
	static := map[string]bool{}
	if l, ok := dir.(apikey.Layered); ok && l.Static != nil {
		for _, c := range l.Static.Consumers() {
			static[c.ID] = true
			if cur, ok := dir.Consumer(c.ID); ok {
				c = cur
			}
			if err := fn(c); err != nil {
				return err
			}
		}
	}
	q := apikey.ListQuery{Limit: 500}
	for {
		page, err := s.backend.store.ListConsumers(ctx, q)
		if err != nil {
			return err
		}
		for _, c := range page.Consumers {
			if static[c.ID] {
				continue
			}
			if err := fn(c); err != nil {
				return err
			}
		}
		if page.Next == "" {
			return nil
		}
		q.After = page.Next
	}
}

// runAlerts scans usage and delivers alerts until ctx ends.
func (s *Server) runAlerts(ctx context.Context) {
	if s.alerter == nil {
		return
	}
	s.log.Info("usage alerts on", zap.Duration("scan_every", time.Duration(s.cfg.Alerts.ScanEvery)))
	s.alerter.Run(ctx)
}
