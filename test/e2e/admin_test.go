package e2e

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/levyhq/levy/pkg/redistest"
)

// A rotated key keeps working on every replica until its deadline and is
// then refused as rotated; a deleted consumer's keys stop on the other
// replica at once, though its lookup cache would trust them for an hour.
func TestRotationAndDeletionReachEveryReplicaAtOnce(t *testing.T) {
	rdb := redistest.Start(t)
	dir := t.TempDir()
	cfg := writeConfig(t, dir, redisConfig+`
store:
  redis: {cache_ttl: 1h}
`)
	t.Setenv("LEVY_ADMIN_TOKEN", "test-token")
	a := serve(t, "--config", cfg, "--store", "redis", "--redis-addr", rdb.Addr)
	b := serve(t, "--config", cfg, "--store", "redis", "--redis-addr", rdb.Addr)
	cb := b.client(t)
	adminCall(t, a, "PUT", "/v1/consumers/acme", `{"plan": "big", "labels": {"team": "search"}}`)
	created := adminCall(t, a, "POST", "/v1/consumers/acme/keys", `{}`)
	oldKey, oldID := created["key"].(string), created["id"].(string)
	if o := check(t, cb, oldKey, "/"); !o.Allowed {
		t.Fatalf("new key on replica b: %d %s", o.Status, o.Body)
	}

	rotated := adminCall(t, a, "POST", "/v1/keys/"+oldID+"/rotate", `{"grace": "2s"}`)
	newKey := rotated["key"].(string)
	deadline, err := time.Parse(time.RFC3339, rotated["replaces"].(map[string]any)["expires_at"].(string))
	if err != nil {
		t.Fatal(err)
	}
	if o := check(t, cb, newKey, "/"); !o.Allowed {
		t.Fatalf("rotated-in key on replica b: %d %s", o.Status, o.Body)
	}
	if time.Now().Before(deadline) {
		if o := check(t, cb, oldKey, "/"); !o.Allowed {
			t.Fatalf("old key before its deadline %s: %d %s", deadline, o.Status, o.Body)
		}
	}
	time.Sleep(time.Until(deadline) + 10*time.Millisecond) // the subject: the wall clock passes the key's deadline
	o := check(t, cb, oldKey, "/")
	if o.Status != 403 || !strings.Contains(o.Body, "rotated_key") || !strings.Contains(o.Body, "use the key that replaced it") {
		t.Fatalf("old key after its deadline: %d %s, want 403 rotated_key", o.Status, o.Body)
	}
	keys := adminCall(t, a, "GET", "/v1/consumers/acme/keys", "")["keys"].([]any)
	if len(keys) != 2 {
		t.Fatalf("keys of acme: %v", keys)
	}
	for _, k := range keys {
		for _, secret := range []string{oldKey, newKey} {
			if strings.Contains(strings.ToLower(toJSON(k)), strings.ToLower(secret[len(secret)-38:])) {
				t.Fatalf("key listing shows a secret: %v", k)
			}
		}
	}

	listed := adminCall(t, b, "GET", "/v1/consumers?label=team=search", "")["consumers"].([]any)
	if len(listed) != 1 || listed[0].(map[string]any)["id"] != "acme" {
		t.Fatalf("consumers with team=search on replica b: %v", listed)
	}
	adminCall(t, a, "DELETE", "/v1/consumers/acme", "")
	start := time.Now()
	waitFor(t, 3*time.Second, func() bool { return check(t, cb, newKey, "/").Status == 401 })
	if took := time.Since(start); took > time.Second {
		t.Errorf("replica b refused the deleted consumer's key after %s; its cache TTL is 1h, the invalidation should take milliseconds", took)
	}
}

func toJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
