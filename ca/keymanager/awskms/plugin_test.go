package awskms

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"

	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/plugin"
)

func body(t *testing.T, src string) hcl.Body {
	t.Helper()
	f, diags := hclsyntax.ParseConfig([]byte(src), "a.hcl", hcl.Pos{Line: 1, Column: 1})
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	return f.Body
}

func serverEnv() plugin.Env {
	return plugin.Env{
		Role:        plugin.RoleServer,
		TrustDomain: spiffeid.RequireTrustDomainFromString("example.org"),
		NodeName:    "server-1",
		Logger:      zap.NewNop(),
		Clock:       clock.New(),
	}
}

func TestPluginBlock(t *testing.T) {
	f := newFixture(t)
	v, err := newPlugin(body(t, `
region       = "eu-west-1"
endpoint     = "`+f.fake.URL+`"
alias_prefix = "alias/team/sigil"
`), serverEnv())
	if err != nil {
		t.Fatal(err)
	}
	st := v.(*Store)
	t.Cleanup(func() { st.Close() })
	if st.cfg.Region != "eu-west-1" || st.cfg.AliasPrefix != "alias/team/sigil" || st.cfg.NodeName != "server-1" || !st.Persistent() {
		t.Fatalf("store config = %+v", st.cfg)
	}
	if n := f.fake.Calls("DescribeKey") + f.fake.Calls("CreateKey"); n != 0 {
		t.Fatalf("building the plugin called KMS %d times", n)
	}
	km := openKM(t, st, ca.KeyScopeClusterIdentity)
	if _, err := km.GenerateKey(context.Background(), "cluster-ca", ca.KeyTypeECP256); err != nil {
		t.Fatal(err)
	}
	if _, ok := f.fake.Aliases()["alias/team/sigil/example_2eorg/server-1/cluster_5fidentity/cluster-ca"]; !ok {
		t.Fatalf("aliases = %v", f.fake.Aliases())
	}

	for src, want := range map[string]string{
		`region = ""`:                          "region: must not be empty",
		`alias_prefix = "sigil"`:               "alias_prefix: \"sigil\" is not an alias name",
		`alias_prefix = "alias/aws/x"`:         "AWS reserves",
		`endpoint = "http://kms.example.com"`:  "endpoint: ",
		`access_key_id = "AKID"`:               "Unsupported argument",
		`secret_access_key = "s"`:              "Unsupported argument",
		`profile = "absent-profile"`:           "loading the AWS configuration",
		`endpoint = "https://k.example.com/p"`: "no path",
	} {
		_, err := newPlugin(body(t, src), serverEnv())
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", src, err, want)
		}
	}
	env := serverEnv()
	env.NodeName = ""
	if _, err := newPlugin(body(t, `region = "eu-west-1"`), env); err == nil || !strings.Contains(err.Error(), "node name") {
		t.Errorf("no node name: %v", err)
	}
}

func TestPluginRegistered(t *testing.T) {
	if !slices.Contains(plugin.Names(plugin.KindKeyManager), PluginName) {
		t.Fatalf("key managers = %v, want %q among them", plugin.Names(plugin.KindKeyManager), PluginName)
	}
}
