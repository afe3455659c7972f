// Package config loads levy's configuration file: defaults, then the YAML
// file (strictly decoded: an unknown key is an error naming file, line and
// key), then LEVY_* environment variables and the secrets only the
// environment gives, then validation. It knows nothing of the servers:
// pkg/server builds their runtime snapshots from a loaded Config (the
// plans, consumers and keys of Catalog and Directory, the rate-limit rules
// pkg/rls reads) and swaps them in atomically on reload.
package config

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Config is the whole levy.yaml.
type Config struct {
	Listen    Listen              `yaml:"listen"`
	Store     Store               `yaml:"store"`
	Keys      Keys                `yaml:"keys"`
	Headers   Headers             `yaml:"headers"`
	Log       Log                 `yaml:"log"`
	DevMode   bool                `yaml:"dev_mode"`
	Demo      bool                `yaml:"demo"`
	Plans     map[string]PlanSpec `yaml:"plans"`
	Consumers []ConsumerSpec      `yaml:"consumers"`
	RateLimit RateLimit           `yaml:"ratelimit"`
	Billing   Billing             `yaml:"billing"`
	Portal    Portal              `yaml:"portal"`
	Usage     Usage               `yaml:"usage"`
	Alerts    Alerts              `yaml:"alerts"`

	// AdminToken is the bearer token of the admin API (LEVY_ADMIN_TOKEN;
	// unset turns the API off). The environment gives it, never the file.
	AdminToken Secret `yaml:"-"`

	// Source is the file the config came from ("" for defaults only).
	Source string `yaml:"-"`
	lines  *lazyLines
	// setBy names what set a key path over the file: "LEVY_STORE", "--store".
	setBy map[string]string
}

// RateLimit configures the RateLimitService.
type RateLimit struct {
	// Dir holds rule files in envoyproxy/ratelimit's format (every *.yaml and *.yml).
	Dir string `yaml:"dir"`
	// ShadowMode reports every request OK while still counting.
	ShadowMode bool `yaml:"shadow_mode"`
	// QuotaMode makes every descriptor quota_mode (envoyproxy/ratelimit's
	// GLOBAL_QUOTA_MODE): a request is over only when another limit
	// denies it or all its descriptors are over.
	QuotaMode bool `yaml:"quota_mode"`
	// ResponseDynamicMetadata returns the request and the metadata of the
	// descriptors that passed in every response's dynamic_metadata
	// (envoyproxy/ratelimit's RESPONSE_DYNAMIC_METADATA); without it, only
	// responses where a passed descriptor's rule has metadata carry it.
	ResponseDynamicMetadata bool `yaml:"response_dynamic_metadata"`
	// NearLimitRatio is the share of a limit past which hits count as
	// near_limit (envoyproxy/ratelimit's NEAR_LIMIT_RATIO).
	NearLimitRatio float64 `yaml:"near_limit_ratio"`
	// MetricValues caps, per rule, the distinct labels of a rule with
	// detailed_metric or value_to_metric; hits beyond count under one
	// "<rule>:other" label.
	MetricValues int `yaml:"metric_values_per_rule"`
	// MergeDomains lets several files add to one domain.
	MergeDomains bool `yaml:"merge_domains"`
	// Domains are rule files written inline, one entry per file's content.
	Domains []yaml.Node `yaml:"domains"`
}

// Listen holds the listener addresses.
type Listen struct {
	// GRPC serves ext_authz, RateLimitService, access logs and gRPC health.
	GRPC string `yaml:"grpc"`
	// HTTP serves /healthz, /readyz, /metrics, the admin API and Stripe
	// webhooks.
	HTTP string `yaml:"http"`
	// Public, when set, serves Stripe webhooks instead of HTTP, with the
	// same limits on a listener of its own: what faces the internet then
	// cannot take the connections the probes, metrics and admin API need.
	Public string `yaml:"public"`
	// TLS, when cert_file is set, serves both listeners over TLS; with
	// client_ca_file, clients must present a certificate it signed (mTLS,
	// e.g. Envoy's or the mesh's).
	TLS TLS `yaml:"tls"`
	// HTTPLimits bound what the HTTP listener's clients may hold: it faces
	// the internet (Stripe's webhooks), and a slow or idle client must not
	// hold a connection, and a file descriptor, for long.
	HTTPLimits HTTPLimits `yaml:"http_limits"`
}

// HTTPLimits bound the HTTP listener's clients. Zero takes the default.
type HTTPLimits struct {
	// ReadHeaderTimeout bounds reading a request's headers (default 5s);
	// ReadTimeout all of it, body included (15s); WriteTimeout writing the
	// answer (30s); IdleTimeout how long a keep-alive connection waits for
	// its next request (30s).
	ReadHeaderTimeout Duration `yaml:"read_header_timeout"`
	ReadTimeout       Duration `yaml:"read_timeout"`
	WriteTimeout      Duration `yaml:"write_timeout"`
	IdleTimeout       Duration `yaml:"idle_timeout"`
	// MaxHeaderBytes bounds a request's headers (default 64 KiB).
	MaxHeaderBytes int `yaml:"max_header_bytes"`
	// MaxConns bounds the connections open at once (default 10000, about
	// 200 MB of buffers and goroutines at most); more wait in the
	// kernel's accept queue until one closes, which the timeouts above
	// bound. It keeps file descriptors for gRPC and the store.
	MaxConns int `yaml:"max_conns"`
}

// TLS configures the listeners' TLS.
type TLS struct {
	CertFile     string `yaml:"cert_file"`
	KeyFile      string `yaml:"key_file"`
	ClientCAFile string `yaml:"client_ca_file"`
}

// Store selects where shared state lives.
type Store struct {
	// Type is local (embedded file database, one process) or redis.
	Type    string `yaml:"type"`
	DataDir string `yaml:"data_dir"`
	// OnStoreError is allow or deny: what a decision does when the store
	// cannot be reached.
	OnStoreError string `yaml:"on_store_error"`
	// Timeout bounds one decision's store call.
	Timeout Duration `yaml:"timeout"`
	Redis   Redis    `yaml:"redis"`
	// CounterIdle is how long the local store keeps a saved quota counter
	// in memory after its last change (0: limiter.DefaultCounterIdle);
	// MaxCounters is how many it keeps before saved ones leave early (0:
	// limiter.DefaultMaxCounters). A counter that left is read back from
	// the data file.
	CounterIdle Duration `yaml:"counter_idle"`
	MaxCounters int      `yaml:"max_counters"`
}

// Redis says how to reach Redis. The credentials and TLS settings come from
// the environment, never the file: LEVY_REDIS_USERNAME, LEVY_REDIS_PASSWORD,
// LEVY_REDIS_TLS (true), LEVY_REDIS_TLS_CA (a PEM file),
// LEVY_REDIS_TLS_SERVER_NAME.
type Redis struct {
	Addr string `yaml:"addr"`
	// Cluster lists Redis Cluster seed nodes; it wins over Addr.
	Cluster []string `yaml:"cluster"`
	// CacheTTL is how long a key lookup is trusted in-process.
	CacheTTL Duration `yaml:"cache_ttl"`

	Username string   `yaml:"-"` // LEVY_REDIS_USERNAME
	Password Secret   `yaml:"-"` // LEVY_REDIS_PASSWORD
	TLS      RedisTLS `yaml:"-"`
}

// RedisTLS says how levy speaks TLS to Redis.
type RedisTLS struct {
	// Enabled is LEVY_REDIS_TLS=true.
	Enabled bool
	// CAFile is a PEM file of the CAs that sign Redis's certificate
	// (LEVY_REDIS_TLS_CA; unset: the system's); ServerName the name it
	// must carry (LEVY_REDIS_TLS_SERVER_NAME; unset: the address's host).
	CAFile, ServerName string
}

// Keys says where API keys are found in requests and how they are stored.
type Keys struct {
	// Headers are request headers that carry the key as their whole value.
	Headers []string `yaml:"headers"`
	// Bearer also accepts "Authorization: Bearer <key>".
	Bearer *bool `yaml:"bearer"`
	// Prefix starts keys that `levy keys generate` makes.
	Prefix string `yaml:"prefix"`
	// HashSecret, when set, stores keys as HMAC-SHA-256 instead of SHA-256.
	HashSecret Secret `yaml:"hash_secret"`
}

// BearerEnabled reports whether Authorization: Bearer is accepted.
func (k Keys) BearerEnabled() bool { return k.Bearer == nil || *k.Bearer }

// Headers names the headers levy sets on requests it allows.
type Headers struct {
	ConsumerID   string `yaml:"consumer_id"`
	Plan         string `yaml:"plan"`
	CredentialID string `yaml:"credential_id"`
}

// Log configures logging.
type Log struct {
	Level  string `yaml:"level"`  // debug, info, warn, error
	Format string `yaml:"format"` // json or console
}

// PlanSpec is one plan as written in the file.
type PlanSpec struct {
	Model  string               `yaml:"model"`
	Rate   *RateSpec            `yaml:"rate"`
	Quota  *QuotaSpec           `yaml:"quota"`
	Costs  map[string]int64     `yaml:"costs"`
	Routes map[string]RouteSpec `yaml:"routes"`
	// Billing ties the plan to Stripe.
	Billing PlanBilling `yaml:"billing"`
	// Pricing is what the plan costs: the portal shows a period's cost so
	// far and projects it to the period's end from it. Unset, it shows
	// none.
	Pricing *PricingSpec `yaml:"pricing"`
	// Alerts are shares of the quota (or spend cap) whose crossing in a
	// period sends a usage alert (alerts.url): [80%, 100%].
	Alerts []Percent `yaml:"alerts"`
}

// PlanBilling ties a plan to Stripe.
type PlanBilling struct {
	// Meter is the Stripe meter event name for the plan's billable units.
	Meter string `yaml:"meter"`
	// StripePrices put subscriptions on these prices on this plan.
	StripePrices []string `yaml:"stripe_prices"`
	// NonBillable statuses are refunded at settlement: codes ("429") or
	// classes ("5xx"). Default: 429 and 5xx.
	NonBillable []string `yaml:"non_billable_statuses"`
}

// Billing configures the money path: the usage ledger, settlement, the
// export to Stripe meters and Stripe webhooks. Secrets come from the
// environment (Stripe's APIKey and WebhookSecret).
type Billing struct {
	// Window is the ledger's window (default 1m; down to 1s for tests).
	Window Duration `yaml:"window"`
	// SettleDelay is how long after a window closes it waits for late
	// access logs before it is exported (default 30s).
	SettleDelay Duration `yaml:"settle_delay"`
	// ExportEvery is how often closed windows are exported (default 10s).
	ExportEvery Duration `yaml:"export_every"`
	// FallbackPlan is where a consumer goes when its subscription ends.
	FallbackPlan string `yaml:"fallback_plan"`
	// PaymentFailed is what a failed invoice payment does.
	PaymentFailed PaymentFailed `yaml:"payment_failed"`
	// UnitsHeader is the response header an upstream reports a request's
	// real units in (settled from access logs).
	UnitsHeader string `yaml:"units_header"`
	// ConsumerHeader names the consumer in access logs that carry no
	// ext_authz metadata.
	ConsumerHeader string `yaml:"consumer_header"`
	Stripe         Stripe `yaml:"stripe"`
}

// Usage configures what levy keeps of usage beside the ledger.
type Usage struct {
	History History `yaml:"history"`
}

// History configures the usage history: hourly and daily roll-ups of
// each consumer's billed, refunded and denied units and of each key's
// allowed and denied requests (the portal's chart, GET
// /v1/consumers/{id}/usage/series).
type History struct {
	// Enabled keeps it (default true).
	Enabled bool `yaml:"enabled"`
	// Hourly and Daily are how long hours and days are kept (default
	// 35d and 400d).
	Hourly Duration `yaml:"hourly"`
	Daily  Duration `yaml:"daily"`
	// Every is how often decision counts are flushed and the ledger rolled
	// up (default 15s).
	Every Duration `yaml:"every"`
}

// PaymentFailed: action none or suspend (after Grace).
type PaymentFailed struct {
	Action string   `yaml:"action"`
	Grace  Duration `yaml:"grace"`
}

// Stripe says where Stripe is, and how levy proves itself to it.
type Stripe struct {
	// APIBase is Stripe's API (default https://api.stripe.com); tests point
	// it at stripe-mock.
	APIBase string `yaml:"api_base"`
	// APIKey is STRIPE_API_KEY: unset, nothing is exported to Stripe and
	// there is no Stripe to reconcile with.
	APIKey Secret `yaml:"-"`
	// WebhookSecret is STRIPE_WEBHOOK_SECRET, which signs Stripe's
	// webhooks.
	WebhookSecret Secret `yaml:"-"`
}

// RouteSpec is a plan's limit and cost for one RateLimitService route.
type RouteSpec struct {
	Rate *RateSpec `yaml:"rate"`
	Cost int64     `yaml:"cost"`
}

// RateSpec is a token bucket: requests per duration, burst tokens at most.
type RateSpec struct {
	Requests int64    `yaml:"requests"`
	Per      Duration `yaml:"per"`
	Burst    int64    `yaml:"burst"`
}

// QuotaSpec is a quota per billing period.
type QuotaSpec struct {
	Requests    int64  `yaml:"requests"`
	Period      string `yaml:"period"`
	Enforcement string `yaml:"enforcement"`
	Cap         int64  `yaml:"cap"`
}

// ConsumerSpec is a consumer declared in the file, with its keys.
type ConsumerSpec struct {
	ID               string     `yaml:"id"`
	Plan             string     `yaml:"plan"`
	Status           string     `yaml:"status"`
	StripeCustomerID string     `yaml:"stripe_customer_id"`
	PeriodAnchor     *time.Time `yaml:"period_anchor"`
	Keys             []KeySpec  `yaml:"keys"`
}

// KeySpec is one key: its hash, or in dev mode the key.
type KeySpec struct {
	ID string `yaml:"id"`
	// Hash is the key's SHA-256, or its HMAC-SHA-256 when keys.hash_secret
	// is set: what `levy keys generate` prints. SHA256 is the older name of
	// the same field, read as it always was (an HMAC under it too).
	Hash      string     `yaml:"hash"`
	SHA256    string     `yaml:"sha256"`
	Key       string     `yaml:"key"`
	Status    string     `yaml:"status"`
	ExpiresAt *time.Time `yaml:"expires_at"`
}

// Default returns the built-in defaults.
func Default() *Config {
	return &Config{
		Listen: Listen{GRPC: "127.0.0.1:8081", HTTP: "127.0.0.1:8080"},
		Store: Store{Type: "local", DataDir: "levy-data", OnStoreError: "deny", Timeout: Duration(50 * time.Millisecond),
			Redis: Redis{CacheTTL: Duration(500 * time.Millisecond)}},
		Keys: Keys{Headers: []string{"x-api-key"}, Prefix: "levy"},
		Headers: Headers{
			ConsumerID:   "x-consumer-id",
			Plan:         "x-consumer-plan",
			CredentialID: "x-credential-id",
		},
		Log:       Log{Level: "info", Format: "json"},
		RateLimit: RateLimit{NearLimitRatio: 0.8, MetricValues: 100},
		Billing: Billing{
			Window: Duration(time.Minute), SettleDelay: Duration(30 * time.Second), ExportEvery: Duration(10 * time.Second),
			PaymentFailed: PaymentFailed{Action: "suspend", Grace: Duration(72 * time.Hour)},
			UnitsHeader:   "x-levy-units", ConsumerHeader: "x-consumer-id",
			Stripe: Stripe{APIBase: "https://api.stripe.com"},
		},
		Portal: defaultPortal(),
		Usage: Usage{History: History{Enabled: true, Hourly: Duration(35 * 24 * time.Hour), Daily: Duration(400 * 24 * time.Hour),
			Every: Duration(15 * time.Second)}},
		Alerts: defaultAlerts(),
	}
}

// envOverrides maps LEVY_* variables onto settings, by key path.
var envOverrides = []struct {
	name, path string
	set        func(c *Config, v string)
}{
	{"LEVY_GRPC_ADDR", "listen.grpc", func(c *Config, v string) { c.Listen.GRPC = v }},
	{"LEVY_HTTP_ADDR", "listen.http", func(c *Config, v string) { c.Listen.HTTP = v }},
	{"LEVY_PUBLIC_ADDR", "listen.public", func(c *Config, v string) { c.Listen.Public = v }},
	{"LEVY_STORE", "store.type", func(c *Config, v string) { c.Store.Type = v }},
	{"LEVY_DATA_DIR", "store.data_dir", func(c *Config, v string) { c.Store.DataDir = v }},
	{"LEVY_ON_STORE_ERROR", "store.on_store_error", func(c *Config, v string) { c.Store.OnStoreError = v }},
	{"LEVY_LOG_LEVEL", "log.level", func(c *Config, v string) { c.Log.Level = v }},
	{"LEVY_LOG_FORMAT", "log.format", func(c *Config, v string) { c.Log.Format = v }},
	{"LEVY_RATELIMIT_DIR", "ratelimit.dir", func(c *Config, v string) { c.RateLimit.Dir = v }},
	{"LEVY_STRIPE_API_BASE", "billing.stripe.api_base", func(c *Config, v string) { c.Billing.Stripe.APIBase = v }},
	{"LEVY_REDIS_ADDR", "store.redis.addr", func(c *Config, v string) { c.Store.Redis.Addr = v }},
	{"LEVY_REDIS_CLUSTER", "store.redis.cluster", func(c *Config, v string) { c.Store.Redis.Cluster = strings.Split(v, ",") }},
}

// envSecrets are the secrets only the environment gives (the file cannot
// hold them), with where they go.
var envSecrets = []struct {
	name   string
	secret func(c *Config) *Secret
}{
	{"LEVY_ADMIN_TOKEN", func(c *Config) *Secret { return &c.AdminToken }},
	{"STRIPE_API_KEY", func(c *Config) *Secret { return &c.Billing.Stripe.APIKey }},
	{"STRIPE_WEBHOOK_SECRET", func(c *Config) *Secret { return &c.Billing.Stripe.WebhookSecret }},
	{"LEVY_REDIS_PASSWORD", func(c *Config) *Secret { return &c.Store.Redis.Password }},
	{"LEVY_ALERTS_SECRET", func(c *Config) *Secret { return &c.Alerts.Secret }},
}

// envOnly maps the other settings only the environment gives.
var envOnly = []struct {
	name string
	set  func(c *Config, v string)
}{
	{"LEVY_REDIS_USERNAME", func(c *Config, v string) { c.Store.Redis.Username = v }},
	{"LEVY_REDIS_TLS", func(c *Config, v string) { c.Store.Redis.TLS.Enabled = v == "true" }},
	{"LEVY_REDIS_TLS_CA", func(c *Config, v string) { c.Store.Redis.TLS.CAFile = v }},
	{"LEVY_REDIS_TLS_SERVER_NAME", func(c *Config, v string) { c.Store.Redis.TLS.ServerName = v }},
}

// ApplyEnv overrides settings from LEVY_* environment variables, and reads
// the secrets and settings only the environment gives (STRIPE_API_KEY,
// LEVY_ADMIN_TOKEN, LEVY_REDIS_*). An error in a value set this way names
// the variable, not the file's line. A variable set to "" counts as unset.
func (c *Config) ApplyEnv(lookup func(string) (string, bool)) {
	if lookup == nil {
		lookup = os.LookupEnv
	}
	for _, o := range envOverrides {
		if v, ok := lookup(o.name); ok && v != "" {
			o.set(c, v)
			c.SetBy(o.path, o.name)
		}
	}
	for _, e := range envSecrets {
		if v, ok := lookup(e.name); ok && v != "" {
			*e.secret(c) = Secret{Ref: "env:" + e.name, value: v}
		}
	}
	for _, e := range envOnly {
		if v, ok := lookup(e.name); ok && v != "" {
			e.set(c, v)
		}
	}
}

// SetBy records that the setting at path (e.g. "store.type") was set by
// source (an environment variable, a flag) over the file: validation
// errors about it then name source instead of the file's line.
func (c *Config) SetBy(path, source string) {
	if c.setBy == nil {
		c.setBy = map[string]string{}
	}
	c.setBy[path] = source
}

// source names what set path or its nearest ancestor (a variable, a
// flag), or "" when the file did.
func (c *Config) source(path string) string {
	for path != "" {
		if s, ok := c.setBy[path]; ok {
			return s
		}
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			break
		}
		path = path[:i]
	}
	return ""
}

// Duration is a time.Duration written as "1s", "500ms", "1m", as whole
// days "35d", or as one of the words second, minute, hour, day.
type Duration time.Duration

// UnmarshalYAML implements yaml.Unmarshaler, reporting the line of a bad value.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	return lineError(n, d.parse(n.Value))
}

func (d *Duration) parse(s string) error {
	s = strings.TrimSpace(s)
	words := map[string]time.Duration{"second": time.Second, "minute": time.Minute, "hour": time.Hour, "day": 24 * time.Hour}
	if w, ok := words[s]; ok {
		*d = Duration(w)
		return nil
	}
	if n, ok := strings.CutSuffix(s, "d"); ok {
		if days, err := strconv.Atoi(n); err == nil && days >= 0 && days <= 100_000 {
			*d = Duration(time.Duration(days) * 24 * time.Hour)
			return nil
		}
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("invalid duration %q (want e.g. 1s, 1m, 1h, 35d, or second, minute, hour, day)", s)
	}
	*d = Duration(v)
	return nil
}

// Secret is a value read from the environment ("env:NAME") or a file
// ("file:/path"). It never shows its value: fmt (every verb, %#v too), JSON,
// YAML and zap print "<secret>" when it is set and "" when not; Value is
// the only way to it.
type Secret struct {
	Ref   string
	value string
}

// UnmarshalYAML implements yaml.Unmarshaler.
func (s *Secret) UnmarshalYAML(n *yaml.Node) error {
	ref := n.Value
	if n.Kind != yaml.ScalarNode || !strings.HasPrefix(ref, "env:") && !strings.HasPrefix(ref, "file:") {
		return lineError(n, fmt.Errorf("a secret is written env:NAME or file:/path, never inline"))
	}
	s.Ref = ref
	return nil
}

// Set points the secret at ref (env:NAME or file:/path) and resolves it.
func (s *Secret) Set(ref string) error {
	if !strings.HasPrefix(ref, "env:") && !strings.HasPrefix(ref, "file:") {
		return fmt.Errorf("a secret is written env:NAME or file:/path")
	}
	s.Ref = ref
	return s.Resolve()
}

// lineError turns err into the yaml package's TypeError so that the decoder
// reports it with the line of n.
func lineError(n *yaml.Node, err error) error {
	if err == nil {
		return nil
	}
	return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: %v", n.Line, err)}}
}

// Resolve reads the secret's value.
func (s *Secret) Resolve() error {
	switch {
	case s.Ref == "":
		return nil
	case strings.HasPrefix(s.Ref, "env:"):
		v, ok := os.LookupEnv(strings.TrimPrefix(s.Ref, "env:"))
		if !ok || v == "" {
			return fmt.Errorf("environment variable %s is not set", strings.TrimPrefix(s.Ref, "env:"))
		}
		s.value = v
	default:
		v, err := os.ReadFile(strings.TrimPrefix(s.Ref, "file:"))
		if err != nil {
			return err
		}
		s.value = strings.TrimSpace(string(v))
	}
	return nil
}

// Value returns the resolved secret.
func (s Secret) Value() string { return s.value }

// Redacted is how a set Secret prints.
const Redacted = "<secret>"

// String redacts the secret: Redacted, or "" when it is not set.
func (s Secret) String() string {
	if s.Ref == "" && s.value == "" {
		return ""
	}
	return Redacted
}

// Format implements fmt.Formatter: every verb prints String, so that no
// verb (%d, %x, %#v) reaches the value.
func (s Secret) Format(f fmt.State, _ rune) { io.WriteString(f, s.String()) }

// MarshalJSON implements json.Marshaler (zap's reflected fields use it).
func (s Secret) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }

// MarshalYAML implements yaml.Marshaler.
func (s Secret) MarshalYAML() (any, error) { return s.String(), nil }
