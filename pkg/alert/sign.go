package alert

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// SignatureHeader carries a delivery's signature: "t=<unix seconds>,
// v1=<hex HMAC-SHA256>", the MAC over "<t>.<body>" with the shared secret,
// as Stripe signs its webhooks. A receiver recomputes it, compares in
// constant time, and refuses a t far from its clock (a replay).
const SignatureHeader = "Levy-Signature"

// EventIDHeader carries the event's id, stable across retries.
const EventIDHeader = "Levy-Event-Id"

// DefaultTolerance is how far from the receiver's clock Verify accepts t.
const DefaultTolerance = 5 * time.Minute

// Errors of Verify.
var (
	ErrNoSignature  = errors.New("no valid signature header: want t=<unix seconds>,v1=<hex>")
	ErrBadSignature = errors.New("signature does not match the body")
	ErrTooOld       = errors.New("signature timestamp outside the tolerance")
)

// Sign returns the SignatureHeader value for body sent at t.
func Sign(secret, body []byte, t time.Time) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	return "t=" + ts + ",v1=" + hex.EncodeToString(mac(secret, ts, body))
}

func mac(secret []byte, ts string, body []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(ts))
	m.Write([]byte{'.'})
	m.Write(body)
	return m.Sum(nil)
}

// Verify checks header (a SignatureHeader value) against body and secret
// at now: one of its v1 signatures must match, and its t must be within
// tolerance of now (DefaultTolerance when 0). Several v1 entries are
// accepted, so that a receiver keeps working while the secret is rolled.
func Verify(body []byte, header string, secret []byte, now time.Time, tolerance time.Duration) error {
	if tolerance <= 0 {
		tolerance = DefaultTolerance
	}
	if len(header) > 4096 {
		return ErrNoSignature
	}
	var ts string
	var sigs [][]byte
	for _, part := range strings.Split(header, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			continue
		}
		switch k {
		case "t":
			ts = v
		case "v1":
			if b, err := hex.DecodeString(v); err == nil && len(b) == sha256.Size {
				sigs = append(sigs, b)
			}
		}
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || len(sigs) == 0 {
		return ErrNoSignature
	}
	want := mac(secret, ts, body)
	match := false
	for _, s := range sigs {
		match = hmac.Equal(s, want) || match
	}
	if !match {
		return ErrBadSignature
	}
	if d := now.Sub(time.Unix(sec, 0)); d > tolerance || d < -tolerance {
		return fmt.Errorf("%w: signed %v from now", ErrTooOld, d.Round(time.Second))
	}
	return nil
}
