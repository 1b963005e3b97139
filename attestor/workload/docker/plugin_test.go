package docker

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/plugin"
	"github.com/sigil-id/sigil/registration"
)

func parseBody(t *testing.T, src string) hcl.Body {
	t.Helper()
	f, diags := hclsyntax.ParseConfig([]byte(src), "test.hcl", hcl.InitialPos)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	return f.Body
}

func TestPluginRegistered(t *testing.T) {
	if !slices.Contains(registration.SelectorTypes(), Name) {
		t.Fatal("the docker selector type is not registered")
	}
	if err := registration.ValidateSelectorInput(&sigilv1.Selector{Type: Name, Value: "label:team:payments"}); err != nil {
		t.Fatalf("a docker selector is refused: %v", err)
	}
	if err := registration.ValidateSelectorInput(&sigilv1.Selector{Type: Name, Value: "image_id:nginx"}); err == nil {
		t.Fatal("a malformed docker selector is accepted")
	}
	if !slices.Contains(plugin.Names(plugin.KindWorkloadAttestor), Name) {
		t.Fatal("the docker workload attestor is not registered")
	}
}

func TestPluginBlock(t *testing.T) {
	v, err := pluginNew(parseBody(t, `
socket_path        = "/run/podman/podman.sock"
api_version        = "1.40"
env_allow_list     = ["APP_ROLE"]
proc_root          = "/host/proc"
timeout            = "2s"
max_response_bytes = 65536
`), plugin.Env{})
	if err != nil {
		t.Fatal(err)
	}
	c := v.(*Attestor).cfg
	if c.SocketPath != "/run/podman/podman.sock" || c.APIVersion != "1.40" || !slices.Equal(c.EnvAllowList, []string{"APP_ROLE"}) ||
		c.ProcRoot != "/host/proc" || c.Timeout != 2*time.Second || c.MaxResponseBytes != 65536 {
		t.Fatalf("config %+v", c)
	}
	v, err = pluginNew(parseBody(t, ``), plugin.Env{})
	if err != nil {
		t.Fatal(err)
	}
	if c := v.(*Attestor).cfg; c.SocketPath != DefaultConfig().SocketPath || c.APIVersion != "1.41" {
		t.Fatalf("defaults %+v", c)
	}
	for src, want := range map[string]string{
		`timeout = "soon"`:         "timeout",
		`sokcet_path = "/x"`:       "sokcet_path",
		`env_allow_list = ["A:B"]`: "env_allow_list",
		`socket_path = "relative"`: "socket_path",
	} {
		_, err := pluginNew(parseBody(t, src), plugin.Env{})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err %v, want one about %s", src, err, want)
		}
	}
}
