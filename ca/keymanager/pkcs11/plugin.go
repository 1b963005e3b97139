package pkcs11

import (
	"fmt"

	"github.com/hashicorp/hcl/v2"

	"github.com/sigil-id/sigil/internal/secretfile"
	"github.com/sigil-id/sigil/plugin"
)

// PluginName is the name of this key manager in configuration.
const PluginName = "pkcs11"

func init() { plugin.Register(plugin.KindKeyManager, PluginName, newPlugin) }

// pluginConfig is the block
//
//	key_manager "pkcs11" {
//	  module           = "/usr/lib/softhsm/libsofthsm2.so"
//	  token_label      = "sigil"                # or slot = <slot ID>
//	  pin_file         = "/etc/sigil/hsm.pin"   # or pin_env = "SIGIL_HSM_PIN"
//	  key_label_prefix = "sigil"                # optional, the default
//	}
//
// pin_file is read like every secret file (owned by the user running
// sigil or root, mode 0600 or 0400); pin_env names an environment
// variable. The PIN itself is never in the configuration.
type pluginConfig struct {
	Module         string  `hcl:"module"`
	TokenLabel     *string `hcl:"token_label,optional"`
	Slot           *int    `hcl:"slot,optional"`
	PINFile        *string `hcl:"pin_file,optional"`
	PINEnv         *string `hcl:"pin_env,optional"`
	KeyLabelPrefix *string `hcl:"key_label_prefix,optional"`
}

func newPlugin(body hcl.Body, env plugin.Env) (any, error) {
	if err := Available(); err != nil {
		return nil, err
	}
	var c pluginConfig
	if err := plugin.DecodeBody(body, &c); err != nil {
		return nil, err
	}
	cfg := DefaultConfig()
	cfg.TrustDomain, cfg.NodeName = env.TrustDomain, env.NodeName
	if c.Module == "" {
		return nil, plugin.AttrError(body, "module", "must not be empty: the path of the PKCS#11 library, e.g. /usr/lib/softhsm/libsofthsm2.so")
	}
	if err := checkModule(c.Module); err != nil {
		return nil, plugin.AttrError(body, "module", "%v", err)
	}
	cfg.Module = c.Module
	switch {
	case c.TokenLabel == nil && c.Slot == nil:
		return nil, plugin.AttrError(body, "token_label", "is required (or slot): which token holds the keys")
	case c.TokenLabel != nil && c.Slot != nil:
		return nil, plugin.AttrError(body, "slot", "conflicts with token_label: set one of them")
	case c.TokenLabel != nil && *c.TokenLabel == "":
		return nil, plugin.AttrError(body, "token_label", "must not be empty")
	case c.TokenLabel != nil:
		cfg.TokenLabel = *c.TokenLabel
	case *c.Slot < 0:
		return nil, plugin.AttrError(body, "slot", "must not be negative")
	default:
		cfg.Slot = c.Slot
	}
	switch {
	case c.PINFile == nil && c.PINEnv == nil:
		return nil, plugin.AttrError(body, "pin_file", "is required (or pin_env): the token's user PIN is never written in the configuration")
	case c.PINFile != nil && c.PINEnv != nil:
		return nil, plugin.AttrError(body, "pin_env", "conflicts with pin_file: set one of them")
	case c.PINFile != nil:
		if *c.PINFile == "" {
			return nil, plugin.AttrError(body, "pin_file", "must not be empty")
		}
		pin, err := secretfile.Read(*c.PINFile)
		if err != nil {
			return nil, plugin.AttrError(body, "pin_file", "%v", err)
		}
		cfg.PIN = pin
	default:
		if *c.PINEnv == "" {
			return nil, plugin.AttrError(body, "pin_env", "must not be empty: the name of an environment variable")
		}
		pin, err := secretfile.ReadEnv(*c.PINEnv)
		if err != nil {
			return nil, plugin.AttrError(body, "pin_env", "%v", err)
		}
		cfg.PIN = pin
	}
	if c.KeyLabelPrefix != nil {
		if err := checkPrefix(*c.KeyLabelPrefix); err != nil {
			return nil, plugin.AttrError(body, "key_label_prefix", "%v", err)
		}
		cfg.KeyLabelPrefix = *c.KeyLabelPrefix
	}
	if env.NodeName == "" {
		return nil, fmt.Errorf("pkcs11: the server has no node name, which names its keys in the token")
	}
	return NewStore(cfg)
}
