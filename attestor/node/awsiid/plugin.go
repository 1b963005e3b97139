package awsiid

import (
	"crypto/x509"
	"time"

	"github.com/hashicorp/hcl/v2"

	"github.com/sigil-id/sigil/plugin"
	"github.com/sigil-id/sigil/registration"
)

// The aws_iid attestor is configured as node_attestor "aws_iid" { ... }.
// On a server:
//
//	node_attestor "aws_iid" {
//	  regions = {
//	    "us-east-1" = { certificate_path = "/etc/sigil/aws/us-east-1.pem" }
//	  }
//	  account_allow_list  = ["123456789012"]
//	  max_document_age    = "24h"   # optional; default no limit
//	  allow_reattestation = false   # optional
//	}
//
// On an agent (every key optional):
//
//	node_attestor "aws_iid" {
//	  metadata_endpoint = "http://169.254.169.254"
//	  timeout           = "5s"
//	  token_ttl         = "60s"
//	}
//
// The node selectors it produces have type "aws_iid" (ValidateSelector).
func init() {
	registration.RegisterSelectorType(Name, ValidateSelector)
	plugin.Register(plugin.KindNodeAttestor, Name, pluginNew)
}

// serverBlock is the server's node_attestor "aws_iid" block.
type serverBlock struct {
	// Regions maps a region to its settings: certificate_path only.
	Regions            map[string]map[string]string `hcl:"regions"`
	AccountAllowList   []string                     `hcl:"account_allow_list"`
	MaxDocumentAge     string                       `hcl:"max_document_age,optional"`
	AllowReattestation bool                         `hcl:"allow_reattestation,optional"`
}

// agentBlock is the agent's node_attestor "aws_iid" block.
type agentBlock struct {
	MetadataEndpoint string `hcl:"metadata_endpoint,optional"`
	Timeout          string `hcl:"timeout,optional"`
	TokenTTL         string `hcl:"token_ttl,optional"`
}

// pluginNew builds the half of env.Role.
func pluginNew(body hcl.Body, env plugin.Env) (any, error) {
	if env.Role == plugin.RoleAgent {
		var b agentBlock
		if err := plugin.DecodeBody(body, &b); err != nil {
			return nil, err
		}
		c := DefaultAttestorConfig()
		if b.MetadataEndpoint != "" {
			c.Endpoint = b.MetadataEndpoint
		}
		var err error
		if c.Timeout, err = duration(body, "timeout", b.Timeout, c.Timeout); err != nil {
			return nil, err
		}
		if c.TokenTTL, err = duration(body, "token_ttl", b.TokenTTL, c.TokenTTL); err != nil {
			return nil, err
		}
		return NewAttestor(c)
	}
	var b serverBlock
	if err := plugin.DecodeBody(body, &b); err != nil {
		return nil, err
	}
	c := DefaultConfig()
	c.Accounts = b.AccountAllowList
	c.AllowReattestation = b.AllowReattestation
	var err error
	if c.MaxDocumentAge, err = duration(body, "max_document_age", b.MaxDocumentAge, 0); err != nil {
		return nil, err
	}
	c.Regions = map[string][]*x509.Certificate{}
	for r, rb := range b.Regions {
		for k := range rb {
			if k != "certificate_path" {
				return nil, plugin.AttrError(body, "regions", "region %q: unknown setting %q (want certificate_path)", r, k)
			}
		}
		if rb["certificate_path"] == "" {
			return nil, plugin.AttrError(body, "regions", "region %q has no certificate_path", r)
		}
		certs, err := LoadCertificates(rb["certificate_path"])
		if err != nil {
			return nil, plugin.AttrError(body, "regions", "region %q: %v", r, err)
		}
		c.Regions[r] = certs
	}
	return NewVerifier(c)
}

// duration parses the optional duration attribute name (value s, def if
// empty).
func duration(body hcl.Body, name, s string, def time.Duration) (time.Duration, error) {
	if s == "" {
		return def, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, plugin.AttrError(body, name, "%q is not a duration (such as \"5s\" or \"24h\")", s)
	}
	return d, nil
}
