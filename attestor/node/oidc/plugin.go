package oidc

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"

	"github.com/sigil-id/sigil/plugin"
	"github.com/sigil-id/sigil/registration"
)

// The oidc attestor is configured as node_attestor "oidc" { … }: on a
// server with issuer blocks (serverBlock), on an agent with one token
// source (agentBlock); docs/attestors/oidc.md has examples. Its node
// selectors have type "oidc" (ValidateSelector).
func init() {
	registration.RegisterSelectorType(Name, ValidateSelector)
	plugin.Register(plugin.KindNodeAttestor, Name, pluginNew)
}

type serverBlock struct {
	ClockSkew       string        `hcl:"clock_skew,optional"`
	FetchTimeout    string        `hcl:"fetch_timeout,optional"`
	RefreshInterval string        `hcl:"refresh_interval,optional"`
	KeyCacheTTL     string        `hcl:"key_cache_ttl,optional"`
	Issuers         []issuerBlock `hcl:"issuer,block"`
}

type issuerBlock struct {
	Name             string            `hcl:"name,label"`
	IssuerURL        string            `hcl:"issuer_url"`
	Audiences        []string          `hcl:"audiences"`
	JWKSURL          string            `hcl:"jwks_url,optional"`
	SigningAlgs      []string          `hcl:"signing_algs,optional"`
	ClaimSelectors   map[string]string `hcl:"claim_selectors,optional"`
	AgentID          string            `hcl:"agent_id,optional"`
	RequiredClaims   map[string]string `hcl:"required_claims,optional"`
	MaxTokenLifetime string            `hcl:"max_token_lifetime,optional"`
}

type agentBlock struct {
	TokenPath             string `hcl:"token_path,optional"`
	TokenEnv              string `hcl:"token_env,optional"`
	GitHubActionsAudience string `hcl:"github_actions_audience,optional"`
}

// pluginNew builds the half of env.Role.
func pluginNew(body hcl.Body, env plugin.Env) (any, error) {
	if env.Role == plugin.RoleAgent {
		var b agentBlock
		if err := plugin.DecodeBody(body, &b); err != nil {
			return nil, err
		}
		return NewAttestor(AttestorConfig{TokenPath: b.TokenPath, TokenEnv: b.TokenEnv, GitHubActionsAudience: b.GitHubActionsAudience})
	}
	var b serverBlock
	if err := plugin.DecodeBody(body, &b); err != nil {
		return nil, err
	}
	c := DefaultConfig()
	c.Clock = env.Clock
	for _, d := range []struct {
		name string
		s    string
		to   *time.Duration
	}{{"clock_skew", b.ClockSkew, &c.ClockSkew}, {"fetch_timeout", b.FetchTimeout, &c.FetchTimeout},
		{"refresh_interval", b.RefreshInterval, &c.RefreshInterval}, {"key_cache_ttl", b.KeyCacheTTL, &c.KeyCacheTTL}} {
		if err := parseDuration(body, d.name, d.s, d.to); err != nil {
			return nil, err
		}
	}
	if len(b.Issuers) == 0 {
		return nil, errors.New(`no issuer block: add issuer "<name>" { issuer_url = "…" audiences = ["…"] }`)
	}
	for _, ib := range b.Issuers {
		ic := IssuerConfig{
			Name: ib.Name, IssuerURL: ib.IssuerURL, Audiences: ib.Audiences, JWKSURL: ib.JWKSURL,
			SigningAlgs: ib.SigningAlgs, ClaimSelectors: ib.ClaimSelectors, AgentID: ib.AgentID,
			RequiredClaims: ib.RequiredClaims,
		}
		if ib.MaxTokenLifetime != "" {
			d, err := time.ParseDuration(ib.MaxTokenLifetime)
			if err != nil {
				return nil, fmt.Errorf("issuer %q: max_token_lifetime %q: want a duration such as \"1h\"", ib.Name, ib.MaxTokenLifetime)
			}
			ic.MaxTokenLifetime = d
		}
		c.Issuers = append(c.Issuers, ic)
	}
	return NewVerifier(c)
}

func parseDuration(body hcl.Body, name, s string, to *time.Duration) error {
	if s == "" {
		return nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return plugin.AttrError(body, name, "%s %q: want a duration such as \"30s\"", name, s)
	}
	*to = d
	return nil
}

// ValidateSelector checks the value of an "oidc" selector:
// issuer:<issuer name>, or <issuer name>:<key>:<claim value> with the
// issuer name and key made of letters, digits, '.', '-' and '_'.
func ValidateSelector(value string) error {
	first, rest, ok := strings.Cut(value, ":")
	if !ok || !validKey(first) {
		return fmt.Errorf("oidc selector %q: want issuer:<issuer name> or <issuer name>:<key>:<value>", value)
	}
	if first == "issuer" {
		if !validKey(rest) {
			return fmt.Errorf("oidc selector %q: issuer name may hold letters, digits, '.', '-' and '_' only", value)
		}
		return nil
	}
	key, val, ok := strings.Cut(rest, ":")
	if !ok || !validKey(key) || val == "" {
		return fmt.Errorf("oidc selector %q: want <issuer name>:<key>:<value>", value)
	}
	return nil
}
