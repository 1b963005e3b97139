package x509pop

import (
	"github.com/hashicorp/hcl/v2"

	"github.com/sigil-id/sigil/plugin"
	"github.com/sigil-id/sigil/registration"
)

// The x509pop attestor is configured as node_attestor "x509pop" { ... }:
// on a server with ca_bundle_path (required), agent_id (a template,
// DefaultAgentIDTemplate by default) and ext_key_usage ("client_auth", the
// default, or "any"); on an agent with certificate_path and
// private_key_path (both required). Its node selectors have type
// "x509pop" (ValidateSelector).
func init() {
	registration.RegisterSelectorType(Name, ValidateSelector)
	plugin.Register(plugin.KindNodeAttestor, Name, pluginNew)
}

type serverBlock struct {
	CABundlePath string `hcl:"ca_bundle_path"`
	AgentID      string `hcl:"agent_id,optional"`
	ExtKeyUsage  string `hcl:"ext_key_usage,optional"`
}

type agentBlock struct {
	CertificatePath string `hcl:"certificate_path"`
	PrivateKeyPath  string `hcl:"private_key_path"`
}

// pluginNew builds the half of env.Role.
func pluginNew(body hcl.Body, env plugin.Env) (any, error) {
	if env.Role == plugin.RoleAgent {
		var b agentBlock
		if err := plugin.DecodeBody(body, &b); err != nil {
			return nil, err
		}
		return NewAttestor(env.TrustDomain.Name(), AgentConfig{CertificatePath: b.CertificatePath, PrivateKeyPath: b.PrivateKeyPath})
	}
	var b serverBlock
	if err := plugin.DecodeBody(body, &b); err != nil {
		return nil, err
	}
	cfg := DefaultServerConfig()
	cfg.CABundlePath = b.CABundlePath
	if b.AgentID != "" {
		cfg.AgentIDTemplate = b.AgentID
	}
	if b.ExtKeyUsage != "" {
		cfg.ExtKeyUsage = b.ExtKeyUsage
	}
	return NewVerifier(env.TrustDomain.Name(), cfg)
}
