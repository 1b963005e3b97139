// Package notifytest helps the notifiers' tests: sample alerts and
// building a notifier block through the plugin registry, as the binary
// does.
package notifytest

import (
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"

	"github.com/sigil-id/sigil/alert"
	"github.com/sigil-id/sigil/plugin"
)

// Start is when the sample alerts began.
var Start = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

// Firing returns a firing critical alert.
func Firing() alert.Alert {
	return alert.Alert{
		Key:          "svid_not_renewed/spiffe://td/sigil/agent/join_token/abc",
		Name:         "SVIDNotRenewed",
		Severity:     alert.Critical,
		Summary:      "agent abc did not renew its SVID",
		Details:      map[string]string{"agent": "spiffe://td/sigil/agent/join_token/abc", "expires_in": "4m"},
		Source:       "sigil-1",
		StartsAt:     Start,
		GeneratorURL: "https://sigil-1.example.com:8081/alerts",
	}
}

// Resolved returns Firing, resolved ten minutes later.
func Resolved() alert.Alert {
	a := Firing()
	a.EndsAt = Start.Add(10 * time.Minute)
	return a
}

// Body parses src as the body of a block in file "n.hcl" (line 1 is the
// first line of src).
func Body(t testing.TB, src string) hcl.Body {
	t.Helper()
	f, diags := hclsyntax.ParseConfig([]byte(src), "n.hcl", hcl.Pos{Line: 1, Column: 1})
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	return f.Body
}

// Build builds the plugins of src, a file of plugin blocks, for a server,
// and returns the error of the first that fails. It only returns nil if
// the registry accepted every block (a server also needs a node attestor
// and a key manager, which tests do not register: that error is
// dropped).
func Build(t testing.TB, src string) error {
	t.Helper()
	f, diags := hclsyntax.ParseConfig([]byte(src), "n.hcl", hcl.Pos{Line: 1, Column: 1})
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	blocks, err := plugin.ParseBlocks(f.Body)
	if err != nil {
		return err
	}
	_, err = plugin.Build(blocks, hcl.Range{}, plugin.Env{Role: plugin.RoleServer})
	if err != nil && strings.HasPrefix(err.Error(), "plugins: no ") {
		return nil // every notifier was built; the other kinds are missing
	}
	return err
}
