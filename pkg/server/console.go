package server

import (
	"context"
	"net/http"
	"time"

	"github.com/levyhq/levy/pkg/admin"
	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/billing"
	"github.com/levyhq/levy/pkg/console"
	"github.com/levyhq/levy/pkg/consumerlimits"
	"github.com/levyhq/levy/pkg/plan"
)

// consoleIndexEvery is how often each replica rebuilds the console's
// consumer list: 100,000 consumers take about a third of a second on the
// local store and under a second on Redis (see pkg/console's
// benchmarks), off the request path.
const consoleIndexEvery = 30 * time.Second

// newConsole builds the operator console on the admin API it calls and
// an index of the consumers in force.
func (s *Server) newConsole(adminAPI *admin.Handler) *console.Handler {
	ixCfg := console.IndexConfig{
		Consumers: s.allConsumers,
		Catalog:   func() *plan.Catalog { return s.authz.Snapshot().Catalog },
		Limiter:   s.backend.limiter,
		Every:     consoleIndexEvery,
		Log:       s.log.Named("console"),
		Clock:     s.opts.Clock,
	}
	if h := s.backend.history; h != nil {
		ixCfg.Activity = func(ctx context.Context, ids []string) (map[string]console.Activity, error) {
			acts, err := h.Activity(ctx, ids)
			if err != nil {
				return nil, err
			}
			out := make(map[string]console.Activity, len(acts))
			for id, a := range acts {
				out[id] = console.Activity{Denied: a.Denied, Period: a.Period, LastSeen: a.Seen}
			}
			return out, nil
		}
	}
	s.consoleIndex = console.NewIndex(ixCfg)
	return console.New(console.Config{
		Token:   func() string { return s.cfg.AdminToken.Value() },
		Admin:   adminAPI,
		Index:   s.consoleIndex,
		Catalog: func() *plan.Catalog { return s.authz.Snapshot().Catalog },
		Log:     s.log.Named("console"),
		Clock:   s.opts.Clock,
	})
}

// periodStart is the start of consumer id's billing period at at, the
// period the usage history counts its denials in (zero for a consumer
// or plan not in force).
func (s *Server) periodStart(id string, at time.Time) time.Time {
	snap := s.authz.Snapshot()
	c, ok := snap.Directory.Consumer(id)
	if !ok {
		return time.Time{}
	}
	p, ok := snap.Catalog.Get(c.Plan)
	if !ok {
		return time.Time{}
	}
	return consumerlimits.Period(c, p, at).Start
}

// allConsumers lists the consumers in force: the config file's and the
// demo's, and the store's, which win over them.
func (s *Server) allConsumers(ctx context.Context) ([]*apikey.Consumer, error) {
	byID := map[string]*apikey.Consumer{}
	file, _ := s.live.Load().Directory()
	for _, c := range append(file, s.demo...) {
		byID[c.ID] = c
	}
	if st := s.backend.store; st != nil {
		q := apikey.ListQuery{Limit: 5000, MaxScan: 5000}
		for {
			page, err := st.ListConsumers(ctx, q)
			if err != nil {
				return nil, err
			}
			for _, c := range page.Consumers {
				byID[c.ID] = c
			}
			if page.Next == "" {
				break
			}
			q.After = page.Next
		}
	}
	out := make([]*apikey.Consumer, 0, len(byID))
	for _, c := range byID {
		out = append(out, c)
	}
	return out, nil
}

// usageExport is the chargeback report, for the admin API.
func (s *Server) usageExport(ctx context.Context, q admin.ExportQuery) (admin.ExportReport, error) {
	return billing.Chargeback(ctx, billing.ChargebackConfig{
		Ledger: s.backend.ledger,
		Consumer: func(id string) (*apikey.Consumer, bool) {
			return s.authz.Snapshot().Directory.Consumer(id)
		},
		Catalog: func() *plan.Catalog { return s.authz.Snapshot().Catalog },
		Month:   q.Month,
		Label:   q.Label,
		Clock:   s.opts.Clock,
	})
}

// kickConsole serves h, asking the console's index for a rebuild after
// each call that may change something (any method but GET), so that what
// the CLI or a script changes shows in the console within seconds.
func (s *Server) kickConsole(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(w, r)
		if r.Method != http.MethodGet && s.consoleIndex != nil {
			s.consoleIndex.Kick()
		}
	})
}
