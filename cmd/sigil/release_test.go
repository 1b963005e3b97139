package main

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// The static release build (CGO_ENABLED=0) compiles, and in it the pkcs11
// key manager and the disk upstream's key_pkcs11 refuse at configuration
// with an error that names the build: the //go:build !cgo tests of those
// packages (and of internal/version), run by `go test` under
// CGO_ENABLED=0. It recompiles the packages that depend on net for the
// build without cgo (about 95): tens of seconds of CPU on a cold cache.
func TestStaticBuildWithoutCgo(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "test", "-count=1", "-v", "-run", "WithoutCgo$",
		"./ca/keymanager/pkcs11/", "./ca/upstream/disk/", "./internal/version/")
	cmd.Dir = root
	cmd.Env = append(withoutRace(os.Environ()), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("CGO_ENABLED=0 go test: %v\n%s", err, out)
	}
	for _, name := range []string{"TestPluginWithoutCgo", "TestKeyPKCS11WithoutCgo", "TestCgoWithoutCgo"} {
		if !strings.Contains(string(out), "--- PASS: "+name+" ") {
			t.Errorf("%s did not run and pass under CGO_ENABLED=0:\n%s", name, out)
		}
	}
}

// withoutRace is env with -race taken out of GOFLAGS: the race detector
// needs cgo.
func withoutRace(env []string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "GOFLAGS="); ok {
			var keep []string
			for _, f := range strings.Fields(v) {
				if f != "-race" && f != "--race" && f != "-race=true" {
					keep = append(keep, f)
				}
			}
			kv = "GOFLAGS=" + strings.Join(keep, " ")
		}
		if strings.HasPrefix(kv, "CGO_ENABLED=") {
			continue
		}
		out = append(out, kv)
	}
	return out
}

// instruction is one Dockerfile instruction: its keyword (upper case) and
// its arguments, continuation lines joined.
type instruction struct {
	cmd, args string
	line      int
}

// parseDockerfile reads the instructions of a Dockerfile, skipping
// comments and blank lines and joining lines that end in a backslash.
func parseDockerfile(t *testing.T, path string) []instruction {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var (
		out  []instruction
		cur  strings.Builder
		from int
	)
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if cur.Len() == 0 && (line == "" || strings.HasPrefix(line, "#")) {
			continue
		}
		if cur.Len() > 0 && strings.HasPrefix(line, "#") {
			continue // a comment inside a continued instruction
		}
		if cur.Len() == 0 {
			from = n
		}
		if s, ok := strings.CutSuffix(line, `\`); ok {
			cur.WriteString(s + " ")
			continue
		}
		cur.WriteString(line)
		cmd, args, _ := strings.Cut(cur.String(), " ")
		out = append(out, instruction{cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args), line: from})
		cur.Reset()
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if cur.Len() > 0 {
		t.Fatalf("%s ends in a continued line", path)
	}
	return out
}

// The Dockerfile builds the release binary with make release and runs it
// as a non-root user on a static base: its final stage copies
// dist/sigil-<os>-<arch> (the Makefile's name) from the build stage, runs
// as a non-root user, enters through that binary and declares the data
// and socket directories as volumes owned by that user. Parsed, not run:
// CI may have no docker.
func TestDockerfile(t *testing.T) {
	ins := parseDockerfile(t, "../../Dockerfile")
	makefile, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(makefile), "out=$(DIST)/sigil-$$os-$$arch") {
		t.Fatal("the Makefile's release binary is no longer $(DIST)/sigil-$$os-$$arch: update the Dockerfile and this test")
	}

	var (
		stages   []string // FROM images, in order
		built    string   // the binary the build stage copies out of dist
		binPath  string   // where the final stage puts it
		user     string
		entry    string
		volumes  []string
		owned    = map[string]string{} // final-stage dir -> --chown
		finalIdx int
	)
	fromRE := regexp.MustCompile(`^(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?$`)
	for i, in := range ins {
		switch in.cmd {
		case "FROM":
			m := fromRE.FindStringSubmatch(in.args)
			if m == nil {
				t.Fatalf("line %d: FROM %q", in.line, in.args)
			}
			stages = append(stages, m[1])
			finalIdx = i
		case "RUN":
			if m := regexp.MustCompile(`cp (dist/sigil-\$\{TARGETOS\}-\$\{TARGETARCH\}) (\S+)`).FindStringSubmatch(in.args); m != nil {
				if !strings.Contains(in.args, "make release PLATFORMS=${TARGETOS}/${TARGETARCH}") {
					t.Errorf("line %d: %s is not built by make release for the target platform", in.line, m[1])
				}
				built = m[2]
			}
		}
	}
	if len(stages) < 2 {
		t.Fatalf("the Dockerfile has %d stages, want a builder and the image", len(stages))
	}
	if !strings.HasPrefix(stages[0], "golang:") {
		t.Errorf("the build stage is %s, not a golang image", stages[0])
	}
	final := stages[len(stages)-1]
	if final != "scratch" && !strings.HasPrefix(final, "gcr.io/distroless/static") {
		t.Errorf("the image is based on %s, want scratch or gcr.io/distroless/static", final)
	}
	if built == "" {
		t.Fatal("no build stage copies the release binary dist/sigil-${TARGETOS}-${TARGETARCH}")
	}
	for _, in := range ins[finalIdx+1:] {
		switch in.cmd {
		case "COPY":
			f := strings.Fields(in.args)
			var chown, fromStage string
			var paths []string
			for _, a := range f {
				switch {
				case strings.HasPrefix(a, "--chown="):
					chown = strings.TrimPrefix(a, "--chown=")
				case strings.HasPrefix(a, "--from="):
					fromStage = strings.TrimPrefix(a, "--from=")
				default:
					paths = append(paths, a)
				}
			}
			if len(paths) != 2 || fromStage == "" {
				continue
			}
			if paths[0] == built {
				binPath = paths[1]
			}
			owned[paths[1]] = chown
		case "USER":
			user = in.args
		case "ENTRYPOINT":
			entry = in.args
		case "VOLUME":
			for _, v := range regexp.MustCompile(`"([^"]+)"`).FindAllStringSubmatch(in.args, -1) {
				volumes = append(volumes, v[1])
			}
		}
	}
	if binPath == "" {
		t.Fatalf("the final stage does not copy %s from the build stage", built)
	}
	if entry != `["`+binPath+`"]` {
		t.Errorf("ENTRYPOINT %s, want [%q] (exec form)", entry, binPath)
	}
	uid, _, _ := strings.Cut(user, ":")
	if user == "" || uid == "0" || uid == "root" {
		t.Errorf("USER %q: the image must run as a non-root user", user)
	}
	for _, dir := range []string{"/var/lib/sigil", "/run/sigil"} {
		found := false
		for _, v := range volumes {
			found = found || v == dir
		}
		if !found {
			t.Errorf("%s is not a VOLUME (volumes: %q)", dir, volumes)
		}
		if owned[dir] != user {
			t.Errorf("%s is created with --chown=%q, want the image's user %q (a fresh volume takes the owner of the image's directory)", dir, owned[dir], user)
		}
	}

	// The build context keeps the sources and leaves out dist and .git.
	ignore, err := os.ReadFile("../../.dockerignore")
	if err != nil {
		t.Fatal(err)
	}
	patterns := map[string]bool{}
	for _, l := range strings.Split(string(ignore), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			patterns[strings.Trim(l, "/")] = true
		}
	}
	for _, p := range []string{".git", "dist"} {
		if !patterns[p] {
			t.Errorf(".dockerignore does not leave out %s", p)
		}
	}
	for _, src := range []string{"go.mod", "go.sum", "Makefile", "cmd", "cmd/sigil/main.go", "internal", "ca"} {
		for p := range patterns {
			if ok, _ := filepath.Match(p, src); ok {
				t.Errorf(".dockerignore pattern %q leaves out %s, which the build needs", p, src)
			}
		}
	}
}
