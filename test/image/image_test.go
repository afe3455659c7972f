// Package image checks levy's container image from outside, as a registry
// or a cluster would see it: built with `make image` from the repository
// alone, exported as an OCI archive, its configuration and files read, and
// its binary run.
package image

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// builder is the tool that builds and exports the image: podman or
// buildah (both write OCI archives). LEVY_IMAGE_TEST=require (CI) makes
// a missing one a failure instead of a skip.
func builder(t *testing.T) string {
	for _, tool := range []string{"podman", "buildah"} {
		if path, err := exec.LookPath(tool); err == nil {
			return path
		}
	}
	if os.Getenv("LEVY_IMAGE_TEST") == "require" {
		t.Fatal("LEVY_IMAGE_TEST=require, but neither podman nor buildah is installed")
	}
	t.Skip("neither podman nor buildah is installed: the image is not built (apt-get install buildah)")
	return ""
}

type ociIndex struct {
	Manifests []struct{ Digest string } `json:"manifests"`
}

type ociManifest struct {
	Config struct{ Digest string } `json:"config"`
	Layers []struct {
		Digest    string `json:"digest"`
		MediaType string `json:"mediaType"`
	} `json:"layers"`
}

type ociConfig struct {
	OS           string `json:"os"`
	Architecture string `json:"architecture"`
	Config       struct {
		User       string   `json:"User"`
		Entrypoint []string `json:"Entrypoint"`
		Cmd        []string `json:"Cmd"`
		WorkingDir string   `json:"WorkingDir"`
	} `json:"config"`
}

// imageFile is one file of the image's layers.
type imageFile struct {
	mode     int64
	uid      int
	typeflag byte
	data     []byte
}

func TestImageHoldsOnlyLevyRunsAsNonRootAndReportsItsVersion(t *testing.T) {
	tool := builder(t)
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	version := fmt.Sprintf("imagetest-%d", os.Getpid())
	ref := "localhost/levy-imagetest"
	env := append(os.Environ(), "STORAGE_DRIVER=vfs")
	build := exec.Command("make", "-s", "image", "IMAGE="+ref, "VERSION="+version, "CONTAINER="+tool)
	build.Dir, build.Env = root, env
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("make image: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		rm := exec.Command(tool, "rmi", "-f", ref+":"+version, ref+":latest")
		rm.Env = env
		_ = rm.Run()
	})
	archive := filepath.Join(t.TempDir(), "levy.oci.tar")
	push := exec.Command(tool, "push", ref+":"+version, "oci-archive:"+archive)
	push.Env = env
	if out, err := push.CombinedOutput(); err != nil {
		t.Fatalf("export the image: %v\n%s", err, out)
	}
	st, err := os.Stat(archive)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("image: %.1f MB compressed", float64(st.Size())/1e6)

	blobs := readTar(t, archive)
	var index ociIndex
	unmarshal(t, blobs["index.json"], &index)
	if len(index.Manifests) != 1 {
		t.Fatalf("%d manifests, want 1", len(index.Manifests))
	}
	var manifest ociManifest
	unmarshal(t, blob(t, blobs, index.Manifests[0].Digest), &manifest)
	var cfg ociConfig
	unmarshal(t, blob(t, blobs, manifest.Config.Digest), &cfg)

	if u := cfg.Config.User; u == "" || u == "0" || strings.HasPrefix(u, "0:") || strings.HasPrefix(u, "root") {
		t.Errorf("the image runs as %q: want a non-root user", u)
	}
	if got := strings.Join(cfg.Config.Entrypoint, " "); got != "/levy" {
		t.Errorf("entrypoint %q, want /levy", got)
	}
	if got := strings.Join(cfg.Config.Cmd, " "); !strings.HasPrefix(got, "serve --config /etc/levy/levy.yaml") {
		t.Errorf("command %q: want serve with the mounted config, never the demo", got)
	}

	files := map[string]imageFile{}
	for _, l := range manifest.Layers {
		readLayer(t, blob(t, blobs, l.Digest), files)
	}
	allowed := map[string]bool{
		"levy": true, "etc": true, "etc/ssl": true, "etc/ssl/certs": true,
		"etc/ssl/certs/ca-certificates.crt": true, "etc/passwd": true, "etc/group": true,
		"var": true, "var/lib": true, "var/lib/levy": true,
	}
	for name := range files {
		if !allowed[name] {
			t.Errorf("the image holds %s: it should hold levy and what levy needs, nothing else", name)
		}
	}
	for _, need := range []string{"levy", "etc/ssl/certs/ca-certificates.crt", "etc/passwd"} {
		if _, ok := files[need]; !ok {
			t.Errorf("the image lacks %s", need)
		}
	}
	if d, ok := files["var/lib/levy"]; !ok || d.uid != 65532 {
		t.Errorf("/var/lib/levy (the local store's data) is not owned by the image's user: %+v", d)
	}
	if !bytes.Contains(files["etc/passwd"].data, []byte(":65532:65532:")) {
		t.Errorf("/etc/passwd names no user 65532: %q", files["etc/passwd"].data)
	}

	// A Linux binary for the image's architecture, whatever the host
	// that ran make image (a Mac builds Mach-O unless told GOOS=linux).
	machines := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}
	if cfg.OS != "linux" {
		t.Errorf("the image's os is %q, want linux", cfg.OS)
	}
	if ef, err := elf.NewFile(bytes.NewReader(files["levy"].data)); err != nil {
		t.Fatalf("/levy in the image is not a Linux (ELF) binary: %v", err)
	} else if want, ok := machines[cfg.Architecture]; ok && ef.Machine != want {
		t.Errorf("/levy is built for %v, the image's architecture is %s", ef.Machine, cfg.Architecture)
	}
	if runtime.GOOS != "linux" {
		t.Skipf("the image's Linux binary does not run on %s: levy version not checked", runtime.GOOS)
	}
	bin := filepath.Join(t.TempDir(), "levy")
	if err := os.WriteFile(bin, files["levy"].data, 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil {
		t.Fatalf("levy version from the image: %v\n%s", err, out)
	}
	if !strings.HasPrefix(string(out), "levy "+version+" (commit ") || strings.Contains(string(out), "commit unknown") {
		t.Errorf("levy version printed %q: want version %s and its commit", out, version)
	}
}

func readTar(t *testing.T, path string) map[string][]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string][]byte{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			out[strings.TrimPrefix(h.Name, "./")] = b
		}
	}
}

func blob(t *testing.T, blobs map[string][]byte, digest string) []byte {
	t.Helper()
	b, ok := blobs["blobs/"+strings.Replace(digest, ":", "/", 1)]
	if !ok {
		t.Fatalf("the archive lacks blob %s", digest)
	}
	return b
}

func unmarshal(t *testing.T, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%v in %s", err, b)
	}
}

// readLayer adds a layer's files (gzip or plain tar) to files.
func readLayer(t *testing.T, layer []byte, files map[string]imageFile) {
	t.Helper()
	var r io.Reader = bytes.NewReader(layer)
	if len(layer) > 2 && layer[0] == 0x1f && layer[1] == 0x8b {
		gz, err := gzip.NewReader(r)
		if err != nil {
			t.Fatal(err)
		}
		r = gz
	}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		name := strings.Trim(strings.TrimPrefix(h.Name, "./"), "/")
		if name == "" {
			continue
		}
		f := imageFile{mode: h.Mode, uid: h.Uid, typeflag: h.Typeflag}
		if h.Typeflag == tar.TypeReg {
			if f.data, err = io.ReadAll(tr); err != nil {
				t.Fatal(err)
			}
		}
		files[name] = f
	}
}
