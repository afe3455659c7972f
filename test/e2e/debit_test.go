package e2e

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/levyhq/levy/pkg/config"
	"github.com/levyhq/levy/pkg/envoyclient"
	"github.com/levyhq/levy/pkg/redistest"
)

// debitRules are a token budget (1,000 a minute, debited after the fact)
// and two quota-mode backends of 1 and 2 a minute whose metadata names the
// one to route to: Envoy's check-then-debit patterns, as levy's own
// fixtures.
const debitRules = `plans:
  free: {model: freemium, rate: {requests: 10, per: minute}, quota: {requests: 100, period: month}}
ratelimit:
  domains:
    - domain: llm
      descriptors:
        - key: model
          value: large
          rate_limit: {unit: minute, requests_per_unit: 1000, debit: true}
        - key: backend
          value: blue
          quota_mode: true
          rate_limit: {unit: minute, requests_per_unit: 1}
          metadata: {route_to: {name: blue}}
        - key: backend
          value: green
          quota_mode: true
          rate_limit: {unit: minute, requests_per_unit: 2}
          metadata: {route_to: {name: green}}
`

func serveDebitRules(t *testing.T, store string) *proc {
	t.Helper()
	dir := t.TempDir()
	cfg := writeConfig(t, dir, debitRules)
	if store != "redis" {
		return serveInProcess(t, cfg, nil)
	}
	addr := redistest.Start(t).Addr
	return serveInProcess(t, cfg, func(c *config.Config) {
		c.Store.Type, c.Store.Redis.Addr = "redis", addr
		c.Store.Timeout = config.Duration(time.Second) // as serve gives a Redis store
	})
}

func debitOn(t *testing.T, c *envoyclient.RateLimitClient, hits uint64, kv ...string) *envoyclient.RateLimitOutcome {
	t.Helper()
	desc := envoyclient.Descriptor{HitsAddend: &hits}
	for i := 0; i+1 < len(kv); i += 2 {
		desc.Entries = append(desc.Entries, [2]string{kv[i], kv[i+1]})
	}
	o, err := c.ShouldRateLimit(context.Background(), []envoyclient.Descriptor{desc}, 0)
	if err != nil || o.RPCError != nil {
		t.Fatalf("%v %v", err, o.RPCError)
	}
	return o
}

// An LLM route checks its token budget before the request (hits_addend
// 0) and debits the tokens the answer took once it is done
// (apply_on_stream_done, whose answer Envoy does not read). A debit that
// does not fit is recorded all the same: the budget goes into debt and
// the next check is denied. Before, the debit was refused and nothing
// recorded, so the checks never denied.
func TestCheckThenDebitDeniesOnceTheBudgetIsSpent(t *testing.T) {
	for _, store := range []string{"local", "redis"} {
		t.Run(store, func(t *testing.T) {
			c := rlClient(t, serveDebitRules(t, store), "llm")
			served := 0
			for range 10 {
				if debitOn(t, c, 0, "model", "large").Limited {
					continue
				}
				served++
				debitOn(t, c, 400, "model", "large") // the answer took 400 tokens
			}
			// 0, 400 and 800 tokens spent pass the check; the third debit
			// takes the budget to 1,200 of 1,000.
			if served != 3 {
				t.Fatalf("%d of 10 requests served on a budget of 1,000 tokens at 400 each, want 3", served)
			}
		})
	}
}

// Two quota-mode backends: every request checks both (hits_addend 0) and
// goes to the one the answer's metadata names, whose quota is debited
// after. A request is denied only when both are spent; a check with
// nothing left is over, so blue serves 1 and green 2 (upstream serves one
// more of each: its check passes with nothing left).
func TestQuotaModeRoutesOnMetadataUntilEveryBackendIsSpent(t *testing.T) {
	for _, store := range []string{"local", "redis"} {
		t.Run(store, func(t *testing.T) {
			c := rlClient(t, serveDebitRules(t, store), "llm")
			var routed []string
			for range 5 {
				zero := uint64(0)
				o, err := c.ShouldRateLimit(context.Background(), []envoyclient.Descriptor{
					{Entries: [][2]string{{"backend", "blue"}}, HitsAddend: &zero},
					{Entries: [][2]string{{"backend", "green"}}, HitsAddend: &zero},
				}, 0)
				if err != nil || o.RPCError != nil {
					t.Fatalf("%v %v", err, o.RPCError)
				}
				if o.Limited {
					routed = append(routed, "denied")
					continue
				}
				name := o.DynamicMetadata.GetFields()["metadata"].GetStructValue().GetFields()["route_to"].GetStructValue().GetFields()["name"].GetStringValue()
				routed = append(routed, name)
				debitOn(t, c, 1, "backend", name)
			}
			want := []string{"blue", "green", "green", "denied", "denied"}
			if !slices.Equal(routed, want) {
				t.Fatalf("routed %v, want %v", routed, want)
			}
		})
	}
}
