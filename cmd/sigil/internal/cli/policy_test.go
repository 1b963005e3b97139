package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

func runPolicy(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	root := &cobra.Command{Use: "sigil"}
	root.AddCommand(NewPolicyCommand())
	var out, errb bytes.Buffer
	code := Execute(root, args, &out, &errb)
	return code, out.String(), errb.String()
}

func writeTemp(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

const cliPolicy = `
rule "web-reads-users" {
  from    = ["spiffe://example.org/ns/*/sa/web"]
  to      = ["http:GET /v1/users/*"]
  service = "users"
}
rule "rollout" {
  from   = ["spiffe://example.org/billing"]
  to     = ["grpc:/ledger.v1.Ledger/*"]
  shadow = true
}
rule "oncall" {
  from = ["spiffe://example.org/oncall"]
  to   = ["service:db-admin"]
  time_window {
    days  = ["mon", "tue", "wed", "thu", "fri"]
    start = "08:00"
    end   = "18:00"
  }
}
`

func TestPolicyTest(t *testing.T) {
	file := writeTemp(t, "policy.hcl", cliPolicy)
	tests := []struct {
		args []string
		code int
		out  string
	}{
		{[]string{"-from", "spiffe://example.org/ns/prod/sa/web", "-to", "http:GET /v1/users/42", "-service", "users"}, 0,
			`ALLOW: spiffe://example.org/ns/prod/sa/web may call GET /v1/users/42 on service users (rule "web-reads-users")`},
		{[]string{"-from", "spiffe://example.org/ns/prod/sa/web", "-to", "http:DELETE /v1/users/42", "-service", "users"}, 1,
			"DENY: spiffe://example.org/ns/prod/sa/web may not call DELETE /v1/users/42 on service users: no rule in " + file + " allows it"},
		{[]string{"-from", "spiffe://example.org/web", "-to", "grpc:/ledger.v1.Ledger/Post"}, 3,
			`SHADOW-DENY (allowed now, denied once enforced): spiffe://example.org/web may not call gRPC /ledger.v1.Ledger/Post`},
		{[]string{"-from", "spiffe://example.org/oncall", "-to", "service:db-admin", "-at", "2026-03-02T10:00:00Z"}, 0, "ALLOW"},
		{[]string{"-from", "spiffe://example.org/oncall", "-to", "service:db-admin", "-at", "2026-03-07T10:00:00Z"}, 1,
			`at this time: rule "oncall" in ` + file + ` allows it only mon,tue,wed,thu,fri 08:00-18:00 UTC`},
	}
	for _, tc := range tests {
		args := append([]string{"policy", "test", "-policy", file}, tc.args...)
		code, out, errOut := runPolicy(t, args...)
		if code != tc.code || !strings.Contains(out, tc.out) {
			t.Errorf("%v: exit %d, out %q, err %q; want exit %d and %q", tc.args, code, out, errOut, tc.code, tc.out)
		}
	}
	code, out, _ := runPolicy(t, "policy", "test", "-policy", file, "-from", "spiffe://example.org/x", "-to", "service:api", "-output", "json")
	if code != 1 || !strings.Contains(out, `"decision": "denied"`) {
		t.Errorf("json: %d %s", code, out)
	}

	// Malformed input exits 2 with a one-line error.
	bad := writeTemp(t, "bad.hcl", "rule \"a\" {\n  from = [\"spiffe://td/**/x\"]\n  to = [\"service:s\"]\n}\n")
	for _, args := range [][]string{
		{"policy", "test", "-policy", bad, "-from", "spiffe://td/a", "-to", "service:s"},
		{"policy", "test", "-policy", file, "-from", "not-an-id", "-to", "service:s"},
		{"policy", "test", "-policy", file, "-from", "spiffe://td/a", "-to", "GET /x"},
		{"policy", "test", "-policy", file, "-from", "spiffe://td/a"},
		{"policy", "test", "-policy", filepath.Join(t.TempDir(), "missing.hcl"), "-from", "spiffe://td/a", "-to", "service:s"},
	} {
		code, _, errOut := runPolicy(t, args...)
		if code != 2 || !strings.HasPrefix(errOut, "sigil: ") || strings.Count(errOut, "\n") != 1 {
			t.Errorf("%v: exit %d, stderr %q", args, code, errOut)
		}
	}
	if _, _, errOut := runPolicy(t, "policy", "test", "-policy", bad, "-from", "spiffe://td/a", "-to", "service:s"); !strings.Contains(errOut, "bad.hcl:1: rule \"a\": from[0]") {
		t.Errorf("malformed policy error %q", errOut)
	}
}

func TestPolicyLint(t *testing.T) {
	clean := writeTemp(t, "clean.hcl", cliPolicy)
	code, out, _ := runPolicy(t, "policy", "lint", clean)
	if code != 0 || !strings.Contains(out, "3 rules, enforce mode, no problems") {
		t.Errorf("clean: %d %q", code, out)
	}
	shadowed := writeTemp(t, "shadowed.hcl", cliPolicy+`
rule "narrow" {
  from    = ["spiffe://example.org/ns/prod/sa/web"]
  to      = ["http:GET /v1/users/1"]
  service = "users"
}
`)
	code, out, errOut := runPolicy(t, "policy", "lint", shadowed)
	if code != 1 || !strings.Contains(out, `shadowed.hcl:22: error: rule "narrow" is shadowed by rule "web-reads-users" (line 2)`) || !strings.Contains(errOut, "1 error, 0 warnings") {
		t.Errorf("shadowed: %d %q %q", code, out, errOut)
	}
	warn := writeTemp(t, "warn.hcl", `rule "all" {
  from = ["spiffe://example.org"]
  to   = ["service:status"]
}`)
	if code, out, _ := runPolicy(t, "policy", "lint", warn); code != 0 || !strings.Contains(out, "warning: rule \"all\" allows every workload of trust domain example.org") {
		t.Errorf("warning: %d %q", code, out)
	}
	if code, _, _ := runPolicy(t, "policy", "lint", "-strict", warn); code != 1 {
		t.Errorf("strict: %d", code)
	}
	bad := writeTemp(t, "bad.hcl", "rule \"a\" {\n")
	if code, _, errOut := runPolicy(t, "policy", "lint", bad); code != 2 || !strings.Contains(errOut, "bad.hcl:") {
		t.Errorf("malformed: %d %q", code, errOut)
	}
}
