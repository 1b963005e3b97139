package awskms

import (
	"context"

	"github.com/hashicorp/hcl/v2"

	"github.com/sigil-id/sigil/plugin"
)

// PluginName is the name of this key manager in configuration.
const PluginName = "awskms"

func init() { plugin.Register(plugin.KindKeyManager, PluginName, newPlugin) }

// pluginConfig is the block
//
//	key_manager "awskms" {
//	  region       = "eu-west-1"                          # default: AWS_REGION or the profile's
//	  endpoint     = "https://kms.eu-west-1.amazonaws.com" # optional override
//	  profile      = "sigil"                              # optional shared-config profile
//	  alias_prefix = "alias/sigil"                        # default alias/sigil
//	}
//
// Credentials are never in the block: they come from the AWS environment
// and shared configuration. Key specs follow the key types the server asks
// for.
type pluginConfig struct {
	Region      *string `hcl:"region,optional"`
	Endpoint    *string `hcl:"endpoint,optional"`
	Profile     *string `hcl:"profile,optional"`
	AliasPrefix *string `hcl:"alias_prefix,optional"`
}

func newPlugin(body hcl.Body, env plugin.Env) (any, error) {
	var pc pluginConfig
	if err := plugin.DecodeBody(body, &pc); err != nil {
		return nil, err
	}
	c := DefaultConfig()
	c.TrustDomain = env.TrustDomain
	c.NodeName = env.NodeName
	c.Logger = env.Logger
	for _, a := range []struct {
		name string
		v    *string
		dst  *string
	}{
		{"region", pc.Region, &c.Region},
		{"endpoint", pc.Endpoint, &c.Endpoint},
		{"profile", pc.Profile, &c.Profile},
		{"alias_prefix", pc.AliasPrefix, &c.AliasPrefix},
	} {
		if a.v == nil {
			continue
		}
		if *a.v == "" {
			return nil, plugin.AttrError(body, a.name, "must not be empty (leave it out for the default)")
		}
		*a.dst = *a.v
	}
	if err := checkAliasPrefix(c.AliasPrefix); err != nil {
		return nil, plugin.AttrError(body, "alias_prefix", "%v", err)
	}
	if c.Endpoint != "" {
		if _, err := checkEndpoint(c.Endpoint); err != nil {
			return nil, plugin.AttrError(body, "endpoint", "%v", err)
		}
	}
	return NewStore(context.Background(), c)
}
