package gcpiit

import (
	"time"

	"github.com/hashicorp/hcl/v2"
	"go.uber.org/zap"

	"github.com/sigil-id/sigil/plugin"
	"github.com/sigil-id/sigil/registration"
)

// The gcp_iit attestor is configured as node_attestor "gcp_iit" { ... }:
// on a server with audience, project_allow_list and optionally
// allow_reattestation (issuer_url and jwks_url only for tests); on an
// agent with audience and optionally metadata_url (docs/attestors/gcp_iit.md).
// Its node selectors have type "gcp_iit" (ValidateSelector).
func init() {
	registration.RegisterSelectorType(Name, ValidateSelector)
	plugin.Register(plugin.KindNodeAttestor, Name, pluginNew)
}

type serverBlock struct {
	Audience           string   `hcl:"audience"`
	ProjectAllowList   []string `hcl:"project_allow_list"`
	AllowReattestation *bool    `hcl:"allow_reattestation,optional"`
	IssuerURL          *string  `hcl:"issuer_url,optional"`
	JWKSURL            *string  `hcl:"jwks_url,optional"`
	FetchTimeout       *string  `hcl:"fetch_timeout,optional"`
}

type agentBlock struct {
	Audience    string  `hcl:"audience"`
	MetadataURL *string `hcl:"metadata_url,optional"`
	Timeout     *string `hcl:"timeout,optional"`
}

func pluginNew(body hcl.Body, env plugin.Env) (any, error) {
	if env.Role == plugin.RoleAgent {
		var b agentBlock
		if err := plugin.DecodeBody(body, &b); err != nil {
			return nil, err
		}
		c := DefaultAttestorConfig()
		c.Audience = b.Audience
		if b.MetadataURL != nil {
			c.MetadataURL = *b.MetadataURL
		}
		if b.Timeout != nil {
			d, err := time.ParseDuration(*b.Timeout)
			if err != nil {
				return nil, plugin.AttrError(body, "timeout", "%v", err)
			}
			c.Timeout = d
		}
		return NewAttestor(c)
	}
	var b serverBlock
	if err := plugin.DecodeBody(body, &b); err != nil {
		return nil, err
	}
	c := DefaultVerifierConfig()
	c.Audience, c.ProjectAllowList, c.Clock = b.Audience, b.ProjectAllowList, env.Clock
	if b.AllowReattestation != nil {
		c.AllowReattestation = *b.AllowReattestation
	}
	if b.IssuerURL != nil && *b.IssuerURL != DefaultIssuer {
		c.IssuerURL = *b.IssuerURL
		env.Logger.Warn("gcp_iit: issuer_url is not Google's: tokens from this issuer are trusted as instance identity tokens (for tests only)", zap.String("issuer_url", c.IssuerURL))
	}
	if b.JWKSURL != nil && *b.JWKSURL != DefaultJWKSURL {
		c.JWKSURL = *b.JWKSURL
		env.Logger.Warn("gcp_iit: jwks_url is not Google's: keys from it are trusted to sign instance identity tokens (for tests only)", zap.String("jwks_url", c.JWKSURL))
	}
	if b.FetchTimeout != nil {
		d, err := time.ParseDuration(*b.FetchTimeout)
		if err != nil {
			return nil, plugin.AttrError(body, "fetch_timeout", "%v", err)
		}
		c.FetchTimeout = d
	}
	return NewVerifier(c)
}
