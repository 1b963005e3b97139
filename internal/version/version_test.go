package version

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
)

func TestGet(t *testing.T) {
	vcs := &debug.BuildInfo{Settings: []debug.BuildSetting{
		{Key: "vcs.revision", Value: "1111111111111111111111111111111111111111"},
		{Key: "vcs.modified", Value: "true"},
	}}
	for _, c := range []struct {
		name                  string
		version, commit, date string
		bi                    *debug.BuildInfo
		want                  Info
	}{
		{"release", "v1.2.3", "2222222222222222222222222222222222222222", "2026-11-30T20:00:00Z", vcs,
			Info{Version: "v1.2.3", Commit: "2222222222222222222222222222222222222222", BuildDate: "2026-11-30T20:00:00Z"}},
		{"dirty release", "v1.2.3-4-gabcdef0-dirty", "2222222222222222222222222222222222222222", "2026-11-30T20:00:00Z", nil,
			Info{Version: "v1.2.3-4-gabcdef0-dirty", Commit: "2222222222222222222222222222222222222222", Modified: true, BuildDate: "2026-11-30T20:00:00Z"}},
		{"go build with a VCS stamp", "", "", "", vcs,
			Info{Version: "dev", Commit: "1111111111111111111111111111111111111111", Modified: true}},
		{"go build without one", "", "", "", &debug.BuildInfo{}, Info{Version: "dev"}},
		{"no build info", "", "", "", nil, Info{Version: "dev"}},
	} {
		got := get(c.version, c.commit, c.date, c.bi)
		want := c.want
		want.GoVersion, want.OS, want.Arch, want.Cgo = runtime.Version(), runtime.GOOS, runtime.GOARCH, cgoEnabled
		if got != want {
			t.Errorf("%s: got %+v, want %+v", c.name, got, want)
		}
	}
}

// The JSON field names are the stable schema of `sigil version -output
// json`.
func TestInfoJSON(t *testing.T) {
	b, err := json.Marshal(Info{Version: "v1", Commit: "c", Modified: true, BuildDate: "d", GoVersion: "go", OS: "linux", Arch: "arm64", Cgo: true})
	if err != nil {
		t.Fatal(err)
	}
	const want = `{"version":"v1","commit":"c","modified":true,"build_date":"d","go_version":"go","os":"linux","arch":"arm64","cgo":true}`
	if string(b) != want {
		t.Fatalf("JSON %s, want %s", b, want)
	}
}

// The -ldflags of `make release` set every field: a program built with
// the flags the Makefile gives (make -n) prints them. The build has cgo
// and no -trimpath, so it reuses the packages `go test` compiled.
func TestReleaseLinkFlags(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	const (
		v      = "v9.8.7-test"
		commit = "0123456789abcdef0123456789abcdef01234567"
		date   = "2026-01-02T03:04:05Z"
	)
	dist := t.TempDir()
	cmd := exec.Command("make", "-n", "-s", "--no-print-directory", "release", "PLATFORMS=linux/amd64", "DIST="+dist,
		"VERSION="+v, "COMMIT="+commit, "BUILD_DATE="+date)
	cmd.Dir = root
	// Not the flags of a make that runs this test (make test): its
	// jobserver and its variables.
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); k != "MAKEFLAGS" && k != "MFLAGS" && k != "MAKELEVEL" {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make -n release: %v\n%s", err, out)
	}
	// The go build line: static, trimmed, stripped, with the version.
	m := regexp.MustCompile(`CGO_ENABLED=0 [^\n]*go build -trimpath -ldflags '([^']*)' -o \$out \./cmd/sigil`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("no static go build line in make -n release:\n%s", out)
	}
	ldflags := string(m[1])
	if !strings.HasPrefix(ldflags, "-s -w ") {
		t.Errorf("ldflags %q do not strip the binary (-s -w)", ldflags)
	}
	if !strings.Contains(string(out), "out="+dist+"/sigil-$os-$arch") || !strings.Contains(string(out), "sha256sum sigil-* > SHA256SUMS") {
		t.Errorf("make release does not write %s/sigil-<os>-<arch> and SHA256SUMS:\n%s", dist, out)
	}

	bin := filepath.Join(t.TempDir(), "vprint")
	build := exec.Command("go", "build", "-ldflags", ldflags, "-o", bin, "./internal/version/testdata/vprint")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	var stdout bytes.Buffer
	run := exec.Command(bin)
	run.Stdout, run.Stderr = &stdout, os.Stderr
	if err := run.Run(); err != nil {
		t.Fatal(err)
	}
	var got Info
	if err := json.Unmarshal(stdout.Bytes(), &got); err != nil {
		t.Fatalf("%v: %q", err, stdout.String())
	}
	if got.Version != v || got.Commit != commit || got.BuildDate != date || got.Modified {
		t.Fatalf("the release flags give %+v, want version %s, commit %s, date %s", got, v, commit, date)
	}
}
