package config

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Alerts configures usage alerts: when a consumer's usage in its billing
// period crosses one of its plan's thresholds (plans.<name>.alerts), levy
// sends a signed webhook to URL, retried until it answers 2xx. It applies
// at the next restart.
type Alerts struct {
	// URL receives the alerts (POST, JSON); unset, alerts are off.
	URL string `yaml:"url"`
	// Secret signs each delivery (the Levy-Signature header): written
	// env:NAME or file:/path; LEVY_ALERTS_SECRET sets it too.
	Secret Secret `yaml:"secret"`
	// ScanEvery is how often consumers' period usage is read to find
	// crossed thresholds (default 1m).
	ScanEvery Duration `yaml:"scan_every"`
	// Timeout bounds one delivery (default 10s).
	Timeout Duration   `yaml:"timeout"`
	Retry   AlertRetry `yaml:"retry"`
}

// AlertRetry is how a failed delivery is retried: after Initial, doubling
// up to Max, for as long as MaxAge from the alert's creation (then it is
// dropped and counted).
type AlertRetry struct {
	Initial Duration `yaml:"initial"`
	Max     Duration `yaml:"max"`
	MaxAge  Duration `yaml:"max_age"`
}

// AlertsEnabled reports whether usage alerts are sent.
func (a Alerts) AlertsEnabled() bool { return a.URL != "" }

func defaultAlerts() Alerts {
	return Alerts{ScanEvery: Duration(time.Minute), Timeout: Duration(10 * time.Second),
		Retry: AlertRetry{Initial: Duration(5 * time.Second), Max: Duration(10 * time.Minute), MaxAge: Duration(72 * time.Hour)}}
}

// Percent is a share of a plan's quota or spend cap, written "80%" or 80.
type Percent int

// UnmarshalYAML implements yaml.Unmarshaler, reporting the line of a bad
// value.
func (p *Percent) UnmarshalYAML(n *yaml.Node) error {
	v, err := ParsePercent(n.Value)
	if err != nil {
		return lineError(n, err)
	}
	*p = v
	return nil
}

// ParsePercent reads "80%" or "80": a whole percentage from 1 to 1000.
func ParsePercent(s string) (Percent, error) {
	t := strings.TrimSuffix(strings.TrimSpace(s), "%")
	v, err := strconv.Atoi(strings.TrimSpace(t))
	if err != nil || v < 1 || v > 1000 {
		return 0, fmt.Errorf("invalid alert threshold %q: want a whole percentage from 1%% to 1000%%, e.g. 80%%", s)
	}
	return Percent(v), nil
}

// MaxAlertThresholds bounds a plan's alert thresholds.
const MaxAlertThresholds = 10

func (c *Config) validateAlerts(errs *Errors) {
	a := c.Alerts
	for _, name := range sortedKeys(c.Plans) {
		p := c.Plans[name]
		at := "plans." + name + ".alerts"
		if len(p.Alerts) > MaxAlertThresholds {
			c.problem(errs, at, "%d thresholds: at most %d", len(p.Alerts), MaxAlertThresholds)
		}
		seen := map[Percent]bool{}
		for _, t := range p.Alerts {
			if seen[t] {
				c.problem(errs, at, "%d%% is listed twice", t)
			}
			seen[t] = true
		}
		if len(p.Alerts) > 0 && (p.Quota == nil || p.Quota.Requests <= 0 && p.Quota.Cap <= 0) {
			c.problem(errs, at, "the plan has no quota or spend cap for a threshold to be a share of")
		}
	}
	if a.URL == "" {
		return
	}
	if u, err := url.Parse(a.URL); err != nil || u.Scheme != "http" && u.Scheme != "https" || u.Host == "" || u.User != nil {
		c.problem(errs, "alerts.url", "%q: want an http or https URL without user info, e.g. https://ops.example.com/levy-alerts", a.URL)
	}
	if err := c.Alerts.Secret.Resolve(); err != nil {
		c.problem(errs, "alerts.secret", "%v", err)
	} else if c.Alerts.Secret.Value() == "" {
		c.problem(errs, "alerts.secret", "alerts are signed: set LEVY_ALERTS_SECRET, or alerts.secret to env:NAME or file:/path")
	}
	if d := time.Duration(a.ScanEvery); d < time.Second || d > time.Hour {
		c.problem(errs, "alerts.scan_every", "%v: want a duration from 1s to 1h (default 1m)", d)
	}
	if d := time.Duration(a.Timeout); d <= 0 || d > time.Minute {
		c.problem(errs, "alerts.timeout", "%v: want a duration from 1ms to 1m (default 10s)", d)
	}
	r := a.Retry
	if r.Initial <= 0 || r.Max < r.Initial || r.MaxAge < r.Max {
		c.problem(errs, "alerts.retry", "want 0 < initial (%v) <= max (%v) <= max_age (%v)", time.Duration(r.Initial), time.Duration(r.Max), time.Duration(r.MaxAge))
	}
}
