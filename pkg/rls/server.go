package rls

import (
	"context"
	"errors"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rlv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/keyspace"
	"github.com/levyhq/levy/pkg/limiter"
	"github.com/levyhq/levy/pkg/plan"
	"github.com/levyhq/levy/pkg/problem"
	"github.com/levyhq/levy/pkg/telemetry"
)

// Consumers finds a consumer by id, for plan-aware rules.
type Consumers interface {
	Consumer(id string) (*apikey.Consumer, bool)
}

// Snapshot is what a decision reads that a reload may change.
type Snapshot struct {
	Rules     *Rules
	Catalog   *plan.Catalog
	Consumers Consumers
	// Shadow reports every request OK while still counting (the global
	// shadow switch).
	Shadow bool
	// QuotaMode makes every descriptor quota_mode (the global quota
	// switch, envoyproxy/ratelimit's GLOBAL_QUOTA_MODE).
	QuotaMode bool
	// DynamicMetadata returns the request and the metadata of the
	// descriptors that passed in every response's dynamic_metadata
	// (envoyproxy/ratelimit's RESPONSE_DYNAMIC_METADATA). Without it a
	// response carries them only when a passed descriptor's rule has
	// metadata.
	DynamicMetadata bool
	// NearLimitRatio is the share of a limit past which hits count as
	// near_limit; 0 means NearLimitRatio.
	NearLimitRatio float64
	// MetricValues caps the distinct labels with request values that a
	// rule with detailed_metric or value_to_metric gets; 0 labels such
	// rules by their path only.
	MetricValues int
}

// Config configures a Server.
type Config struct {
	Snapshot *Snapshot
	Limiter  limiter.Limiter
	Metrics  *telemetry.Metrics
	Log      *zap.Logger
}

// Server implements Envoy's RateLimitService.
type Server struct {
	rlsv3.UnimplementedRateLimitServiceServer
	snap    atomic.Pointer[Snapshot]
	limiter limiter.Limiter
	metrics *telemetry.Metrics
	rules   *ruleMetrics
	log     *zap.Logger
}

var _ rlsv3.RateLimitServiceServer = (*Server)(nil)

// New returns a server.
func New(cfg Config) *Server {
	s := &Server{limiter: cfg.Limiter, metrics: cfg.Metrics, log: cfg.Log}
	if s.log == nil {
		s.log = zap.NewNop()
	}
	if s.metrics == nil {
		s.metrics = telemetry.NewMetrics()
	}
	s.rules = newRuleMetrics(s.metrics.Registry)
	// On /metrics at 0 from the start, so that a rate over them is defined.
	s.metrics.Decisions.WithLabelValues("ratelimit", "allow", "ok")
	s.metrics.Decisions.WithLabelValues("ratelimit", "deny", "over_limit")
	s.metrics.Latency.WithLabelValues("ratelimit")
	s.Swap(cfg.Snapshot)
	return s
}

// Swap installs new rules, plans and consumers; its rules show on
// /metrics from then on.
func (s *Server) Swap(snap *Snapshot) {
	if snap != nil {
		s.rules.declare(snap.Rules, snap.MetricValues)
	}
	s.snap.Store(snap)
}

// ConsumerEntry is the descriptor key that names the calling consumer:
// what Envoy's metadata action produces from levy's ext_authz metadata.
const ConsumerEntry = "consumer"

// RouteEntry is the descriptor key whose value selects a plan's route.
const RouteEntry = "route"

// ShouldRateLimit implements rlsv3.RateLimitServiceServer.
func (s *Server) ShouldRateLimit(ctx context.Context, req *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error) {
	start := time.Now()
	resp, err := s.decide(ctx, req)
	result, reason := "allow", "ok"
	switch {
	case err != nil:
		result, reason = "error", status.Code(err).String()
	case resp.OverallCode == rlsv3.RateLimitResponse_OVER_LIMIT:
		result, reason = "deny", "over_limit"
	}
	s.metrics.Observe("ratelimit", result, reason, time.Since(start))
	return resp, err
}

// limited is one descriptor that has a limit to decide: what its status
// reports besides the limiter's answer.
type limited struct {
	desc int // index in the request
	rule *Rule
	unit rlsv3.RateLimitResponse_RateLimit_Unit
	rpu  uint32
	// shadow: the descriptor is in shadow mode (its rule's or the global
	// switch), and so reports OK. A quota-mode limit decided as a shadow
	// because its group cannot deny is not.
	shadow bool
}

// MaxDescriptors and MaxEntries bound one request, so that no request can
// hold work other requests wait for (Envoy sends a descriptor per matching
// rate_limits action, a handful per route, each of a few entries).
const (
	MaxDescriptors = 64
	MaxEntries     = 32
)

// decide answers a request: it checks it, resolves its descriptors to
// the limits they are decided against, has the limiter decide them all
// at once, and reports each descriptor's status.
func (s *Server) decide(ctx context.Context, req *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error) {
	if err := validRequest(req); err != nil {
		return nil, err
	}
	snap := s.snap.Load()
	r, err := s.resolve(snap, req)
	if err != nil {
		return nil, err
	}
	resp := &rlsv3.RateLimitResponse{OverallCode: rlsv3.RateLimitResponse_OK, Statuses: r.statuses}
	if len(r.todo) == 0 {
		if snap.DynamicMetadata {
			resp.DynamicMetadata = responseMetadata(req, nil, nil)
		}
		return resp, nil
	}
	d, err := s.limiter.Decide(ctx, r.limits)
	if errors.Is(err, limiter.ErrBadLimit) {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if err != nil {
		s.log.Error("decide", zap.Error(err), zap.String("domain", req.Domain))
		return nil, status.Error(codes.Unavailable, "limiter unavailable")
	}
	if s.report(snap, req, &r, &d) {
		resp.DynamicMetadata = responseMetadata(req, r.todo, r.sts)
	}
	if d.OK {
		// X-RateLimit-* come from the statuses: the ratelimit filter's
		// enable_x_ratelimit_headers: DRAFT_VERSION_03 computes them, on
		// OK and OVER_LIMIT alike, so levy adding them too would send
		// every client each header twice.
		return resp, nil
	}
	overLimit(resp, r.limits, &d)
	return resp, nil
}

// validRequest refuses a request without a domain or descriptors, or
// over MaxDescriptors or MaxEntries.
func validRequest(req *rlsv3.RateLimitRequest) error {
	if req.GetDomain() == "" {
		return status.Error(codes.InvalidArgument, "rate limit domain must not be empty")
	}
	if len(req.GetDescriptors()) == 0 {
		return status.Error(codes.InvalidArgument, "rate limit descriptor list must not be empty")
	}
	if n := len(req.GetDescriptors()); n > MaxDescriptors {
		return status.Errorf(codes.InvalidArgument, "%d descriptors: at most %d in one request", n, MaxDescriptors)
	}
	for i, desc := range req.GetDescriptors() {
		if n := len(desc.GetEntries()); n > MaxEntries {
			return status.Errorf(codes.InvalidArgument, "descriptor %d has %d entries: at most %d", i, n, MaxEntries)
		}
	}
	return nil
}

// resolved is a request resolved to the limits it is decided against.
type resolved struct {
	// sts are every descriptor's status (OK until the decision says
	// otherwise), statuses the answer's pointers to them: allocated once
	// per request, not once per descriptor.
	sts      []rlsv3.RateLimitResponse_DescriptorStatus
	statuses []*rlsv3.RateLimitResponse_DescriptorStatus
	todo     []limited       // the descriptors that have a limit to decide
	limits   []limiter.Limit // todo's limits
}

// resolve finds each descriptor's limit (limitFor), sets aside those
// without one (unmatched, unlimited, refunds) and those a matched rule
// replaces, and applies the snapshot's shadow and quota-mode switches.
func (s *Server) resolve(snap *Snapshot, req *rlsv3.RateLimitRequest) (resolved, error) {
	hits := uint64(req.GetHitsAddend())
	if hits == 0 {
		hits = 1
	}
	n := len(req.Descriptors)
	r := resolved{sts: make([]rlsv3.RateLimitResponse_DescriptorStatus, n),
		statuses: make([]*rlsv3.RateLimitResponse_DescriptorStatus, n),
		todo:     make([]limited, 0, n), limits: make([]limiter.Limit, 0, n)}
	var replaced map[string]bool
	for i, desc := range req.Descriptors {
		if len(desc.GetEntries()) == 0 {
			return resolved{}, status.Errorf(codes.InvalidArgument, "descriptor %d has no entries", i)
		}
		r.sts[i].Code = rlsv3.RateLimitResponse_OK
		r.statuses[i] = &r.sts[i]
		cost := hits
		if h := desc.GetHitsAddend(); h != nil {
			cost = h.GetValue()
		}
		if desc.GetIsNegativeHits() {
			// A refund: acknowledged, not applied (levy's all-or-nothing
			// decisions took nothing from a denied request, and a refund
			// cannot tell which decision it undoes).
			continue
		}
		if cost > limiter.MaxCost {
			return resolved{}, status.Errorf(codes.InvalidArgument, "descriptor %d: hits_addend %d is over %d", i, cost, limiter.MaxCost)
		}
		r.limits = append(r.limits, limiter.Limit{})
		lim := &r.limits[len(r.limits)-1]
		l, ok, err := s.limitFor(snap, req.Domain, desc, cost, lim)
		if err != nil {
			return resolved{}, err
		}
		if ok && l.rule != nil && len(l.rule.Replaces) > 0 {
			// Before an unlimited rule is set aside: its replaces apply
			// too, as in envoyproxy/ratelimit.
			if replaced == nil {
				replaced = map[string]bool{}
			}
			for _, name := range l.rule.Replaces {
				replaced[name] = true
			}
		}
		if !ok || l.rule != nil && l.rule.Unlimited {
			r.limits = r.limits[:len(r.limits)-1]
			if ok {
				r.statuses[i].LimitRemaining = math.MaxUint32
			}
			continue
		}
		if snap.Shadow {
			lim.Shadow = true
		}
		if snap.QuotaMode {
			lim.QuotaMode = true
		}
		l.desc, l.shadow = i, lim.Shadow
		r.todo = append(r.todo, l)
	}
	if replaced != nil {
		r.dropReplaced(replaced)
	}
	openQuotaGroup(r.limits, snap.QuotaMode && len(r.todo) < n)
	return r, nil
}

// dropReplaced sets aside the limits of rules that a matched rule
// replaces (replaces: a matched rule drops the others it names).
func (r *resolved) dropReplaced(replaced map[string]bool) {
	kept, keptLimits := r.todo[:0], r.limits[:0]
	for i, l := range r.todo {
		if l.rule != nil && l.rule.Name != "" && replaced[l.rule.Name] {
			continue
		}
		kept, keptLimits = append(kept, l), append(keptLimits, r.limits[i])
	}
	r.todo, r.limits = kept, keptLimits
}

// report writes what decision d said of each decided descriptor into
// its status, and observes the rules' metrics. It reports whether the
// answer carries dynamic metadata.
func (s *Server) report(snap *Snapshot, req *rlsv3.RateLimitRequest, r *resolved, d *limiter.Decision) (withMetadata bool) {
	current := make([]rlsv3.RateLimitResponse_RateLimit, len(r.todo))
	resets := make([]durationpb.Duration, len(r.todo))
	ratio := snap.NearLimitRatio
	if ratio <= 0 {
		ratio = NearLimitRatio
	}
	withMetadata = snap.DynamicMetadata
	for i, l := range r.todo {
		st := d.Statuses[i]
		reset := st.Reset
		code := rlsv3.RateLimitResponse_OK
		// Over is over, also for a quota-mode descriptor that did not deny
		// the request by itself (envoyproxy/ratelimit reports it so, with
		// the overall code OK); a shadow descriptor reports OK.
		if !st.OK && !l.shadow {
			code, reset = rlsv3.RateLimitResponse_OVER_LIMIT, st.RetryAfter
		}
		if code == rlsv3.RateLimitResponse_OK && l.rule != nil && l.rule.Metadata != nil {
			withMetadata = true
		}
		// Whole seconds, rounded up: Envoy's X-RateLimit-Reset truncates
		// to seconds, and a client told 2 for a 2.4 s wait retries early.
		reset = (reset + time.Second - 1).Truncate(time.Second)
		current[i].Name, current[i].RequestsPerUnit, current[i].Unit = ruleName(l.rule), l.rpu, l.unit
		resets[i].Seconds, resets[i].Nanos = int64(reset/time.Second), int32(reset%time.Second) // as durationpb.New
		ds := &r.sts[l.desc]
		ds.Code, ds.CurrentLimit, ds.DurationUntilReset = code, &current[i], &resets[i]
		ds.LimitRemaining = uint32(min(max(st.Remaining, 0), math.MaxUint32))
		if !st.OK && r.limits[i].Shadow {
			s.log.Debug("shadow limit over", zap.String("rule", r.limits[i].Name))
		}
		if l.rule != nil {
			label, values := l.rule.Path, false
			if l.rule.valueLabels && snap.MetricValues > 0 {
				label, values = l.rule.metricLabel(req.Domain, entriesOf(req.Descriptors[l.desc]))
			}
			s.rules.observe(l.rule.Path, label, values, snap.MetricValues, r.limits[i].Cost, st.OK, l.shadow, st.Limit, st.Remaining, ratio)
		}
	}
	return withMetadata
}

// overLimit makes resp the answer to a denied request: OVER_LIMIT, with
// the denying limit's problem body and the rate-limit headers.
func overLimit(resp *rlsv3.RateLimitResponse, limits []limiter.Limit, d *limiter.Decision) {
	resp.OverallCode = rlsv3.RateLimitResponse_OVER_LIMIT
	denied := d.Denied
	if denied < 0 || denied >= len(limits) {
		denied = 0 // a store that says "over" without naming a limit: the first one over
		for i := range d.Statuses {
			if !d.Statuses[i].OK {
				denied = i
				break
			}
		}
	}
	resp.RawBody = overLimitBody(&limits[denied], &d.Statuses[denied])
	hs := append([]limiter.Header{{Name: "content-type", Value: problem.ContentType}}, d.Headers(limits, limiter.IETF)...)
	resp.ResponseHeadersToAdd = make([]*corev3.HeaderValue, len(hs))
	for i, h := range hs {
		resp.ResponseHeadersToAdd[i] = &corev3.HeaderValue{Key: h.Name, Value: h.Value}
	}
}

// openQuotaGroup decides the request's quota-mode limits as shadows when
// one member of their group always passes, as envoyproxy/ratelimit counts
// it: a shadow quota-mode descriptor (it reports OK), and, under the global
// quota_mode switch (every descriptor quota-mode), a descriptor with no
// limit (unmatched, unlimited or replaced: passing). The group can then not
// deny; its over members still report OVER_LIMIT, and take nothing.
func openQuotaGroup(limits []limiter.Limit, passing bool) {
	for i := range limits {
		passing = passing || limits[i].QuotaMode && limits[i].Shadow
	}
	if !passing {
		return
	}
	for i := range limits {
		if limits[i].QuotaMode {
			limits[i].Shadow = true
		}
	}
}

func ruleName(r *Rule) string {
	if r == nil {
		return ""
	}
	return r.Name
}

// limitFor resolves one descriptor to the limit it is decided against,
// which it writes to lim.
func (s *Server) limitFor(snap *Snapshot, domain string, desc *rlv3.RateLimitDescriptor, cost uint64, lim *limiter.Limit) (limited, bool, error) {
	var buf [4]Entry // on the stack for the usual few entries
	entries := buf[:0]
	var consumer, route string
	for _, e := range desc.Entries {
		entries = append(entries, Entry{Key: e.GetKey(), Value: e.GetValue()})
		switch e.GetKey() {
		case ConsumerEntry:
			consumer = e.GetValue()
		case RouteEntry:
			route = e.GetValue()
		}
	}
	// A domain without rules limits nothing, an override included, as in
	// envoyproxy/ratelimit.
	if snap.Rules == nil || !snap.Rules.HasDomain(domain) {
		return limited{}, false, nil
	}
	if o := desc.GetLimit(); o != nil {
		return overrideLimit(domain, entries, consumer, o, cost, lim)
	}
	m, ok := snap.Rules.Lookup(domain, entries)
	if !ok {
		return limited{}, false, nil
	}
	rule := m.Rule
	l := limited{rule: rule}
	if rule.Unlimited {
		return l, true, nil
	}
	rpu, burst, unit := int64(rule.RequestsPerUnit), int64(rule.Burst), rule.Unit
	per := unitDuration(unit)
	name := rule.Name
	if name == "" {
		name = rule.Path
	}
	if rule.FromPlan && consumer != "" && snap.Consumers != nil {
		if c, ok := snap.Consumers.Consumer(consumer); ok {
			if p, ok := snap.Catalog.Get(c.Plan); ok {
				if r, ok := p.Routes[route]; ok {
					if r.Rate != nil {
						rpu, burst, per, unit = r.Rate.Requests, r.Rate.Burst, r.Rate.Per, ""
						name = p.Name + "/" + route
					}
					if r.Cost > 0 {
						cost = min(cost*uint64(r.Cost), limiter.MaxCost+1) // over MaxCost: a bad limit, not a wrap
					}
				}
			}
		}
	}
	var suffix [32]byte // the state's kind and window, on the stack
	if unit == "" || unit == Second || unit == Minute || unit == Hour {
		*lim = limiter.Limit{Kind: limiter.Bucket, Name: name, Key: keyspace.Rule(m.Key, consumer, strconv.AppendInt(append(suffix[:0], keyspace.RuleBucket...), int64(per), 10)),
			Cost: int64(cost), Requests: rpu, Per: per, Burst: burst}
		l.unit, l.rpu = responseUnit(per), uint32(rpu)
	} else {
		*lim = limiter.Limit{Kind: limiter.Quota, Name: name, Key: keyspace.Rule(m.Key, consumer, append(append(suffix[:0], keyspace.RuleQuota...), unit...)),
			Cost: int64(cost), Max: rpu, Unit: plan.Unit(unit)}
		l.unit, l.rpu = quotaUnit(unit), uint32(rpu)
	}
	if rpu <= 0 {
		// requests_per_unit 0 denies everything, as in envoyproxy/ratelimit.
		lim.Kind, lim.Max, lim.Unit, lim.Requests = limiter.Quota, 0, plan.Year, 0
		lim.Key = keyspace.Rule(m.Key, consumer, []byte(keyspace.RuleZero))
	}
	lim.Shadow, lim.QuotaMode, lim.Debit = rule.Shadow, rule.QuotaMode, rule.Debit
	return l, true, nil
}

// entriesOf is a descriptor's entries as rules take them.
func entriesOf(desc *rlv3.RateLimitDescriptor) []Entry {
	out := make([]Entry, len(desc.GetEntries()))
	for i, e := range desc.GetEntries() {
		out[i] = Entry{Key: e.GetKey(), Value: e.GetValue()}
	}
	return out
}

// maxOverridePeriod bounds a limit override's unit x unit_multiplier.
const maxOverridePeriod = 366 * 24 * time.Hour

func overrideLimit(domain string, entries []Entry, consumer string, o *rlv3.RateLimitDescriptor_RateLimitOverride, cost uint64, lim *limiter.Limit) (limited, bool, error) {
	var key strings.Builder
	key.WriteString(domain)
	for _, e := range entries {
		key.WriteString("." + e.Key + "=" + e.Value)
	}
	k := keyspace.Rule(key.String(), consumer, []byte(keyspace.RuleOverride))
	rpu := int64(o.GetRequestsPerUnit())
	l := limited{rpu: o.GetRequestsPerUnit()}
	mult := time.Duration(max(o.GetUnitMultiplier().GetValue(), 1))
	fixed := map[typev3.RateLimitUnit]time.Duration{typev3.RateLimitUnit_SECOND: time.Second, typev3.RateLimitUnit_MINUTE: time.Minute,
		typev3.RateLimitUnit_HOUR: time.Hour, typev3.RateLimitUnit_DAY: 24 * time.Hour}
	unit, isFixed := fixed[o.GetUnit()]
	switch {
	case isFixed && mult > maxOverridePeriod/unit:
		// unit x unit_multiplier would overflow (HOUR x 4294967295 wrapped
		// to a 111-year bucket) or outgrow any billing period.
		return limited{}, false, status.Errorf(codes.InvalidArgument, "limit override: unit_multiplier %d with unit %s is over a year", mult, o.GetUnit())
	case isFixed && (mult > 1 || o.GetUnit() != typev3.RateLimitUnit_DAY):
		// A bucket over unit x unit_multiplier (several days are a bucket
		// too: no calendar has "every 3 days").
		per := unit * mult
		*lim = limiter.Limit{Kind: limiter.Bucket, Name: "override", Key: k + ":" + strconv.FormatInt(int64(per), 10), Cost: int64(cost), Requests: rpu, Per: per}
		l.unit = responseUnit(unit)
	case mult > 1:
		return limited{}, false, status.Errorf(codes.InvalidArgument, "limit override: unit_multiplier %d with unit %s; calendar months and years take no multiplier", mult, o.GetUnit())
	case o.GetUnit() == typev3.RateLimitUnit_DAY || o.GetUnit() == typev3.RateLimitUnit_MONTH || o.GetUnit() == typev3.RateLimitUnit_YEAR:
		u := map[typev3.RateLimitUnit]RuleUnit{typev3.RateLimitUnit_DAY: Day, typev3.RateLimitUnit_MONTH: Month, typev3.RateLimitUnit_YEAR: Year}[o.GetUnit()]
		*lim = limiter.Limit{Kind: limiter.Quota, Name: "override", Key: k + ":" + string(u), Cost: int64(cost), Max: rpu, Unit: plan.Unit(u)}
		l.unit = quotaUnit(u)
	default:
		return limited{}, false, status.Errorf(codes.InvalidArgument, "limit override has unit %s; want SECOND, MINUTE, HOUR, DAY, MONTH or YEAR", o.GetUnit())
	}
	if rpu <= 0 {
		*lim = limiter.Limit{Kind: limiter.Quota, Name: "override", Key: k + ":zero", Cost: int64(cost), Unit: plan.Year}
	}
	return l, true, nil
}

func unitDuration(u RuleUnit) time.Duration {
	switch u {
	case Second:
		return time.Second
	case Minute:
		return time.Minute
	case Hour:
		return time.Hour
	}
	return 0
}

// responseUnit names a bucket's period for Envoy: the unit it is a whole
// number of, else UNKNOWN.
func responseUnit(per time.Duration) rlsv3.RateLimitResponse_RateLimit_Unit {
	switch per {
	case time.Second:
		return rlsv3.RateLimitResponse_RateLimit_SECOND
	case time.Minute:
		return rlsv3.RateLimitResponse_RateLimit_MINUTE
	case time.Hour:
		return rlsv3.RateLimitResponse_RateLimit_HOUR
	case 24 * time.Hour:
		return rlsv3.RateLimitResponse_RateLimit_DAY
	}
	return rlsv3.RateLimitResponse_RateLimit_UNKNOWN
}

func quotaUnit(u RuleUnit) rlsv3.RateLimitResponse_RateLimit_Unit {
	switch u {
	case Day:
		return rlsv3.RateLimitResponse_RateLimit_DAY
	case Week:
		return rlsv3.RateLimitResponse_RateLimit_WEEK
	case Month:
		return rlsv3.RateLimitResponse_RateLimit_MONTH
	case Year:
		return rlsv3.RateLimitResponse_RateLimit_YEAR
	}
	return rlsv3.RateLimitResponse_RateLimit_UNKNOWN
}

// overLimitBody is the 429's problem document.
func overLimitBody(l *limiter.Limit, st *limiter.Status) []byte {
	d := problem.New(http.StatusTooManyRequests, "rate_limited", limiter.Explain(l, st))
	d.Limit = l.Name
	return d.JSON()
}
