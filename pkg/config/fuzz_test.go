package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzParse feeds levy.yaml's reader any bytes: an operator's typo, a
// half-written file the watcher caught mid-write, a hostile ConfigMap.
// Parsing and validating either succeed or return an error that names the
// file; they never panic.
func FuzzParse(f *testing.F) {
	for _, dir := range []string{"testdata", filepath.Join("..", "..", "examples")} {
		files, _ := filepath.Glob(filepath.Join(dir, "*.yaml"))
		for _, file := range files {
			if data, err := os.ReadFile(file); err == nil {
				f.Add(data)
			}
		}
	}
	f.Add([]byte("plans: {free: {rate: {requests: -1, per: 0s}}}"))
	f.Add([]byte("consumers: [{id: \"..\", plan: free, keys: [{key: x}]}]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data, "levy.yaml")
		if err != nil {
			if !strings.HasPrefix(err.Error(), "levy.yaml") {
				t.Fatalf("an error that does not name the file: %v", err)
			}
			return
		}
		c.ApplyEnv(func(string) (string, bool) { return "", false })
		_ = c.Validate()
	})
}
