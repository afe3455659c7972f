package main

import (
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/levyhq/levy/examples"
	"github.com/levyhq/levy/pkg/config"
	"github.com/levyhq/levy/pkg/server"
	"github.com/levyhq/levy/pkg/telemetry"
)

func serveCmd() *cobra.Command {
	var path, dataDir, grpcAddr, httpAddr, rlDir, store, redisAddr, redisCluster string
	var storeTimeout time.Duration
	var demo bool
	cmd := &cobra.Command{
		Use:   "serve (--config FILE | --demo)",
		Short: "Serve ext_authz, RateLimitService and access logs for Envoy",
		Long: `Serve levy. Settings come from the built-in defaults, then the config file
(--config, or $` + configEnv + `), then LEVY_* environment variables, then these
flags.

--demo serves the embedded example config (examples/levy.yaml) and creates a
consumer demo-<plan> for each plan, printing its key: for trying levy out,
never for production. With --config, --demo adds those demo consumers to
that file's plans.`,
		Example: `  levy serve --config /etc/levy/levy.yaml
  levy serve --demo --data-dir levy-data`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if path == "" {
				path = os.Getenv(configEnv)
			}
			if path == "" && !demo {
				return errors.New("no config: pass --config FILE (or set " + configEnv + "), or --demo to try levy with the example config and printed demo keys")
			}
			if p, ok := gcPercent(os.Getenv); ok {
				debug.SetGCPercent(p)
			}
			flags := func(c *config.Config) {
				if demo {
					c.Demo = true
				}
				if dataDir != "" {
					c.Store.DataDir = dataDir
					c.SetBy("store.data_dir", "--data-dir")
				}
				if grpcAddr != "" {
					c.Listen.GRPC = grpcAddr
					c.SetBy("listen.grpc", "--grpc-addr")
				}
				if httpAddr != "" {
					c.Listen.HTTP = httpAddr
					c.SetBy("listen.http", "--http-addr")
				}
				if rlDir != "" {
					c.RateLimit.Dir = rlDir
					c.SetBy("ratelimit.dir", "--ratelimit-dir")
				}
				if store != "" {
					c.Store.Type = store
					c.SetBy("store.type", "--store")
				}
				if redisAddr != "" {
					c.Store.Redis.Addr = redisAddr
					c.SetBy("store.redis.addr", "--redis-addr")
				}
				if storeTimeout > 0 {
					c.Store.Timeout = config.Duration(storeTimeout)
				}
				if redisCluster != "" {
					c.Store.Redis.Cluster = strings.Split(redisCluster, ",")
					c.SetBy("store.redis.cluster", "--redis-cluster")
				}
			}
			cfg, err := loadConfig(path, flags)
			if err != nil {
				return err
			}
			log, err := telemetry.NewLogger(cfg.Log.Level, cfg.Log.Format)
			if err != nil {
				return err
			}
			defer log.Sync() //nolint:errcheck // stderr sync fails on terminals
			reload := func() (*config.Config, error) { return loadConfig(path, flags) }
			srv, err := server.New(cfg, server.Options{Log: log, Out: cmd.OutOrStdout(), Reload: reload})
			if err != nil {
				return err
			}
			return srv.Run(cmd.Context())
		},
	}
	cmd.Flags().StringVarP(&path, "config", "c", "", "config file (default $"+configEnv+")")
	cmd.Flags().BoolVar(&demo, "demo", false, "create a demo consumer per plan and print its key; without --config, serve the embedded example config")
	cmd.Flags().StringVar(&dataDir, "data-dir", "", "directory of the local store")
	cmd.Flags().StringVar(&grpcAddr, "grpc-addr", "", "gRPC listen address")
	cmd.Flags().StringVar(&httpAddr, "http-addr", "", "HTTP listen address")
	cmd.Flags().StringVar(&rlDir, "ratelimit-dir", "", "directory of RateLimitService rule files (envoyproxy/ratelimit format)")
	cmd.Flags().StringVar(&store, "store", "", "where shared state lives: local or redis")
	cmd.Flags().StringVar(&redisAddr, "redis-addr", "", "Redis host:port (with --store redis)")
	cmd.Flags().DurationVar(&storeTimeout, "store-timeout", 0, "bound on one decision's store call (store.timeout; default 50ms)")
	cmd.Flags().StringVar(&redisCluster, "redis-cluster", "", "Redis Cluster seed nodes, comma-separated (with --store redis)")
	return cmd
}

// defaultGCPercent is levy serve's garbage collection target, unless GOGC
// says otherwise. levy's live heap is small (config, key cache, buckets:
// a few megabytes) while every call leaves gRPC and protobuf garbage, so
// at Go's default of 100 the collector runs dozens of times a second under
// load, and took a sixth of the CPU in a RateLimitService benchmark. At
// 400 the heap peaks near 40 MB in that benchmark, and the same CPU serves
// about 15% more calls. GOMEMLIMIT (k8s/levy.yaml sets it from the memory
// limit) still makes the collector work harder near the limit.
const defaultGCPercent = 400

// gcPercent is the GC target levy serve sets, and false when the GOGC
// environment variable is set: the operator's choice stands.
func gcPercent(getenv func(string) string) (int, bool) {
	if getenv("GOGC") != "" {
		return 0, false
	}
	return defaultGCPercent, true
}

// configEnv names the environment variable that, when --config is not
// given, names the config file (as the image's and chart's operators set
// it).
const configEnv = "LEVY_CONFIG"

// loadConfig reads path (or, when it is "", the embedded example config
// that --demo serves), applies the environment, then flags, then
// validates, rate-limit rules included.
func loadConfig(path string, flags func(*config.Config)) (*config.Config, error) {
	var cfg *config.Config
	var err error
	if path == "" {
		cfg, err = config.Parse(examples.LevyYAML, "embedded examples/levy.yaml")
		if err == nil {
			cfg.Source = "" // nothing to watch
		}
	} else {
		cfg, err = config.ParseFile(path)
	}
	if err != nil {
		return nil, err
	}
	cfg.ApplyEnv(nil)
	if flags != nil {
		flags(cfg)
	}
	if err := server.Validate(cfg); err != nil {
		return nil, fmt.Errorf("invalid config:\n%w", err)
	}
	return cfg, nil
}
