package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
)

// debit (levy's extension) belongs under rate_limit; quota_mode and
// shadow_mode, which it goes with, belong to the descriptor. A debit:
// true written next to quota_mode (the descriptor level) is accepted and
// ignored: the rule refuses hits past its limit and records nothing (issue
// 11 item 1's "check-then-debit never denies" again), and config validate
// says ok. Same for burst and from_plan outside rate_limit, and for
// shadow_mode or quota_mode inside it.
func TestReviewValidateRejectsMisplacedLevyKeys(t *testing.T) {
	for name, text := range map[string]string{
		"debit beside quota_mode":   "domain: a\ndescriptors:\n  - key: k\n    quota_mode: true\n    debit: true\n    rate_limit: {unit: minute, requests_per_unit: 2}\n",
		"burst outside rate_limit":  "domain: a\ndescriptors:\n  - key: k\n    burst: 10\n    rate_limit: {unit: second, requests_per_unit: 2}\n",
		"shadow_mode in rate_limit": "domain: a\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 2, shadow_mode: true}\n",
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "a.yaml"), []byte(text), 0o600); err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			if err := run(context.Background(), []string{"config", "validate", "--ratelimit-dir", dir}, &out, &out); err == nil {
				t.Fatalf("validate accepted a key where it has no effect:\n%s%s", text, out.String())
			}
		})
	}
}

// A rule levy cannot decide passes validate and fails every request at
// run time: a bucket that takes more than limiter's maxAhead (2^51 µs,
// ~71 years) to fill is ErrBadLimit, which the RateLimitService answers
// InvalidArgument for every descriptor that matches it (Envoy then fails
// open or closed, per failure_mode_deny).
func TestReviewValidateRejectsRulesTheLimiterRefuses(t *testing.T) {
	dir := t.TempDir()
	text := "domain: a\ndescriptors:\n  - key: k\n    rate_limit: {unit: hour, requests_per_unit: 1, burst: 1000000}\n"
	if err := os.WriteFile(filepath.Join(dir, "a.yaml"), []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := run(context.Background(), []string{"config", "validate", "--ratelimit-dir", dir}, &out, &out); err == nil {
		t.Fatalf("validate accepted a rule every request on which is InvalidArgument:\n%s", out.String())
	}
}
