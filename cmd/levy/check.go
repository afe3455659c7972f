package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/levyhq/levy/pkg/envoyclient"
)

func checkCmd() *cobra.Command {
	var (
		addr, key, keyHeader, path, method string
		headers                            []string
		count, statusOnError               int
		timeout                            time.Duration
	)
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Play Envoy against a running levy and print its decision",
		Long: `Send one request (or --count of them) to levy's ext_authz service the way
Envoy does, and print what Envoy would do: allow or deny, the HTTP status,
the headers that go upstream and back to the client, and the reason.

Exit status: 0 when every request was allowed, 1 when levy denied one, 2
when levy did not answer (Envoy then answers --status-on-error, 503 as the
shipped Envoy configs say, to the client).`,
		Example: `  levy check --key levy_... --path /v1/items
  levy check --key levy_... --path /v1/items --count 10`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &envoyclient.Request{Method: method, Path: path}
			if key != "" {
				req.Headers = append(req.Headers, envoyclient.Header{Name: keyHeader, Value: key})
			}
			for _, h := range headers {
				name, value, ok := strings.Cut(h, ":")
				if !ok {
					return fmt.Errorf("--header %q: want 'Name: value'", h)
				}
				req.Headers = append(req.Headers, envoyclient.Header{Name: strings.TrimSpace(name), Value: strings.TrimSpace(value)})
			}
			conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				return fmt.Errorf("connect %s: %w", addr, err)
			}
			defer conn.Close()
			client := envoyclient.NewAuthzClient(conn, envoyclient.AuthzConfig{Timeout: timeout, StatusOnError: statusOnError})
			out := cmd.OutOrStdout()
			var denied, failed int
			var rpcErr error
			for i := 1; i <= count; i++ {
				o, err := client.Check(cmd.Context(), req)
				if err != nil {
					return err
				}
				if count > 1 {
					fmt.Fprintf(out, "--- request %d of %d\n", i, count)
				}
				printOutcome(out, o)
				switch {
				case o.RPCError != nil:
					failed++
					rpcErr = o.RPCError
				case !o.Allowed:
					denied++
				}
			}
			if failed > 0 {
				return &exitError{code: exitUnreachable, err: fmt.Errorf("levy at %s did not answer %d of %d checks (Envoy answers %d): %w", addr, failed, count, statusOnError, rpcErr)}
			}
			if denied > 0 {
				return &exitError{code: exitDenied, err: fmt.Errorf("levy denied %d of %d requests", denied, count)}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&addr, "addr", dialAddr(os.Getenv("LEVY_GRPC_ADDR"), "127.0.0.1:8081"), "levy's gRPC address (default $LEVY_GRPC_ADDR, as levy serve listens)")
	f.StringVar(&key, "key", "", "API key to send")
	f.StringVar(&keyHeader, "key-header", "x-api-key", "header that carries the key")
	f.StringVar(&path, "path", "/", "request path, with query")
	f.StringVar(&method, "method", "GET", "request method")
	f.StringArrayVarP(&headers, "header", "H", nil, "extra request header 'Name: value' (repeatable)")
	f.IntVarP(&count, "count", "n", 1, "send the request this many times")
	f.DurationVar(&timeout, "timeout", envoyclient.DefaultAuthzTimeout, "ext_authz timeout, as Envoy's grpc_service.timeout")
	f.IntVar(&statusOnError, "status-on-error", http.StatusServiceUnavailable, "status Envoy answers when levy does not (ext_authz status_on_error; envoy/ and k8s/ set 503)")
	return cmd
}

// Exit statuses of levy check beyond 0 (every request allowed).
const (
	exitDenied      = 1
	exitUnreachable = 2
)

// dialAddr is where a client reaches a server listening on listen ("" for
// def): a wildcard host (":8081", "0.0.0.0:8081", "[::]:8081") is this
// machine's loopback.
func dialAddr(listen, def string) string {
	if listen == "" {
		return def
	}
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		return net.JoinHostPort("127.0.0.1", port)
	}
	return listen
}

func printOutcome(w io.Writer, o *envoyclient.Outcome) {
	decision := "deny"
	switch {
	case o.RPCError != nil && o.Allowed:
		decision = "allow (levy did not answer: failure_mode_allow)"
	case o.RPCError != nil:
		decision = "deny (levy did not answer: status_on_error)"
	case o.Allowed:
		decision = "allow"
	}
	fmt.Fprintf(w, "decision: %s\nstatus:   %d\n", decision, o.Status)
	if o.RPCError != nil {
		fmt.Fprintf(w, "error:    %v\n", o.RPCError)
	}
	if o.Allowed {
		fmt.Fprintln(w, "upstream request headers:")
		for _, h := range o.UpstreamHeaders {
			fmt.Fprintf(w, "  %s: %s\n", h.Name, h.Value)
		}
	}
	if len(o.ResponseHeaders) > 0 {
		fmt.Fprintln(w, "response headers to the client:")
		for _, h := range o.ResponseHeaders {
			fmt.Fprintf(w, "  %s: %s\n", h.Name, h.Value)
		}
	}
	if o.Body != "" {
		fmt.Fprintf(w, "body:     %s\n", o.Body)
	}
	if md := o.DynamicMetadata; md != nil {
		var parts []string
		for _, k := range []string{"consumer", "plan", "model", "key_id"} {
			if v, ok := md.Fields[k]; ok {
				parts = append(parts, fmt.Sprintf("%s=%v", k, v.AsInterface()))
			}
		}
		if len(parts) > 0 {
			fmt.Fprintf(w, "metadata: %s\n", strings.Join(parts, " "))
		}
	}
}
