package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/sigil-id/sigil/internal/version"
)

// sigil version prints the build in text and, with -output json, as one
// object of the stable schema (version.Info); another format is refused.
func TestVersionOutput(t *testing.T) {
	want := version.Get()
	code, out, errOut := runSigil("version")
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if code != 0 || errOut != "" || len(lines) != 4 ||
		lines[0] != "sigil "+want.Version+" ("+want.GoVersion+", "+want.OS+"/"+want.Arch+")" ||
		!strings.HasPrefix(lines[1], "commit: ") || lines[2] != "built:  unknown" || !strings.HasPrefix(lines[3], "cgo:    ") {
		t.Fatalf("version: %d %q %q", code, out, errOut)
	}

	code, out, errOut = runSigil("version", "-output", "json")
	var got version.Info
	if code != 0 || errOut != "" || strings.Count(out, "\n") != 1 {
		t.Fatalf("version -output json: %d %q %q", code, out, errOut)
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("version -output json: %v: %q", err, out)
	}
	if got != want || got.Version != "dev" {
		t.Fatalf("version -output json = %+v, want %+v", got, want)
	}

	code, _, errOut = runSigil("version", "-output", "yaml")
	if code != 2 || !strings.HasPrefix(errOut, "sigil: invalid -output \"yaml\": want text or json") {
		t.Fatalf("version -output yaml: %d %q", code, errOut)
	}
}
