package config

import (
	"testing"

	"github.com/levyhq/levy/pkg/apikey"
)

// A key written out in the file (dev mode) has the hint issued keys
// have; a hash tells nothing of its key, so its key has none.
func TestOnlyPlaintextKeysOfTheFileHaveAHint(t *testing.T) {
	key, err := apikey.Generate("levy")
	if err != nil {
		t.Fatal(err)
	}
	other, _ := apikey.Generate("levy")
	text := "dev_mode: true\nplans: {free: {model: tiered}}\nconsumers: [{id: acme, plan: free, keys: [{key: " + key +
		"}, {hash: " + apikey.NewHasher(nil).Hash(other) + "}]}]\n"
	c, err := Parse([]byte(text), "k.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	_, keys := c.Directory()
	if len(keys) != 2 || keys[0].Hint != apikey.Hint(key) || keys[0].Hint == "" || keys[1].Hint != "" {
		t.Fatalf("keys %+v", keys)
	}
}
