package deploy

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// kubectlApply finds the documented `kubectl apply -f ...` commands.
var kubectlApply = regexp.MustCompile(`kubectl apply((?: -f [^\s\x60]+)+)`)

// Every documented `kubectl apply` of the plain manifests works on a fresh cluster:
// kubectl creates objects in the order of its -f files, so a file that declares a
// namespace comes before every file that puts objects in it.
func TestDocumentedApplyCommandsCreateNamespacesFirst(t *testing.T) {
	_, k8sFiles, _ := deployFiles(t)
	m, err := decodeManifests(readFiles(t, k8sFiles))
	if err != nil {
		t.Fatal(err)
	}
	declares := map[string]string{} // namespace -> the file that declares it
	for _, ns := range m.namespaces {
		declares[ns.Name] = m.files[ns]
	}
	uses := map[string]map[string]bool{} // file -> namespaces its objects are in
	for obj, file := range m.files {
		if ns := namespaceOf(obj); ns != "" {
			if uses[file] == nil {
				uses[file] = map[string]bool{}
			}
			uses[file][ns] = true
		}
	}

	docs := append([]string{"README.md"}, k8sFiles...)
	commands := 0
	for _, doc := range docs {
		text, err := os.ReadFile(filepath.Join(repoRoot, filepath.FromSlash(doc)))
		if err != nil {
			t.Fatal(err)
		}
		for _, match := range kubectlApply.FindAllStringSubmatch(string(text), -1) {
			commands++
			var files []string
			for _, f := range strings.Split(match[1], " -f ")[1:] {
				files = append(files, strings.TrimSpace(f))
			}
			for i, f := range files {
				for ns := range uses[f] {
					decl, ok := declares[ns]
					if !ok {
						continue // a namespace the cluster has (istio-system)
					}
					for _, later := range files[i+1:] {
						if later == decl {
							t.Errorf("%s: %q applies %s before %s, which creates namespace %s: on a fresh cluster its objects fail", doc, match[0], f, decl, ns)
						}
					}
				}
			}
		}
	}
	if commands == 0 {
		t.Error("no kubectl apply command found in README.md or k8s/: the test reads nothing")
	}
}

// namespaceOf is the namespace of a decoded object, "" for cluster-scoped ones.
func namespaceOf(obj any) string {
	type namespaced interface{ GetNamespace() string }
	if o, ok := obj.(namespaced); ok {
		return o.GetNamespace()
	}
	return ""
}
