package systemd

import (
	"github.com/hashicorp/hcl/v2"

	"github.com/sigil-id/sigil/plugin"
	"github.com/sigil-id/sigil/registration"
)

// The attestor is configured as workload_attestor "systemd" {} with every
// key optional (docs/workload-attestors/systemd.md):
//
//	workload_attestor "systemd" {
//	  proc_root  = "/proc"
//	  unit_paths = ["/etc/systemd/system", "/usr/lib/systemd/system"]
//	}
//
// Its selectors have type "systemd" (ValidateSelector).
func init() {
	registration.RegisterSelectorType(Name, ValidateSelector)
	plugin.Register(plugin.KindWorkloadAttestor, Name, pluginNew)
}

type block struct {
	ProcRoot  *string  `hcl:"proc_root,optional"`
	UnitPaths []string `hcl:"unit_paths,optional"`
}

func pluginNew(body hcl.Body, _ plugin.Env) (any, error) {
	var b block
	if err := plugin.DecodeBody(body, &b); err != nil {
		return nil, err
	}
	c := DefaultConfig()
	if b.ProcRoot != nil {
		c.ProcRoot = *b.ProcRoot
	}
	if b.UnitPaths != nil {
		c.UnitPaths = b.UnitPaths
	}
	return New(c)
}
