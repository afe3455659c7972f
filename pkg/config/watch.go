package config

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"
)

// rehashEvery is how many polls may pass on file metadata alone before the
// content is read again anyway (a filesystem with coarse timestamps can
// rewrite a file without changing its size or time): a minute at the
// default 250ms. Every 40 polls (10 s), reading and hashing a
// 100,000-consumer file (11 MB) was 0.4% of a core on an idle replica.
const rehashEvery = 240

// Watch polls paths (files, or directories whose *.yaml and *.yml files
// count) every interval and calls onChange when their content changed and
// then stayed the same for a whole interval: a file being written in
// chunks is never applied half-written. Polling content rather than
// watching inodes also catches Kubernetes ConfigMap updates, which swap a
// symlink. A poll reads the files only when their size or modification
// time changed (or every rehashEvery polls). It returns when stop is
// closed.
func Watch(paths []string, interval time.Duration, stop <-chan struct{}, onChange func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	watch(paths, t.C, stop, onChange, nil)
}

// watch is Watch polling on each tick; polled, when set, is called after
// each poll (a test's way to know the poll's effects are done).
func watch(paths []string, ticks <-chan time.Time, stop <-chan struct{}, onChange, polled func()) {
	w := watcher{paths: paths}
	applied := w.fingerprint(true)
	seen := applied
	for polls := 1; ; polls++ {
		select {
		case <-stop:
			return
		case <-ticks:
		}
		fp := w.fingerprint(polls%rehashEvery == 0)
		switch {
		case bytes.Equal(fp, applied):
		case bytes.Equal(fp, seen):
			// Changed, and the same for a whole interval since.
			applied = fp
			onChange()
		}
		seen = fp
		if polled != nil {
			polled()
		}
	}
}

// watcher fingerprints the watched files, reading them only when their
// metadata changed.
type watcher struct {
	paths []string
	meta  string // the files' names, sizes and times at the last read
	sum   []byte // their content's hash then
}

func (w *watcher) fingerprint(reread bool) []byte {
	files := w.files()
	var meta bytes.Buffer
	for _, f := range files {
		if st, err := os.Stat(f); err == nil { // follows a ConfigMap's symlinks
			fmt.Fprintf(&meta, "%s\x00%d\x00%d\x00", f, st.Size(), st.ModTime().UnixNano())
		} else {
			fmt.Fprintf(&meta, "%s\x00missing\x00", f)
		}
	}
	if !reread && w.sum != nil && meta.String() == w.meta {
		return w.sum
	}
	h := sha256.New()
	for _, f := range files {
		h.Write([]byte(f))
		data, err := os.ReadFile(f)
		if err != nil {
			h.Write([]byte("\x00missing"))
			continue
		}
		h.Write(data)
	}
	w.meta, w.sum = meta.String(), h.Sum(nil)
	return w.sum
}

// files lists the watched files: the paths, a directory's *.yaml and *.yml
// files in its place.
func (w *watcher) files() []string {
	var out []string
	for _, p := range w.paths {
		st, err := os.Stat(p)
		if err != nil || !st.IsDir() {
			out = append(out, p)
			continue
		}
		yaml, _ := filepath.Glob(filepath.Join(p, "*.yaml"))
		yml, _ := filepath.Glob(filepath.Join(p, "*.yml"))
		files := append(yaml, yml...)
		sort.Strings(files)
		out = append(out, files...)
	}
	return out
}
