package k8spsat

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/sigil-id/sigil/attestor/node"
	"github.com/sigil-id/sigil/attestor/node/internal/nodetest"
	"github.com/sigil-id/sigil/plugin"
	"github.com/sigil-id/sigil/registration"
)

func TestPlugin(t *testing.T) {
	if !slices.Contains(registration.SelectorTypes(), Name) {
		t.Fatal("the k8s_psat selector type is not registered")
	}
	if !slices.Contains(plugin.Names(plugin.KindNodeAttestor), Name) {
		t.Fatal("the k8s_psat plugin is not registered")
	}
	v, err := pluginNew(nodetest.ParseBody(t, `
cluster "prod" {
  audience                   = "sigil-server"
  service_account_allow_list = ["sigil:sigil-agent"]
  issuer                     = "https://kubernetes.default.svc.cluster.local"
  jwks_url                   = "https://10.0.0.1:6443/openid/v1/jwks"
}
cluster "staging" {
  audience                   = "sigil-server"
  service_account_allow_list = ["sigil:sigil-agent", "ops:agent"]
  kube_api {
    url        = "https://10.0.0.2:6443"
    token_path = "/etc/sigil/staging.token"
  }
  node_label_allow_list = ["topology.kubernetes.io/zone"]
}
`), plugin.Env{Role: plugin.RoleServer})
	if err != nil {
		t.Fatal(err)
	}
	vv := v.(*verifier)
	if vv.Name() != Name || len(vv.clusters) != 2 || vv.clusters["prod"].cfg.Validation != ValidationOIDC ||
		vv.clusters["staging"].cfg.Validation != ValidationTokenReview || vv.clusters["staging"].api == nil {
		t.Fatalf("server half %+v", vv)
	}

	a, err := pluginNew(nodetest.ParseBody(t, `cluster = "prod"`), plugin.Env{Role: plugin.RoleAgent})
	if err != nil {
		t.Fatal(err)
	}
	if at := a.(*attestor); at.cfg.Cluster != "prod" || at.cfg.TokenPath != DefaultTokenPath {
		t.Fatalf("agent half %+v", at.cfg)
	}
	var _ node.Attestor = a.(*attestor)
	if _, err := a.(node.Attestor).Payload(context.Background()); err == nil {
		t.Fatal("payload without the token file")
	}

	for _, c := range []struct {
		role      plugin.Role
		src, want string
	}{
		{plugin.RoleServer, ``, "no cluster configured"},
		{plugin.RoleServer, `cluster "prod" { audience = "a" }`, "service_account_allow_list"},
		{plugin.RoleServer, `cluster "prod" {
  audience = "a"
  service_account_allow_list = ["a:b"]
  bogus = 1
}`, "bogus"},
		{plugin.RoleAgent, ``, "cluster"},
		{plugin.RoleAgent, `cluster = "a b"`, "cluster name"},
		{plugin.RoleAgent, `
cluster = "prod"
audience = "x"`, "audience"},
	} {
		_, err := pluginNew(nodetest.ParseBody(t, c.src), plugin.Env{Role: c.role})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s %q: %v, want %q", c.role, c.src, err, c.want)
		}
	}
}
