package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/levyhq/levy/pkg/problem"
)

// adminTokenEnv names the environment variable the admin token comes from.
const adminTokenEnv = "LEVY_ADMIN_TOKEN"

// adminClient calls a running levy's admin API.
type adminClient struct {
	url, token string
	// timeout bounds a call (default 30s).
	timeout time.Duration
}

// adminFlags adds --admin-url and --token to cmd (and, when persistent, to
// its subcommands) and returns the
// client they configure.
func adminFlags(cmd *cobra.Command, persistent bool) *adminClient {
	c := &adminClient{}
	f := cmd.Flags()
	if persistent {
		f = cmd.PersistentFlags()
	}
	f.StringVar(&c.url, "admin-url", "http://"+dialAddr(os.Getenv("LEVY_HTTP_ADDR"), "127.0.0.1:8080"), "levy's HTTP address, where the admin API is (default from $LEVY_HTTP_ADDR, as levy serve listens)")
	f.StringVar(&c.token, "token", "", "admin token (default $"+adminTokenEnv+"; prefer the variable: flags show in ps)")
	return c
}

// call sends body (nil: none) as JSON and decodes a 2xx answer into out
// (nil: ignore it). Other answers become an error carrying the problem's
// detail.
func (c *adminClient) call(ctx context.Context, method, path string, body, out any) error {
	token := strings.TrimSpace(c.token)
	if token == "" {
		token = strings.TrimSpace(os.Getenv(adminTokenEnv))
	}
	if token == "" {
		return fmt.Errorf("no admin token: set %s or pass --token", adminTokenEnv)
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	timeout := c.timeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	endpoint := strings.TrimRight(c.url, "/") + path
	req, err := http.NewRequestWithContext(ctx, method, endpoint, rd)
	if err != nil {
		return fmt.Errorf("--admin-url %q: %w", c.url, err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("call levy admin API: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("%s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		return problemError(resp, b)
	}
	if out == nil || len(b) == 0 {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
	}
	return nil
}

func problemError(resp *http.Response, body []byte) error {
	var p problem.Doc
	if json.Unmarshal(body, &p) == nil && p.Detail != "" {
		return fmt.Errorf("%s (HTTP %d)", p.Detail, resp.StatusCode)
	}
	text := strings.TrimSpace(string(body))
	if len(text) > 200 {
		text = text[:200] + "..."
	}
	if text == "" {
		return errors.New(resp.Status)
	}
	return fmt.Errorf("%s: %s", resp.Status, text)
}

// adminConsumer is a consumer as the admin API shows it.
type adminConsumer struct {
	ID               string            `json:"id"`
	Plan             string            `json:"plan"`
	Status           string            `json:"status"`
	StripeCustomerID string            `json:"stripe_customer_id,omitempty"`
	PeriodAnchor     string            `json:"period_anchor,omitempty"`
	Labels           map[string]string `json:"labels,omitempty"`
}

func printConsumer(w io.Writer, c *adminConsumer) {
	fmt.Fprintf(w, "id:     %s\n", c.ID)
	fmt.Fprintf(w, "plan:   %s\n", c.Plan)
	fmt.Fprintf(w, "status: %s\n", c.Status)
	if c.StripeCustomerID != "" {
		fmt.Fprintf(w, "stripe_customer_id: %s\n", c.StripeCustomerID)
	}
	if c.PeriodAnchor != "" {
		fmt.Fprintf(w, "period_anchor:      %s\n", c.PeriodAnchor)
	}
	if len(c.Labels) > 0 {
		fmt.Fprintf(w, "labels: %s\n", formatLabels(c.Labels))
	}
}

// formatLabels prints labels as key=value,... in key order.
func formatLabels(labels map[string]string) string {
	parts := make([]string, 0, len(labels))
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		parts = append(parts, k+"="+labels[k])
	}
	return strings.Join(parts, ",")
}

func consumerPath(id string) string { return "/v1/consumers/" + url.PathEscape(id) }

// consumersCmd manages consumers through a running levy's admin API.
func consumersCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "consumers",
		Short: "Manage consumers through a running levy's admin API",
		Long: `Create, read and change the consumers levy keeps in its store, through the
admin API of a running levy (set LEVY_ADMIN_TOKEN to the same token as the
server).`,
	}
	client := adminFlags(cmd, true)

	var planName, status, stripeID, anchor string
	var putLabels []string
	put := &cobra.Command{
		Use:     "put ID",
		Short:   "Create or replace a consumer (labels too: use consumers label to change only those)",
		Example: `  levy consumers put acme --plan pro --stripe-customer-id cus_123`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			body := map[string]any{"plan": planName, "status": status}
			if stripeID != "" {
				body["stripe_customer_id"] = stripeID
			}
			if anchor != "" {
				body["period_anchor"] = anchor
			}
			if len(putLabels) > 0 {
				labels := map[string]string{}
				for _, l := range putLabels {
					k, v, ok := strings.Cut(l, "=")
					if !ok {
						return fmt.Errorf("--label %q: want KEY=VALUE", l)
					}
					labels[k] = v
				}
				body["labels"] = labels
			}
			var c adminConsumer
			if err := client.call(cmd.Context(), http.MethodPut, consumerPath(args[0]), body, &c); err != nil {
				return err
			}
			printConsumer(cmd.OutOrStdout(), &c)
			return nil
		},
	}
	put.Flags().StringVar(&planName, "plan", "", "plan name (required)")
	put.Flags().StringVar(&status, "status", "active", "active or suspended")
	put.Flags().StringVar(&stripeID, "stripe-customer-id", "", "Stripe customer id (cus_...)")
	put.Flags().StringVar(&anchor, "period-anchor", "", "start of the billing cycle, RFC 3339 (default calendar months)")
	put.Flags().StringArrayVar(&putLabels, "label", nil, "a label KEY=VALUE (repeatable; the consumer gets exactly these)")
	_ = put.MarkFlagRequired("plan")

	var upPlan, upStatus, upStripe string
	update := &cobra.Command{
		Use:   "update ID",
		Short: "Change a consumer's plan, status or Stripe customer (upgrade, suspend)",
		Example: `  levy consumers update acme --plan enterprise
  levy consumers update acme --status suspended`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			body := map[string]string{}
			f := cmd.Flags()
			if f.Changed("plan") {
				body["plan"] = upPlan
			}
			if f.Changed("status") {
				body["status"] = upStatus
			}
			if f.Changed("stripe-customer-id") {
				body["stripe_customer_id"] = upStripe
			}
			if len(body) == 0 {
				return errors.New("nothing to change: give --plan, --status or --stripe-customer-id")
			}
			var c adminConsumer
			if err := client.call(cmd.Context(), http.MethodPatch, consumerPath(args[0]), body, &c); err != nil {
				return err
			}
			printConsumer(cmd.OutOrStdout(), &c)
			return nil
		},
	}
	update.Flags().StringVar(&upPlan, "plan", "", "new plan name")
	update.Flags().StringVar(&upStatus, "status", "", "active or suspended")
	update.Flags().StringVar(&upStripe, "stripe-customer-id", "", "Stripe customer id (empty clears it)")

	get := &cobra.Command{
		Use:   "get ID",
		Short: "Show a consumer",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var c adminConsumer
			if err := client.call(cmd.Context(), http.MethodGet, consumerPath(args[0]), nil, &c); err != nil {
				return err
			}
			printConsumer(cmd.OutOrStdout(), &c)
			return nil
		},
	}
	cmd.AddCommand(put, update, get, consumersListCmd(client), consumersDeleteCmd(client), consumersLabelCmd(client))
	return cmd
}

// addAdminKeyCmds adds `create` and `revoke`, which call a running levy's
// admin API, to the keys command.
func addAdminKeyCmds(keys *cobra.Command) {
	var consumer, expiresAt, keyID string
	create := &cobra.Command{
		Use:   "create",
		Short: "Issue a key for a consumer in a running levy's store",
		Long: `Ask a running levy to issue a key for a consumer. The key is printed once;
levy keeps only its hash.`,
		Example: `  LEVY_ADMIN_TOKEN=... levy keys create --consumer acme --expires-at 2027-01-01T00:00:00Z`,
		Args:    cobra.NoArgs,
	}
	createClient := adminFlags(create, false)
	create.RunE = func(cmd *cobra.Command, _ []string) error {
		body := map[string]string{}
		if keyID != "" {
			body["id"] = keyID
		}
		if expiresAt != "" {
			body["expires_at"] = expiresAt
		}
		var resp struct {
			ID        string `json:"id"`
			Key       string `json:"key"`
			Consumer  string `json:"consumer"`
			ExpiresAt string `json:"expires_at"`
		}
		if err := createClient.call(cmd.Context(), http.MethodPost, consumerPath(consumer)+"/keys", body, &resp); err != nil {
			return err
		}
		out := cmd.OutOrStdout()
		fmt.Fprintf(out, "key: %s\n", resp.Key)
		fmt.Fprintf(out, "id:  %s\n", resp.ID)
		if resp.ExpiresAt != "" {
			fmt.Fprintf(out, "expires_at: %s\n", resp.ExpiresAt)
		}
		return nil
	}
	create.Flags().StringVar(&consumer, "consumer", "", "consumer id (required)")
	create.Flags().StringVar(&expiresAt, "expires-at", "", "expiry, RFC 3339 (default never)")
	create.Flags().StringVar(&keyID, "id", "", "key id (default derived from the key's hash)")
	_ = create.MarkFlagRequired("consumer")

	revoke := &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke a key in a running levy's store by its id",
		Args:  cobra.ExactArgs(1),
	}
	revokeClient := adminFlags(revoke, false)
	revoke.RunE = func(cmd *cobra.Command, args []string) error {
		if err := revokeClient.call(cmd.Context(), http.MethodPost, "/v1/keys/"+url.PathEscape(args[0])+"/revoke", nil, nil); err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "revoked %s\n", args[0])
		return nil
	}
	keys.AddCommand(create, revoke, keysListCmd(), keysRotateCmd())
}
