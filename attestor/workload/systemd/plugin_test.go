package systemd

import (
	"slices"
	"strings"
	"testing"

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
		t.Fatal("the systemd selector type is not registered")
	}
	if err := registration.ValidateSelectorInput(&sigilv1.Selector{Type: Name, Value: "id:nginx.service"}); err != nil {
		t.Fatalf("a systemd selector is refused: %v", err)
	}
	if err := registration.ValidateSelectorInput(&sigilv1.Selector{Type: Name, Value: "id:nginx"}); err == nil {
		t.Fatal("a malformed systemd selector is accepted")
	}
	if !slices.Contains(plugin.Names(plugin.KindWorkloadAttestor), Name) {
		t.Fatal("the systemd workload attestor is not registered")
	}
}

func TestPluginBlock(t *testing.T) {
	v, err := pluginNew(parseBody(t, `
proc_root  = "/host/proc"
unit_paths = ["/etc/systemd/system"]
`), plugin.Env{})
	if err != nil {
		t.Fatal(err)
	}
	a := v.(*Attestor)
	if a.procRoot != "/host/proc" || !slices.Equal(a.finder.(UnitFiles).Dirs, []string{"/etc/systemd/system"}) {
		t.Fatalf("attestor %+v", a)
	}
	v, err = pluginNew(parseBody(t, ``), plugin.Env{})
	if err != nil {
		t.Fatal(err)
	}
	if a := v.(*Attestor); a.procRoot != "/proc" || !slices.Equal(a.finder.(UnitFiles).Dirs, DefaultUnitPaths) {
		t.Fatalf("defaults %+v", a)
	}
	for src, want := range map[string]string{
		`unit_path = ["/x"]`: "unit_path",
		`unit_paths = ["x"]`: "unit_paths",
		`proc_root = "proc"`: "proc_root",
	} {
		if _, err := pluginNew(parseBody(t, src), plugin.Env{}); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err %v, want one about %s", src, err, want)
		}
	}
}
