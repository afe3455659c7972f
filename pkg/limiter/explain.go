package limiter

import (
	"strconv"
)

// Explain says in words why l denied a request and when to retry: the
// detail of a 429.
func Explain(l *Limit, st *Status) string {
	retry := strconv.FormatInt(max(Seconds(st.RetryAfter), 1), 10) + "s"
	switch {
	case l.Kind == Bucket:
		return "rate limit " + strconv.Quote(l.Name) + " of " + strconv.FormatInt(l.Requests, 10) + " requests per " + l.Per.String() + " exceeded; retry in " + retry
	case l.Soft:
		return "spend cap of " + strconv.FormatInt(l.Cap, 10) + " units this " + string(l.Unit) + " reached; it resets in " + retry
	default:
		return "quota " + strconv.Quote(l.Name) + " of " + strconv.FormatInt(l.Max, 10) + " units this " + string(l.Unit) + " used up; it resets in " + retry
	}
}
