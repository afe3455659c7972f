package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/levyhq/levy/pkg/apikey"
	"github.com/levyhq/levy/pkg/config"
)

func keysCmd() *cobra.Command {
	keys := &cobra.Command{Use: "keys", Short: "Work with API keys"}
	var prefix, secretRef string
	gen := &cobra.Command{
		Use:   "generate",
		Short: "Generate an API key and print it with its hash",
		Long: `Generate a random API key. Give the key to the consumer (it is shown once)
and put the sha256 line in the config file under the consumer's keys.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			key, err := apikey.Generate(prefix)
			if err != nil {
				return err
			}
			var secret config.Secret
			if secretRef != "" {
				if err := secret.Set(secretRef); err != nil {
					return err
				}
			}
			hash := apikey.NewHasher([]byte(secret.Value())).Hash(key)
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "key:    %s\n", key)
			fmt.Fprintf(out, "sha256: %s\n", hash)
			fmt.Fprintf(out, "id:     %s\n", apikey.IDFromHash(hash))
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
	cfg.AddCommand(&cobra.Command{
		Use:   "validate FILE",
		Short: "Check a config file; errors name the file, line and key",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := loadConfig(args[0], nil); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: ok\n", args[0])
			return nil
		},
	})
	return cfg
}
