package memory

import (
	"github.com/hashicorp/hcl/v2"

	"github.com/sigil-id/sigil/plugin"
)

// PluginName is the name of this key manager in configuration:
// key_manager "memory" {}, which has no settings.
const PluginName = "memory"

func init() {
	plugin.Register(plugin.KindKeyManager, PluginName, func(body hcl.Body, _ plugin.Env) (any, error) {
		if err := plugin.NoSettings(body); err != nil {
			return nil, err
		}
		return NewStore(), nil
	})
}
