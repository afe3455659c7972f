// Package rls is levy's Envoy RateLimitService v3 server. Its rules use
// envoyproxy/ratelimit's YAML format (domain, nested descriptors,
// rate_limit, unlimited, shadow_mode, replaces, wildcards), so that
// project's users bring their files as they are. levy decides them with
// token buckets and calendar quotas, all descriptors of a request at once,
// and can take a descriptor's limit from the calling consumer's plan.
package rls

import (
	"cmp"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"google.golang.org/protobuf/types/known/structpb"
	"gopkg.in/yaml.v3"

	"github.com/levyhq/levy/pkg/limiter"
)

// RuleUnit is the unit of a rule's requests_per_unit, as rule files
// write it (envoyproxy/ratelimit's unit names). It is not a plan.Unit:
// second, minute and hour make a token bucket, a rolling rate, where a
// plan's hour is a calendar period; day, week, month and year make a
// quota over the calendar period of the same name.
type RuleUnit string

// The units envoyproxy/ratelimit accepts.
const (
	Second RuleUnit = "second"
	Minute RuleUnit = "minute"
	Hour   RuleUnit = "hour"
	Day    RuleUnit = "day"
	Week   RuleUnit = "week"
	Month  RuleUnit = "month"
	Year   RuleUnit = "year"
)

var units = map[string]RuleUnit{"second": Second, "minute": Minute, "hour": Hour, "day": Day, "week": Week, "month": Month, "year": Year}

// Rule is one rate_limit of a descriptor.
type Rule struct {
	Name            string
	Unit            RuleUnit
	RequestsPerUnit uint32
	// Burst (a levy extension) is the bucket's capacity for second,
	// minute and hour units; 0 means RequestsPerUnit.
	Burst     uint32
	Unlimited bool
	Shadow    bool
	Replaces  []string
	// FromPlan (a levy extension) takes the limit from the consumer's
	// plan when the descriptor names a consumer whose plan has a rule for
	// the descriptor's route; the rule's own limit is the fallback.
	FromPlan bool
	// QuotaMode is the descriptor's quota_mode: over, it does not deny the
	// request by itself, only when every quota-mode descriptor of the
	// request is over.
	QuotaMode bool
	// Debit (a levy extension, debit under rate_limit) says the hits are
	// reported after the fact (Envoy's apply_on_stream_done): recorded even
	// past the limit, which goes into debt. Only when the rule says so.
	Debit bool
	// Metadata is the descriptor's metadata, returned in the response's
	// dynamic_metadata when the descriptor passes. Never modified.
	Metadata *structpb.Struct
	// DetailedMetric labels hits with the descriptor's every key and value
	// (detailed_metric); levels with value_to_metric label with the value
	// where the rule has none or a wildcard. Either is capped per rule.
	DetailedMetric bool
	// Path is the rule's place in the file, e.g. "levy.consumer.route_items".
	Path string
	// levels are the descriptor levels from the domain down to the rule,
	// for metric labels; valueLabels says whether any label takes a
	// request's values.
	levels      []level
	valueLabels bool
}

// level is one descriptor level on a rule's path, as the metric key needs
// it.
type level struct {
	key, value    string // value: "" for the key alone, or with '*'
	wild, share   bool
	valueToMetric bool
}

type node struct {
	children  map[string]*node
	wildcards []wildcard // in file order
	rule      *Rule
	share     bool   // share_threshold
	pattern   string // the value with '*' when share is set
	levels    []level
}

type wildcard struct {
	key   string // key_value with '*'
	parts []string
}

// Rules is an immutable set of domains.
type Rules struct {
	domains map[string]*node
}

// Source is one rule file (or the rules inline in levy.yaml).
type Source struct {
	Name string
	// Node is the parsed document (for inline rules); when nil, Data is
	// parsed.
	Node *yaml.Node
	Data []byte
}

// ReadDir returns every *.yaml and *.yml file of dir as a Source, in name
// order (envoyproxy/ratelimit reads both).
func ReadDir(dir string) ([]Source, error) {
	var files []string
	for _, pattern := range []string{"*.yaml", "*.yml"} {
		fs, err := filepath.Glob(filepath.Join(dir, pattern))
		if err != nil {
			return nil, err
		}
		files = append(files, fs...)
	}
	sort.Strings(files)
	out := make([]Source, 0, len(files))
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("read rules: %w", err)
		}
		out = append(out, Source{Name: f, Data: data})
	}
	return out, nil
}

// Load builds rules from sources. A domain may appear in one source only
// unless merge is set (envoyproxy/ratelimit's MERGE_DOMAIN_CONFIG).
func Load(sources []Source, merge bool) (*Rules, error) {
	r := &Rules{domains: map[string]*node{}}
	for _, src := range sources {
		if err := r.load(src, merge); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// ruleError names the file, the line and what is wrong.
func ruleError(src string, n *yaml.Node, format string, args ...any) error {
	if n != nil && n.Line > 0 {
		return fmt.Errorf("%s:%d: %s", src, n.Line, fmt.Sprintf(format, args...))
	}
	return fmt.Errorf("%s: %s", src, fmt.Sprintf(format, args...))
}

// places says where in a rule file a key may be written.
type places uint8

const (
	inDomain     places = 1 << iota // the file's top level (a domain)
	inDescriptor                    // a descriptors entry
	inRateLimit                     // a rate_limit
	inReplaces                      // a replaces entry
)

func (p places) String() string {
	var names []string
	for _, w := range []struct {
		p    places
		name string
	}{{inDomain, "the top level"}, {inDescriptor, "a descriptor"}, {inRateLimit, "rate_limit"}, {inReplaces, "a replaces entry"}} {
		if p&w.p != 0 {
			names = append(names, w.name)
		}
	}
	return strings.Join(names, " or ")
}

// validKeys are envoyproxy/ratelimit's keys (plus levy's extensions) and
// where each has an effect. envoyproxy/ratelimit checks keys against one
// flat list and ignores a key where its structs have no field for it;
// levy refuses it there, since a misplaced key (debit beside quota_mode,
// shadow_mode inside rate_limit) would silently do nothing.
var validKeys = map[string]places{
	"domain": inDomain, "descriptors": inDomain | inDescriptor,
	"key": inDescriptor, "value": inDescriptor, "rate_limit": inDescriptor, "shadow_mode": inDescriptor,
	"quota_mode": inDescriptor, "detailed_metric": inDescriptor, "value_to_metric": inDescriptor,
	"share_threshold": inDescriptor, "metadata": inDescriptor,
	"unit": inRateLimit, "requests_per_unit": inRateLimit, "unlimited": inRateLimit, "replaces": inRateLimit,
	"name": inRateLimit | inReplaces,
	// levy's extensions
	"burst": inRateLimit, "from_plan": inRateLimit, "debit": inRateLimit,
}

// within is the place of the mappings under key (0 for a value that is
// no part of the file's structure: its keys are checked as
// envoyproxy/ratelimit does, against the whole list).
func within(key string) places {
	switch key {
	case "descriptors":
		return inDescriptor
	case "rate_limit":
		return inRateLimit
	case "replaces":
		return inReplaces
	}
	return 0
}

func (r *Rules) load(src Source, merge bool) error {
	root := src.Node
	if root == nil {
		var doc yaml.Node
		if err := yaml.Unmarshal(src.Data, &doc); err != nil {
			return fmt.Errorf("%s: invalid YAML: %s", src.Name, strings.TrimPrefix(err.Error(), "yaml: "))
		}
		root = &doc
	}
	if root.Kind == 0 || root.Kind == yaml.DocumentNode {
		if len(root.Content) == 0 { // an empty file, or only comments
			return ruleError(src.Name, nil, "config file cannot have empty domain")
		}
		root = root.Content[0]
	}
	if root.Kind != yaml.MappingNode {
		return ruleError(src.Name, root, "a rule file is a mapping with domain and descriptors")
	}
	if err := validateKeys(src.Name, root, inDomain); err != nil {
		return err
	}
	domainNode := field(root, "domain")
	domain := ""
	if domainNode != nil {
		domain = domainNode.Value
	}
	if domain == "" {
		return ruleError(src.Name, root, "config file cannot have empty domain")
	}
	d, present := r.domains[domain]
	if present && !merge {
		return ruleError(src.Name, domainNode, "duplicate domain '%s' in config file", domain)
	}
	if !present {
		d = &node{children: map[string]*node{}}
		r.domains[domain] = d
	}
	return d.loadDescriptors(src.Name, domain, nil, field(root, "descriptors"))
}

// validateKeys checks every key of n, a value at place at (0: anywhere),
// against envoyproxy/ratelimit's list (plus levy's extensions) and where
// it may be written, that keys are strings and lists hold mappings.
func validateKeys(src string, n *yaml.Node, at places) error {
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.Kind != yaml.ScalarNode || k.Tag != "!!str" {
				return ruleError(src, k, "config error, key is not of type string: %v", k.Value)
			}
			where, ok := validKeys[k.Value]
			if !ok {
				return ruleError(src, k, "config error, unknown key '%s'", k.Value)
			}
			if at != 0 && where&at == 0 {
				return ruleError(src, k, "config error, key '%s' goes in %s, not in %s", k.Value, where, at)
			}
			if k.Value == "metadata" {
				continue // free-form
			}
			if err := validateKeys(src, v, within(k.Value)); err != nil {
				return err
			}
		}
	case yaml.SequenceNode:
		for _, e := range n.Content {
			if e.Kind != yaml.MappingNode {
				return ruleError(src, e, "config error, yaml file contains list of type other than map: %v", e.Value)
			}
			if err := validateKeys(src, e, at); err != nil {
				return err
			}
		}
	case yaml.AliasNode:
		return ruleError(src, n, "config error, aliases are not supported")
	}
	return nil
}

func field(m *yaml.Node, key string) *yaml.Node {
	if m == nil || m.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	return nil
}

func str(src string, m *yaml.Node, key string) (string, error) {
	v := field(m, key)
	if v == nil || v.Tag == "!!null" {
		return "", nil
	}
	if v.Kind != yaml.ScalarNode {
		return "", ruleError(src, v, "%s must be a string", key)
	}
	return v.Value, nil
}

func boolean(src string, m *yaml.Node, key string) (bool, error) {
	b, _, err := optBoolean(src, m, key)
	return b, err
}

// yaml11Bools are the booleans of YAML 1.1, which envoyproxy/ratelimit's
// YAML library reads (shadow_mode: yes).
var yaml11Bools = map[string]bool{
	"y": true, "Y": true, "yes": true, "Yes": true, "YES": true, "on": true, "On": true, "ON": true,
	"n": false, "N": false, "no": false, "No": false, "NO": false, "off": false, "Off": false, "OFF": false,
}

// optBoolean is boolean that also tells whether the key is set.
func optBoolean(src string, m *yaml.Node, key string) (value, set bool, err error) {
	v := field(m, key)
	if v == nil || v.Tag == "!!null" {
		return false, false, nil
	}
	b, err := strconv.ParseBool(v.Value)
	if y, ok := yaml11Bools[v.Value]; ok && v.Style&(yaml.SingleQuotedStyle|yaml.DoubleQuotedStyle) == 0 {
		b, err = y, nil
	}
	if v.Kind != yaml.ScalarNode || err != nil {
		return false, false, ruleError(src, v, "%s must be true or false, not %q", key, v.Value)
	}
	return b, true, nil
}

func uint32Field(src string, m *yaml.Node, key string) (uint32, error) {
	v := field(m, key)
	if v == nil || v.Tag == "!!null" {
		return 0, nil
	}
	n, err := strconv.ParseUint(v.Value, 10, 32)
	if v.Kind != yaml.ScalarNode || err != nil {
		return 0, ruleError(src, v, "%s must be a whole number from 0 to 4294967295, not %q", key, v.Value)
	}
	return uint32(n), nil
}

func (d *node) loadDescriptors(src, parent string, levels []level, list *yaml.Node) error {
	if list == nil || list.Tag == "!!null" {
		return nil
	}
	if list.Kind != yaml.SequenceNode {
		return ruleError(src, list, "descriptors must be a list")
	}
	for _, dn := range list.Content {
		key, err := str(src, dn, "key")
		if err != nil {
			return err
		}
		if key == "" {
			return ruleError(src, dn, "descriptor has empty key")
		}
		value, err := str(src, dn, "value")
		if err != nil {
			return err
		}
		finalKey := key
		if value != "" {
			finalKey += "_" + value
		}
		path := parent + "." + finalKey
		if _, dup := d.children[finalKey]; dup {
			return ruleError(src, dn, "duplicate descriptor composite key '%s'", path)
		}
		child := &node{children: map[string]*node{}}
		if child.share, err = boolean(src, dn, "share_threshold"); err != nil {
			return err
		}
		wild := strings.Contains(finalKey, "*")
		lv := level{key: key, value: value, wild: wild, share: child.share}
		if lv.valueToMetric, err = boolean(src, dn, "value_to_metric"); err != nil {
			return err
		}
		child.levels = append(levels[:len(levels):len(levels)], lv)
		if child.rule, err = loadRule(src, path, child.levels, dn); err != nil {
			return err
		}
		if child.share && !wild {
			return ruleError(src, field(dn, "share_threshold"), "share_threshold can only be used with wildcard values (containing '*'), but found key '%s'", finalKey)
		}
		if child.share {
			child.pattern = value
		}
		if wild {
			d.wildcards = append(d.wildcards, wildcard{key: finalKey, parts: strings.Split(finalKey, "*")})
		}
		for _, flag := range []string{"detailed_metric", "quota_mode"} {
			if _, err := boolean(src, dn, flag); err != nil {
				return err
			}
		}
		if _, err := metadata(src, dn); err != nil {
			return err
		}
		if err := child.loadDescriptors(src, path, child.levels, field(dn, "descriptors")); err != nil {
			return err
		}
		d.children[finalKey] = child
	}
	return nil
}

func loadRule(src, path string, levels []level, dn *yaml.Node) (*Rule, error) {
	rn := field(dn, "rate_limit")
	if rn == nil || rn.Tag == "!!null" {
		return nil, nil
	}
	if rn.Kind != yaml.MappingNode {
		return nil, ruleError(src, rn, "rate_limit must be a mapping")
	}
	rule := &Rule{Path: path, levels: levels}
	var err error
	if rule.Shadow, err = boolean(src, dn, "shadow_mode"); err != nil {
		return nil, err
	}
	if rule.QuotaMode, err = boolean(src, dn, "quota_mode"); err != nil {
		return nil, err
	}
	// quota_mode does not make a rule a debit: upstream's own quota.sh
	// sends its hits up front, and a debit is taken even when denied, so
	// a client retrying a spent budget would dig itself into hours of debt.
	if rule.Debit, err = boolean(src, rn, "debit"); err != nil {
		return nil, err
	}
	if rule.DetailedMetric, err = boolean(src, dn, "detailed_metric"); err != nil {
		return nil, err
	}
	rule.valueLabels = rule.DetailedMetric
	for _, l := range levels {
		if l.valueToMetric && (l.value == "" || l.wild && !l.share) {
			rule.valueLabels = true // the label takes the request's value here
		}
	}
	if rule.Metadata, err = metadata(src, dn); err != nil {
		return nil, err
	}
	if rule.Unlimited, err = boolean(src, rn, "unlimited"); err != nil {
		return nil, err
	}
	if rule.FromPlan, err = boolean(src, rn, "from_plan"); err != nil {
		return nil, err
	}
	if rule.RequestsPerUnit, err = uint32Field(src, rn, "requests_per_unit"); err != nil {
		return nil, err
	}
	if rule.Burst, err = uint32Field(src, rn, "burst"); err != nil {
		return nil, err
	}
	if rule.Name, err = str(src, rn, "name"); err != nil {
		return nil, err
	}
	unitText, err := str(src, rn, "unit")
	if err != nil {
		return nil, err
	}
	unit, validUnit := units[strings.ToLower(unitText)]
	switch {
	case rule.Unlimited && validUnit:
		return nil, ruleError(src, field(rn, "unit"), "should not specify rate limit unit when unlimited")
	case !rule.Unlimited && !validUnit:
		return nil, ruleError(src, rn, "invalid rate limit unit '%s'", unitText)
	}
	rule.Unit = unit
	if rule.Burst > 0 && unit != Second && unit != Minute && unit != Hour {
		return nil, ruleError(src, field(rn, "burst"), "burst goes with second, minute or hour units, not %s", unit)
	}
	if per := unitDuration(unit); per > 0 && rule.RequestsPerUnit > 0 {
		// The bucket the server decides the rule by: one the stores
		// refuse (a burst that takes over 71 years to refill) would fail
		// every request on it.
		bucket := limiter.Limit{Kind: limiter.Bucket, Name: path, Requests: int64(rule.RequestsPerUnit), Per: per, Burst: int64(rule.Burst)}
		if err := bucket.Validate(); err != nil {
			return nil, ruleError(src, cmp.Or(field(rn, "burst"), rn), "%v (%d per %s, burst %d)", err, rule.RequestsPerUnit, unit, bucket.Capacity())
		}
	}
	if reps := field(rn, "replaces"); reps != nil && reps.Tag != "!!null" {
		for _, e := range reps.Content {
			name, err := str(src, e, "name")
			if err != nil {
				return nil, err
			}
			if name == "" {
				return nil, ruleError(src, e, "should not have an empty replaces entry")
			}
			if name == rule.Name {
				return nil, ruleError(src, e, "replaces should not contain name of same descriptor")
			}
			rule.Replaces = append(rule.Replaces, name)
		}
	}
	return rule, nil
}

// Entry is one key/value of a request descriptor.
type Entry struct{ Key, Value string }

// Match is the rule a descriptor matched and the key its state lives
// under: the domain and the request's own entries, except that values
// matched by a share_threshold wildcard share the pattern.
type Match struct {
	Rule *Rule
	Key  string
}

// Lookup finds the rule for a descriptor as envoyproxy/ratelimit does:
// at each level an exact key_value beats a wildcard, which beats the key
// alone; a rule applies only when the descriptor ends at its level.
func (r *Rules) Lookup(domain string, entries []Entry) (Match, bool) {
	d := r.domains[domain]
	if d == nil {
		return Match{}, false
	}
	var key strings.Builder
	size := len(domain)
	for _, e := range entries {
		size += len(e.Key) + len(e.Value) + 2
	}
	key.Grow(size)
	key.WriteString(domain)
	var buf [128]byte
	for i, e := range entries {
		// key_value, built on the stack: a map index by string(bytes)
		// does not allocate.
		kv := append(append(append(buf[:0], e.Key...), '_'), e.Value...)
		next := d.children[string(kv)]
		shared := ""
		if next == nil && len(d.wildcards) > 0 {
			finalKey := string(kv)
			for _, w := range d.wildcards {
				if wildcardMatch(w.parts, finalKey) {
					next = d.children[w.key]
					if next != nil && next.share {
						shared = next.pattern
					}
					break
				}
			}
		}
		if next == nil {
			next = d.children[e.Key]
		}
		if next == nil {
			return Match{}, false
		}
		key.WriteByte('.')
		writeKeyPart(&key, e.Key, ".=%")
		key.WriteByte('=')
		if shared != "" {
			writeKeyPart(&key, shared, "=%")
		} else {
			writeKeyPart(&key, e.Value, "=%")
		}
		if i == len(entries)-1 {
			if next.rule == nil {
				return Match{}, false
			}
			return Match{Rule: next.rule, Key: key.String()}, true
		}
		if len(next.children) == 0 {
			return Match{}, false // the descriptor is deeper than the rules
		}
		d = next
	}
	return Match{}, false
}

// writeKeyPart writes a descriptor key or value into a state key, with
// the characters special escaped: '=' and '%' in values, and '.' too in
// keys. A value such as "alice.path=/pay" (a request header, sent by
// anyone) must not name another descriptor's state: with no '=' in any
// value and no '.' in any key, every '=' ends a key that starts after the
// last '.' before it. Values without them (addresses, paths, ids: nearly
// all) are written as they are, and keep their state across the upgrade.
func writeKeyPart(b *strings.Builder, s, special string) {
	if strings.IndexAny(s, special) < 0 {
		b.WriteString(s)
		return
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; strings.IndexByte(special, c) >= 0 {
			b.WriteString(fmt.Sprintf("%%%02X", c))
		} else {
			b.WriteByte(c)
		}
	}
}

// wildcardMatch reports whether value matches a pattern split on '*';
// each '*' matches any run of characters, including none.
func wildcardMatch(parts []string, value string) bool {
	if len(parts) == 1 {
		return parts[0] == value
	}
	first, last := parts[0], parts[len(parts)-1]
	if !strings.HasPrefix(value, first) || !strings.HasSuffix(value, last) || len(value) < len(first)+len(last) {
		return false
	}
	rest := value[len(first) : len(value)-len(last)]
	for _, p := range parts[1 : len(parts)-1] {
		i := strings.Index(rest, p)
		if i < 0 {
			return false
		}
		rest = rest[i+len(p):]
	}
	return true
}

// Each calls f with every rule, domain by domain in no fixed order.
func (r *Rules) Each(f func(*Rule)) {
	if r == nil {
		return
	}
	var walk func(n *node)
	walk = func(n *node) {
		if n.rule != nil {
			f(n.rule)
		}
		for _, c := range n.children {
			walk(c)
		}
	}
	for _, d := range r.domains {
		walk(d)
	}
}

// HasDomain reports whether r has rules for domain.
func (r *Rules) HasDomain(domain string) bool { return r.domains[domain] != nil }

// Domains lists the loaded domains.
func (r *Rules) Domains() []string {
	out := make([]string, 0, len(r.domains))
	for d := range r.domains {
		out = append(out, d)
	}
	sort.Strings(out)
	return out
}

// metadata reads a descriptor's metadata, free-form YAML, as a Struct the
// way envoyproxy/ratelimit does: mappings become structs (keys as text),
// sequences lists, numbers numbers, booleans booleans, null null, and
// every other scalar (a date, say) its text.
func metadata(src string, dn *yaml.Node) (*structpb.Struct, error) {
	mn := field(dn, "metadata")
	if mn == nil || mn.Tag == "!!null" {
		return nil, nil
	}
	if mn.Kind != yaml.MappingNode {
		return nil, ruleError(src, mn, "error parsing metadata: metadata must be a mapping")
	}
	v, err := metadataValue(src, mn)
	if err != nil {
		return nil, err
	}
	if len(v.GetStructValue().GetFields()) == 0 {
		return nil, nil
	}
	return v.GetStructValue(), nil
}

func metadataValue(src string, n *yaml.Node) (*structpb.Value, error) {
	switch n.Kind {
	case yaml.MappingNode:
		s := &structpb.Struct{Fields: make(map[string]*structpb.Value, len(n.Content)/2)}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.Kind != yaml.ScalarNode {
				return nil, ruleError(src, k, "error parsing metadata: a key must be a scalar")
			}
			val, err := metadataValue(src, v)
			if err != nil {
				return nil, err
			}
			s.Fields[k.Value] = val
		}
		return structpb.NewStructValue(s), nil
	case yaml.SequenceNode:
		l := &structpb.ListValue{Values: make([]*structpb.Value, 0, len(n.Content))}
		for _, e := range n.Content {
			val, err := metadataValue(src, e)
			if err != nil {
				return nil, err
			}
			l.Values = append(l.Values, val)
		}
		return structpb.NewListValue(l), nil
	case yaml.ScalarNode:
		switch n.Tag {
		case "!!null":
			return structpb.NewNullValue(), nil
		case "!!bool":
			b, _ := strconv.ParseBool(n.Value)
			return structpb.NewBoolValue(b), nil
		case "!!int", "!!float":
			var f float64
			if err := n.Decode(&f); err == nil {
				return structpb.NewNumberValue(f), nil
			}
		}
		return structpb.NewStringValue(n.Value), nil
	}
	return nil, ruleError(src, n, "error parsing metadata: aliases are not supported")
}

// metricLabel is the rule label hits on r by these entries count under:
// envoyproxy/ratelimit's stats key. That is the rule's path, unless the
// rule asks for values: detailed_metric labels with every entry's key and
// value (a share_threshold level with its pattern); value_to_metric adds a
// level's value where the rule has no value or a wildcard. The second
// result says whether the label has a request's values in it.
func (r *Rule) metricLabel(domain string, entries []Entry) (string, bool) {
	if !r.valueLabels || len(entries) != len(r.levels) {
		return r.Path, false
	}
	var b strings.Builder
	b.WriteString(domain)
	for i, e := range entries {
		lv := r.levels[i]
		b.WriteByte('.')
		b.WriteString(e.Key)
		switch {
		case r.DetailedMetric && lv.share:
			b.WriteString("_" + lv.value)
		case r.DetailedMetric:
			if e.Value != "" || !r.shares() {
				b.WriteString("_" + e.Value)
			}
		case lv.wild && lv.share, lv.wild && !lv.valueToMetric:
			b.WriteString("_" + lv.value)
		case lv.value != "" && !lv.wild, lv.valueToMetric && e.Value != "":
			b.WriteString("_" + e.Value)
		}
	}
	return b.String(), true
}

// shares reports whether a level of r's path is a share_threshold
// wildcard (envoyproxy/ratelimit then leaves out the '_' of an empty
// value in detailed metrics).
func (r *Rule) shares() bool {
	for _, l := range r.levels {
		if l.share {
			return true
		}
	}
	return false
}
