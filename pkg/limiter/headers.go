package limiter

import (
	"strconv"
	"strings"
	"time"
)

// Header is one response header.
type Header struct{ Name, Value string }

// Headers returns the rate-limit headers clients expect for a decision:
// X-RateLimit-Limit/Remaining/Reset for the tightest enforced limit (what
// Envoy's DRAFT_VERSION_03 emits), the IETF RateLimit-Policy listing every
// enforced limit and RateLimit for the tightest, and Retry-After when
// denied. Unenforced limits (soft quotas without a cap) are left out.
func (d *Decision) Headers(limits []Limit) []Header {
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
	hs = append(hs,
		Header{"x-ratelimit-limit", strconv.FormatInt(st.Limit, 10)},
		Header{"x-ratelimit-remaining", strconv.FormatInt(max(st.Remaining, 0), 10)},
		Header{"x-ratelimit-reset", strconv.FormatInt(Seconds(reset), 10)},
	)
	var policy strings.Builder
	for i := range limits {
		if !limits[i].Enforced() {
			continue
		}
		if policy.Len() > 0 {
			policy.WriteString(", ")
		}
		policy.WriteString(strconv.Quote(limits[i].Name))
		policy.WriteString(";q=")
		policy.WriteString(strconv.FormatInt(d.Statuses[i].Limit, 10))
		policy.WriteString(";w=")
		policy.WriteString(strconv.FormatInt(Seconds(limits[i].Window(d.Now)), 10))
	}
	hs = append(hs,
		Header{"ratelimit-policy", policy.String()},
		Header{"ratelimit", strconv.Quote(limits[t].Name) + ";r=" + strconv.FormatInt(max(st.Remaining, 0), 10) + ";t=" + strconv.FormatInt(Seconds(reset), 10)},
	)
	if !d.OK {
		hs = append(hs, Header{"retry-after", strconv.FormatInt(max(Seconds(st.RetryAfter), 1), 10)})
	}
	return hs
}

// Seconds rounds a duration up to whole seconds, as clients want them.
func Seconds(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64((d + time.Second - 1) / time.Second)
}
