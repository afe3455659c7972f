package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/levyhq/levy/api"
	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/config"
	"github.com/levyhq/levy/pkg/rls"
)

func keysCmd() *cobra.Command {
	keys := &cobra.Command{Use: "keys", Short: "Work with API keys"}
	var prefix, secretRef string
	gen := &cobra.Command{
		Use:   "generate",
		Short: "Generate an API key and print it with its hash",
		Long: `Generate a random API key. Give the key to the consumer (it is shown once)
and put its hash in the config file under the consumer's keys, as hash:.

The hash is the key's SHA-256, or with --hash-secret (the config's
keys.hash_secret) its HMAC-SHA-256 under that secret: the line is labelled
sha256 or hmac-sha256 accordingly. levy reads either under hash: (and
under sha256:, its older name) and compares it with what keys.hash_secret
makes of a presented key, so an HMAC works only with the same secret.`,
		Example: `  levy keys generate
  LEVY_HASH_SECRET=... levy keys generate --hash-secret env:LEVY_HASH_SECRET`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			key, err := apikey.Generate(prefix)
			if err != nil {
				return err
			}
			var secret config.Secret
			label := "sha256:"
			if secretRef != "" {
				if err := secret.Set(secretRef); err != nil {
					return fmt.Errorf("--hash-secret %s: %w", secretRef, err)
				}
				label = "hmac-sha256:"
			}
			hash := apikey.NewHasher([]byte(secret.Value())).Hash(key)
			out := cmd.OutOrStdout()
			w := len(label)
			fmt.Fprintf(out, "%-*s %s\n", w, "key:", key)
			fmt.Fprintf(out, "%-*s %s\n", w, label, hash)
			fmt.Fprintf(out, "%-*s %s\n", w, "id:", apikey.IDFromHash(hash))
			// What goes under the consumer's keys in levy.yaml.
			fmt.Fprintf(out, "%-*s {hash: %s}", w, "config:", hash)
			if secretRef != "" {
				fmt.Fprintf(out, "  # with keys.hash_secret: %s", secretRef)
			}
			fmt.Fprintln(out)
			return nil
		},
	}
	gen.Flags().StringVar(&prefix, "prefix", apikey.DefaultPrefix, "key prefix")
	gen.Flags().StringVar(&secretRef, "hash-secret", "", "keys.hash_secret of the config (env:NAME or file:/path), for HMAC hashes")
	keys.AddCommand(gen)
	return keys
}

func configCmd() *cobra.Command {
	cfg := &cobra.Command{Use: "config", Short: "Work with config files"}
	var dir string
	var merge bool
	validate := &cobra.Command{
		Use:   "validate [FILE] [--ratelimit-dir DIR]",
		Short: "Check a config file, or rate-limit rule files alone; errors name the file, line and key",
		Long: `Check a config file; errors name the file, line and key. The file is checked
against levy's JSON Schema (api/levy.schema.json, built in) first, then
against levy's own rules.

With --ratelimit-dir, also the rule files in DIR (every *.yaml and *.yml,
in envoyproxy/ratelimit's format); without FILE, those rule files alone,
as envoyproxy/ratelimit's config_check does.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			switch {
			case len(args) == 1:
				if err := checkSchema(args[0]); err != nil {
					return err
				}
				if _, err := loadConfig(args[0], func(c *config.Config) {
					if dir != "" {
						c.RateLimit.Dir, c.RateLimit.MergeDomains = dir, c.RateLimit.MergeDomains || merge
					}
				}); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s: ok\n", args[0])
			case dir != "":
				srcs, err := rls.ReadDir(dir)
				if err != nil {
					return err
				}
				if len(srcs) == 0 {
					return fmt.Errorf("%s: no *.yaml or *.yml rule files", dir)
				}
				if _, err := rls.Load(srcs, merge); err != nil {
					return err
				}
				for _, s := range srcs {
					fmt.Fprintf(cmd.OutOrStdout(), "%s: ok\n", s.Name)
				}
			default:
				return errors.New("name a config FILE, or --ratelimit-dir DIR, or both")
			}
			return nil
		},
	}
	validate.Flags().StringVar(&dir, "ratelimit-dir", "", "rate-limit rule files to check (every *.yaml and *.yml)")
	validate.Flags().BoolVar(&merge, "merge-domains", false, "let several rule files add to one domain (ratelimit.merge_domains)")
	cfg.AddCommand(validate)
	return cfg
}

// checkSchema validates a config file against levy.schema.json, naming
// every disagreement with its line and setting.
func checkSchema(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	errs, err := api.ValidateConfig(data)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if len(errs) == 0 {
		return nil
	}
	lines := make([]string, 0, len(errs))
	for _, e := range errs {
		lines = append(lines, fmt.Sprintf("%s:%d: %s", path, e.Line, e))
	}
	return fmt.Errorf("%s does not match levy's config schema (api/levy.schema.json):\n%s", path, strings.Join(lines, "\n"))
}
