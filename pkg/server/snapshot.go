package server

import (
	"fmt"
	"time"

	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/authz"
	"github.com/levyhq/levy/pkg/config"
	"github.com/levyhq/levy/pkg/rls"
)

// Validate checks cfg as levy serve loads it: every setting
// (config.Validate), then, when they are sound, the rate-limit rules
// (RateLimitRules). Errors name file, line and key.
func Validate(cfg *config.Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	_, err := RateLimitRules(cfg)
	return err
}

// RateLimitRules loads cfg's RateLimitService rules: those inline in the
// file, then every *.yaml and *.yml of ratelimit.dir. Errors name file and
// line.
func RateLimitRules(cfg *config.Config) (*rls.Rules, error) {
	var sources []rls.Source
	for i := range cfg.RateLimit.Domains {
		name := cfg.Source
		if name == "" {
			name = "config"
		}
		sources = append(sources, rls.Source{Name: fmt.Sprintf("%s (ratelimit.domains[%d])", name, i), Node: &cfg.RateLimit.Domains[i]})
	}
	if cfg.RateLimit.Dir != "" {
		files, err := rls.ReadDir(cfg.RateLimit.Dir)
		if err != nil {
			return nil, err
		}
		sources = append(sources, files...)
	}
	return rls.Load(sources, cfg.RateLimit.MergeDomains)
}

// AuthzSnapshot builds the ext_authz snapshot of a validated config: its
// plans, its consumers and keys, and consumers and keys kept outside it
// (demo keys: a consumer whose plan the config no longer has is left out),
// with store for the rest (nil for none).
func AuthzSnapshot(cfg *config.Config, consumers []*apikey.Consumer, keys []*apikey.Key, store apikey.Store) (*authz.Snapshot, error) {
	catalog, err := cfg.Catalog()
	if err != nil {
		return nil, err
	}
	cs, ks := cfg.Directory()
	for _, c := range consumers {
		if _, ok := catalog.Get(c.Plan); ok {
			cs = append(cs, c)
		}
	}
	return authz.NewSnapshot(authz.SnapshotConfig{
		Catalog:          catalog,
		Consumers:        cs,
		Keys:             append(ks, keys...),
		Store:            store,
		Hasher:           cfg.Hasher(),
		KeyHeaders:       cfg.Keys.Headers,
		Bearer:           cfg.Keys.BearerEnabled(),
		ConsumerHeader:   cfg.Headers.ConsumerID,
		PlanHeader:       cfg.Headers.Plan,
		CredentialHeader: cfg.Headers.CredentialID,
		LedgerWindow:     time.Duration(cfg.Billing.Window),
	}), nil
}

// RateLimitSnapshot builds the RateLimitService snapshot of cfg with its
// rules, deciding plan-aware rules by a's plans and consumers.
func RateLimitSnapshot(cfg *config.Config, rules *rls.Rules, a *authz.Snapshot) *rls.Snapshot {
	rl := cfg.RateLimit
	return &rls.Snapshot{Rules: rules, Catalog: a.Catalog, Consumers: a.Directory, Shadow: rl.ShadowMode, QuotaMode: rl.QuotaMode,
		DynamicMetadata: rl.ResponseDynamicMetadata, NearLimitRatio: rl.NearLimitRatio, MetricValues: rl.MetricValues}
}

// snapshots build what decisions read from a config: the one levy started
// with, or a reloaded one (built whole before anything is swapped in).
func (s *Server) snapshots(cfg *config.Config) (*authz.Snapshot, *rls.Snapshot, error) {
	a, err := AuthzSnapshot(cfg, s.demo, s.demoKey, s.backend.store)
	if err != nil {
		return nil, nil, err
	}
	// The ledger's window is the one levy started with: settlement and
	// export look windows up by it.
	a.LedgerWindow = time.Duration(s.cfg.Billing.Window)
	rules, err := RateLimitRules(cfg)
	if err != nil {
		return nil, nil, err
	}
	return a, RateLimitSnapshot(cfg, rules, a), nil
}
