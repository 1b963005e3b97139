package gcpiit

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
		t.Fatal("the gcp_iit selector type is not registered")
	}
	if !strings.Contains(strings.Join(plugin.Names(plugin.KindNodeAttestor), ","), Name) {
		t.Fatal("the gcp_iit plugin is not registered")
	}
	f := newFakeGoogle(t)
	env := plugin.Env{Role: plugin.RoleServer, Logger: zap.NewNop(), Clock: f.clk}
	v, err := pluginNew(nodetest.ParseBody(t, `
audience = "`+testAudience+`"
project_allow_list = ["`+testProject+`"]
allow_reattestation = true
issuer_url = "`+f.srv.URL+`"
jwks_url = "`+f.srv.URL+`/oauth2/v3/certs"
fetch_timeout = "3s"
`), env)
	if err != nil {
		t.Fatal(err)
	}
	ver := v.(*Verifier)
	if !ver.cfg.AllowReattestation || ver.cfg.FetchTimeout.String() != "3s" || ver.Name() != Name {
		t.Fatalf("config %+v", ver.cfg)
	}
	a, err := pluginNew(nodetest.ParseBody(t, `
audience = "`+testAudience+`"
metadata_url = "`+f.srv.URL+`/computeMetadata/v1/instance/service-accounts/default/identity"
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
		{plugin.RoleServer, `project_allow_list = ["p-1"]`, `"audience" is required`},
		{plugin.RoleServer, `audience = "a"`, `"project_allow_list" is required`},
		{plugin.RoleServer, "audience = \"a\"\nproject_allow_list = []", "project_allow_list is required"},
		{plugin.RoleServer, "audience = \"a\"\nproject_allow_list = [\"p-1\"]\nmetadata_url = \"x\"", "Unsupported argument"},
		{plugin.RoleServer, "audience = \"a\"\nproject_allow_list = [\"p-1\"]\nfetch_timeout = \"soon\"", "test.hcl:3"},
		{plugin.RoleAgent, `audience = "a"` + "\nproject_allow_list = [\"p\"]", "Unsupported argument"},
		{plugin.RoleAgent, `metadata_url = "http://x"`, `"audience" is required`},
		{plugin.RoleAgent, "audience = \"a\"\nmetadata_url = \"::\"", "metadata_url"},
	} {
		_, err := pluginNew(nodetest.ParseBody(t, c.src), plugin.Env{Role: c.role, Logger: zap.NewNop(), Clock: clock.New()})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s %q: %v, want %q", c.role, c.src, err, c.want)
		}
	}
}
