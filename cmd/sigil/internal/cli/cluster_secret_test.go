package cli

import (
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/sigil-id/sigil/server"
)

// TestClusterSecretGenerate: `sigil cluster secret generate` prints one
// secret per run, each different, that servers accept; it needs no server.
func TestClusterSecretGenerate(t *testing.T) {
	seen := map[string]bool{}
	for range 3 {
		root := &cobra.Command{Use: "sigil"}
		root.AddCommand(NewClusterCommand())
		var out, errb strings.Builder
		if code := Execute(root, []string{"cluster", "secret", "generate"}, &out, &errb); code != 0 {
			t.Fatalf("exit %d: %s", code, errb.String())
		}
		s := out.String()
		if !strings.HasSuffix(s, "\n") || strings.Count(s, "\n") != 1 {
			t.Fatalf("output is not one line: %q", s)
		}
		s = strings.TrimSuffix(s, "\n")
		if _, err := server.ParseJoinSecret(s); err != nil {
			t.Fatalf("generated secret refused: %v", err)
		}
		if seen[s] {
			t.Fatal("the same secret twice")
		}
		seen[s] = true
	}
}
