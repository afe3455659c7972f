package limiter

import (
	"strconv"
	"strings"
	"time"
)

// Header is one response header.
type Header struct{ Name, Value string }

// HeaderSet chooses the rate-limit headers Headers returns.
type HeaderSet uint8

const (
	// XRateLimit is X-RateLimit-Limit/Remaining/Reset for the tightest
	// enforced limit (what Envoy's DRAFT_VERSION_03 emits).
	XRateLimit HeaderSet = 1 << iota
	// IETF is RateLimit-Policy, listing every enforced limit, and
	// RateLimit for the tightest.
	IETF
)

// Headers returns the rate-limit headers of set that clients expect for a
// decision, and Retry-After when it denied. Unenforced limits (soft quotas
// without a cap) are left out.
func (d *Decision) Headers(limits []Limit, set HeaderSet) []Header {
	t := d.Tightest(limits)
	if t < 0 {
		return nil
	}
	st := d.Statuses[t]
	reset := st.Reset
	if !d.OK {
		reset = st.RetryAfter
	}
	hs := make([]Header, 0, 6)
	if set&XRateLimit != 0 {
		hs = append(hs,
			Header{"x-ratelimit-limit", strconv.FormatInt(st.Limit, 10)},
			Header{"x-ratelimit-remaining", strconv.FormatInt(max(st.Remaining, 0), 10)},
			Header{"x-ratelimit-reset", strconv.FormatInt(Seconds(reset), 10)},
		)
	}
	if set&IETF != 0 {
		hs = append(hs,
			Header{"ratelimit-policy", d.policy(limits)},
			Header{"ratelimit", strconv.Quote(limits[t].Name) + ";r=" + strconv.FormatInt(max(st.Remaining, 0), 10) + ";t=" + strconv.FormatInt(Seconds(reset), 10)},
		)
	}
	if !d.OK {
		hs = append(hs, Header{"retry-after", strconv.FormatInt(max(Seconds(st.RetryAfter), 1), 10)})
	}
	return hs
}

// policy is the RateLimit-Policy value: every enforced limit and window.
func (d *Decision) policy(limits []Limit) string {
	var b strings.Builder
	for i := range limits {
		if !limits[i].Enforced() {
			continue
		}
		if b.Len() > 0 {
			b.WriteString(", ")
		}
		b.WriteString(strconv.Quote(limits[i].Name))
		b.WriteString(";q=")
		b.WriteString(strconv.FormatInt(d.Statuses[i].Limit, 10))
		b.WriteString(";w=")
		b.WriteString(strconv.FormatInt(Seconds(limits[i].Window(d.Now)), 10))
	}
	return b.String()
}

// Seconds rounds a duration up to whole seconds, as clients want them.
func Seconds(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64((d + time.Second - 1) / time.Second)
}
