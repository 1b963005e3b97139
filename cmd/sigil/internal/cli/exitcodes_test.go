package cli

import (
	"path/filepath"
	"strings"
	"testing"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// TestExitCodes: 0 ok, 1 failure, 2 usage (nothing sent), 4 not found,
// each with one line on stderr (docs/cli.md, "Exit codes").
func TestExitCodes(t *testing.T) {
	a := newFakeAdmin()
	a.entries["e1"] = entryFor("e1")
	sock := startFakeAdmin(t, a)
	missing := filepath.Join(shortTempDir(t), "none.sock")
	tests := []struct {
		args []string
		code int
		want string // in stderr
	}{
		{[]string{"entry", "show", "-socket", sock, "-id", "e1"}, ExitOK, ""},
		{[]string{"entry"}, ExitOK, ""}, // a group alone prints its help
		{[]string{"entry", "show", "-socket", sock, "-id", "nope"}, ExitNotFound, `show entry nope: NotFound: entry "nope" not found`},
		{[]string{"agent", "show", "-socket", sock, "-spiffe-id", "spiffe://example.org/x"}, ExitNotFound, "NotFound"},
		{[]string{"entry", "list", "-socket", missing}, ExitFailure, "does not exist"},
		{[]string{"entry", "bogus"}, ExitUsage, `unknown command "bogus" for "sigil entry" (see 'sigil entry -help')`},
		{[]string{"entry", "lst"}, ExitUsage, `(did you mean list?)`},
		{[]string{"bogus"}, ExitUsage, `unknown command "bogus" for "sigil"`},
		{[]string{"entry", "list", "-bogus"}, ExitUsage, "unknown flag -bogus (see 'sigil entry list -help')"},
		{[]string{"entry", "list", "--bogus=1"}, ExitUsage, "unknown flag: --bogus"},
		{[]string{"entry", "list", "extra"}, ExitUsage, `unknown command "extra" for "sigil entry list"`},
		{[]string{"entry", "list", "-output", "yaml"}, ExitUsage, `invalid -output "yaml": want text or json`},
		{[]string{"token", "generate", "-ttl", "soon"}, ExitUsage, `invalid -ttl "soon": time: invalid duration "soon"`},
		{[]string{"token", "generate", "-ttl", "-1s"}, ExitUsage, "-ttl must not be negative"},
		{[]string{"entry", "show", "-socket", sock}, ExitUsage, "-id is required"},
		{[]string{"completion"}, ExitUsage, "accepts 1 arg(s), received 0"},
		{[]string{"completion", "tcsh"}, ExitUsage, `invalid argument "tcsh"`},
		{[]string{"svid", "fetch", "-socket", sock, "-jwt"}, ExitUsage, "-jwt needs at least one -audience"},
		{[]string{"policy", "lint", "-output", "xml", "x.hcl"}, ExitUsage, `invalid -output "xml"`},
	}
	for _, tt := range tests {
		code, _, errOut := runFull(t, tt.args...)
		if code != tt.code {
			t.Errorf("%q: code %d, want %d (stderr %q)", tt.args, code, tt.code, errOut)
		}
		if tt.want == "" {
			if errOut != "" {
				t.Errorf("%q: stderr %q", tt.args, errOut)
			}
			continue
		}
		if !strings.HasPrefix(errOut, "sigil: ") || strings.Count(errOut, "\n") != 1 || !strings.Contains(errOut, tt.want) {
			t.Errorf("%q: stderr %q, want one line with %q", tt.args, errOut, tt.want)
		}
	}
}

// TestCompletion: the three scripts are produced for the whole tree.
func TestCompletion(t *testing.T) {
	for shell, want := range map[string][]string{
		"bash": {"# bash completion V2 for sigil", "__start_sigil", "complete -o default -F __start_sigil sigil"},
		"zsh":  {"#compdef sigil", "compdef _sigil sigil", "__complete"},
		"fish": {"# fish completion for sigil", "complete -c sigil", "__complete"},
	} {
		code, out, errOut := runFull(t, "completion", shell)
		if code != 0 || errOut != "" {
			t.Errorf("%s: %d %q", shell, code, errOut)
		}
		for _, w := range want {
			if !strings.Contains(out, w) {
				t.Errorf("%s script lacks %q", shell, w)
			}
		}
	}
	// The scripts ask the binary itself; it completes subcommands and flags.
	code, out, _ := runFull(t, "__complete", "entry", "")
	if code != 0 || !strings.Contains(out, "create\t") || !strings.Contains(out, "delete\t") {
		t.Errorf("__complete entry: %d %q", code, out)
	}
	code, out, _ = runFull(t, "__complete", "entry", "create", "--batch")
	if code != 0 || !strings.Contains(out, "--batch-size\t") {
		t.Errorf("__complete entry create --batch: %d %q", code, out)
	}
}

func entryFor(id string) *sigilv1.Entry {
	return &sigilv1.Entry{Id: id, SpiffeId: "spiffe://example.org/" + id, ParentId: agentID, Selectors: []*sigilv1.Selector{{Type: "unix", Value: "uid:1"}}}
}
