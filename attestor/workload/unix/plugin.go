package unix

import (
	"github.com/hashicorp/hcl/v2"

	"github.com/sigil-id/sigil/plugin"
	"github.com/sigil-id/sigil/registration"
)

// The unix attestor is configured as workload_attestor "unix" {}, which
// has no settings; it produces selectors of type "unix", whose values
// registration.ValidateUnixSelector checks in entries.
func init() {
	registration.RegisterSelectorType(Name, registration.ValidateUnixSelector)
	plugin.Register(plugin.KindWorkloadAttestor, Name, func(body hcl.Body, _ plugin.Env) (any, error) {
		if err := plugin.NoSettings(body); err != nil {
			return nil, err
		}
		return New(), nil
	})
}
