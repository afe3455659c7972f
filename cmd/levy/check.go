package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/levyhq/levy/test/envoy"
)

func checkCmd() *cobra.Command {
	var (
		addr, key, keyHeader, path, method string
		headers                            []string
		count                              int
		timeout                            time.Duration
	)
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Play Envoy against a running levy and print its decision",
		Long: `Send one request (or --count of them) to levy's ext_authz service the way
Envoy does, and print what Envoy would do: allow or deny, the HTTP status,
the headers that go upstream and back to the client, and the reason.`,
		Example: `  levy check --key levy_... --path /v1/items
  levy check --key levy_... --path /v1/items --count 10`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &envoy.Request{Method: method, Path: path}
			if key != "" {
				req.Headers = append(req.Headers, envoy.Header{Name: keyHeader, Value: key})
			}
			for _, h := range headers {
				name, value, ok := strings.Cut(h, ":")
				if !ok {
					return fmt.Errorf("--header %q: want 'Name: value'", h)
				}
				req.Headers = append(req.Headers, envoy.Header{Name: strings.TrimSpace(name), Value: strings.TrimSpace(value)})
			}
			conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				return fmt.Errorf("connect %s: %w", addr, err)
			}
			defer conn.Close()
			client := envoy.NewAuthzClient(conn, envoy.AuthzConfig{Timeout: timeout})
			out := cmd.OutOrStdout()
			for i := 1; i <= count; i++ {
				o, err := client.Check(cmd.Context(), req)
				if err != nil {
					return err
				}
				if count > 1 {
					fmt.Fprintf(out, "--- request %d of %d\n", i, count)
				}
				printOutcome(out, o)
				if o.RPCError != nil && i == 1 {
					return fmt.Errorf("levy at %s did not answer: %w", addr, o.RPCError)
				}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&addr, "addr", "127.0.0.1:8081", "levy's gRPC address")
	f.StringVar(&key, "key", "", "API key to send")
	f.StringVar(&keyHeader, "key-header", "x-api-key", "header that carries the key")
	f.StringVar(&path, "path", "/", "request path, with query")
	f.StringVar(&method, "method", "GET", "request method")
	f.StringArrayVarP(&headers, "header", "H", nil, "extra request header 'Name: value' (repeatable)")
	f.IntVarP(&count, "count", "n", 1, "send the request this many times")
	f.DurationVar(&timeout, "timeout", envoy.DefaultAuthzTimeout, "ext_authz timeout, as Envoy's grpc_service.timeout")
	return cmd
}

func printOutcome(w io.Writer, o *envoy.Outcome) {
	decision := "deny"
	if o.Allowed {
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
