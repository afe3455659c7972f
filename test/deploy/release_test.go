package deploy

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// The release workflow builds what make image and the Dockerfile promise:
// a tag runs CI's own script first, and the image is built with every
// build argument the Dockerfile declares, so `levy version` in the image
// names the tag, commit and date.
func TestReleaseWorkflowTestsThenBuildsTheDockerfileWithItsVersion(t *testing.T) {
	root := filepath.Join("..", "..")
	data, err := os.ReadFile(filepath.Join(root, ".github", "workflows", "release.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var wf struct {
		On struct {
			Push struct {
				Tags []string `yaml:"tags"`
			} `yaml:"push"`
		} `yaml:"on"`
		Jobs map[string]struct {
			Needs any `yaml:"needs"`
			Steps []struct {
				Uses string            `yaml:"uses"`
				Run  string            `yaml:"run"`
				With map[string]string `yaml:"with"`
			} `yaml:"steps"`
		} `yaml:"jobs"`
	}
	if err := yaml.Unmarshal(data, &wf); err != nil {
		t.Fatalf("release.yml: %v", err)
	}
	if len(wf.On.Push.Tags) != 1 || wf.On.Push.Tags[0] != "v*" {
		t.Errorf("release.yml runs on tags %v, want v*", wf.On.Push.Tags)
	}
	test, release := wf.Jobs["test"], wf.Jobs["release"]
	if release.Needs != "test" {
		t.Errorf("the release job needs %v, want the test job", release.Needs)
	}
	ranCI := false
	for _, s := range test.Steps {
		ranCI = ranCI || strings.Contains(s.Run, ".ci/run")
	}
	if !ranCI {
		t.Error("the test job does not run .ci/run")
	}
	dockerfile, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	built := false
	for _, s := range release.Steps {
		if !strings.HasPrefix(s.Uses, "docker/build-push-action@") {
			continue
		}
		built = true
		for _, arg := range regexp.MustCompile(`(?m)^ARG (\w+)`).FindAllStringSubmatch(string(dockerfile), -1) {
			if !strings.Contains(s.With["build-args"], arg[1]+"=") {
				t.Errorf("the image build does not pass the Dockerfile's ARG %s", arg[1])
			}
		}
		if !strings.Contains(s.With["tags"], "ghcr.io/levyhq/levy:") {
			t.Errorf("the image is tagged %q, not ghcr.io/levyhq/levy (what k8s/ and the chart run)", s.With["tags"])
		}
	}
	if !built {
		t.Error("the release job builds no image")
	}
}
