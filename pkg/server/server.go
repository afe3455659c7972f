// Package server wires levy together: the store, the limiter, the gRPC
// services Envoy calls, the HTTP endpoints for health and metrics, config
// reloads and graceful shutdown. It holds no decision logic of its own.
package server

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
	"golang.org/x/net/netutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/mem"

	"github.com/levyhq/levy/api"
	"github.com/levyhq/levy/pkg/admin"
	"github.com/levyhq/levy/pkg/alert"
	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/authz"
	"github.com/levyhq/levy/pkg/billing"
	"github.com/levyhq/levy/pkg/config"
	"github.com/levyhq/levy/pkg/console"
	"github.com/levyhq/levy/pkg/history"
	"github.com/levyhq/levy/pkg/plan"
	"github.com/levyhq/levy/pkg/portal"
	"github.com/levyhq/levy/pkg/rls"
	"github.com/levyhq/levy/pkg/telemetry"
	"github.com/levyhq/levy/pkg/usage"
	"github.com/levyhq/levy/pkg/wire"
)

// Options configure a Server beyond the config file.
type Options struct {
	Log *zap.Logger
	// Out receives the demo key lines (stdout in levy serve).
	Out io.Writer
	// Clock drives the limiter and key expiry; nil means time.Now.
	Clock func() time.Time
	// ReloadEvery is how often the config file and the rate limit rule
	// directory are checked for changes (default 250ms; negative disables
	// reloading).
	ReloadEvery time.Duration
	// Reload loads the config again; nil means config.Load(cfg.Source).
	// The rate-limit rules are read when the snapshots are built from it.
	Reload func() (*config.Config, error)
	// ShutdownGrace bounds how long in-flight calls may take at shutdown.
	ShutdownGrace time.Duration
	// HTTP bounds what one HTTP client may hold; zero fields take
	// DefaultHTTPLimits'.
	HTTP HTTPLimits
}

// HTTPLimits bound the HTTP listener's clients, so that slow or idle ones
// (the webhook faces the internet) cannot hold connections, and so file
// descriptors, for long.
type HTTPLimits struct {
	// ReadHeader and Read bound reading a request's headers and all of
	// it, body included; Write bounds writing the answer; Idle how long a
	// keep-alive connection waits for its next request.
	ReadHeader, Read, Write, Idle time.Duration
	// MaxHeaderBytes bounds a request's headers.
	MaxHeaderBytes int
	// MaxConns bounds the listener's open connections (LimitListener):
	// more wait to be accepted until one closes.
	MaxConns int
}

// DefaultHTTPLimits are levy serve's (config.HTTPLimits documents them).
var DefaultHTTPLimits = HTTPLimits{ReadHeader: 5 * time.Second, Read: 15 * time.Second, Write: 30 * time.Second,
	Idle: 30 * time.Second, MaxHeaderBytes: 64 << 10, MaxConns: 10000}

// MaxHTTPBody bounds any HTTP request's body, whatever its route: the
// largest a route reads is a Stripe webhook's (billing.MaxWebhookBody; the
// admin API reads admin.MaxBody), and the others read none.
const MaxHTTPBody = 1 << 20

// or is l with its zero fields taken from d.
func (l HTTPLimits) or(d HTTPLimits) HTTPLimits {
	l.ReadHeader, l.Read, l.Write, l.Idle = cmp.Or(l.ReadHeader, d.ReadHeader), cmp.Or(l.Read, d.Read), cmp.Or(l.Write, d.Write), cmp.Or(l.Idle, d.Idle)
	l.MaxHeaderBytes, l.MaxConns = cmp.Or(l.MaxHeaderBytes, d.MaxHeaderBytes), cmp.Or(l.MaxConns, d.MaxConns)
	return l
}

// httpLimits are the HTTP listener's limits: Options', then the config
// file's, then the defaults.
func (s *Server) httpLimits() HTTPLimits {
	c := s.cfg.Listen.HTTPLimits
	file := HTTPLimits{ReadHeader: time.Duration(c.ReadHeaderTimeout), Read: time.Duration(c.ReadTimeout), Write: time.Duration(c.WriteTimeout),
		Idle: time.Duration(c.IdleTimeout), MaxHeaderBytes: c.MaxHeaderBytes, MaxConns: c.MaxConns}
	return s.opts.HTTP.or(file).or(DefaultHTTPLimits)
}

// Server is a running levy.
type Server struct {
	cfg     *config.Config
	opts    Options
	log     *zap.Logger
	metrics *telemetry.Metrics
	backend *backend
	authz   *authz.Server
	rls     *rls.Server
	als     *usage.Receiver
	// history flushes decision counts and rolls up the ledger (nil when
	// usage.history is off).
	history *history.Keeper
	demo    []*apikey.Consumer
	demoKey []*apikey.Key
	portal  *portal.Handler
	// console and consoleIndex are the operator console and its list.
	console      *console.Handler
	consoleIndex *console.Index
	alerter      *alert.Alerter

	grpcLis, httpLis net.Listener
	grpc             *grpc.Server
	http             *http.Server
	// publicLis and public serve the webhook on a listener of its own
	// when listen.public is set (nil otherwise).
	publicLis net.Listener
	public    *http.Server
	health    *health.Server
	ready     atomic.Bool
	replicaID string
	// live is the config in force (s.cfg is the one levy started with:
	// listeners, store and billing windows take a restart).
	live atomic.Pointer[config.Config]
}

// New opens the store and binds the listeners; Run serves.
func New(cfg *config.Config, opts Options) (*Server, error) {
	if opts.Log == nil {
		opts.Log = zap.NewNop()
	}
	if opts.Out == nil {
		opts.Out = io.Discard
	}
	if opts.ReloadEvery == 0 {
		opts.ReloadEvery = 250 * time.Millisecond
	}
	if opts.Reload == nil {
		src := cfg.Source
		opts.Reload = func() (*config.Config, error) { return config.Load(src) }
	}
	if opts.ShutdownGrace <= 0 {
		opts.ShutdownGrace = 10 * time.Second
	}
	s := &Server{cfg: cfg, opts: opts, log: opts.Log, metrics: telemetry.NewMetrics(), replicaID: uuid.NewString()}
	s.live.Store(cfg)
	var err error
	if s.backend, err = s.openBackend(cfg); err != nil {
		return nil, err
	}
	if err := s.setupDemo(); err != nil {
		s.closeStore()
		return nil, err
	}
	authzSnap, rlsSnap, err := s.snapshots(cfg)
	if err != nil {
		s.closeStore()
		return nil, err
	}
	ledger := s.backend.ledger
	var recorder *history.Recorder
	if s.backend.history != nil {
		s.history = history.New(history.Config{Store: s.backend.history, Ledger: s.backend.ledger, Consumers: s.backend.consumers,
			Retention: retention(cfg), Every: time.Duration(cfg.Usage.History.Every), Period: s.periodStart, Clock: opts.Clock, Log: s.log})
		recorder = s.history.Recorder()
		// Settlements touch the hours they change, for the roll-up.
		ledger = history.TrackLedger(ledger, s.history)
	}
	s.authz = authz.New(authz.Config{Snapshot: authzSnap, Limiter: s.backend.limiter, Metrics: s.metrics, Log: s.log, Clock: opts.Clock,
		History: recorder})
	s.rls = rls.New(rls.Config{Snapshot: rlsSnap, Limiter: s.backend.limiter, Metrics: s.metrics, Log: s.log})
	s.als = usage.NewReceiver(usage.ReceiverConfig{
		Ledger:         ledger,
		Catalog:        func() *plan.Catalog { return s.authz.Snapshot().Catalog },
		UnitsHeader:    cfg.Billing.UnitsHeader,
		ConsumerHeader: cfg.Billing.ConsumerHeader,
		Metrics:        s.metrics,
		Log:            s.log,
	})
	if s.alerter, err = s.newAlerter(); err != nil {
		s.als.Close(context.Background())
		s.closeStore()
		return nil, err
	}
	if err := s.listen(); err != nil {
		s.als.Close(context.Background())
		s.closeStore()
		return nil, err
	}
	returnLoadMemory()
	return s, nil
}

func (s *Server) listen() error {
	var err error
	if s.grpcLis, err = net.Listen("tcp", s.cfg.Listen.GRPC); err != nil {
		return fmt.Errorf("listen grpc: %w", err)
	}
	if s.httpLis, err = net.Listen("tcp", s.cfg.Listen.HTTP); err != nil {
		s.grpcLis.Close()
		return fmt.Errorf("listen http: %w", err)
	}
	if s.cfg.Listen.Public != "" {
		if s.publicLis, err = net.Listen("tcp", s.cfg.Listen.Public); err != nil {
			s.grpcLis.Close()
			s.httpLis.Close()
			return fmt.Errorf("listen public: %w", err)
		}
	}
	tlsCfg, err := s.cfg.ServerTLS()
	if err != nil {
		s.closeListeners()
		return fmt.Errorf("listen tls: %w", err)
	}
	opts := GRPCOptions()
	if tlsCfg != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(tlsCfg)))
		// The HTTP port serves kubelet probes and Stripe's webhooks, which
		// present no client certificate: TLS there, client certificates
		// optional (the admin API has its token).
		grpcTLS := tlsCfg.GetConfigForClient
		httpTLS := &tls.Config{MinVersion: tls.VersionTLS12, GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
			c, err := grpcTLS(h)
			if err != nil || c == nil || c.ClientAuth != tls.RequireAndVerifyClientCert {
				return c, err
			}
			c = c.Clone()
			c.ClientAuth = tls.VerifyClientCertIfGiven
			return c, nil
		}}
		s.httpLis = tls.NewListener(s.httpLis, httpTLS)
		if s.publicLis != nil {
			s.publicLis = tls.NewListener(s.publicLis, httpTLS)
		}
	}
	s.grpc = grpc.NewServer(opts...)
	authz.Register(s.grpc, s.authz)
	rlsv3.RegisterRateLimitServiceServer(s.grpc, s.rls)
	accesslogv3.RegisterAccessLogServiceServer(s.grpc, s.als)
	s.health = health.NewServer()
	healthpb.RegisterHealthServer(s.grpc, s.health)
	s.registerStoreGauges()

	s.portal = s.newPortal()
	adminAPI := admin.New(admin.Config{
		Store:      s.backend.store,
		Catalog:    func() *plan.Catalog { return s.authz.Snapshot().Catalog },
		Hasher:     func() apikey.Hasher { return s.authz.Snapshot().Hasher },
		Prefix:     func() string { return s.live.Load().Keys.Prefix },
		Token:      s.cfg.AdminToken.Value(),
		Log:        s.log,
		Clock:      s.opts.Clock,
		Usage:      s.usageReport,
		Reconcile:  s.reconcile,
		RateLimit:  s.rls.ShouldRateLimit,
		PortalLink: s.portalLink,
		Series:     s.seriesSource(),
		Export:     s.usageExport,
	})
	s.console = s.newConsole(adminAPI)
	webhook := billing.NewWebhook(billing.WebhookConfig{
		Secret:       s.cfg.Billing.Stripe.WebhookSecret.Value(),
		Consumers:    webhookConsumers{s},
		Events:       s.backend.events,
		Catalog:      func() *plan.Catalog { return s.authz.Snapshot().Catalog },
		FallbackPlan: func() string { return s.live.Load().Billing.FallbackPlan },
		PaymentFailed: func() (string, time.Duration) {
			pf := s.live.Load().Billing.PaymentFailed
			return pf.Action, time.Duration(pf.Grace)
		},
		Log:   s.log,
		Clock: s.opts.Clock,
	})
	metrics := promhttp.HandlerFor(s.metrics.Registry, promhttp.HandlerOpts{})
	// With listen.public, what faces the internet has a listener of its
	// own: clients that hold all of its connections leave the probes,
	// metrics and the admin API theirs.
	mux, public := http.NewServeMux(), http.NewServeMux()
	for _, r := range s.httpRoutes(adminAPI, webhook, metrics) {
		if r.public && s.publicLis != nil {
			public.Handle(r.pattern, r.handler)
		} else {
			mux.Handle(r.pattern, r.handler)
		}
	}
	if s.publicLis != nil {
		// A load balancer or ingress in front of the public listener
		// checks its backend's health there too.
		public.Handle("GET /healthz", http.HandlerFunc(healthz))
		s.public, s.publicLis = s.httpServer(public, s.publicLis)
	}
	s.http, s.httpLis = s.httpServer(mux, s.httpLis)
	return nil
}

// httpRoute is a route of levy's HTTP listeners.
type httpRoute struct {
	pattern string
	// public routes face the internet: on the public listener when
	// listen.public is set, else on the internal one with the rest.
	public  bool
	handler http.Handler
}

// httpRoutes is the table levy's HTTP muxes are built from (and that
// api/'s test compares with api/openapi.yaml); "/v1/" is the admin API,
// whose own routes admin.Routes lists.
func (s *Server) httpRoutes(adminAPI, webhook, metrics http.Handler) []httpRoute {
	return []httpRoute{
		{"GET /healthz", false, http.HandlerFunc(healthz)},
		{"GET /readyz", false, http.HandlerFunc(s.readyz)},
		{"GET /metrics", false, metrics},
		{"GET /openapi.json", false, http.HandlerFunc(serveOpenAPI)},
		{"/v1/", false, s.kickConsole(adminAPI)},
		{"POST /json", false, adminAPI},
		{"POST /stripe/webhook", true, webhook},
		{"/portal/", true, s.portal},
		{"/console/", false, s.console},
	}
}

// HTTPRoutes lists the patterns of levy's HTTP listeners, the admin API's
// own routes in place of its "/v1/" mount.
func HTTPRoutes() []string {
	var out []string
	for _, r := range (&Server{}).httpRoutes(nil, nil, nil) {
		if r.pattern != "/v1/" && r.pattern != "POST /json" && r.pattern != "/portal/" && r.pattern != "/console/" {
			out = append(out, r.pattern)
		}
	}
	return append(append(append(out, admin.Routes()...), portal.Routes()...), console.Routes()...)
}

// healthz answers that the process is alive.
func healthz(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") }

func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	serving, degraded := s.serving()
	switch {
	case !s.ready.Load():
		http.Error(w, "not ready: stopping or starting", http.StatusServiceUnavailable)
	case !serving:
		http.Error(w, "not ready: the store ("+s.cfg.Store.Type+") is unreachable and on_store_error is deny", http.StatusServiceUnavailable)
	case degraded:
		io.WriteString(w, "ready, degraded: the store ("+s.cfg.Store.Type+") is unreachable; decisions come from this replica's share (on_store_error: allow)\n")
	default:
		io.WriteString(w, "ready\n")
	}
}

// serveOpenAPI answers api/openapi.yaml as JSON.
func serveOpenAPI(w http.ResponseWriter, _ *http.Request) {
	doc, err := api.OpenAPIJSON()
	if err != nil {
		http.Error(w, "the OpenAPI description does not convert to JSON: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(doc)
}

// httpServer is an HTTP server of h on lis with the HTTP limits: its
// timeouts, every body bounded (whatever its route reads), and lis capped
// at MaxConns connections.
func (s *Server) httpServer(h http.Handler, lis net.Listener) (*http.Server, net.Listener) {
	lim := s.httpLimits()
	bounded := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, MaxHTTPBody)
		h.ServeHTTP(w, r)
	})
	srv := &http.Server{Handler: bounded, ReadHeaderTimeout: lim.ReadHeader, ReadTimeout: lim.Read, WriteTimeout: lim.Write,
		IdleTimeout: lim.Idle, MaxHeaderBytes: lim.MaxHeaderBytes}
	return srv, netutil.LimitListener(lis, lim.MaxConns)
}

// closeListeners closes the bound listeners.
func (s *Server) closeListeners() {
	for _, l := range []net.Listener{s.grpcLis, s.httpLis, s.publicLis} {
		if l != nil {
			l.Close()
		}
	}
}

// PublicAddr is the bound public HTTP address, "" without listen.public.
func (s *Server) PublicAddr() string {
	if s.publicLis == nil {
		return ""
	}
	return s.publicLis.Addr().String()
}

// usageReport is a consumer's current period, for the admin API.
func (s *Server) usageReport(ctx context.Context, id string, windows bool) (any, error) {
	snap := s.authz.Snapshot()
	c, ok := snap.Directory.Consumer(id)
	if !ok {
		return nil, apikey.ErrNotFound
	}
	p, ok := snap.Catalog.Get(c.Plan)
	if !ok {
		return nil, fmt.Errorf("consumer %s has unknown plan %s", c.ID, c.Plan)
	}
	r, err := billing.Report(ctx, s.backend.limiter, s.backend.ledger, c, p, snap.Catalog)
	if !windows {
		r.Windows = nil
	}
	return r, err
}

// seriesSource is the usage history for the admin API: a consumer the
// directory does not know is a 404. Nil when usage.history is off.
func (s *Server) seriesSource() admin.SeriesSource {
	if s.backend.history == nil {
		return nil
	}
	return seriesSource{s, &history.Reader{Store: s.backend.history, Retention: retention(s.cfg), Clock: s.opts.Clock}}
}

type seriesSource struct {
	s *Server
	*history.Reader
}

func (ss seriesSource) Series(ctx context.Context, consumer string, q history.Query) (*history.Series, error) {
	if _, ok := ss.s.authz.Snapshot().Directory.Consumer(consumer); !ok {
		return nil, apikey.ErrNotFound
	}
	return ss.Reader.Series(ctx, consumer, q)
}

// reconcile compares the ledger with Stripe's meter event summaries, for
// the admin API; it reaches Stripe as the exporter does.
func (s *Server) reconcile(ctx context.Context, q admin.ReconcileQuery) (any, error) {
	key := s.cfg.Billing.Stripe.APIKey.Value()
	if key == "" {
		return nil, fmt.Errorf("%w: STRIPE_API_KEY is not set, so there is no Stripe to reconcile with", admin.ErrUnavailable)
	}
	if q.Fix && s.backend.exportReady != nil {
		// A fix sends meter events as the exporter does, and waits as it
		// does while a window may have a copy under each layout's name.
		ready, err := s.backend.exportReady(ctx)
		if err != nil {
			return nil, err
		}
		if !ready {
			return nil, fmt.Errorf("%w: the store is still moving state keys to the current layout (replicas of an older levy are running, or the sweep has not finished); fixes wait, as exports do", admin.ErrUnavailable)
		}
	}
	return billing.Reconcile(ctx, billing.ReconcileConfig{
		Ledger: s.backend.ledger,
		Consumer: func(id string) (*apikey.Consumer, bool) {
			return s.authz.Snapshot().Directory.Consumer(id)
		},
		Catalog:    func() *plan.Catalog { return s.authz.Snapshot().Catalog },
		Stripe:     billing.NewStripeClient(key, s.cfg.Billing.Stripe.APIBase),
		Month:      q.Month,
		ConsumerID: q.Consumer,
		Fix:        q.Fix,
		Log:        s.log,
		Clock:      s.opts.Clock,
	})
}

// webhookConsumers finds consumers in the file and the store, and writes
// changes to the store (a stored consumer overrides the file's).
type webhookConsumers struct{ s *Server }

func (w webhookConsumers) ConsumerByStripeCustomer(ctx context.Context, customer string) (*apikey.Consumer, error) {
	l, ok := w.s.authz.Snapshot().Directory.(apikey.Layered)
	if !ok {
		return nil, apikey.ErrNotFound
	}
	return l.ConsumerByStripeCustomer(ctx, customer)
}

func (w webhookConsumers) PutConsumer(ctx context.Context, c *apikey.Consumer) error {
	return w.s.backend.store.PutConsumer(ctx, c)
}

// exportUsage runs the Stripe meter export until ctx ends, when a Stripe
// key is configured.
func (s *Server) exportUsage(ctx context.Context) {
	key := s.cfg.Billing.Stripe.APIKey.Value()
	if key == "" {
		s.log.Info("usage export to Stripe is off: STRIPE_API_KEY is not set")
		return
	}
	e := billing.NewExporter(billing.ExporterConfig{
		Ledger: s.backend.ledger,
		Consumer: func(id string) (*apikey.Consumer, bool) {
			return s.authz.Snapshot().Directory.Consumer(id)
		},
		Catalog: func() *plan.Catalog { return s.authz.Snapshot().Catalog },
		Lease:   s.backend.lease, Holder: s.replicaID, Ready: s.backend.exportReady,
		APIKey: key, APIBase: s.cfg.Billing.Stripe.APIBase,
		Every: time.Duration(s.cfg.Billing.ExportEvery), SettleDelay: time.Duration(s.cfg.Billing.SettleDelay),
		Registerer: s.metrics.Registry, Log: s.log, Clock: s.opts.Clock,
	})
	e.Run(ctx)
}

// StoreHealthService is the gRPC health service name that reports the
// store alone: NOT_SERVING while it is unreachable, even when levy keeps
// answering from its fallback ("" reports levy).
const StoreHealthService = "levy.store"

// serving reports whether levy can answer decisions as configured: always,
// unless the store is unreachable and on_store_error is deny; degraded,
// when it answers from the fallback because the store is unreachable.
func (s *Server) serving() (serving, degraded bool) {
	if s.backend.ready() {
		return true, false
	}
	if s.cfg.Store.OnStoreError == "allow" {
		return true, true
	}
	return false, false
}

// registerStoreGauges exposes the store's reachability and the degraded
// state on /metrics, read at each scrape.
func (s *Server) registerStoreGauges() {
	gauge := func(name, help string, v func() bool) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 {
			if v() {
				return 1
			}
			return 0
		})
	}
	for _, c := range []prometheus.Collector{
		gauge("levy_store_up", "1 while the store answers, 0 while it is unreachable.", s.backend.ready),
		gauge("levy_degraded", "1 while levy answers decisions from its fallback because the store is unreachable (on_store_error: allow).",
			func() bool { _, degraded := s.serving(); return degraded }),
	} {
		if err := s.metrics.Registry.Register(c); err != nil {
			s.log.Warn("register store gauges", zap.Error(err))
		}
	}
}

// followReadiness mirrors the store's reachability in the gRPC health
// service until stop is closed.
func (s *Server) followReadiness(stop <-chan struct{}) {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	last, lastStore := healthpb.HealthCheckResponse_UNKNOWN, healthpb.HealthCheckResponse_UNKNOWN
	for {
		st, store := healthpb.HealthCheckResponse_NOT_SERVING, healthpb.HealthCheckResponse_NOT_SERVING
		if serving, _ := s.serving(); serving {
			st = healthpb.HealthCheckResponse_SERVING
		}
		if s.backend.ready() {
			store = healthpb.HealthCheckResponse_SERVING
		}
		if st != last || store != lastStore {
			s.health.SetServingStatus("", st)
			// The store on its own, for those who watch the degraded state.
			s.health.SetServingStatus(StoreHealthService, store)
			last, lastStore = st, store
		}
		select {
		case <-stop:
			return
		case <-t.C:
		}
	}
}

// GRPCAddr is the bound gRPC address (useful with port 0).
func (s *Server) GRPCAddr() string { return s.grpcLis.Addr().String() }

// HTTPAddr is the bound HTTP address.
func (s *Server) HTTPAddr() string { return s.httpLis.Addr().String() }

// Close releases a server that was never Run: its listeners, its gRPC
// server's workers, the access-log receiver and the store.
func (s *Server) Close() {
	s.grpc.Stop()
	s.closeListeners()
	s.als.Close(context.Background())
	s.closeStore()
}

// Run serves until ctx ends, then stops accepting, lets in-flight calls
// finish, persists counters and returns nil.
func (s *Server) Run(ctx context.Context) error {
	errc := make(chan error, 3)
	var wg sync.WaitGroup
	wg.Add(2)
	if s.public != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.public.Serve(s.publicLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("serve public http: %w", err)
			}
		}()
	}
	go func() {
		defer wg.Done()
		if err := s.grpc.Serve(s.grpcLis); err != nil {
			errc <- fmt.Errorf("serve grpc: %w", err)
		}
	}()
	go func() {
		defer wg.Done()
		if err := s.http.Serve(s.httpLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("serve http: %w", err)
		}
	}()
	stopReload := make(chan struct{})
	reloadDone := make(chan struct{})
	go func() {
		defer close(reloadDone)
		var watch []string
		for _, p := range []string{s.cfg.Source, s.cfg.RateLimit.Dir} {
			if p != "" {
				watch = append(watch, p)
			}
		}
		if len(watch) > 0 && s.opts.ReloadEvery > 0 {
			config.Watch(watch, s.opts.ReloadEvery, stopReload, s.reload)
		}
	}()
	s.ready.Store(true)
	historyCtx, stopHistory := context.WithCancel(context.WithoutCancel(ctx))
	historyDone := make(chan struct{})
	go func() {
		defer close(historyDone)
		if s.history != nil {
			s.history.Run(historyCtx)
		}
	}()
	exportCtx, stopExport := context.WithCancel(context.WithoutCancel(ctx))
	exportDone := make(chan struct{})
	go func() {
		defer close(exportDone)
		s.exportUsage(exportCtx)
	}()
	alertsDone := make(chan struct{})
	go func() {
		defer close(alertsDone)
		s.runAlerts(exportCtx)
	}()
	healthDone := make(chan struct{})
	go func() {
		defer close(healthDone)
		s.followReadiness(stopReload)
	}()
	indexCtx, stopIndex := context.WithCancel(context.WithoutCancel(ctx))
	indexDone := make(chan struct{})
	go func() {
		defer close(indexDone)
		if s.cfg.AdminToken.Value() != "" { // the console is on
			s.consoleIndex.Run(indexCtx)
		}
	}()
	s.log.Info("levy serving", zap.String("grpc", s.GRPCAddr()), zap.String("http", s.HTTPAddr()), zap.String("public", s.PublicAddr()),
		zap.String("store", s.cfg.Store.Type), zap.String("config", s.cfg.Source))
	s.logLimits()

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	s.log.Info("levy stopping")
	s.ready.Store(false)
	s.health.Shutdown()
	close(stopReload)
	<-reloadDone
	<-healthDone
	stopIndex()
	<-indexDone
	stopExport()
	<-exportDone
	<-alertsDone

	s.als.Drain() // Envoy never ends its access-log streams itself
	stopped := make(chan struct{})
	go func() { s.grpc.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(s.opts.ShutdownGrace):
		s.log.Warn("in-flight calls outlived the shutdown grace; cancelling them")
		s.grpc.Stop()
		<-stopped
	}
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.opts.ShutdownGrace)
	defer cancel()
	for _, srv := range []*http.Server{s.http, s.public} {
		if srv != nil && srv.Shutdown(shutdownCtx) != nil {
			srv.Close()
		}
	}
	wg.Wait()
	if err := s.als.Close(ctx); err != nil && runErr == nil {
		runErr = fmt.Errorf("settle usage: %w", err)
	}
	// The history's last pass: the decisions and settlements above.
	stopHistory()
	<-historyDone
	if err := s.closeStore(); err != nil && runErr == nil {
		runErr = err
	}
	s.log.Info("levy stopped")
	return runErr
}

// logLimits says what bounds the process's connections: the open-file
// limit (every connection takes a descriptor) and the HTTP listener's
// limits. An HTTP connection cap near the open-file limit leaves none for
// gRPC and the store: that is warned of.
func (s *Server) logLimits() {
	lim := s.httpLimits()
	fields := []zap.Field{zap.Int("http_max_conns", lim.MaxConns), zap.Duration("http_read_header_timeout", lim.ReadHeader),
		zap.Duration("http_read_timeout", lim.Read), zap.Duration("http_write_timeout", lim.Write), zap.Duration("http_idle_timeout", lim.Idle)}
	soft, hard, ok := openFileLimit()
	if !ok {
		s.log.Info("connection limits", fields...)
		return
	}
	fields = append(fields, zap.Uint64("open_files_soft", soft), zap.Uint64("open_files_hard", hard))
	if uint64(lim.MaxConns) > soft/2 {
		s.log.Warn("the HTTP listener may take more than half the open-file limit: raise the limit (ulimit -n) or lower listen.http_limits.max_conns", fields...)
		return
	}
	s.log.Info("connection limits", fields...)
}

func (s *Server) closeStore() error {
	if err := s.backend.close(); err != nil {
		return fmt.Errorf("close store: %w", err)
	}
	return nil
}

// reload re-reads the config file and the rule files; anything bad keeps
// the running config and rules whole.
func (s *Server) reload() {
	next, err := s.opts.Reload()
	if err == nil {
		var a *authz.Snapshot
		var r *rls.Snapshot
		if a, r, err = s.snapshots(next); err == nil {
			s.authz.Swap(a)
			s.rls.Swap(r)
			s.live.Store(next)
			if restart := restartNeeded(s.cfg, next); len(restart) > 0 {
				s.log.Warn("config changes that take effect at the next restart", zap.Strings("settings", restart))
			}
			s.metrics.ConfigReloads.WithLabelValues("success").Inc()
			s.metrics.ConfigLastReloadSuccess.Set(1)
			s.log.Info("config reloaded", zap.String("config", s.cfg.Source), zap.String("ratelimit_dir", next.RateLimit.Dir),
				zap.Strings("domains", r.Rules.Domains()))
			returnLoadMemory()
			return
		}
	}
	s.metrics.ConfigReloads.WithLabelValues("failure").Inc()
	s.metrics.ConfigLastReloadSuccess.Set(0)
	s.log.Error("config reload failed; keeping the running config and rules", zap.Error(err))
	returnLoadMemory()
}

// returnLoadMemory gives the operating system back the memory a config
// load used and no longer does. Decoding a file builds a YAML node tree
// many times the size of the file (a 100,000-consumer file of 11 MB peaks
// near 700 MB), all garbage once the snapshots are built; the runtime
// would otherwise keep it mapped for minutes, and a pod's RSS would show
// the peak of its last reload rather than what it holds (at 100,000
// consumers, about 100 MB). A load is rare (start, a changed file), and
// the collection it forces takes milliseconds.
func returnLoadMemory() { debug.FreeOSMemory() }

// restartNeeded names settings a reload changed that only a restart
// applies.
func restartNeeded(started, next *config.Config) []string {
	var out []string
	check := func(name string, changed bool) {
		if changed {
			out = append(out, name)
		}
	}
	check("listen", started.Listen != next.Listen)
	check("store", started.Store.Type != next.Store.Type || started.Store.DataDir != next.Store.DataDir ||
		started.Store.OnStoreError != next.Store.OnStoreError || started.Store.Timeout != next.Store.Timeout ||
		started.Store.Redis.Addr != next.Store.Redis.Addr || started.Store.Redis.CacheTTL != next.Store.Redis.CacheTTL ||
		strings.Join(started.Store.Redis.Cluster, ",") != strings.Join(next.Store.Redis.Cluster, ","))
	check("billing.window", started.Billing.Window != next.Billing.Window)
	check("billing.units_header/consumer_header", started.Billing.UnitsHeader != next.Billing.UnitsHeader ||
		started.Billing.ConsumerHeader != next.Billing.ConsumerHeader)
	check("billing.stripe/export_every/settle_delay", started.Billing.Stripe != next.Billing.Stripe ||
		started.Billing.ExportEvery != next.Billing.ExportEvery || started.Billing.SettleDelay != next.Billing.SettleDelay)
	check("usage.history", started.Usage.History != next.Usage.History)
	check("alerts", started.Alerts != next.Alerts)
	check("ratelimit.dir (watched)", started.RateLimit.Dir != next.RateLimit.Dir)
	return out
}

// setupDemo gives every plan a demo consumer and key when demo is on. The
// keys are kept in the store, so a restart (or another replica on the same
// Redis) prints the same ones.
func (s *Server) setupDemo() error {
	if !s.cfg.Demo {
		return nil
	}
	plans := make([]string, 0, len(s.cfg.Plans))
	for name := range s.cfg.Plans {
		plans = append(plans, name)
	}
	sort.Strings(plans)
	keys, err := s.backend.demoKeys(plans, func() (string, error) { return apikey.Generate(s.cfg.Keys.Prefix) })
	if err != nil {
		s.log.Error("demo keys unavailable", zap.Error(err))
		return nil // demo is a convenience: serve without it
	}
	hasher := s.cfg.Hasher()
	for _, name := range plans {
		key := keys[name]
		if apikey.Check(key) != nil {
			continue
		}
		hash := hasher.Hash(key)
		id := "demo-" + name
		s.demo = append(s.demo, &apikey.Consumer{ID: id, Plan: name})
		s.demoKey = append(s.demoKey, &apikey.Key{ID: apikey.IDFromHash(hash), Hash: hash, ConsumerID: id, Hint: apikey.Hint(key)})
		fmt.Fprintf(s.opts.Out, "demo key for plan %s: %s\n", name, key)
	}
	return nil
}

// GRPCOptions are the options levy's gRPC server runs with, TLS aside.
func GRPCOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.MaxConcurrentStreams(10000),
		grpc.MaxRecvMsgSize(MaxRecvMsgBytes),
		// Calls run on long-lived workers (and on a new goroutine only when
		// all are busy): a new goroutine per call grows its stack through
		// gRPC's and levy's frames every time.
		grpc.NumStreamWorkers(streamWorkers),
		// Fixed flow-control windows, larger than any burst of calls on one
		// connection, turn off gRPC's bandwidth-delay probing: a PING and
		// its handling for every few reads, for windows Envoy's 256 MiB
		// ones never needed (2-5% fewer CPU-µs per call, measured).
		grpc.InitialWindowSize(1 << 20),
		grpc.InitialConnWindowSize(1 << 24),
		// ext_authz and RateLimitService messages read and written by levy
		// itself (authz's and rls's Decode and Encode), the rest by
		// protobuf: see codec.
		grpc.ForceServerCodecV2(codec),
	}
}

// codec is levy's gRPC codec: the hottest messages by hand, exactly as
// protobuf would read and write them, and the rest by protobuf.
var codec = wire.Codec{
	Decode: func(data mem.BufferSlice, v any) bool { return authz.Decode(data, v) || rls.Decode(data, v) },
	Encode: func(v any) ([]byte, bool) {
		if b, ok := authz.Encode(v); ok {
			return b, true
		}
		return rls.Encode(v)
	},
}

// MaxRecvMsgBytes bounds one message levy reads (gRPC's default is 4 MiB).
// A message over it is refused with ResourceExhausted from its length
// prefix, before it is decoded. The largest messages Envoy sends levy are
// far smaller: a CheckRequest carries the request's headers (Envoy's
// default max_request_headers_kb is 60) and no body in levy's configs; an
// access-log batch is flushed at buffer_size_bytes (16 KiB in envoy/);
// a RateLimitRequest is at most rls.MaxDescriptors descriptors of
// rls.MaxEntries entries (56 KiB with short values, 512 KiB with 256-byte
// ones). A RateLimitRequest of 100,000 descriptors is 1 MB even with
// one-byte keys and values: it is refused unread, where at 4 MiB it was
// decoded whole (1.9 MB in the e2e test) before the caps refused it.
const MaxRecvMsgBytes = 512 << 10

// streamWorkers is how many goroutines serve gRPC calls.
const streamWorkers = 64
