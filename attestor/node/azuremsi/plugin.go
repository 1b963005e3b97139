package azuremsi

import (
	"fmt"
	"time"

	"github.com/hashicorp/hcl/v2"
	"go.uber.org/zap"

	"github.com/sigil-id/sigil/plugin"
	"github.com/sigil-id/sigil/registration"
)

// The azure_msi attestor is configured as node_attestor "azure_msi" { ... }:
// on a server with one tenant "<tenant id>" { resource = "..." } block per
// allowed tenant (issuer_url and jwks_url in it only for tests) and
// optionally fetch_timeout; on an agent with resource and optionally
// client_id, metadata_url and timeout (docs/attestors/azure_msi.md). Its
// node selectors have type "azure_msi" (ValidateSelector).
func init() {
	registration.RegisterSelectorType(Name, ValidateSelector)
	plugin.Register(plugin.KindNodeAttestor, Name, pluginNew)
}

type tenantBlock struct {
	ID        string    `hcl:"id,label"`
	Resource  string    `hcl:"resource"`
	IssuerURL *string   `hcl:"issuer_url,optional"`
	JWKSURL   *string   `hcl:"jwks_url,optional"`
	DefRange  hcl.Range `hcl:",def_range"`
}

type serverBlock struct {
	Tenants      []tenantBlock `hcl:"tenant,block"`
	FetchTimeout *string       `hcl:"fetch_timeout,optional"`
}

type agentBlock struct {
	Resource    string  `hcl:"resource"`
	ClientID    *string `hcl:"client_id,optional"`
	MetadataURL *string `hcl:"metadata_url,optional"`
	Timeout     *string `hcl:"timeout,optional"`
}

func blockError(r hcl.Range, format string, args ...any) error {
	return hcl.Diagnostics{{Severity: hcl.DiagError, Summary: fmt.Sprintf(format, args...), Subject: &r}}
}

func pluginNew(body hcl.Body, env plugin.Env) (any, error) {
	if env.Role == plugin.RoleAgent {
		var b agentBlock
		if err := plugin.DecodeBody(body, &b); err != nil {
			return nil, err
		}
		c := DefaultAttestorConfig()
		c.Resource = b.Resource
		if b.ClientID != nil {
			c.ClientID = *b.ClientID
		}
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
	c.Clock = env.Clock
	c.Tenants = map[string]TenantConfig{}
	for _, t := range b.Tenants {
		if _, dup := c.Tenants[t.ID]; dup {
			return nil, blockError(t.DefRange, "tenant %q is configured twice", t.ID)
		}
		if !IsGUID(t.ID) {
			return nil, blockError(t.DefRange, "tenant %q is not a tenant ID: want a lowercase GUID", t.ID)
		}
		tc := TenantConfig{Resource: t.Resource}
		if t.IssuerURL != nil && *t.IssuerURL != DefaultIssuer(t.ID) {
			tc.IssuerURL = *t.IssuerURL
			env.Logger.Warn("azure_msi: issuer_url is not the tenant's: tokens from this issuer are trusted as managed identity tokens (for tests only)",
				zap.String("tenant", t.ID), zap.String("issuer_url", tc.IssuerURL))
		}
		if t.JWKSURL != nil && *t.JWKSURL != DefaultJWKSURL(t.ID) {
			tc.JWKSURL = *t.JWKSURL
			env.Logger.Warn("azure_msi: jwks_url is not the tenant's: keys from it are trusted to sign managed identity tokens (for tests only)",
				zap.String("tenant", t.ID), zap.String("jwks_url", tc.JWKSURL))
		}
		c.Tenants[t.ID] = tc
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
