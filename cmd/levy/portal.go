package main

import (
	"fmt"
	"net/http"

	"github.com/spf13/cobra"
)

// portalCmd is the developer portal's operator side: sign-in links.
func portalCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "portal",
		Short: "Developer portal: mint sign-in links for consumers",
	}
	var ttl string
	var scopes []string
	link := &cobra.Command{
		Use:   "link CONSUMER",
		Short: "Mint a single-use sign-in link to the developer portal and print it",
		Long: `Ask a running levy for a sign-in link to its developer portal for a consumer
and print the URL alone, for a script to send. The link works once, for
--ttl (default the config's portal.link_ttl, 15m; at most 24h); --scope limits
what its session may do (usage, keys, plan; default all).`,
		Example: `  LEVY_ADMIN_TOKEN=... levy portal link acme --ttl 1h --scope usage --scope keys`,
		Args:    cobra.ExactArgs(1),
	}
	client := adminFlags(link, false)
	link.RunE = func(cmd *cobra.Command, args []string) error {
		body := map[string]any{}
		if ttl != "" {
			body["ttl"] = ttl
		}
		if len(scopes) > 0 {
			body["scopes"] = scopes
		}
		var resp struct {
			URL       string `json:"url"`
			ExpiresAt string `json:"expires_at"`
		}
		if err := client.call(cmd.Context(), http.MethodPost, consumerPath(args[0])+"/portal-links", body, &resp); err != nil {
			return err
		}
		if resp.URL == "" {
			return fmt.Errorf("levy answered no link")
		}
		fmt.Fprintln(cmd.OutOrStdout(), resp.URL)
		return nil
	}
	link.Flags().StringVar(&ttl, "ttl", "", "how long the link works, e.g. 15m, 1h (default the config's portal.link_ttl)")
	link.Flags().StringArrayVar(&scopes, "scope", nil, "what the session may do: usage, keys or plan (repeatable; default all)")
	cmd.AddCommand(link)
	return cmd
}
