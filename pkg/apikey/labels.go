package apikey

import (
	"fmt"
	"maps"
	"slices"
)

// Label limits: a consumer carries at most MaxLabels labels; a key is 1 to
// 63 characters of a-z 0-9 . _ - starting and ending with a letter or
// digit (team, cost-center); a value is 0 to 128 characters of letters,
// digits, space and . _ - / : @ + (no control characters, so that a value
// prints safely in a report or a terminal).
const (
	MaxLabels        = 32
	MaxLabelKeyLen   = 63
	MaxLabelValueLen = 128
)

// ValidateLabels checks a consumer's labels, naming the first bad one.
func ValidateLabels(labels map[string]string) error {
	if len(labels) > MaxLabels {
		return fmt.Errorf("%d labels: at most %d are allowed", len(labels), MaxLabels)
	}
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		if err := ValidateLabelKey(k); err != nil {
			return err
		}
		if err := ValidateLabelValue(k, labels[k]); err != nil {
			return err
		}
	}
	return nil
}

// ValidateLabelKey checks one label key.
func ValidateLabelKey(k string) error {
	const want = "want 1 to 63 characters of a-z 0-9 . _ -, starting and ending with a letter or digit"
	if k == "" || len(k) > MaxLabelKeyLen {
		return fmt.Errorf("label key %q: %s", k, want)
	}
	alnum := func(c byte) bool { return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' }
	for i := 0; i < len(k); i++ {
		if c := k[i]; !alnum(c) && c != '.' && c != '_' && c != '-' {
			return fmt.Errorf("label key %q: %s", k, want)
		}
	}
	if !alnum(k[0]) || !alnum(k[len(k)-1]) {
		return fmt.Errorf("label key %q: %s", k, want)
	}
	return nil
}

// ValidateLabelValue checks the value of label k.
func ValidateLabelValue(k, v string) error {
	const want = "want up to 128 characters of letters, digits, space and . _ - / : @ +"
	if len(v) > MaxLabelValueLen {
		return fmt.Errorf("label %s: value is %d bytes long: %s", k, len(v), want)
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == ' ' ||
			c == '.' || c == '_' || c == '-' || c == '/' || c == ':' || c == '@' || c == '+') {
			return fmt.Errorf("label %s: value %q: %s", k, v, want)
		}
	}
	return nil
}
