package billing

import (
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/plan"
	"github.com/levyhq/levy/pkg/usage"
)

// ChargebackConfig says what Chargeback reports.
type ChargebackConfig struct {
	// Ledger must be a ConsumerLister (both of levy's ledgers are).
	Ledger usage.Ledger
	// Consumer finds a consumer (its labels, plan and billing anchor).
	Consumer func(id string) (*apikey.Consumer, bool)
	Catalog  func() *plan.Catalog
	// Month selects the billing periods as ReconcileConfig.Month does;
	// zero selects the periods in progress.
	Month time.Time
	// Label is the consumer label the report groups by ("team").
	Label string
	Clock func() time.Time
}

// ChargebackFigures are the ledger's figures for some usage, as levy
// usage prints them: Settled units (after access-log settlement), the
// Billable part, and what Stripe accepted (Exported).
type ChargebackFigures struct {
	Settled  int64 `json:"settled"`
	Billable int64 `json:"billable"`
	Exported int64 `json:"exported"`
}

func (f *ChargebackFigures) add(o ChargebackFigures) {
	f.Settled += o.Settled
	f.Billable += o.Billable
	f.Exported += o.Exported
}

// ChargebackConsumer is one consumer's line of a group.
type ChargebackConsumer struct {
	Consumer string `json:"consumer"`
	Plan     string `json:"plan,omitempty"`
	ChargebackFigures
}

// ChargebackGroup is the consumers that share a label value; Value ""
// holds the consumers without the label (and those levy no longer
// knows).
type ChargebackGroup struct {
	Value string `json:"value"`
	ChargebackFigures
	Consumers []ChargebackConsumer `json:"consumers"`
}

// ChargebackReport is usage grouped by a consumer label, for internal
// marketplaces that charge teams or cost centres back.
type ChargebackReport struct {
	// Period is the selected month (2026-11), or "current".
	Period string `json:"period"`
	// By is what groups: "label:team".
	By     string            `json:"by"`
	At     time.Time         `json:"at"`
	Groups []ChargebackGroup `json:"groups"`
	Totals ChargebackFigures `json:"totals"`
}

// Chargeback sums, per consumer and per value of a label, the ledger's
// figures for the selected billing periods: the same Settled, Billable
// and Exported that Report (levy usage) gives each consumer. Consumers
// without usage in the periods are left out. Groups are in value order
// (the unlabelled last), consumers in id order.
func Chargeback(ctx context.Context, cfg ChargebackConfig) (ChargebackReport, error) {
	if cfg.Ledger == nil || cfg.Consumer == nil {
		return ChargebackReport{}, errors.New("chargeback needs a ledger and a way to find consumers")
	}
	if err := apikey.ValidateLabelKey(cfg.Label); err != nil {
		return ChargebackReport{}, fmt.Errorf("group by: %w", err)
	}
	r := newReconciler(ReconcileConfig{Ledger: cfg.Ledger, Consumer: cfg.Consumer, Catalog: cfg.Catalog, Month: cfg.Month, Clock: cfg.Clock})
	rep := ChargebackReport{Period: "current", By: "label:" + cfg.Label, At: r.now, Groups: []ChargebackGroup{}}
	if !cfg.Month.IsZero() {
		rep.Period = cfg.Month.UTC().Format(MonthLayout)
	}
	ids, err := r.consumers(ctx)
	if err != nil {
		return rep, err
	}
	groups := map[string]*ChargebackGroup{}
	for _, id := range ids {
		c, _ := cfg.Consumer(id)
		var anchor time.Time
		if c != nil {
			anchor = c.PeriodAnchor
		}
		from, to := r.sel.span(anchor)
		windows, err := cfg.Ledger.Windows(ctx, id, from, to)
		if err != nil {
			return rep, fmt.Errorf("consumer %s: ledger windows: %w", id, err)
		}
		accounts, order := r.accounts(id, c, windows)
		line := ChargebackConsumer{Consumer: id}
		used := false
		for _, a := range order {
			st := StatementOf(a, accounts[a], c, r.cat)
			line.Billable += st.Target
			line.Exported += st.Billed
			for _, w := range st.Windows {
				line.Settled += w.Units
				used = true
			}
		}
		if !used {
			continue
		}
		value := ""
		if c != nil {
			line.Plan = c.Plan
			value = c.Labels[cfg.Label]
		}
		g := groups[value]
		if g == nil {
			g = &ChargebackGroup{Value: value}
			groups[value] = g
		}
		g.Consumers = append(g.Consumers, line)
		g.add(line.ChargebackFigures)
		rep.Totals.add(line.ChargebackFigures)
	}
	for _, g := range groups {
		rep.Groups = append(rep.Groups, *g)
	}
	sort.Slice(rep.Groups, func(i, j int) bool {
		a, b := rep.Groups[i].Value, rep.Groups[j].Value
		if (a == "") != (b == "") {
			return b == ""
		}
		return a < b
	})
	return rep, nil
}

// WriteCSV writes the report as CSV: a header, then one row per consumer
// (group, consumer, plan, settled, billable, exported), then one total
// row per group (consumer "*"), then the grand total (group "*"). A text
// cell that a spreadsheet would take for a formula (label values may
// start with + - or @) is written with a leading apostrophe.
func (r ChargebackReport) WriteCSV(w io.Writer) error {
	cw := csv.NewWriter(w)
	label := r.By
	row := func(group, consumer, planName string, f ChargebackFigures) {
		cw.Write([]string{r.Period, cell(group), cell(consumer), cell(planName),
			strconv.FormatInt(f.Settled, 10), strconv.FormatInt(f.Billable, 10), strconv.FormatInt(f.Exported, 10)})
	}
	cw.Write([]string{"period", label, "consumer", "plan", "settled", "billable", "exported"})
	for _, g := range r.Groups {
		for _, c := range g.Consumers {
			row(g.Value, c.Consumer, c.Plan, c.ChargebackFigures)
		}
	}
	for _, g := range r.Groups {
		row(g.Value, "*", "", g.ChargebackFigures)
	}
	row("*", "*", "", r.Totals)
	cw.Flush()
	return cw.Error()
}

// cell defuses a text cell a spreadsheet would evaluate.
func cell(s string) string {
	if s != "" && s != "*" && strings.ContainsRune("=+-@", rune(s[0])) {
		return "'" + s
	}
	return s
}
