package x509pop

import (
	"context"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclparse"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-id/sigil/attestor/node"
	"github.com/sigil-id/sigil/plugin"
	"github.com/sigil-id/sigil/registration"
)

func hclBody(t *testing.T, src string) hcl.Body {
	t.Helper()
	f, diags := hclparse.NewParser().ParseHCL([]byte(src), "test.hcl")
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	return f.Body
}

func TestPlugin(t *testing.T) {
	if !strings.Contains(strings.Join(registration.SelectorTypes(), ","), Name) {
		t.Fatal("the x509pop selector type is not registered")
	}
	if !strings.Contains(strings.Join(plugin.Names(plugin.KindNodeAttestor), ","), Name) {
		t.Fatal("the x509pop plugin is not registered")
	}
	ca := newTestCA(t, "good")
	_, key, chain := ca.issue(t, leafOpts{cn: "node-a"})
	dir := t.TempDir()
	bundle := writeFile(t, dir, "bundle.pem", pemCerts(ca.root.Raw), 0o644)
	cert := writeFile(t, dir, "cert.pem", pemCerts(chain...), 0o644)
	keyPath := writeFile(t, dir, "key.pem", pemKey(t, key), 0o600)
	td := spiffeid.RequireTrustDomainFromString(testTD)

	sv, err := pluginNew(hclBody(t, `ca_bundle_path = "`+bundle+`"
agent_id = "dc1/{{ .Subject.CN }}"
ext_key_usage = "any"`), plugin.Env{Role: plugin.RoleServer, TrustDomain: td})
	if err != nil {
		t.Fatal(err)
	}
	ag, err := pluginNew(hclBody(t, `certificate_path = "`+cert+`"
private_key_path = "`+keyPath+`"`), plugin.Env{Role: plugin.RoleAgent, TrustDomain: td})
	if err != nil {
		t.Fatal(err)
	}
	res, _, err := attest(t, sv.(node.Verifier), newState(), ag.(node.Attestor))
	if err != nil || res.ID != "dc1/node-a" {
		t.Fatalf("attestation through the plugin halves: %+v, %v", res, err)
	}

	for _, tc := range []struct {
		role plugin.Role
		src  string
		want string
	}{
		{plugin.RoleServer, ``, `"ca_bundle_path" is required`},
		{plugin.RoleServer, `ca_bundle_path = "` + bundle + `"` + "\nbogus = 1", `"bogus" is not expected`},
		{plugin.RoleServer, `ca_bundle_path = "` + bundle + `"` + "\nagent_id = \"{{ .Env }}\"", "unknown placeholder"},
		{plugin.RoleServer, `ca_bundle_path = "` + bundle + `"` + "\next_key_usage = \"server\"", "ext_key_usage"},
		{plugin.RoleAgent, `certificate_path = "` + cert + `"`, `"private_key_path" is required`},
		{plugin.RoleAgent, `certificate_path = "` + cert + `"` + "\nprivate_key_path = \"" + cert + "\"", "accessible by group or others"},
	} {
		_, err := pluginNew(hclBody(t, tc.src), plugin.Env{Role: tc.role, TrustDomain: td})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s block %q: %v, want %q", tc.role, tc.src, err, tc.want)
		}
	}
	_ = context.Background
}
