package config

import (
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/plan"
)

// Validate checks every setting and returns all problems at once. The
// rate-limit rules (ratelimit.domains and the files of ratelimit.dir) are
// pkg/rls's to read: server.Validate checks them after these.
func (c *Config) Validate() error {
	var errs Errors
	for path, addr := range map[string]string{"listen.grpc": c.Listen.GRPC, "listen.http": c.Listen.HTTP} {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			c.problem(&errs, path, "%q is not host:port", addr)
		}
	}
	if _, _, err := net.SplitHostPort(c.Listen.Public); c.Listen.Public != "" && err != nil {
		c.problem(&errs, "listen.public", "%q is not host:port", c.Listen.Public)
	}
	if t := c.Listen.TLS; t.CertFile != "" || t.KeyFile != "" || t.ClientCAFile != "" {
		if _, err := c.ServerTLS(); err != nil {
			c.problem(&errs, "listen.tls", "%v", err)
		}
	}
	hl := c.Listen.HTTPLimits
	for path, v := range map[string]int64{
		"listen.http_limits.read_header_timeout": int64(hl.ReadHeaderTimeout), "listen.http_limits.read_timeout": int64(hl.ReadTimeout),
		"listen.http_limits.write_timeout": int64(hl.WriteTimeout), "listen.http_limits.idle_timeout": int64(hl.IdleTimeout),
		"listen.http_limits.max_header_bytes": int64(hl.MaxHeaderBytes), "listen.http_limits.max_conns": int64(hl.MaxConns),
	} {
		if v < 0 {
			c.problem(&errs, path, "must not be negative (0 takes the default)")
		}
	}
	oneOf(c, &errs, "store.type", c.Store.Type, "local", "redis")
	oneOf(c, &errs, "store.on_store_error", c.Store.OnStoreError, "allow", "deny")
	if c.Store.CounterIdle < 0 {
		c.problem(&errs, "store.counter_idle", "must not be negative")
	}
	if c.Store.MaxCounters < 0 {
		c.problem(&errs, "store.max_counters", "must not be negative")
	}
	if c.Store.Type == "local" && c.Store.DataDir == "" {
		c.problem(&errs, "store.data_dir", "the local store needs a data directory")
	}
	if c.Store.Type == "redis" {
		if c.Store.Redis.Addr == "" && len(c.Store.Redis.Cluster) == 0 {
			c.problem(&errs, "store.redis", "set store.redis.addr (or --redis-addr, LEVY_REDIS_ADDR) or store.redis.cluster")
		}
		for i, a := range append([]string{c.Store.Redis.Addr}, c.Store.Redis.Cluster...) {
			if _, _, err := net.SplitHostPort(a); a != "" && err != nil {
				path := "store.redis.addr"
				if i > 0 {
					path = fmt.Sprintf("store.redis.cluster[%d]", i-1)
				}
				c.problem(&errs, path, "%q is not host:port", a)
			}
		}
	}
	if c.Store.Timeout <= 0 {
		c.problem(&errs, "store.timeout", "must be a positive duration, e.g. 50ms")
	}
	oneOf(c, &errs, "log.level", c.Log.Level, "debug", "info", "warn", "error")
	oneOf(c, &errs, "log.format", c.Log.Format, "json", "console")
	c.validateKeys(&errs)
	c.validatePlans(&errs)
	c.validateConsumers(&errs)
	c.validateBilling(&errs)
	c.validatePortal(&errs)
	c.validateUsage(&errs)
	c.validateAlerts(&errs)
	if c.RateLimit.Dir != "" {
		if st, err := os.Stat(c.RateLimit.Dir); err != nil || !st.IsDir() {
			c.problem(&errs, "ratelimit.dir", "%q is not a directory", c.RateLimit.Dir)
		}
	}
	if r := c.RateLimit.NearLimitRatio; r <= 0 || r > 1 {
		c.problem(&errs, "ratelimit.near_limit_ratio", "%v is not a share of the limit: want more than 0, at most 1 (e.g. 0.8)", r)
	}
	if c.RateLimit.MetricValues < 0 {
		c.problem(&errs, "ratelimit.metric_values_per_rule", "%d is negative: want 0 (rule paths only) or more", c.RateLimit.MetricValues)
	}
	if len(errs) > 0 {
		return errs
	}
	if c.lines != nil {
		c.lines.forget() // a valid file's lines are never asked for
	}
	return nil
}

func oneOf(c *Config, errs *Errors, path, v string, allowed ...string) {
	for _, a := range allowed {
		if v == a {
			return
		}
	}
	c.problem(errs, path, "%q is not one of %s", v, strings.Join(allowed, ", "))
}

func (c *Config) validateKeys(errs *Errors) {
	if len(c.Keys.Headers) == 0 && !c.Keys.BearerEnabled() {
		c.problem(errs, "keys", "no way to send a key: set keys.headers or keys.bearer")
	}
	for i, h := range c.Keys.Headers {
		if h == "" || h != strings.ToLower(h) || strings.ContainsAny(h, ": ") {
			c.problem(errs, fmt.Sprintf("keys.headers[%d]", i), "%q: header names are lower-case, without ':' or spaces", h)
		}
	}
	if err := apikey.ValidatePrefix(c.Keys.Prefix); err != nil {
		c.problem(errs, "keys.prefix", "%v", err)
	}
	if err := c.Keys.HashSecret.Resolve(); err != nil {
		c.problem(errs, "keys.hash_secret", "%v", err)
	}
	for path, h := range map[string]string{"headers.consumer_id": c.Headers.ConsumerID, "headers.plan": c.Headers.Plan, "headers.credential_id": c.Headers.CredentialID} {
		if h == "" || h != strings.ToLower(h) || strings.ContainsAny(h, ": ") {
			c.problem(errs, path, "%q: header names are lower-case, without ':' or spaces", h)
		}
	}
}

func (c *Config) validatePlans(errs *Errors) {
	if len(c.Plans) == 0 {
		c.problem(errs, "plans", "at least one plan is needed")
	}
	for _, name := range sortedKeys(c.Plans) {
		p := c.Plans[name]
		at := "plans." + name
		if name == "" {
			c.problem(errs, at, "a plan needs a name")
		}
		oneOf(c, errs, at+".model", p.Model, string(plan.Tiered), string(plan.PayG), string(plan.Freemium))
		if p.Rate != nil {
			c.validateRate(errs, at+".rate", p.Rate)
		} else if p.Model == string(plan.Freemium) {
			c.problem(errs, at+".rate", "a freemium plan needs a rate limit")
		}
		if q := p.Quota; q != nil {
			if _, err := plan.ParseUnit(q.Period); err != nil {
				c.problem(errs, at+".quota.period", "%v", err)
			}
			if q.Requests < 0 || q.Requests > maxLimit || q.Cap > maxLimit {
				c.problem(errs, at+".quota", "requests and cap are from 0 to %d", int64(maxLimit))
			}
			enf := q.Enforcement
			if enf == "" {
				enf = defaultEnforcement(p.Model)
			}
			oneOf(c, errs, at+".quota.enforcement", enf, string(plan.Hard), string(plan.Soft))
			if p.Model == string(plan.Freemium) && enf != string(plan.Hard) {
				c.problem(errs, at+".quota.enforcement", "a freemium quota is hard")
			}
			if q.Cap != 0 && (enf != string(plan.Soft) || q.Cap < q.Requests) {
				c.problem(errs, at+".quota.cap", "a cap goes with a soft quota and is >= its requests")
			}
		} else if p.Model == string(plan.Freemium) {
			c.problem(errs, at+".quota", "a freemium plan needs a quota")
		}
		for _, route := range sortedKeys(p.Routes) {
			rs := p.Routes[route]
			if rs.Rate != nil {
				c.validateRate(errs, at+".routes."+route+".rate", rs.Rate)
			}
			if rs.Cost < 0 {
				c.problem(errs, at+".routes."+route+".cost", "must be >= 0 (0 means 1)")
			}
		}
		c.validatePricing(errs, at, p)
		for i, st := range p.Billing.NonBillable {
			if !validStatusPattern(st) {
				c.problem(errs, fmt.Sprintf("%s.billing.non_billable_statuses[%d]", at, i), "%q: want a status (429) or a class (5xx)", st)
			}
		}
		for prefix, cost := range p.Costs {
			if !strings.HasPrefix(prefix, "/") {
				c.problem(errs, at+".costs."+prefix, "a cost is keyed by a path prefix starting with /")
			}
			if cost < 0 || cost > maxLimit {
				c.problem(errs, at+".costs."+prefix, "cost is from 0 to %d", int64(maxLimit))
			}
		}
	}
}

// maxLimit is the largest limit or cost levy decides (limiter.MaxCost).
const maxLimit = 1 << 40

func (c *Config) validateRate(errs *Errors, at string, r *RateSpec) {
	if r.Requests > maxLimit || r.Burst > maxLimit {
		c.problem(errs, at, "requests and burst are at most %d", int64(maxLimit))
	}
	if r.Requests <= 0 {
		c.problem(errs, at+".requests", "must be > 0 (leave out rate for no rate limit)")
	}
	if r.Per <= 0 {
		c.problem(errs, at+".per", "must be a positive duration, e.g. 1s or minute")
	}
	if r.Burst < 0 {
		c.problem(errs, at+".burst", "must be >= 0 (0 means requests)")
	}
}

func defaultEnforcement(model string) string {
	if model == string(plan.PayG) {
		return string(plan.Soft)
	}
	return string(plan.Hard)
}

func (c *Config) validateConsumers(errs *Errors) {
	seen := map[string]bool{}
	keyIDs := map[string]string{}
	for i, cs := range c.Consumers {
		at := fmt.Sprintf("consumers[%d]", i)
		if cs.ID == "" {
			c.problem(errs, at+".id", "a consumer needs an id")
		} else if seen[cs.ID] {
			c.problem(errs, at+".id", "duplicate consumer %q", cs.ID)
		}
		seen[cs.ID] = true
		if _, ok := c.Plans[cs.Plan]; !ok {
			c.problem(errs, at+".plan", "unknown plan %q (plans: %s)", cs.Plan, strings.Join(sortedKeys(c.Plans), ", "))
		}
		if cs.Status != "" {
			oneOf(c, errs, at+".status", cs.Status, "active", "suspended")
		}
		for j, k := range cs.Keys {
			kat := fmt.Sprintf("%s.keys[%d]", at, j)
			given := 0
			for _, v := range []string{k.Hash, k.SHA256, k.Key} {
				if v != "" {
					given++
				}
			}
			switch {
			case given > 1:
				c.problem(errs, kat, "give one of hash, sha256 (its older name) or key")
			case k.Hash != "" || k.SHA256 != "":
				field, v := "hash", k.Hash
				if v == "" {
					field, v = "sha256", k.SHA256
				}
				if !apikey.IsHash(v) {
					c.problem(errs, kat+"."+field, "want 64 lower-case hex characters (levy keys generate prints it)")
				}
			case k.Key != "":
				if !c.DevMode {
					c.problem(errs, kat+".key", "plaintext keys need dev_mode: true; store its hash instead")
				} else if err := apikey.Check(k.Key); err != nil {
					c.problem(errs, kat+".key", "not a well-formed key (levy keys generate makes one)")
				}
			default:
				c.problem(errs, kat, "a key needs hash (or key, in dev mode)")
			}
			if k.Status != "" {
				oneOf(c, errs, kat+".status", k.Status, "active", "revoked")
			}
			id := c.keyID(k)
			if other, dup := keyIDs[id]; dup {
				c.problem(errs, kat+".id", "duplicate key id %q (also at %s)", id, other)
			}
			keyIDs[id] = kat
		}
	}
}

// keyID is the configured id, or one derived from the hash.
func (c *Config) keyID(k KeySpec) string {
	if k.ID != "" {
		return k.ID
	}
	return apikey.IDFromHash(c.keyHash(k))
}

func (c *Config) keyHash(k KeySpec) string {
	if k.Hash != "" {
		return k.Hash
	}
	if k.SHA256 != "" {
		return k.SHA256
	}
	return c.Hasher().Hash(k.Key)
}

// Hasher returns the key hasher the config selects.
func (c *Config) Hasher() apikey.Hasher {
	return apikey.NewHasher([]byte(c.Keys.HashSecret.Value()))
}

func validStatusPattern(s string) bool {
	if len(s) != 3 || s[0] < '1' || s[0] > '5' {
		return false
	}
	if s[1:] == "xx" {
		return true
	}
	return s[1] >= '0' && s[1] <= '9' && s[2] >= '0' && s[2] <= '9'
}

func (c *Config) validateUsage(errs *Errors) {
	h := c.Usage.History
	if !h.Enabled {
		return
	}
	if d := time.Duration(h.Hourly); d < 48*time.Hour || d%time.Hour != 0 {
		c.problem(errs, "usage.history.hourly", "%s: want whole hours, at least 2d (a day's roll-up reads its hours), e.g. 35d", d)
	}
	if d := time.Duration(h.Daily); d < 48*time.Hour || d%(24*time.Hour) != 0 {
		c.problem(errs, "usage.history.daily", "%s: want whole days, at least 2d, e.g. 400d", d)
	}
	if d := time.Duration(h.Every); d < time.Second || d > time.Hour {
		c.problem(errs, "usage.history.every", "%s: want from 1s to 1h", d)
	}
}

func (c *Config) validateBilling(errs *Errors) {
	b := c.Billing
	if w := time.Duration(b.Window); w < time.Second || w > time.Hour || w%time.Second != 0 || time.Hour%w != 0 {
		c.problem(errs, "billing.window", "%s: want whole seconds that divide an hour, from 1s to 1h (e.g. 1s, 10s, 1m, 5m)", w)
	}
	if b.SettleDelay < 0 || b.ExportEvery <= 0 {
		c.problem(errs, "billing.export_every", "export_every must be positive and settle_delay not negative")
	}
	if b.FallbackPlan != "" {
		if _, ok := c.Plans[b.FallbackPlan]; !ok {
			c.problem(errs, "billing.fallback_plan", "unknown plan %q", b.FallbackPlan)
		}
	}
	oneOf(c, errs, "billing.payment_failed.action", b.PaymentFailed.Action, "none", "suspend")
	if b.Stripe.APIBase == "" || !strings.HasPrefix(b.Stripe.APIBase, "http") {
		c.problem(errs, "billing.stripe.api_base", "%q is not an http(s) URL", b.Stripe.APIBase)
	}
	prices := map[string]string{}
	for _, name := range sortedKeys(c.Plans) {
		for i, price := range c.Plans[name].Billing.StripePrices {
			if other, dup := prices[price]; dup {
				c.problem(errs, fmt.Sprintf("plans.%s.billing.stripe_prices[%d]", name, i), "price %q already belongs to plan %s", price, other)
			}
			prices[price] = name
		}
	}
}
