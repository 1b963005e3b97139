package azuremsi

import (
	"context"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/sigil-id/sigil/attestor/node"
	"github.com/sigil-id/sigil/attestor/node/internal/nodetest"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/plugin"
	"github.com/sigil-id/sigil/registration"
)

func TestPlugin(t *testing.T) {
	if !strings.Contains(strings.Join(registration.SelectorTypes(), ","), Name) {
		t.Fatal("the azure_msi selector type is not registered")
	}
	if !strings.Contains(strings.Join(plugin.Names(plugin.KindNodeAttestor), ","), Name) {
		t.Fatal("the azure_msi plugin is not registered")
	}
	f := newFakeAzure(t)
	v, err := pluginNew(nodetest.ParseBody(t, `
tenant "`+testTenant+`" {
  resource   = "`+testResource+`"
  issuer_url = "`+f.issuer(testTenant)+`"
  jwks_url   = "`+f.srv.URL+"/"+testTenant+`/discovery/keys"
}
tenant "`+otherTenant+`" {
  resource = "api://other"
}
fetch_timeout = "2s"
`), plugin.Env{Role: plugin.RoleServer, Logger: zap.NewNop(), Clock: f.clk})
	if err != nil {
		t.Fatal(err)
	}
	ver := v.(*Verifier)
	if len(ver.tenants) != 2 || ver.tenants[otherTenant].cfg.IssuerURL != DefaultIssuer(otherTenant) {
		t.Fatalf("tenants %+v", ver.tenants)
	}
	a, err := pluginNew(nodetest.ParseBody(t, `
resource     = "`+testResource+`"
metadata_url = "`+f.srv.URL+`/metadata/identity/oauth2/token"
timeout      = "5s"
`), plugin.Env{Role: plugin.RoleAgent, Logger: zap.NewNop(), Clock: clock.New()})
	if err != nil {
		t.Fatal(err)
	}
	p, err := a.(node.Attestor).Payload(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ver.Verify(context.Background(), newMemState(f.clk), payload(p)); err != nil {
		t.Fatalf("plugin halves do not attest: %v", err)
	}
	for _, c := range []struct {
		role      plugin.Role
		src, want string
	}{
		{plugin.RoleServer, ``, "at least one tenant"},
		{plugin.RoleServer, `tenant "` + testTenant + `" {}`, `"resource" is required`},
		{plugin.RoleServer, `tenant "NOT" { resource = "r" }`, "test.hcl:1"},
		{plugin.RoleServer, `tenant "` + testTenant + `" { resource = "r" }` + "\n" + `tenant "` + testTenant + `" { resource = "r" }`, "configured twice"},
		{plugin.RoleServer, `resource = "r"`, "Unsupported argument"},
		{plugin.RoleServer, `tenant "` + testTenant + `" { resource = "r" }` + "\nfetch_timeout = \"x\"", "test.hcl:2"},
		{plugin.RoleAgent, ``, `"resource" is required`},
		{plugin.RoleAgent, `resource = "r"` + "\n" + `tenant "` + testTenant + `" { resource = "r" }`, "Unsupported block"},
		{plugin.RoleAgent, "resource = \"r\"\ntimeout = \"-1s\"", "timeout"},
	} {
		_, err := pluginNew(nodetest.ParseBody(t, c.src), plugin.Env{Role: c.role, Logger: zap.NewNop(), Clock: clock.New()})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s %q: %v, want %q", c.role, c.src, err, c.want)
		}
	}
}
