// Package ops reads levy's operations kit under ops/, the Grafana
// dashboard and the Prometheus alert rules, with Prometheus' own rule
// and PromQL parsers, and says which metrics they name: its tests check
// that the files parse, test/e2e that levy serves every metric they name.
package ops

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
)

// The kit's files, relative to the repository root.
const (
	RulesFile     = "ops/prometheus/levy-alerts.yaml"
	DashboardFile = "ops/grafana/levy-dashboard.json"
)

// Path is rel (a path from the repository root) made absolute, wherever
// the calling test runs.
func Path(rel string) string {
	_, here, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(here), "..", "..", rel)
}

var promql = parser.NewParser(parser.Options{})

// LoadRules parses a Prometheus rule file as Prometheus loads one: strict
// YAML, every expression parsed, label and annotation templates checked,
// names under the classic (non-UTF-8) scheme.
func LoadRules(path string) (*rulefmt.RuleGroups, error) {
	groups, errs := rulefmt.ParseFile(path, false, model.LegacyValidation, promql, slog.New(slog.DiscardHandler))
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return groups, nil
}

// Dashboard is the part of a Grafana dashboard model these checks read.
type Dashboard struct {
	UID        string `json:"uid"`
	Title      string `json:"title"`
	Templating struct {
		List []Variable `json:"list"`
	} `json:"templating"`
	Panels []Panel `json:"panels"`
}

// Variable is a dashboard template variable.
type Variable struct {
	Name       string      `json:"name"`
	Type       string      `json:"type"`
	Query      any         `json:"query"`
	Datasource *Datasource `json:"datasource"`
}

// QueryText is a query variable's query: Grafana writes it as a string
// or, since version 10, as an object with the string under "query".
func (v Variable) QueryText() string {
	switch q := v.Query.(type) {
	case string:
		return q
	case map[string]any:
		s, _ := q["query"].(string)
		return s
	}
	return ""
}

// Datasource is a panel's, a target's or a variable's data source.
type Datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

// Panel is a dashboard panel or row.
type Panel struct {
	ID         int         `json:"id"`
	Type       string      `json:"type"`
	Title      string      `json:"title"`
	Datasource *Datasource `json:"datasource"`
	GridPos    *struct {
		H, W, X, Y int
	} `json:"gridPos"`
	Targets []Target `json:"targets"`
	Panels  []Panel  `json:"panels"` // a collapsed row's
}

// Target is one query of a panel.
type Target struct {
	RefID      string      `json:"refId"`
	Expr       string      `json:"expr"`
	Datasource *Datasource `json:"datasource"`
}

// LoadDashboard reads a dashboard JSON file. Fields it does not know are
// ignored: Grafana's model is large, and only the fields above are read.
func LoadDashboard(path string) (*Dashboard, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var d Dashboard
	if err := json.Unmarshal(data, &d); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &d, nil
}

// AllPanels is every panel, those inside collapsed rows included.
func (d *Dashboard) AllPanels() []Panel {
	var out []Panel
	for _, p := range d.Panels {
		out = append(out, p)
		out = append(out, p.Panels...)
	}
	return out
}

// grafanaRange matches Grafana's interval variables, which stand where a
// PromQL duration does.
var grafanaRange = regexp.MustCompile(`\$(__rate_interval|__interval|__range)\b|\$\{(__rate_interval|__interval|__range)\}`)

// ParseExpr parses a PromQL expression as Prometheus would, after putting
// a duration in place of Grafana's interval variables; other variables
// ($job) appear only inside label matcher strings, where they are text.
func ParseExpr(expr string) (parser.Expr, error) {
	return promql.ParseExpr(grafanaRange.ReplaceAllString(expr, "5m"))
}

// MetricNames is the sorted set of metric names expr selects.
func MetricNames(expr string) ([]string, error) {
	e, err := ParseExpr(expr)
	if err != nil {
		return nil, err
	}
	var names []string
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		if vs.Name != "" {
			names = append(names, vs.Name)
			return nil
		}
		for _, m := range vs.LabelMatchers {
			if m.Name == labels.MetricName && m.Type == labels.MatchEqual {
				names = append(names, m.Value)
			}
		}
		return nil
	})
	slices.Sort(names)
	return slices.Compact(names), nil
}

// Names is every metric the rule file and the dashboard name, each with
// where it is named (an alert, or a panel's title).
func Names() (map[string][]string, error) {
	out := map[string][]string{}
	groups, err := LoadRules(Path(RulesFile))
	if err != nil {
		return nil, err
	}
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			names, err := MetricNames(r.Expr)
			if err != nil {
				return nil, fmt.Errorf("%s %s: %w", RulesFile, r.Alert+r.Record, err)
			}
			for _, n := range names {
				out[n] = append(out[n], "alert "+r.Alert+r.Record)
			}
		}
	}
	d, err := LoadDashboard(Path(DashboardFile))
	if err != nil {
		return nil, err
	}
	for _, p := range d.AllPanels() {
		for _, t := range p.Targets {
			names, err := MetricNames(t.Expr)
			if err != nil {
				return nil, fmt.Errorf("%s panel %q: %w", DashboardFile, p.Title, err)
			}
			for _, n := range names {
				out[n] = append(out[n], "panel "+p.Title)
			}
		}
	}
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		if m := labelValues.FindStringSubmatch(v.QueryText()); m != nil {
			out[m[1]] = append(out[m[1]], "variable "+v.Name)
		}
	}
	return out, nil
}

// labelValues matches Grafana's label_values(metric{...}, label).
var labelValues = regexp.MustCompile(`^label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)`)
