package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/levyhq/levy/pkg/billing"
)

func usageCmd() *cobra.Command {
	var client *adminClient
	cmd := &cobra.Command{
		Use:   "usage CONSUMER",
		Short: "Print a consumer's current billing period: used, included, overage, exported",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var r billing.UsageReport
			if err := client.call(cmd.Context(), "GET", consumerPath(args[0])+"/usage", nil, &r); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "consumer: %s (plan %s, %s)\n", r.Consumer, r.Plan, r.Model)
			fmt.Fprintf(out, "period:   %s to %s\n", r.PeriodStart.Format(time.RFC3339), r.PeriodEnd.Format(time.RFC3339))
			fmt.Fprintf(out, "used:     %d units (%d after access-log settlement)\n", r.Used, r.Settled)
			fmt.Fprintf(out, "included: %d\n", r.Included)
			fmt.Fprintf(out, "overage:  %d\n", r.Overage)
			fmt.Fprintf(out, "billable: %d (exported to Stripe %d, pending %d)\n", r.Billable, r.Exported, r.Pending)
			return nil
		},
	}
	client = adminFlags(cmd, false)
	return cmd
}
