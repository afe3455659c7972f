package main

import (
	"encoding/json"
	"net/url"

	"github.com/spf13/cobra"

	"github.com/levyhq/levy/pkg/admin"
	"github.com/levyhq/levy/pkg/billing"
)

// usageExportCmd prints usage grouped by a consumer label, for charging
// internal teams back: the same ledger figures levy usage prints for
// each consumer.
func usageExportCmd() *cobra.Command {
	var client *adminClient
	var period, by, format string
	cmd := &cobra.Command{
		Use:   "export --by LABEL [--period 2026-11] [--format csv|json]",
		Short: "Print usage grouped by a consumer label (chargeback), as CSV or JSON",
		Long: `Print usage grouped by a consumer label, for internal marketplaces that
charge teams or cost centres back: per label value and per consumer, the
settled, billable and exported units of the billing periods that start in
--period (default: the periods in progress), the figures levy usage prints.

CSV has one row per consumer, then one per group (consumer "*"), then the
total (group "*"). Consumers without the label form the group "".`,
		Example: "  levy usage export --period 2026-11 --by team --format csv > chargeback.csv",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// Checked here too, so that a typo fails before levy is asked.
			if _, _, err := admin.ParseExportQuery(period, by, format); err != nil {
				return err
			}
			q := url.Values{"by": {by}, "format": {admin.FormatJSON}}
			if period != "" {
				q.Set("period", period)
			}
			var r billing.ChargebackReport
			if err := client.call(cmd.Context(), "GET", "/v1/usage/export?"+q.Encode(), nil, &r); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if format == admin.FormatCSV {
				return r.WriteCSV(out)
			}
			enc := json.NewEncoder(out)
			enc.SetIndent("", "  ")
			return enc.Encode(r)
		},
	}
	cmd.Flags().StringVar(&period, "period", "", "the month whose billing periods to report (2026-11); default: the periods in progress")
	cmd.Flags().StringVar(&by, "by", "", "the consumer label to group by (team, or label:team)")
	cmd.Flags().StringVar(&format, "format", admin.FormatCSV, "csv or json")
	client = adminFlags(cmd, false)
	return cmd
}
