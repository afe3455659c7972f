package api

import (
	"bytes"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/santhosh-tekuri/jsonschema/v6/kind"
	"golang.org/x/text/language"
	"golang.org/x/text/message"
	"gopkg.in/yaml.v3"
	sigsyaml "sigs.k8s.io/yaml"
)

// SchemaError is one way a config file disagrees with levy.schema.json.
type SchemaError struct {
	// Path names the setting as levy's config errors do
	// (plans.free.rate.requests, consumers[0].keys[1].sha256); "" is the
	// file as a whole.
	Path string
	// Line is the setting's line in the file (0 when unknown).
	Line    int
	Message string
}

func (e SchemaError) String() string {
	where := e.Path
	if where == "" {
		where = "(top level)"
	}
	return where + ": " + e.Message
}

var configSchema = sync.OnceValues(func() (*jsonschema.Schema, error) {
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(ConfigSchema))
	if err != nil {
		return nil, fmt.Errorf("api/levy.schema.json: %w", err)
	}
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	if err := c.AddResource("levy.schema.json", doc); err != nil {
		return nil, fmt.Errorf("api/levy.schema.json: %w", err)
	}
	return c.Compile("levy.schema.json")
})

// ValidateConfig checks a levy.yaml file's text against levy.schema.json
// and returns what disagrees, in file order; an error only for text that
// is not YAML or a schema that does not compile.
func ValidateConfig(data []byte) ([]SchemaError, error) {
	sch, err := configSchema()
	if err != nil {
		return nil, err
	}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, fmt.Errorf("invalid YAML: %w", err)
	}
	js, err := sigsyaml.YAMLToJSON(data)
	if err != nil {
		return nil, fmt.Errorf("invalid YAML: %w", err)
	}
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(js))
	if err != nil {
		return nil, fmt.Errorf("invalid YAML: %w", err)
	}
	verr, ok := sch.Validate(inst).(*jsonschema.ValidationError)
	if !ok {
		return nil, nil
	}
	p := message.NewPrinter(language.English)
	var out []SchemaError
	var walk func(e, parent *jsonschema.ValidationError, name string)
	walk = func(e, parent *jsonschema.ValidationError, name string) {
		if pn, ok := e.ErrorKind.(*kind.PropertyNames); ok {
			// Its causes judge the key alone, as a value of its own.
			for _, c := range e.Causes {
				c.InstanceLocation = append(propertyNamesAt(e, parent), pn.Property)
				walk(c, nil, pn.Property)
			}
			return
		}
		if len(e.Causes) > 0 {
			for _, c := range e.Causes {
				walk(c, e, name)
			}
			return
		}
		loc, msg := e.InstanceLocation, e.ErrorKind.LocalizedString(p)
		if name != "" {
			msg = "key " + strconv.Quote(name) + ": " + msg
		}
		if ap, ok := e.ErrorKind.(*kind.AdditionalProperties); ok && len(ap.Properties) > 0 {
			loc = append(slices.Clone(loc), ap.Properties[0])
			msg = "unknown key"
		}
		out = append(out, SchemaError{Path: dotted(loc), Line: line(&root, loc), Message: msg})
	}
	walk(verr, nil, "")
	slices.SortStableFunc(out, func(a, b SchemaError) int { return a.Line - b.Line })
	return slices.CompactFunc(out, func(a, b SchemaError) bool { return a == b }), nil
}

// propertyNamesAt is the location of the object whose keys a
// propertyNames error judges. v6.0.3 gives that error the validator's live
// location, which has moved on by then: it is the enclosing error's,
// followed by the properties between their schemas.
func propertyNamesAt(e, parent *jsonschema.ValidationError) []string {
	if parent == nil {
		return nil
	}
	loc := slices.Clone(parent.InstanceLocation)
	rel, ok := strings.CutPrefix(e.SchemaURL, parent.SchemaURL+"/")
	if !ok {
		// The parent is a $ref to a definition: from the definition on.
		_, frag, _ := strings.Cut(e.SchemaURL, "#")
		i := strings.LastIndex(frag, "/$defs/")
		if i < 0 {
			return loc
		}
		_, rel, _ = strings.Cut(frag[i+len("/$defs/"):], "/")
	}
	parts := strings.Split(strings.TrimSuffix(rel, "/propertyNames"), "/")
	for i := 0; i+1 < len(parts); i += 2 {
		if parts[i] == "properties" {
			loc = append(loc, parts[i+1])
		}
	}
	return loc
}

// dotted writes a JSON pointer's tokens as levy's config paths do.
func dotted(tokens []string) string {
	var b strings.Builder
	for _, t := range tokens {
		if _, err := strconv.Atoi(t); err == nil {
			b.WriteString("[" + t + "]")
			continue
		}
		if b.Len() > 0 {
			b.WriteByte('.')
		}
		b.WriteString(t)
	}
	return b.String()
}

// line finds the line of the node at tokens (a mapping's key line for a
// key), as far down as it exists.
func line(n *yaml.Node, tokens []string) int {
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	at := n.Line
	for _, t := range tokens {
		switch n.Kind {
		case yaml.MappingNode:
			var next *yaml.Node
			for i := 0; i+1 < len(n.Content); i += 2 {
				if n.Content[i].Value == t {
					at, next = n.Content[i].Line, n.Content[i+1]
					break
				}
			}
			if next == nil {
				return at
			}
			n = next
		case yaml.SequenceNode:
			i, err := strconv.Atoi(t)
			if err != nil || i >= len(n.Content) {
				return at
			}
			n = n.Content[i]
			at = n.Line
		default:
			return at
		}
	}
	return at
}
