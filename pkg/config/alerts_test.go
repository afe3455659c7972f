package config

import (
	"testing"
	"time"
)

// Thresholds read as written ("80%" or 80) into the plan, ascending; the
// alerts' secret comes from the environment and never prints.
func TestAlertsLoadIntoPlansAndSecret(t *testing.T) {
	t.Setenv("LEVY_ALERTS_SECRET", "s3cret")
	c := Default()
	c.Plans = map[string]PlanSpec{"pro": {Model: "tiered", Quota: &QuotaSpec{Requests: 100, Period: "month"}, Alerts: []Percent{100, 80}}}
	c.Alerts.URL = "https://ops.example.com/levy"
	c.ApplyEnv(nil)
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	cat, err := c.Catalog()
	if err != nil {
		t.Fatal(err)
	}
	p, _ := cat.Get("pro")
	if len(p.Alerts) != 2 || p.Alerts[0] != 80 || p.Alerts[1] != 100 {
		t.Errorf("plan alerts %v, want [80 100]", p.Alerts)
	}
	if c.Alerts.Secret.Value() != "s3cret" || c.Alerts.Secret.String() != Redacted {
		t.Errorf("secret %q prints %q", c.Alerts.Secret.Value(), c.Alerts.Secret)
	}
	if time.Duration(c.Alerts.ScanEvery) != time.Minute {
		t.Errorf("scan_every default %v", time.Duration(c.Alerts.ScanEvery))
	}
}

func TestParsePercent(t *testing.T) {
	tests := []struct {
		give string
		want Percent
		ok   bool
	}{
		{"80%", 80, true}, {"100", 100, true}, {" 50 % ", 50, true}, {"0%", 0, false}, {"1001%", 0, false}, {"8.5%", 0, false}, {"%", 0, false},
	}
	for _, tt := range tests {
		got, err := ParsePercent(tt.give)
		if got != tt.want || (err == nil) != tt.ok {
			t.Errorf("ParsePercent(%q) = %v, %v; want %v, ok %v", tt.give, got, err, tt.want, tt.ok)
		}
	}
}
