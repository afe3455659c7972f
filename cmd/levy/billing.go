package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/levyhq/levy/pkg/billing"
)

// exitDiffer is levy billing reconcile's exit status when levy and Stripe
// differ (1 is for everything that went wrong).
const exitDiffer = 3

func billingCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "billing",
		Short: "Prove the bill: compare levy's usage ledger with Stripe",
	}
	cmd.AddCommand(reconcileCmd())
	return cmd
}

func reconcileCmd() *cobra.Command {
	var (
		client           *adminClient
		period, consumer string
		fix, asJSON      bool
	)
	cmd := &cobra.Command{
		Use:   "reconcile",
		Short: "Compare what levy billed with Stripe's meter event summaries, per consumer, meter and period",
		Long: `Ask a running levy to compare, for every consumer, meter and billing period, what
its usage ledger says Stripe accepted (LEVY BILLED) with what Stripe's meter
event summaries hold for the customer in that period (STRIPE), and print both
with the DIFFERENCE (STRIPE - LEVY BILLED).

LEVY TARGET is what the period should bill; PENDING (TARGET - BILLED) is export
work levy has not done yet, or windows Stripe refused: levy owes it, Stripe is
not wrong, so it is not a difference.

--period 2026-11 selects the billing periods that start in November 2026 (for a
consumer with an anchored billing cycle, the one starting on its anchor day);
the default is the periods in progress. --fix sends Stripe, once, one meter
event per account with what it is missing; Stripe holding more is reported and
left to a human. Stripe's summaries lag a little: --fix leaves the events of
the last 10 minutes alone.

Exit status: 0 levy and Stripe agree; 3 they differ (after --fix: a difference
it did not put right); 1 the comparison failed (or Stripe could not be asked
about an account).`,
		Example: `  LEVY_ADMIN_TOKEN=... levy billing reconcile
  levy billing reconcile --period 2026-11 --consumer acme
  levy billing reconcile --period 2026-11 --fix`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if period != "" {
				if _, err := billing.ParseMonth(period); err != nil {
					return err
				}
			}
			q := url.Values{}
			if period != "" {
				q.Set("period", period)
			}
			if consumer != "" {
				q.Set("consumer", consumer)
			}
			method := http.MethodGet
			if fix {
				method = http.MethodPost
				q.Set("fix", "true")
			}
			path := "/v1/billing/reconcile"
			if len(q) > 0 {
				path += "?" + q.Encode()
			}
			var rep billing.ReconcileReport
			if err := client.call(cmd.Context(), method, path, nil, &rep); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				if err := enc.Encode(rep); err != nil {
					return err
				}
			} else {
				printReconcile(out, &rep)
			}
			return reconcileOutcome(&rep)
		},
	}
	client = adminFlags(cmd, false)
	client.timeout = 5 * time.Minute // a Stripe call or two per account
	f := cmd.Flags()
	f.StringVar(&period, "period", "", "billing periods starting in this month, e.g. 2026-11 (default: the periods in progress)")
	f.StringVar(&consumer, "consumer", "", "only this consumer (default: every consumer with usage in the periods)")
	f.BoolVar(&fix, "fix", false, "send Stripe what it is missing, once")
	f.BoolVar(&asJSON, "json", false, "print the report as JSON")
	return cmd
}

// reconcileOutcome is the command's result: exitDiffer when levy and
// Stripe differ, an error when an account could not be compared.
func reconcileOutcome(rep *billing.ReconcileReport) error {
	if rep.Differences > 0 {
		return &exitError{code: exitDiffer, err: fmt.Errorf("levy and Stripe differ on %d of %s", rep.Differences, accounts(len(rep.Rows)))}
	}
	if rep.Errors > 0 {
		return fmt.Errorf("could not ask Stripe about %d of %s", rep.Errors, accounts(len(rep.Rows)))
	}
	return nil
}

func printReconcile(w io.Writer, rep *billing.ReconcileReport) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CONSUMER\tMETER\tPERIOD\tLEVY BILLED\tSTRIPE\tDIFFERENCE\tLEVY TARGET\tPENDING\tSTATUS")
	for _, r := range rep.Rows {
		stripeCol, diff := fmt.Sprint(r.Stripe), fmt.Sprintf("%+d", r.Difference)
		if r.Status == billing.StatusNoCustomer || r.Status == billing.StatusError {
			stripeCol, diff = "-", "-"
		} else if r.Difference == 0 {
			diff = "0"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%d\t%d\t%s\n", r.Consumer, r.Meter, periodText(r.PeriodStart, r.PeriodEnd),
			r.Billed, stripeCol, diff, r.Target, r.Pending, r.Status)
	}
	tw.Flush()
	for _, r := range rep.Rows {
		if f := r.Fix; f != nil {
			if f.Sent {
				fmt.Fprintf(w, "%s/%s: sent Stripe %d as %s\n", r.Consumer, r.Meter, f.Value, f.Identifier)
			} else {
				fmt.Fprintf(w, "%s/%s: could not send Stripe %d: %s\n", r.Consumer, r.Meter, f.Value, f.Error)
			}
		}
		if r.Note != "" && r.Status != billing.StatusOK {
			fmt.Fprintf(w, "%s/%s: %s\n", r.Consumer, r.Meter, r.Note)
		}
	}
	switch {
	case len(rep.Rows) == 0:
		fmt.Fprintf(w, "no accounts with usage in the %s periods\n", rep.Period)
	case rep.Differences == 0 && rep.Errors == 0:
		fmt.Fprintf(w, "%s (%s periods): levy and Stripe agree\n", accounts(len(rep.Rows)), rep.Period)
	}
}

func accounts(n int) string {
	if n == 1 {
		return "1 account"
	}
	return fmt.Sprintf("%d accounts", n)
}

// periodText writes a period as dates, with the time of day when it does
// not start at midnight (an anchored billing cycle).
func periodText(start, end time.Time) string {
	layout := "2006-01-02"
	if start.Truncate(24*time.Hour) != start || end.Truncate(24*time.Hour) != end {
		layout = "2006-01-02T15:04:05Z"
	}
	return strings.Join([]string{start.UTC().Format(layout), end.UTC().Format(layout)}, "..")
}
