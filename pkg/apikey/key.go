// Package apikey is about API keys: their format (a readable prefix, random
// characters and a checksum, so garbage is rejected without a store lookup),
// how they are hashed for storage, and the records of keys and the consumers
// who own them.
package apikey

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"strings"
)

const (
	// DefaultPrefix starts every key levy generates unless configured.
	DefaultPrefix = "levy"
	randomLen     = 32
	checksumLen   = 6
	bodyLen       = randomLen + checksumLen
	// MaxLen bounds what is even looked at: longer values are malformed.
	MaxLen = 64 + 1 + bodyLen
)

const base62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

// Errors a key lookup can end in.
var (
	ErrMalformed = errors.New("malformed api key")
	ErrUnknown   = errors.New("unknown api key")
)

// Generate returns a new random key: prefix, '_', 32 random base62
// characters and a 6-character CRC-32 checksum of everything before it.
func Generate(prefix string) (string, error) {
	if err := ValidatePrefix(prefix); err != nil {
		return "", err
	}
	var b strings.Builder
	b.Grow(len(prefix) + 1 + bodyLen)
	b.WriteString(prefix)
	b.WriteByte('_')
	buf := make([]byte, randomLen)
	if _, err := rand.Read(buf); err != nil {
		return "", fmt.Errorf("read random: %w", err)
	}
	for _, c := range buf {
		// 248 = 4*62: reject-free mapping would bias; re-draw is overkill
		// for 190 bits of entropy, so take c mod 62 over a fresh byte when
		// c falls in the biased tail.
		for c >= 248 {
			var one [1]byte
			if _, err := rand.Read(one[:]); err != nil {
				return "", fmt.Errorf("read random: %w", err)
			}
			c = one[0]
		}
		b.WriteByte(base62[c%62])
	}
	b.WriteString(checksum(b.String()))
	return b.String(), nil
}

// HintLen is how many characters of a key's random body its hint shows.
const HintLen = 4

// Hint returns the part of a well-formed key that may be shown after it
// was issued: its readable prefix, '_' and the first HintLen characters of
// its random body ("levy_Ab3d"), enough to tell one's keys apart. It keeps
// the secret: the body is 32 base62 characters (about 190.5 bits), and the
// 28 the hint leaves out still hold about 166.7 bits (28 × log2 62). A
// malformed key has no hint ("").
func Hint(key string) string {
	if Check(key) != nil {
		return ""
	}
	return key[:len(key)-bodyLen+HintLen]
}

// ValidatePrefix checks a configured key prefix.
func ValidatePrefix(prefix string) error {
	if prefix == "" || len(prefix) > 64 {
		return fmt.Errorf("key prefix %q: want 1 to 64 characters", prefix)
	}
	for i := 0; i < len(prefix); i++ {
		c := prefix[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return fmt.Errorf("key prefix %q: only letters, digits and '_' are allowed", prefix)
		}
	}
	return nil
}

// Check reports whether key is well formed: any prefix, then 32 random
// characters and a matching checksum. It does no lookup.
func Check(key string) error {
	if len(key) > MaxLen || len(key) < bodyLen+2 {
		return ErrMalformed
	}
	sep := len(key) - bodyLen - 1
	if key[sep] != '_' {
		return ErrMalformed
	}
	for i := sep + 1; i < len(key); i++ {
		if !isBase62(key[i]) {
			return ErrMalformed
		}
	}
	if checksum(key[:len(key)-checksumLen]) != key[len(key)-checksumLen:] {
		return ErrMalformed
	}
	return nil
}

func isBase62(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z'
}

func checksum(s string) string {
	sum := crc32.ChecksumIEEE([]byte(s))
	var out [checksumLen]byte
	for i := checksumLen - 1; i >= 0; i-- {
		out[i] = base62[sum%62]
		sum /= 62
	}
	return string(out[:])
}

// Hasher turns keys into the form they are stored in: hex SHA-256, or
// HMAC-SHA-256 with a server secret when one is configured.
type Hasher struct {
	secret []byte
}

// NewHasher returns a hasher; an empty secret means plain SHA-256.
func NewHasher(secret []byte) Hasher { return Hasher{secret: secret} }

// Hash returns the stored form of key.
func (h Hasher) Hash(key string) string {
	if len(h.secret) == 0 {
		sum := sha256.Sum256([]byte(key))
		return hex.EncodeToString(sum[:])
	}
	m := hmac.New(sha256.New, h.secret)
	m.Write([]byte(key))
	return hex.EncodeToString(m.Sum(nil))
}

// IDFromHash derives a key id that is safe to log and show: it names the
// key without revealing it.
func IDFromHash(hash string) string {
	if len(hash) > 16 {
		hash = hash[:16]
	}
	return "key_" + hash
}

// IsHash reports whether s looks like a stored hash (64 lower-case hex).
func IsHash(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}
