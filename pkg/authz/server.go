// Package authz is levy's Envoy ext_authz v3 server: it finds the API key in
// a request, resolves it to a consumer and plan, decides the plan's rate and
// quota in one limiter call, and answers Envoy with an allow (identity
// headers for the upstream, the key header removed, dynamic metadata) or a
// denial (401, 403, 429 with a problem body and rate-limit headers). A denial
// is a response, never an RPC error: Envoy's failure mode must only ever see
// levy being broken.
package authz

import (
	"context"
	"errors"
	"maps"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/consumerlimits"
	"github.com/levyhq/levy/pkg/history"
	"github.com/levyhq/levy/pkg/limiter"
	"github.com/levyhq/levy/pkg/plan"
	"github.com/levyhq/levy/pkg/problem"
	"github.com/levyhq/levy/pkg/telemetry"
)

// Snapshot is everything a decision reads that a reload may change.
// Server.Swap replaces it whole, and nothing changes its exported fields
// once it is in force. It also carries a cache of what it derives for each
// key (its identities, built on first use): the cache belongs to the
// snapshot because an identity holds the snapshot's plan and header names,
// so a reload starts a new one and the old one goes with its snapshot.
type Snapshot struct {
	Catalog   *plan.Catalog
	Directory apikey.Directory
	Hasher    apikey.Hasher
	// KeyHeaders carry the key as their whole value; Bearer also accepts
	// "authorization: Bearer <key>".
	KeyHeaders []string
	Bearer     bool
	// Header names set on allowed requests.
	ConsumerHeader, PlanHeader, CredentialHeader string
	// LedgerWindow is the usage ledger's window; zero counts no ledger.
	LedgerWindow time.Duration

	identities    sync.Map     // identityKey -> *identity, filled as keys are seen
	identityCount atomic.Int64 // bounds identities
	keyHeadersOut []string     // headers_to_remove
}

// SnapshotConfig is what a Snapshot is built from: the plans, the
// consumers and keys known without the store (the file's, demo keys), the
// store for the rest, and how keys arrive and callers are named.
type SnapshotConfig struct {
	Catalog   *plan.Catalog
	Consumers []*apikey.Consumer
	Keys      []*apikey.Key
	// Store finds the consumers and keys the lists above do not hold; nil
	// for none.
	Store  apikey.Store
	Hasher apikey.Hasher
	// KeyHeaders, Bearer, the header names and LedgerWindow are the
	// Snapshot's.
	KeyHeaders                                   []string
	Bearer                                       bool
	ConsumerHeader, PlanHeader, CredentialHeader string
	LedgerWindow                                 time.Duration
}

// NewSnapshot builds a snapshot.
func NewSnapshot(cfg SnapshotConfig) *Snapshot {
	snap := &Snapshot{
		Catalog:          cfg.Catalog,
		Directory:        apikey.Layered{Static: apikey.NewIndex(cfg.Consumers, cfg.Keys), Store: cfg.Store},
		Hasher:           cfg.Hasher,
		KeyHeaders:       cfg.KeyHeaders,
		Bearer:           cfg.Bearer,
		ConsumerHeader:   cfg.ConsumerHeader,
		PlanHeader:       cfg.PlanHeader,
		CredentialHeader: cfg.CredentialHeader,
		LedgerWindow:     cfg.LedgerWindow,
	}
	snap.Prepare()
	return snap
}

// Prepare fills derived fields; NewSnapshot calls it, and so must code that
// builds a Snapshot by hand.
func (snap *Snapshot) Prepare() {
	snap.keyHeadersOut = append([]string(nil), snap.KeyHeaders...)
}

// Config configures a Server.
type Config struct {
	Snapshot *Snapshot
	Limiter  limiter.Limiter
	Metrics  *telemetry.Metrics
	Log      *zap.Logger
	// Clock decides key expiry; nil means time.Now.
	Clock func() time.Time
	// History, when set, counts each decision a key's limits made (allowed,
	// or denied for rate, quota or spend cap) for the usage history: an
	// atomic add per decision, flushed by the history.Keeper.
	History *history.Recorder
}

// Server implements Envoy's Authorization service.
type Server struct {
	authv3.UnimplementedAuthorizationServer
	snap    atomic.Pointer[Snapshot]
	limiter limiter.Limiter
	metrics *telemetry.Metrics
	log     *zap.Logger
	clock   func() time.Time
	hist    *history.Recorder
	// The allow path's metrics, resolved once.
	allowed prometheus.Counter
	latency prometheus.Observer
}

var _ authv3.AuthorizationServer = (*Server)(nil)

// New returns a server.
func New(cfg Config) *Server {
	s := &Server{limiter: cfg.Limiter, metrics: cfg.Metrics, log: cfg.Log, clock: cfg.Clock, hist: cfg.History}
	if s.log == nil {
		s.log = zap.NewNop()
	}
	if s.metrics == nil {
		s.metrics = telemetry.NewMetrics()
	}
	if s.clock == nil {
		s.clock = time.Now
	}
	s.allowed = s.metrics.Decisions.WithLabelValues("authz", "allow", "ok")
	s.latency = s.metrics.Latency.WithLabelValues("authz")
	// Every denial reason on /metrics at 0 from the start, so that a
	// rate or an alert over one is defined before its first denial.
	for _, reason := range DenyReasons {
		s.metrics.Decisions.WithLabelValues("authz", "deny", reason)
	}
	s.metrics.Decisions.WithLabelValues("authz", "error", "internal")
	s.snap.Store(cfg.Snapshot)
	return s
}

// Snapshot returns the snapshot in force.
func (s *Server) Snapshot() *Snapshot { return s.snap.Load() }

// Swap installs a new snapshot; requests in flight finish on the old one.
func (s *Server) Swap(snap *Snapshot) { s.snap.Store(snap) }

// Reasons a request is denied, as they appear in metrics and bodies.
const (
	ReasonMissingKey   = "missing_key"
	ReasonMalformedKey = "malformed_key"
	ReasonUnknownKey   = "unknown_key"
	ReasonRevokedKey   = "revoked_key"
	ReasonExpiredKey   = "expired_key"
	// ReasonRotatedKey: a key replaced by a rotation, past its deadline.
	ReasonRotatedKey  = "rotated_key"
	ReasonSuspended   = "consumer_suspended"
	ReasonRateLimited = "rate_limited"
	ReasonQuota       = "quota_exceeded"
	ReasonSpendCap    = "spend_cap_reached"
	// ReasonStoreUnavailable: the store cannot be reached and
	// on_store_error is deny (or the key is not cached).
	ReasonStoreUnavailable = "store_unavailable"
	// ReasonPlanUnavailable: the consumer's plan is not in the config.
	ReasonPlanUnavailable = "plan_unavailable"
)

// DenyReasons are every reason Check denies for.
var DenyReasons = []string{ReasonMissingKey, ReasonMalformedKey, ReasonUnknownKey, ReasonRevokedKey, ReasonExpiredKey,
	ReasonSuspended, ReasonRateLimited, ReasonQuota, ReasonSpendCap, ReasonStoreUnavailable, ReasonPlanUnavailable}

// Check implements authv3.AuthorizationServer, for a server registered
// with authv3.RegisterAuthorizationServer; levy serve registers it with
// Register, which reads only what Check reads of each request.
func (s *Server) Check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	return s.serve(ctx, RequestOf(req))
}

// serve answers r and counts the answer.
func (s *Server) serve(ctx context.Context, r *Request) (*authv3.CheckResponse, error) {
	start := time.Now()
	resp, reason, err := s.check(ctx, r)
	result := "allow"
	switch {
	case err != nil:
		result, reason = "error", "internal"
	case resp.GetStatus().GetCode() != int32(codes.OK):
		result = "deny"
	}
	if result == "allow" {
		s.allowed.Inc()
		s.latency.Observe(time.Since(start).Seconds())
	} else {
		s.metrics.Observe("authz", result, reason, time.Since(start))
	}
	return resp, err
}

func (s *Server) check(ctx context.Context, r *Request) (*authv3.CheckResponse, string, error) {
	snap := s.snap.Load()
	key, keyHeader := snap.extractKey(r)
	if keyHeader == "" {
		return unauthorized(ReasonMissingKey, "no API key: send it in the "+snap.describeKeyHeaders()), ReasonMissingKey, nil
	}
	if apikey.Check(key) != nil {
		return unauthorized(ReasonMalformedKey, "the API key is not well formed"), ReasonMalformedKey, nil
	}
	k, c, err := snap.Directory.Lookup(ctx, snap.Hasher.Hash(key))
	if errors.Is(err, apikey.ErrUnknown) {
		return unauthorized(ReasonUnknownKey, "unknown API key"), ReasonUnknownKey, nil
	}
	if err != nil {
		s.log.Error("look up key", zap.String("request_id", r.Header("x-request-id")), zap.Error(err))
		s.metrics.StoreErrors.WithLabelValues(telemetry.StoreOpLookup).Inc()
		return storeUnavailable("the key cannot be checked right now"), ReasonStoreUnavailable, nil
	}
	now := s.clock()
	switch {
	case k.Revoked:
		return forbidden(ReasonRevokedKey, "this API key was revoked"), ReasonRevokedKey, nil
	case k.Expired(now) && k.ReplacedBy != "":
		return forbidden(ReasonRotatedKey, "this API key was rotated and stopped working at "+k.ExpiresAt.UTC().Format(time.RFC3339)+
			": use the key that replaced it"), ReasonRotatedKey, nil
	case k.Expired(now):
		return forbidden(ReasonExpiredKey, "this API key expired at "+k.ExpiresAt.UTC().Format(time.RFC3339)), ReasonExpiredKey, nil
	case c.SuspendedAt(now):
		return forbidden(ReasonSuspended, "this consumer is suspended"), ReasonSuspended, nil
	}
	p, ok := snap.Catalog.Get(c.Plan)
	if !ok {
		// A plan removed by a reload while stored consumers are still on it:
		// deny (an RPC error would be an allow under failure_mode_allow).
		s.log.Error("consumer has an unknown plan", zap.String("consumer", c.ID), zap.String("plan", c.Plan))
		return denied(codes.Unavailable, typev3.StatusCode_ServiceUnavailable, ReasonPlanUnavailable,
			"this consumer's plan is not available right now", nil, nil), ReasonPlanUnavailable, nil
	}

	cost := p.CostFor(r.Path)
	id := snap.identity(k, c, p)
	limits := id.withCost(cost)
	d, err := s.limiter.Decide(ctx, limits)
	if err != nil {
		s.log.Error("decide", zap.String("request_id", r.Header("x-request-id")), zap.String("consumer", c.ID), zap.Error(err))
		s.metrics.StoreErrors.WithLabelValues(telemetry.StoreOpDecide).Inc()
		return storeUnavailable("limits cannot be checked right now"), ReasonStoreUnavailable, nil
	}
	// The IETF pair only with denials: on every allow it would double what
	// levy adds to each response.
	set := limiter.XRateLimit
	if !d.OK {
		set |= limiter.IETF
	}
	rl := d.Headers(limits, set)
	debug := s.log.Core().Enabled(zap.DebugLevel)
	if !d.OK {
		reason := denialReason(&limits[d.Denied])
		if s.hist != nil {
			id.counter(s.hist, c.ID, k.ID).Deny(now, historyReason(reason))
		}
		if debug {
			s.log.Debug("deny", zap.String("request_id", r.Header("x-request-id")), zap.String("key_id", k.ID),
				zap.String("consumer", c.ID), zap.String("reason", reason))
		}
		return tooMany(reason, limiter.Explain(&limits[d.Denied], &d.Statuses[d.Denied]), rl, id.metadata), reason, nil
	}
	if s.hist != nil {
		id.counter(s.hist, c.ID, k.ID).Allow(now)
	}
	if debug {
		s.log.Debug("allow", zap.String("request_id", r.Header("x-request-id")), zap.String("key_id", k.ID),
			zap.String("consumer", c.ID), zap.Int64("cost", cost))
	}
	return &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(codes.OK)},
		HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{
			Headers:              id.headers,
			HeadersToRemove:      snap.removeHeaders(r),
			ResponseHeadersToAdd: responseHeaders(rl),
		}},
		DynamicMetadata: id.allowMetadata(&d),
	}, "ok", nil
}

// The dynamic metadata of an allow, which Envoy's access log carries back
// to levy under filter_metadata["envoy.filters.http.ext_authz"].
const (
	MetadataConsumer = "consumer" // the consumer's id
	MetadataPlan     = "plan"     // the plan's name
	MetadataModel    = "model"    // the plan's billing model
	MetadataKeyID    = "key_id"   // the API key's id
	// MetadataWindow is a number: the unix seconds of the start of the
	// usage ledger window this request's units were counted in at
	// admission (by the store's clock). Settlement adjusts that window, not
	// the one the request's start time falls in: at a window's edge the two
	// differ, and a refund in the other window would miss its units.
	MetadataWindow = "window"
	// MetadataLedger is a string: the ledger's state key the units were
	// counted under (usage.LedgerKey of the consumer and the plan's terms).
	MetadataLedger = "ledger"
	// MetadataQuota is a string: the state key of the quota counter the
	// units were counted in (usage.QuotaKey of the consumer), and
	// MetadataPeriod a number: the unix seconds of that counter's period
	// start. Settlement moves the counter with the ledger window, and only
	// while it still counts that period.
	MetadataQuota  = "quota"
	MetadataPeriod = "period"
)

// identity is what levy tells Envoy about an allowed caller: the same for
// every request of a key on a plan, so it is built once per snapshot and
// shared (protobuf messages are safe to marshal concurrently).
type identity struct {
	headers []*corev3.HeaderValueOption
	// metadata is who is calling, for denials; allows add the ledger window.
	metadata *structpb.Struct
	limits   []limiter.Limit // with cost 1
	// ledgerAt is the index of the ledger limit in limits, -1 when none;
	// ledger its key as a metadata value. quotaAt and quota are the same
	// for the quota (or usage) counter.
	ledgerAt int
	ledger   *structpb.Value
	quotaAt  int
	quota    *structpb.Value
	// counted is the metadata of allows counted in the ledger window last
	// seen: built once a window (not once a request) and then shared, never
	// changed, like metadata.
	counted atomic.Pointer[countedMetadata]
	// hist is the key's usage-history counter, taken from the recorder on
	// first use (and again when the recorder forgot it).
	hist atomic.Pointer[history.Counter]
}

// counter is the identity's usage-history counter.
func (id *identity) counter(rec *history.Recorder, consumer, key string) *history.Counter {
	c := id.hist.Load()
	if c == nil || c.Dead() {
		c = rec.Counter(consumer, key)
		id.hist.Store(c)
	}
	return c
}

// countedMetadata is an identity's metadata with the ledger window and
// the quota period a request was counted in, and the messages it is made
// of: one allocation for them all.
type countedMetadata struct {
	window, period int64 // unix seconds; period 0: no quota period
	metadata       structpb.Struct
	value, pvalue  structpb.Value
	number, pnum   structpb.Value_NumberValue
}

// allowMetadata is the dynamic metadata of a request that d allowed: the
// identity's, and the ledger window d counted its units in, with the
// ledger's key, and the quota counter's key and period. A limiter that
// reports no window start leaves them out (and the quota's, without its
// period start).
func (id *identity) allowMetadata(d *limiter.Decision) *structpb.Struct {
	if id.ledgerAt < 0 || id.ledgerAt >= len(d.Statuses) || d.Statuses[id.ledgerAt].PeriodStart.IsZero() {
		return id.metadata
	}
	window := d.Statuses[id.ledgerAt].PeriodStart.Unix()
	var period int64
	if id.quotaAt >= 0 && id.quotaAt < len(d.Statuses) && !d.Statuses[id.quotaAt].PeriodStart.IsZero() {
		period = d.Statuses[id.quotaAt].PeriodStart.Unix()
	}
	if c := id.counted.Load(); c != nil && c.window == window && c.period == period {
		return &c.metadata
	}
	// A new window or period (or, for requests in flight across an edge,
	// the one before): a new map, sharing the identity's values, which no
	// one changes.
	c := &countedMetadata{window: window, period: period}
	c.number.NumberValue = float64(window)
	c.value.Kind = &c.number
	c.metadata.Fields = make(map[string]*structpb.Value, len(id.metadata.Fields)+4)
	maps.Copy(c.metadata.Fields, id.metadata.Fields)
	c.metadata.Fields[MetadataLedger] = id.ledger
	c.metadata.Fields[MetadataWindow] = &c.value
	if period != 0 {
		c.pnum.NumberValue = float64(period)
		c.pvalue.Kind = &c.pnum
		c.metadata.Fields[MetadataQuota] = id.quota
		c.metadata.Fields[MetadataPeriod] = &c.pvalue
	}
	id.counted.Store(c)
	return &c.metadata
}

// maxIdentities bounds the identity cache.
const maxIdentities = 200_000

// identityKey is what an identity is built from, by value: the Redis
// directory hands out new records on every cache refresh, and keying by
// pointer would grow the cache with each.
type identityKey struct {
	key, consumer string
	plan          *plan.Plan // from this snapshot's catalog
	anchor        int64      // the consumer's period anchor
}

func (snap *Snapshot) identity(k *apikey.Key, c *apikey.Consumer, p *plan.Plan) *identity {
	ik := identityKey{k.ID, c.ID, p, c.PeriodAnchor.UnixNano()}
	if v, ok := snap.identities.Load(ik); ok {
		return v.(*identity)
	}
	// append unset: Envoy overwrites, so a client cannot smuggle its own
	// identity headers to the upstream.
	set := func(name, value string) *corev3.HeaderValueOption {
		return &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: name, Value: value}}
	}
	id := &identity{
		headers: []*corev3.HeaderValueOption{
			set(snap.ConsumerHeader, c.ID),
			set(snap.PlanHeader, p.Name),
			set(snap.CredentialHeader, k.ID),
		},
		metadata: &structpb.Struct{Fields: map[string]*structpb.Value{
			MetadataConsumer: structpb.NewStringValue(c.ID),
			MetadataPlan:     structpb.NewStringValue(p.Name),
			MetadataModel:    structpb.NewStringValue(string(p.Model)),
			MetadataKeyID:    structpb.NewStringValue(k.ID),
		}},
		ledgerAt: -1,
	}
	cl := consumerlimits.For(c, p, 1, snap.LedgerWindow)
	id.limits = cl.Slice()
	id.quotaAt, id.quota = cl.QuotaAt(), structpb.NewStringValue(cl.Quota.Key)
	if cl.Ledger != nil {
		id.ledgerAt, id.ledger = cl.LedgerAt(), structpb.NewStringValue(cl.Ledger.Key)
	}
	if snap.identityCount.Add(1) > maxIdentities {
		// Keys come and go (revoked, rotated): start over rather than grow.
		snap.identities.Clear()
		snap.identityCount.Store(1)
	}
	v, _ := snap.identities.LoadOrStore(ik, id)
	return v.(*identity)
}

// withCost returns the request's limits with the units counter and the
// ledger at cost.
func (id *identity) withCost(cost int64) []limiter.Limit {
	ls := make([]limiter.Limit, len(id.limits))
	copy(ls, id.limits)
	for i := range ls {
		if ls[i].Kind != limiter.Bucket {
			ls[i].Cost = cost
		}
	}
	return ls
}

// removeHeaders lists what to strip before the upstream: every configured
// key header (a client may send a key in more than one), and the bearer
// token when it holds a key, whichever header this request's key came from.
func (snap *Snapshot) removeHeaders(r *Request) []string {
	if !snap.Bearer {
		return snap.keyHeadersOut
	}
	v := r.Header("authorization")
	if len(v) > 7 && strings.EqualFold(v[:7], "bearer ") && apikey.Check(strings.TrimSpace(v[7:])) == nil {
		return append(snap.keyHeadersOut[:len(snap.keyHeadersOut):len(snap.keyHeadersOut)], "authorization")
	}
	return snap.keyHeadersOut
}

// extractKey finds the key: the key headers in order, then a bearer token.
// It returns the header it came from ("" when there is none).
func (snap *Snapshot) extractKey(r *Request) (key, header string) {
	for _, h := range snap.KeyHeaders {
		if v := strings.TrimSpace(r.Header(h)); v != "" {
			return v, h
		}
	}
	if snap.Bearer {
		v := r.Header("authorization")
		if len(v) > 7 && strings.EqualFold(v[:7], "bearer ") {
			if t := strings.TrimSpace(v[7:]); t != "" {
				return t, "authorization"
			}
		}
	}
	return "", ""
}

func (snap *Snapshot) describeKeyHeaders() string {
	var parts []string
	for _, h := range snap.KeyHeaders {
		parts = append(parts, h+" header")
	}
	if snap.Bearer {
		parts = append(parts, "Authorization: Bearer header")
	}
	return strings.Join(parts, " or the ")
}

func denialReason(l *limiter.Limit) string {
	switch {
	case l.Kind == limiter.Bucket:
		return ReasonRateLimited
	case l.Soft:
		return ReasonSpendCap
	default:
		return ReasonQuota
	}
}

// historyReason is a denial reason as the usage history counts it.
func historyReason(reason string) history.Reason {
	switch reason {
	case ReasonRateLimited:
		return history.ReasonRate
	case ReasonSpendCap:
		return history.ReasonCap
	default:
		return history.ReasonQuota
	}
}

func responseHeaders(hs []limiter.Header) []*corev3.HeaderValueOption {
	out := make([]*corev3.HeaderValueOption, len(hs))
	for i, h := range hs {
		out[i] = &corev3.HeaderValueOption{
			Header:       &corev3.HeaderValue{Key: h.Name, Value: h.Value},
			AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
		}
	}
	return out
}

func unauthorized(reason, detail string) *authv3.CheckResponse {
	return denied(codes.Unauthenticated, typev3.StatusCode_Unauthorized, reason, detail,
		[]limiter.Header{{Name: "www-authenticate", Value: `Bearer realm="levy"` + wwwError(reason)}}, nil)
}

func wwwError(reason string) string {
	if reason == ReasonMissingKey {
		return ""
	}
	return `, error="invalid_token"`
}

// storeUnavailable is on_store_error: deny: a 503 the client can retry.
func storeUnavailable(detail string) *authv3.CheckResponse {
	return denied(codes.Unavailable, typev3.StatusCode_ServiceUnavailable, ReasonStoreUnavailable, detail+"; retry shortly",
		[]limiter.Header{{Name: "retry-after", Value: "1"}}, nil)
}

func forbidden(reason, detail string) *authv3.CheckResponse {
	return denied(codes.PermissionDenied, typev3.StatusCode_Forbidden, reason, detail, nil, nil)
}

func tooMany(reason, detail string, rl []limiter.Header, md *structpb.Struct) *authv3.CheckResponse {
	return denied(codes.ResourceExhausted, typev3.StatusCode_TooManyRequests, reason, detail, rl, md)
}

func denied(code codes.Code, httpStatus typev3.StatusCode, reason, detail string, extra []limiter.Header, md *structpb.Struct) *authv3.CheckResponse {
	hs := make([]*corev3.HeaderValueOption, 0, len(extra)+1)
	hs = append(hs, &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: "content-type", Value: problem.ContentType}})
	hs = append(hs, responseHeaders(extra)...)
	return &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(code), Message: reason},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status:  &typev3.HttpStatus{Code: httpStatus},
			Headers: hs,
			Body:    string(problem.New(int(httpStatus), reason, detail).JSON()),
		}},
		DynamicMetadata: md,
	}
}
