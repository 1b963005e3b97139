package k8s

import (
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"go.uber.org/zap"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/plugin"
	"github.com/sigil-id/sigil/registration"
)

func parseBody(t *testing.T, src string) hcl.Body {
	t.Helper()
	f, diags := hclsyntax.ParseConfig([]byte(src), "agent.hcl", hcl.InitialPos)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	return f.Body
}

func TestPluginRegistered(t *testing.T) {
	if err := registration.ValidateSelectorInput(&sigilv1.Selector{Type: Name, Value: "ns:default"}); err != nil {
		t.Fatalf("a k8s selector is refused: %v", err)
	}
	if err := registration.ValidateSelectorInput(&sigilv1.Selector{Type: Name, Value: "namespace:default"}); err == nil {
		t.Fatal("an unknown k8s selector key is accepted")
	}
	if !strings.Contains(","+strings.Join(plugin.Names(plugin.KindWorkloadAttestor), ",")+",", ","+Name+",") {
		t.Fatal("the k8s workload attestor is not registered")
	}
}

func TestPluginBlock(t *testing.T) {
	f := newFixture(t)
	body := parseBody(t, `
kubelet_url         = "`+f.kubelet.URL+`"
token_path          = "`+f.cfg.TokenPath+`"
kubelet_ca_path     = "`+f.cfg.KubeletCAPath+`"
node_name           = "node-1"
proc_root           = "`+f.proc+`"
cache_ttl           = "3s"
min_refresh         = "250ms"
max_poll            = "4s"
fetch_timeout       = "2s"
max_response_bytes  = 1048576
`)
	v, err := pluginNew(body, plugin.Env{Role: plugin.RoleAgent, Clock: clock.New(), Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	a := v.(*Attestor)
	c := a.cfg
	if c.KubeletURL != f.kubelet.URL || c.NodeName != "node-1" || c.ProcRoot != f.proc || c.CacheTTL != 3*time.Second ||
		c.MinRefresh != 250*time.Millisecond || c.MaxPoll != 4*time.Second || c.FetchTimeout != 2*time.Second ||
		c.MaxResponseBytes != 1<<20 || c.SkipKubeletVerify || c.ReadOnlyPort != 0 || a.Name() != Name {
		t.Fatalf("decoded %+v", c)
	}
	// skip_kubelet_verify needs no CA file.
	if _, err := pluginNew(parseBody(t, `
kubelet_ca_path = ""
skip_kubelet_verify = true`), plugin.Env{Role: plugin.RoleAgent, Clock: clock.New(), Logger: zap.NewNop()}); err != nil {
		t.Fatal(err)
	}
	for src, want := range map[string]string{
		`cache_ttl = "soon"`:                      `cache_ttl: "soon": want a duration`,
		`kubelet_url = "http://x:1"`:              "want https://host:port",
		`unknown = 1`:                             "Unsupported argument",
		`read_only_port = -1`:                     "read_only_port -1",
		`kubelet_ca_path = "/nonexistent/ca.pem"`: "kubelet_ca_path",
	} {
		_, err := pluginNew(parseBody(t, src), plugin.Env{Role: plugin.RoleAgent, Clock: clock.New(), Logger: zap.NewNop()})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err = %v, want %q", src, err, want)
		}
	}
}
