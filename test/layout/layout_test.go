// Package layout holds levy's packages to the import drawing in the
// README's Layout section: a package may import only what its line there
// names, so config stays a leaf, the servers stay apart, and product code
// never reaches into test code.
package layout

import (
	"bufio"
	"go/parser"
	"go/token"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/levyhq/levy"

// root is the repository, from test/layout.
const root = "../.."

// marker starts the drawing in README.md: the fenced block after it.
const marker = "<!-- imports: test/layout checks this drawing -->"

// Every import of one levy package by another (tests aside) is drawn in
// the README, and every package the README draws exists.
func TestImportsAreTheReadmesDrawing(t *testing.T) {
	allowed := drawing(t)
	imports := levyImports(t)
	for from := range allowed {
		if _, ok := imports[from]; !ok {
			t.Errorf("README draws %s, which is no package", from)
		}
	}
	for _, from := range slices.Sorted(maps.Keys(imports)) {
		for _, to := range imports[from] {
			if !allowed[from][to] {
				t.Errorf("%s imports %s, which the README's Layout drawing does not allow", from, to)
			}
		}
	}
}

// drawing reads the README's drawing: lines "name -> name name ...", where
// a name is a directory of the repository with "pkg/" left out (authz is
// pkg/authz; api, cmd/levy, and examples are what they say).
func drawing(t *testing.T) map[string]map[string]bool {
	t.Helper()
	f, err := os.Open(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	allowed := map[string]map[string]bool{}
	sc := bufio.NewScanner(f)
	state := 0 // 0: before the marker, 1: before the block, 2: in it
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		switch {
		case state == 0 && text == marker:
			state = 1
		case state == 1 && strings.HasPrefix(text, "```"):
			state = 2
		case state == 2 && strings.HasPrefix(text, "```"):
			if len(allowed) < 10 {
				t.Fatalf("README.md:%d: the drawing has %d packages", line, len(allowed))
			}
			return allowed
		case state == 2 && text != "":
			from, to, ok := strings.Cut(text, "->")
			if !ok || len(strings.Fields(from)) != 1 {
				t.Fatalf("README.md:%d: %q is not \"name -> name ...\"", line, text)
			}
			name := dir(strings.TrimSpace(from))
			if allowed[name] != nil {
				t.Fatalf("README.md:%d: %s is drawn twice", line, name)
			}
			allowed[name] = map[string]bool{}
			for _, n := range strings.Fields(to) {
				allowed[name][dir(n)] = true
			}
		}
	}
	t.Fatalf("README.md has no fenced block after %q", marker)
	return nil
}

// dir turns a drawn name into the package's directory.
func dir(name string) string {
	switch first, _, _ := strings.Cut(name, "/"); first {
	case "api", "cmd", "examples", "test":
		return name
	}
	return "pkg/" + name
}

// levyImports maps every package directory outside test/ to the levy
// packages its non-test files import, whatever their build tags.
func levyImports(t *testing.T) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	fset := token.NewFileSet()
	for _, top := range []string{"api", "cmd", "examples", "pkg"} {
		err := filepath.WalkDir(filepath.Join(root, top), func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() && d.Name() == "testdata" {
				return filepath.SkipDir
			}
			if d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
				return nil
			}
			f, err := parser.ParseFile(fset, p, nil, parser.ImportsOnly)
			if err != nil {
				return err
			}
			rel, err := filepath.Rel(root, filepath.Dir(p))
			if err != nil {
				return err
			}
			from := filepath.ToSlash(rel)
			if _, ok := out[from]; !ok {
				out[from] = nil
			}
			for _, imp := range f.Imports {
				ip, _ := strconv.Unquote(imp.Path.Value)
				to, ok := strings.CutPrefix(ip, module+"/")
				if ok && !slices.Contains(out[from], to) {
					out[from] = append(out[from], to)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(out["pkg/server"]) == 0 {
		t.Fatalf("pkg/server imports nothing of levy: the walk missed it (%d packages)", len(out))
	}
	return out
}
