package ops

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// The alert rules load as Prometheus loads them (rulefmt.ParseFile checks
// every expression with the PromQL parser and every template), and each
// is an alert an operator can act on: a known severity, a summary, a
// description and the runbook's address.
func TestAlertRulesLoadAsPrometheusLoadsThem(t *testing.T) {
	groups, err := LoadRules(Path(RulesFile))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				t.Errorf("group %s: recording rule %q: the file holds alerts only (test/e2e looks each name up on /metrics)", g.Name, r.Record)
				continue
			}
			if seen[r.Alert] {
				t.Errorf("alert %s: defined twice", r.Alert)
			}
			seen[r.Alert] = true
			if !slices.Contains([]string{"critical", "warning", "info"}, r.Labels["severity"]) {
				t.Errorf("alert %s: severity %q, want critical, warning or info", r.Alert, r.Labels["severity"])
			}
			for _, a := range []string{"summary", "description", "runbook_url"} {
				if strings.TrimSpace(r.Annotations[a]) == "" {
					t.Errorf("alert %s: no %s annotation", r.Alert, a)
				}
			}
			if !strings.HasSuffix(r.Annotations["runbook_url"], "README.md#alerts") {
				t.Errorf("alert %s: runbook_url %q, want README.md#alerts", r.Alert, r.Annotations["runbook_url"])
			}
		}
	}
	if len(seen) == 0 {
		t.Fatal("no alerts")
	}
}

// Each alert has its line in README's runbook table: what it means and
// what to do.
func TestEveryAlertHasARunbookLine(t *testing.T) {
	readme, err := os.ReadFile(Path("README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(readme), "\n### Alerts\n")
	if !ok {
		t.Fatal("README.md has no \"### Alerts\" section")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	groups, err := LoadRules(Path(RulesFile))
	if err != nil {
		t.Fatal(err)
	}
	var alerts []string
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			alerts = append(alerts, r.Alert)
			if !strings.Contains(section, "| `"+r.Alert+"` |") {
				t.Errorf("README.md, Alerts: no table row for %s", r.Alert)
			}
		}
	}
	for _, m := range regexp.MustCompile("\\| `(Levy[A-Za-z]+)` \\|").FindAllStringSubmatch(section, -1) {
		if !slices.Contains(alerts, m[1]) {
			t.Errorf("README.md, Alerts: row for %s, which %s does not define", m[1], RulesFile)
		}
	}
}

// The dashboard imports into any Grafana with a Prometheus data source:
// it asks for one in a variable instead of naming one, every panel and
// query uses that variable, and every query parses as PromQL.
func TestDashboardImportsWithAPrometheusDatasourceVariable(t *testing.T) {
	d, err := LoadDashboard(Path(DashboardFile))
	if err != nil {
		t.Fatal(err)
	}
	if d.UID == "" || d.Title == "" {
		t.Errorf("uid %q, title %q: both are needed to import and link", d.UID, d.Title)
	}
	var dsVar string
	for _, v := range d.Templating.List {
		if v.Type == "datasource" && v.Query == "prometheus" {
			dsVar = v.Name
		}
	}
	if dsVar == "" {
		t.Fatal("no datasource variable of type prometheus")
	}
	want := Datasource{Type: "prometheus", UID: "${" + dsVar + "}"}
	for _, v := range d.Templating.List {
		if v.Type == "query" && (v.Datasource == nil || *v.Datasource != want) {
			t.Errorf("variable %s: datasource %+v, want %+v", v.Name, v.Datasource, want)
		}
	}
	ids := map[int]bool{}
	queries := 0
	for _, p := range d.AllPanels() {
		if ids[p.ID] {
			t.Errorf("panel %q: id %d used twice", p.Title, p.ID)
		}
		ids[p.ID] = true
		if p.GridPos == nil || p.GridPos.W == 0 || p.GridPos.H == 0 {
			t.Errorf("panel %q: no gridPos", p.Title)
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || *p.Datasource != want {
			t.Errorf("panel %q: datasource %+v, want %+v", p.Title, p.Datasource, want)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q: no query", p.Title)
		}
		for _, tg := range p.Targets {
			queries++
			if tg.Datasource != nil && *tg.Datasource != want {
				t.Errorf("panel %q, query %s: datasource %+v, want %+v", p.Title, tg.RefID, tg.Datasource, want)
			}
			if _, err := ParseExpr(tg.Expr); err != nil {
				t.Errorf("panel %q, query %s: %v\n%s", p.Title, tg.RefID, err, tg.Expr)
			}
		}
	}
	if queries == 0 {
		t.Fatal("no queries")
	}
}

// What the issue asks the kit to watch is watched: each of these metrics
// is named by a panel, and each failure mode's metric by an alert.
func TestKitCoversLevysFailureModes(t *testing.T) {
	names, err := Names()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		give  string
		alert bool
	}{
		{"levy_decisions_total", true},
		{"levy_decision_duration_seconds_bucket", true},
		{"levy_store_up", true},
		{"levy_degraded", true},
		{"levy_store_errors_total", true},
		{"levy_store_late_decisions_total", true},
		{"levy_local_unsaved_seconds", true},
		{"levy_local_commit_failures_total", true},
		{"levy_usage_export_lag_seconds", true},
		{"levy_usage_export_windows_total", true},
		{"levy_usage_unbillable_windows", true},
		{"levy_usage_uncorrectable_units_total", true},
		{"levy_access_log_entries_total", true},
		{"levy_access_log_unmatched_total", true},
		{"levy_config_last_reload_successful", true},
		{"levy_codec_recovered_total", true},
		{"levy_usage_alerts_total", true},
		{"levy_usage_alert_scan_errors_total", true},
		{"levy_usage_alerts_queued", false},
		{"levy_config_reloads_total", false},
		{"levy_ratelimit_rule_hits_total", false},
	}
	for _, tt := range tests {
		where := strings.Join(names[tt.give], "; ")
		if !strings.Contains(where, "panel ") {
			t.Errorf("%s: on no panel", tt.give)
		}
		if tt.alert && !strings.Contains(where, "alert ") {
			t.Errorf("%s: in no alert", tt.give)
		}
	}
}
