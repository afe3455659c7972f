package config

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"gopkg.in/yaml.v3"
)

// The secrets only the environment gives arrive in the config, and the
// config shows none of them however it is printed or marshalled: fmt's
// verbs, JSON, YAML, and zap's fields and reflection.
func TestEnvironmentSecretsArriveInTheConfigAndNeverShow(t *testing.T) {
	t.Setenv("LEVY_TEST_PEPPER", "pepper-value-4")
	c, err := Parse([]byte("keys: {hash_secret: env:LEVY_TEST_PEPPER}\nplans: {free: {model: tiered}}\n"), "x.yaml")
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{
		"LEVY_ADMIN_TOKEN":           "admin-value-0\n",
		"STRIPE_API_KEY":             "sk_test_value-1",
		"STRIPE_WEBHOOK_SECRET":      "whsec_value-2",
		"LEVY_REDIS_PASSWORD":        "redis-value-3",
		"LEVY_REDIS_USERNAME":        "levy",
		"LEVY_REDIS_TLS":             "true",
		"LEVY_REDIS_TLS_CA":          "/etc/redis/ca.pem",
		"LEVY_REDIS_TLS_SERVER_NAME": "redis.internal",
	}
	c.ApplyEnv(func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, got := range map[string]string{
		"LEVY_ADMIN_TOKEN": c.AdminToken.Value(), "STRIPE_API_KEY": c.Billing.Stripe.APIKey.Value(),
		"STRIPE_WEBHOOK_SECRET": c.Billing.Stripe.WebhookSecret.Value(), "LEVY_REDIS_PASSWORD": c.Store.Redis.Password.Value(),
		"LEVY_REDIS_USERNAME": c.Store.Redis.Username, "LEVY_REDIS_TLS_CA": c.Store.Redis.TLS.CAFile,
		"LEVY_REDIS_TLS_SERVER_NAME": c.Store.Redis.TLS.ServerName,
	} {
		if got != env[name] {
			t.Errorf("%s arrived as %q, want %q", name, got, env[name])
		}
	}
	if !c.Store.Redis.TLS.Enabled {
		t.Error("LEVY_REDIS_TLS=true did not turn TLS on")
	}

	var logged bytes.Buffer
	log := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(&logged), zap.DebugLevel))
	log.Info("config", zap.Any("config", c), zap.Any("stripe", c.Billing.Stripe), zap.Any("key", c.Billing.Stripe.APIKey),
		zap.Stringer("token", c.AdminToken), zap.Reflect("redis", c.Store.Redis))
	asJSON, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	asYAML, err := yaml.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	shown := map[string]string{
		"%v": fmt.Sprintf("%v", c), "%+v": fmt.Sprintf("%+v", c), "%#v": fmt.Sprintf("%#v", c),
		"%v of a secret": fmt.Sprintf("%v", c.Billing.Stripe.APIKey), "%#v of a secret": fmt.Sprintf("%#v", c.Keys.HashSecret),
		"%s of a secret": fmt.Sprintf("%s", c.AdminToken), "%q of a secret": fmt.Sprintf("%q", c.Store.Redis.Password),
		"%d of a secret": fmt.Sprintf("%d", c.Billing.Stripe.WebhookSecret), "%x of a secret": fmt.Sprintf("%x", c.Keys.HashSecret),
		"json": strings.NewReplacer(`\u003c`, "<", `\u003e`, ">").Replace(string(asJSON)), // json escapes < and >
		"yaml": string(asYAML), "zap": logged.String(),
	}
	for how, out := range shown {
		for _, secret := range []string{"admin-value-0", "sk_test_value-1", "whsec_value-2", "redis-value-3", "pepper-value-4"} {
			if strings.Contains(out, secret) || strings.Contains(out, fmt.Sprintf("%x", secret)) {
				t.Errorf("%s shows %s:\n%s", how, secret, out)
			}
		}
		if !strings.Contains(out, Redacted) {
			t.Errorf("%s does not say %s where the secrets are:\n%s", how, Redacted, out)
		}
	}
}

// A secret the environment does not set stays unset, and prints as
// nothing rather than as a redaction of nothing.
func TestAnUnsetSecretStaysUnset(t *testing.T) {
	c := Default()
	c.ApplyEnv(func(k string) (string, bool) { return "", k == "STRIPE_API_KEY" })
	if v := c.Billing.Stripe.APIKey.Value(); v != "" {
		t.Fatalf("STRIPE_API_KEY set to \"\" gave %q", v)
	}
	if s := fmt.Sprint(c.Billing.Stripe.APIKey); s != "" {
		t.Fatalf("an unset secret prints %q", s)
	}
}
