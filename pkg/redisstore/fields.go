package redisstore

import (
	"strconv"
	"time"
)

func boolString(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

func timeString(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return strconv.FormatInt(t.UnixNano(), 10)
}

func parseTime(s string) time.Time {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}
