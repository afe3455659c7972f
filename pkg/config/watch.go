package config

import (
	"bytes"
	"crypto/sha256"
	"os"
	"path/filepath"
	"sort"
	"time"
)

// Watch polls paths (files, or directories whose *.yaml and *.yml files count) every
// interval and calls onChange when their content changes. Polling content
// rather than watching inodes also catches Kubernetes ConfigMap updates,
// which swap a symlink. It returns when stop is closed.
func Watch(paths []string, interval time.Duration, stop <-chan struct{}, onChange func()) {
	last := fingerprint(paths)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			if fp := fingerprint(paths); !bytes.Equal(fp, last) {
				last = fp
				onChange()
			}
		}
	}
}

func fingerprint(paths []string) []byte {
	h := sha256.New()
	for _, p := range paths {
		files := []string{p}
		if st, err := os.Stat(p); err == nil && st.IsDir() {
			files, _ = filepath.Glob(filepath.Join(p, "*.yaml"))
			yml, _ := filepath.Glob(filepath.Join(p, "*.yml"))
			files = append(files, yml...)
			sort.Strings(files)
		}
		for _, f := range files {
			h.Write([]byte(f))
			data, err := os.ReadFile(f)
			if err != nil {
				h.Write([]byte("\x00missing"))
				continue
			}
			h.Write(data)
		}
	}
	return h.Sum(nil)
}
