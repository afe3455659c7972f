// Command levy sells APIs by plan: it answers Envoy's ext_authz,
// RateLimitService and access-log APIs. See `levy help`.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"syscall"

	"github.com/spf13/cobra"
)

// version, commit and date are set at build time (make build, make
// image: -ldflags "-X main.version=... -X main.commit=... -X main.date=...");
// a plain `go build` in a checkout takes commit and date from the
// toolchain's VCS stamp.
var version, commit, date = "dev", "", ""

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "levy:", err)
		code := 1
		var ee *exitError
		if errors.As(err, &ee) {
			code = ee.code
		}
		os.Exit(code)
	}
}

// exitError is an error that main turns into an exit status other than 1.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	root := rootCmd()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	return root.ExecuteContext(ctx)
}

// rootCmd is levy with its commands (cobra adds help and completion).
func rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "levy",
		Short:         "levy sells your APIs by plan, beside Envoy or Istio",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	keys := keysCmd()
	addAdminKeyCmds(keys)
	root.AddCommand(serveCmd(), checkCmd(), keys, consumersCmd(), usageCmd(), billingCmd(), configCmd(), versionCmd(), portalCmd())
	return root
}

func versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print levy's version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintln(cmd.OutOrStdout(), versionLine())
		},
	}
}

// versionLine is `levy VERSION (commit C, built D, GO OS/ARCH)`: what a
// bug report needs to name the build.
func versionLine() string {
	c, d, dirty := commit, date, false
	if info, ok := debug.ReadBuildInfo(); ok && commit == "" {
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				c = s.Value
			case "vcs.time":
				if d == "" {
					d = s.Value
				}
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
	}
	if len(c) > 12 {
		c = c[:12]
	}
	if dirty {
		c += "-dirty"
	}
	if c == "" {
		c = "unknown"
	}
	if d == "" {
		d = "unknown"
	}
	return fmt.Sprintf("levy %s (commit %s, built %s, %s %s/%s)", version, c, d, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
