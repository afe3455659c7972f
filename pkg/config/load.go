package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"

	"gopkg.in/yaml.v3"
)

// Load reads, decodes and validates a config file; env overrides apply
// before validation. The rate-limit rules it names are read where they
// are used (server.RateLimitRules), not here.
func Load(path string) (*Config, error) {
	c, err := ParseFile(path)
	if err != nil {
		return nil, err
	}
	c.ApplyEnv(nil)
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// ParseFile reads and decodes a config file without validating it.
func ParseFile(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(data, path)
}

// Parse decodes data over the defaults, strictly. name is used in errors.
// It does not apply the environment or validate.
//
// The file is decoded once; the index of the lines its keys are written
// on, which only error messages need, is built from data when the first
// one is (lines). Indexing every file up front cost a 100,000-consumer
// file (11 MB) a second parse and kept 67 MB of paths alive for as long
// as the config was in use.
func Parse(data []byte, name string) (*Config, error) {
	c := Default()
	c.Source = name
	c.lines = &lazyLines{data: data}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) {
		if ix := c.lines.index(); ix.err != nil {
			return nil, syntaxError(name, ix.err)
		}
		return nil, c.decodeError(err)
	}
	// A second document would be silently ignored: refuse it.
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, fmt.Errorf("%s:%d: a config file holds one YAML document", name, extra.Line)
	} else if !errors.Is(err, io.EOF) {
		return nil, syntaxError(name, err)
	}
	return c, nil
}

// syntaxError is err, the yaml package's word that data is not YAML, as
// file:line: invalid YAML: what.
func syntaxError(name string, err error) error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	if m := lineRE.FindStringSubmatch(msg); m != nil {
		return fmt.Errorf("%s:%s: invalid YAML: %s", name, m[1], m[2])
	}
	return fmt.Errorf("%s: invalid YAML: %s", name, msg)
}

// lazyLines builds the line index of a file's keys on first use.
type lazyLines struct {
	data []byte
	once sync.Once
	ix   lineIndex
}

// index returns the file's line index; its err is the file's YAML syntax
// error, if it has one, as file:line.
func (l *lazyLines) index() *lineIndex {
	l.once.Do(func() {
		var root yaml.Node
		if err := yaml.Unmarshal(l.data, &root); err != nil {
			l.ix.err = err
			return
		}
		l.ix = indexLines(&root)
		l.data = nil
	})
	return &l.ix
}

// forget drops the file's bytes if no error has needed its lines yet: a
// validated config keeps the file's content no longer (11 MB at 100,000
// consumers). An error found after that names its key without a line.
func (l *lazyLines) forget() { l.once.Do(func() { l.data = nil }) }

// lineIndex returns the index of c's lines (an empty one for a config not
// read from a file).
func (c *Config) lineIndex() *lineIndex {
	if c.lines == nil {
		return &lineIndex{}
	}
	return c.lines.index()
}

var (
	lineRE    = regexp.MustCompile(`^line (\d+): (.*)$`)
	unknownRE = regexp.MustCompile(`^field (\S+) not found in type \S+$`)
)

// decodeError rewrites the yaml package's messages as file:line: key: what.
func (c *Config) decodeError(err error) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return fmt.Errorf("%s: %s", c.Source, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	msgs := make([]string, 0, len(te.Errors))
	for _, e := range te.Errors {
		m := lineRE.FindStringSubmatch(e)
		if m == nil {
			msgs = append(msgs, fmt.Sprintf("%s: %s", c.Source, e))
			continue
		}
		line, _ := strconv.Atoi(m[1])
		msg := m[2]
		if u := unknownRE.FindStringSubmatch(msg); u != nil {
			path := c.lineIndex().keyAt(line, u[1])
			msgs = append(msgs, fmt.Sprintf("%s:%d: unknown key %q", c.Source, line, path))
			continue
		}
		if path := c.lineIndex().valueAt(line); path != "" {
			msg = path + ": " + msg
		}
		msgs = append(msgs, fmt.Sprintf("%s:%d: %s", c.Source, line, msg))
	}
	return Errors(msgs)
}

// lineIndex maps dotted key paths to the lines they are written on.
type lineIndex struct {
	byPath map[string]int
	keys   map[int][]string // line -> paths of keys on that line
	err    error            // the file is not valid YAML
}

func indexLines(root *yaml.Node) lineIndex {
	ix := lineIndex{byPath: map[string]int{}, keys: map[int][]string{}}
	var walk func(n *yaml.Node, path string)
	walk = func(n *yaml.Node, path string) {
		switch n.Kind {
		case yaml.DocumentNode:
			for _, c := range n.Content {
				walk(c, path)
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				p := join(path, k.Value)
				ix.byPath[p] = k.Line
				ix.keys[k.Line] = append(ix.keys[k.Line], p)
				walk(v, p)
			}
		case yaml.SequenceNode:
			for i, c := range n.Content {
				p := fmt.Sprintf("%s[%d]", path, i)
				ix.byPath[p] = c.Line
				walk(c, p)
			}
		}
	}
	walk(root, "")
	return ix
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// keyAt returns the full path of key written on line.
func (ix lineIndex) keyAt(line int, key string) string {
	for _, p := range ix.keys[line] {
		if p == key || strings.HasSuffix(p, "."+key) {
			return p
		}
	}
	return key
}

// valueAt returns the path of the (last) key written on line.
func (ix lineIndex) valueAt(line int) string {
	ps := ix.keys[line]
	if len(ps) == 0 {
		return ""
	}
	return ps[len(ps)-1]
}

// lineOf returns the line of path, or of its nearest written ancestor.
func (ix lineIndex) lineOf(path string) int {
	for path != "" {
		if l, ok := ix.byPath[path]; ok {
			return l
		}
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			break
		}
		path = path[:i]
	}
	return 0
}

// Errors collects validation problems, each naming file, line and key.
type Errors []string

func (e Errors) Error() string {
	if len(e) <= maxErrors {
		return strings.Join(e, "\n")
	}
	return strings.Join(e[:maxErrors], "\n") + fmt.Sprintf("\n... and %d more problems like these", len(e)-maxErrors)
}

// maxErrors is how many problems an error lists: a file of 100,000
// consumers with one mistake repeated would otherwise print 100,000 lines
// into a log line.
const maxErrors = 50

// problem records one validation error at a key path.
func (c *Config) problem(errs *Errors, path, format string, args ...any) {
	loc := c.Source
	if loc == "" {
		loc = "config"
	}
	if by := c.source(path); by != "" {
		loc = by
	} else if l := c.lineIndex().lineOf(path); l > 0 {
		loc = fmt.Sprintf("%s:%d", loc, l)
	}
	*errs = append(*errs, fmt.Sprintf("%s: %s: %s", loc, path, fmt.Sprintf(format, args...)))
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
