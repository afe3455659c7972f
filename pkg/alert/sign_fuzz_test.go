package alert_test

import (
	"errors"
	"testing"
	"time"

	"github.com/levyhq/levy/pkg/alert"
)

// Verify reads headers from outside: any bytes give an answer, never a
// panic, and only a header Sign made for the same body and secret passes.
func FuzzVerify(f *testing.F) {
	now := time.Unix(1_700_000_000, 0)
	secret := []byte("whsec_test")
	f.Add([]byte(`{"id":"x"}`), alert.Sign(secret, []byte(`{"id":"x"}`), now))
	f.Add([]byte(""), "t=1,v1=00")
	f.Add([]byte("a"), "t=,v1=,v1=zz,,=,t=99999999999999999999")
	f.Fuzz(func(t *testing.T, body []byte, header string) {
		err := alert.Verify(body, header, secret, now, time.Minute)
		if err == nil && header != alert.Sign(secret, body, now) {
			// Another accepted form must still carry a valid MAC: re-signing
			// with a different secret must fail.
			if alert.Verify(body, header, []byte("other"), now, time.Minute) == nil {
				t.Fatalf("header %q verifies under two secrets", header)
			}
		}
		if err != nil && !errors.Is(err, alert.ErrNoSignature) && !errors.Is(err, alert.ErrBadSignature) && !errors.Is(err, alert.ErrTooOld) {
			t.Fatalf("unexpected error %v", err)
		}
	})
}
