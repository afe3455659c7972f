package apikey

import (
	"context"
	"errors"
	"strings"
	"testing"
)

func TestGeneratedKeysPassCheckAndAreUnique(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 1000; i++ {
		k, err := Generate("levy_test")
		if err != nil {
			t.Fatal(err)
		}
		if err := Check(k); err != nil {
			t.Fatalf("Check(%q) = %v", k, err)
		}
		if !strings.HasPrefix(k, "levy_test_") {
			t.Fatalf("key %q lacks its prefix", k)
		}
		if seen[k] {
			t.Fatalf("duplicate key %q", k)
		}
		seen[k] = true
	}
}

func TestCheckRejectsGarbageWithoutLookup(t *testing.T) {
	good, err := Generate("levy")
	if err != nil {
		t.Fatal(err)
	}
	flip := []byte(good)
	flip[10] ^= 1 // one character changed: the checksum catches it
	tests := []struct {
		name string
		give string
	}{
		{"empty", ""},
		{"no separator", strings.ReplaceAll(good, "_", "")},
		{"one character changed", string(flip)},
		{"truncated", good[:len(good)-1]},
		{"extended", good + "A"},
		{"non-base62 body", good[:10] + "-" + good[11:]},
		{"invalid utf-8", good[:10] + "\xff" + good[11:]},
		{"huge", strings.Repeat("a", 10_000)},
		{"bearer prefix left on", "Bearer " + good},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := Check(tt.give); !errors.Is(err, ErrMalformed) {
				t.Fatalf("Check = %v, want ErrMalformed", err)
			}
		})
	}
}

func TestGenerateRejectsBadPrefix(t *testing.T) {
	for _, p := range []string{"", "has space", "dash-ed", strings.Repeat("a", 65)} {
		if _, err := Generate(p); err == nil {
			t.Errorf("Generate(%q) succeeded", p)
		}
	}
}

func TestHashIsStableAndSecretChangesIt(t *testing.T) {
	plain := NewHasher(nil)
	// sha256("levy") from coreutils: echo -n levy | sha256sum
	if got, want := plain.Hash("levy"), "5a1a84de8c2ec09ba6b54a4c0aefc809441f018ac30620aa4d7e95023ce84de0"; got != want {
		t.Fatalf("Hash = %q", got)
	}
	if plain.Hash("a") == NewHasher([]byte("s")).Hash("a") {
		t.Fatal("HMAC hash equals plain hash")
	}
	if !IsHash(plain.Hash("x")) || IsHash("XYZ") {
		t.Fatal("IsHash misjudges")
	}
}

func TestIndexLookup(t *testing.T) {
	ix := NewIndex([]*Consumer{{ID: "c1", Plan: "pro"}}, []*Key{{ID: "k1", Hash: "h1", ConsumerID: "c1"}, {ID: "k2", Hash: "h2", ConsumerID: "gone"}})
	if k, c, err := ix.Lookup(context.Background(), "h1"); err != nil || k.ID != "k1" || c.ID != "c1" {
		t.Fatalf("Lookup(h1) = %v, %v, %v", k, c, err)
	}
	for _, h := range []string{"h2", "nope"} {
		if _, _, err := ix.Lookup(context.Background(), h); !errors.Is(err, ErrUnknown) {
			t.Fatalf("Lookup(%s) = %v, want ErrUnknown", h, err)
		}
	}
}

// A hint is the prefix and four characters of the random body, never
// more: the rest of the body and the checksum stay unshown.
func TestHintShowsThePrefixAndFourRandomCharacters(t *testing.T) {
	key, err := Generate("levy_test")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		give string
		want string
	}{
		{"generated", key, key[:len("levy_test_")+4]},
		{"fixed", "levy_Ab3dEFGHIJKLMNOPQRSTUVWXYZabcdef" + checksum("levy_Ab3dEFGHIJKLMNOPQRSTUVWXYZabcdef"), "levy_Ab3d"},
		{"malformed", "levy_Ab3d", ""},
		{"empty", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Hint(tt.give); got != tt.want {
				t.Fatalf("Hint(%q) = %q, want %q", tt.give, got, tt.want)
			}
		})
	}
	if h := Hint(key); len(key)-len(h) != randomLen-HintLen+checksumLen {
		t.Fatalf("hint %q of %q shows more than 4 random characters", h, key)
	}
}
