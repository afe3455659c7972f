// Package telemetry holds levy's Prometheus metrics and builds its zap
// logger: what every server records, defined once.
package telemetry

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/levyhq/levy/pkg/wire"
)

// Metrics are the collectors levy exports on /metrics.
type Metrics struct {
	Registry *prometheus.Registry
	// Decisions counts decisions by API (authz, ratelimit), result (allow,
	// deny, error) and reason.
	Decisions *prometheus.CounterVec
	// Latency observes decision latency by API.
	Latency *prometheus.HistogramVec
	// ConfigReloads counts reloads by result (success, failure);
	// ConfigLastReloadSuccess is 1 when the newest reload worked.
	ConfigReloads           *prometheus.CounterVec
	ConfigLastReloadSuccess prometheus.Gauge
	// StoreErrors counts failed store operations by operation
	// (StoreOpLookup, StoreOpDecide).
	StoreErrors *prometheus.CounterVec
}

// Store operations that levy_store_errors_total counts.
const (
	StoreOpLookup = "lookup" // a key lookup
	StoreOpDecide = "decide" // a rate and quota decision
)

// NewMetrics creates and registers the collectors on a fresh registry,
// with the Go and process collectors.
func NewMetrics() *Metrics {
	reg := prometheus.NewRegistry()
	m := &Metrics{
		Registry: reg,
		Decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "levy_decisions_total",
			Help: "Decisions by API, result and reason.",
		}, []string{"api", "result", "reason"}),
		Latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "levy_decision_duration_seconds",
			Help:    "Time to decide one request, by API.",
			Buckets: []float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25},
		}, []string{"api"}),
		ConfigReloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "levy_config_reloads_total",
			Help: "Configuration reloads by result.",
		}, []string{"result"}),
		ConfigLastReloadSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "levy_config_last_reload_successful",
			Help: "1 when the newest configuration reload succeeded.",
		}),
		StoreErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "levy_store_errors_total",
			Help: "Failed store operations.",
		}, []string{"op"}),
	}
	m.ConfigLastReloadSuccess.Set(1)
	// Known label values on /metrics at 0 from the start: a dashboard or
	// an alert finds them before their first event.
	for _, r := range []string{"success", "failure"} {
		m.ConfigReloads.WithLabelValues(r)
	}
	for _, op := range []string{StoreOpLookup, StoreOpDecide} {
		m.StoreErrors.WithLabelValues(op)
	}
	recovered := prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "levy_codec_recovered_total",
		Help: "gRPC messages levy's own reader or writer failed on, read or written by protobuf instead.",
	}, func() float64 { return float64(wire.Recovered.Load()) })
	reg.MustRegister(m.Decisions, m.Latency, m.ConfigReloads, m.ConfigLastReloadSuccess, m.StoreErrors, recovered,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Observe records one decision.
func (m *Metrics) Observe(api, result, reason string, took time.Duration) {
	m.Decisions.WithLabelValues(api, result, reason).Inc()
	m.Latency.WithLabelValues(api).Observe(took.Seconds())
}

// NewLogger builds a zap logger: JSON (or console) on stderr at level.
func NewLogger(level, format string) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, err
	}
	cfg := zap.NewProductionConfig()
	if format == "console" {
		cfg = zap.NewDevelopmentConfig()
	}
	cfg.Level = zap.NewAtomicLevelAt(lvl)
	cfg.EncoderConfig.TimeKey = "ts"
	cfg.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	// Sampling (the production default: per message, the first 100 a
	// second, then every 100th) keeps a store outage from flooding the log.
	cfg.DisableStacktrace = true
	return cfg.Build()
}
