package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/levyhq/levy/pkg/billing"
)

func usageCmd() *cobra.Command {
	var client *adminClient
	var windows bool
	cmd := &cobra.Command{
		Use:   "usage CONSUMER",
		Short: "Print a consumer's current billing period: used, included, overage, exported",
		Long: `Print a consumer's current billing period: used, included, overage, exported.

With --windows, also list the period's ledger windows: what admission
counted, what access-log settlement refunded and added, the billable units,
what Stripe accepted, and the meter events' identifiers.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var r billing.UsageReport
			path := consumerPath(args[0]) + "/usage"
			if windows {
				path += "?windows=true"
			}
			if err := client.call(cmd.Context(), "GET", path, nil, &r); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "consumer: %s (plan %s, %s)\n", r.Consumer, r.Plan, r.Model)
			fmt.Fprintf(out, "period:   %s to %s\n", r.PeriodStart.Format(time.RFC3339), r.PeriodEnd.Format(time.RFC3339))
			fmt.Fprintf(out, "used:     %d units (%d after access-log settlement)\n", r.Used, r.Settled)
			fmt.Fprintf(out, "included: %d\n", r.Included)
			fmt.Fprintf(out, "overage:  %d\n", r.Overage)
			fmt.Fprintf(out, "billable: %d (exported to Stripe %d, pending %d)\n", r.Billable, r.Exported, r.Pending)
			if windows {
				printWindows(out, r.Windows)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&windows, "windows", false, "list the period's ledger windows")
	client = adminFlags(cmd, false)
	// A consumer named "export" is read with levy consumers get, or the
	// admin API.
	cmd.AddCommand(usageExportCmd())
	return cmd
}

func printWindows(out io.Writer, ws []billing.WindowReport) {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "\nWINDOW\tPLAN\tMETER\tADMITTED\tREFUNDED\tREPORTED\tUNITS\tBILLABLE\tBILLED\tSTATE\tIDENTIFIERS")
	for _, w := range ws {
		state := "open"
		switch {
		case w.Rejected != "":
			state = "rejected: " + w.Rejected
		case w.Pending > 0:
			state = fmt.Sprintf("pending %d", w.Pending)
		case w.Exported:
			state = "exported"
		}
		ids := strings.Join(w.Identifiers, ",")
		if ids == "" {
			ids = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%s\n", w.Start.Format(time.RFC3339), orDash(w.Plan), w.Meter,
			w.Admitted, w.Refunded, w.Reported, w.Units, w.Billable, w.Billed, state, ids)
	}
	tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
