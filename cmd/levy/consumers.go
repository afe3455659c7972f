package main

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

func consumersListCmd(client *adminClient) *cobra.Command {
	var planName, status, prefix, cursor string
	var labels []string
	var limit int
	var all bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List consumers in id order, filtered by plan, status, labels or id prefix",
		Long: `List the consumers in levy's store, a page at a time (--limit, at most 1000),
in id order. The last line names the cursor of the next page, if any; --all
follows the cursors to the end. A filter that matches few consumers may
answer short or empty pages with a cursor: the server reads a bounded
number of consumers per page.`,
		Example: `  levy consumers list --plan pro --label team=search
  levy consumers list --status suspended --all`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			q := url.Values{}
			for name, v := range map[string]string{"plan": planName, "status": status, "prefix": prefix} {
				if v != "" {
					q.Set(name, v)
				}
			}
			for _, l := range labels {
				q.Add("label", l)
			}
			if limit > 0 {
				q.Set("limit", strconv.Itoa(limit))
			}
			out := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(out, "ID\tPLAN\tSTATUS\tLABELS")
			for {
				if cursor != "" {
					q.Set("cursor", cursor)
				}
				var page struct {
					Consumers []adminConsumer `json:"consumers"`
					Next      string          `json:"next"`
				}
				if err := client.call(cmd.Context(), http.MethodGet, "/v1/consumers?"+q.Encode(), nil, &page); err != nil {
					return err
				}
				for _, c := range page.Consumers {
					fmt.Fprintf(out, "%s\t%s\t%s\t%s\n", c.ID, c.Plan, c.Status, formatLabels(c.Labels))
				}
				cursor = page.Next
				if cursor == "" || !all {
					break
				}
			}
			if err := out.Flush(); err != nil {
				return err
			}
			if cursor != "" {
				fmt.Fprintf(cmd.OutOrStdout(), "next page: --cursor %s\n", cursor)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&planName, "plan", "", "only consumers on this plan")
	f.StringVar(&status, "status", "", "only active or suspended consumers")
	f.StringArrayVar(&labels, "label", nil, "only consumers with this label, key=value or key (repeatable: all must match)")
	f.StringVar(&prefix, "prefix", "", "only consumers whose id starts with this")
	f.IntVar(&limit, "limit", 0, "consumers per page (default 100, at most 1000)")
	f.StringVar(&cursor, "cursor", "", "start at this cursor (printed after a page)")
	f.BoolVar(&all, "all", false, "follow the cursors to the last page")
	return cmd
}

func consumersDeleteCmd(client *adminClient) *cobra.Command {
	return &cobra.Command{
		Use:   "delete ID",
		Short: "Delete a consumer and all its keys (they stop working at once, on every replica)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := client.call(cmd.Context(), http.MethodDelete, consumerPath(args[0]), nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "deleted %s and its keys\n", args[0])
			return nil
		},
	}
}

func consumersLabelCmd(client *adminClient) *cobra.Command {
	return &cobra.Command{
		Use:   "label ID KEY=VALUE... [KEY-...]",
		Short: "Set or remove a consumer's labels (team, cost center) for reports",
		Long: `Set labels with KEY=VALUE and remove them with KEY- (a trailing dash); the
other labels stay. Keys are 1 to 63 characters of a-z 0-9 . _ -; values up to
128 characters of letters, digits, space and . _ - / : @ +.`,
		Example: `  levy consumers label acme team=search cost-center=CC-4711
  levy consumers label acme team-`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			labels := map[string]*string{}
			for _, a := range args[1:] {
				if k, v, ok := strings.Cut(a, "="); ok {
					labels[k] = &v
					continue
				}
				k, ok := strings.CutSuffix(a, "-")
				if !ok || k == "" {
					return errors.New("label " + strconv.Quote(a) + ": want KEY=VALUE to set or KEY- to remove")
				}
				labels[k] = nil
			}
			var c adminConsumer
			body := map[string]any{"labels": labels}
			if err := client.call(cmd.Context(), http.MethodPatch, consumerPath(args[0]), body, &c); err != nil {
				return err
			}
			printConsumer(cmd.OutOrStdout(), &c)
			return nil
		},
	}
}

// adminKey is a key as the admin API lists it (never its secret).
type adminKey struct {
	ID         string `json:"id"`
	Consumer   string `json:"consumer"`
	Status     string `json:"status"`
	CreatedAt  string `json:"created_at"`
	ExpiresAt  string `json:"expires_at"`
	ReplacedBy string `json:"replaced_by"`
	Hint       string `json:"hint"`
}

func keysListCmd() *cobra.Command {
	var consumer string
	cmd := &cobra.Command{
		Use:     "list --consumer ID",
		Short:   "List a consumer's keys: ids, hints (levy_Ab3d…), status, creation and expiry (never the secrets)",
		Example: `  levy keys list --consumer acme`,
		Args:    cobra.NoArgs,
	}
	client := adminFlags(cmd, false)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		var resp struct {
			Keys []adminKey `json:"keys"`
		}
		if err := client.call(cmd.Context(), http.MethodGet, consumerPath(consumer)+"/keys", nil, &resp); err != nil {
			return err
		}
		out := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
		fmt.Fprintln(out, "ID\tKEY\tSTATUS\tCREATED\tEXPIRES\tREPLACED BY")
		for _, k := range resp.Keys {
			hint := "-" // a key stored before levy recorded hints
			if k.Hint != "" {
				hint = k.Hint + "…"
			}
			fmt.Fprintf(out, "%s\t%s\t%s\t%s\t%s\t%s\n", k.ID, hint, k.Status, dash(k.CreatedAt), dash(k.ExpiresAt), dash(k.ReplacedBy))
		}
		return out.Flush()
	}
	cmd.Flags().StringVar(&consumer, "consumer", "", "consumer id (required)")
	_ = cmd.MarkFlagRequired("consumer")
	return cmd
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func keysRotateCmd() *cobra.Command {
	var grace, oldExpiresAt, newID, expiresAt string
	cmd := &cobra.Command{
		Use:   "rotate ID",
		Short: "Issue a new key for a key's consumer; the old key works until a deadline",
		Long: `Ask a running levy for a new key for the same consumer as key ID. The old key
keeps working until the deadline (--grace from now, default 24h, or
--old-expires-at), then is refused as rotated. The new key is printed once.`,
		Example: `  levy keys rotate key_93db1208702e0ded --grace 72h`,
		Args:    cobra.ExactArgs(1),
	}
	client := adminFlags(cmd, false)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		body := map[string]string{}
		for name, v := range map[string]string{"grace": grace, "old_expires_at": oldExpiresAt, "id": newID, "expires_at": expiresAt} {
			if v != "" {
				body[name] = v
			}
		}
		var resp struct {
			ID        string   `json:"id"`
			Key       string   `json:"key"`
			ExpiresAt string   `json:"expires_at"`
			Replaces  adminKey `json:"replaces"`
		}
		if err := client.call(cmd.Context(), http.MethodPost, "/v1/keys/"+url.PathEscape(args[0])+"/rotate", body, &resp); err != nil {
			return err
		}
		out := cmd.OutOrStdout()
		fmt.Fprintf(out, "key: %s\n", resp.Key)
		fmt.Fprintf(out, "id:  %s\n", resp.ID)
		if resp.ExpiresAt != "" {
			fmt.Fprintf(out, "expires_at: %s\n", resp.ExpiresAt)
		}
		fmt.Fprintf(out, "old key %s works until %s\n", resp.Replaces.ID, resp.Replaces.ExpiresAt)
		return nil
	}
	f := cmd.Flags()
	f.StringVar(&grace, "grace", "", "how long the old key keeps working (default 24h; 0s stops it now)")
	f.StringVar(&oldExpiresAt, "old-expires-at", "", "the old key's deadline, RFC 3339 (instead of --grace)")
	f.StringVar(&newID, "id", "", "the new key's id (default derived from its hash)")
	f.StringVar(&expiresAt, "expires-at", "", "the new key's expiry, RFC 3339 (default never)")
	cmd.MarkFlagsMutuallyExclusive("grace", "old-expires-at")
	return cmd
}
