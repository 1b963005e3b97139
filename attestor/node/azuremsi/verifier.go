package azuremsi

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/sigil-id/sigil/attestor/node"
	"github.com/sigil-id/sigil/attestor/node/internal/jwks"
	"github.com/sigil-id/sigil/clock"
)

// Public is what a refused agent is told, whatever the reason.
const Public = "azure_msi: managed identity token refused"

// TenantConfig is one tenant whose managed identities may attest.
type TenantConfig struct {
	// Resource is the audience the tokens must carry: the resource the
	// agents request their tokens for (an application ID URI such as
	// api://sigil, dedicated to Sigil). Required.
	Resource string
	// IssuerURL is the tenant's issuer; DefaultIssuer(tenant). Change it
	// only for tests against a fake issuer.
	IssuerURL string
	// JWKSURL is the tenant's key set, the only URL fetched for the
	// tenant; DefaultJWKSURL(tenant).
	JWKSURL string
}

// VerifierConfig configures the server half.
type VerifierConfig struct {
	// Tenants maps the tenant IDs (lowercase GUIDs) whose managed
	// identities may attest to their configuration: the tenant
	// allow-list. Required.
	Tenants map[string]TenantConfig
	// FetchTimeout bounds one fetch of a key set.
	FetchTimeout time.Duration
	// MaxKeySetBytes bounds a key set's size.
	MaxKeySetBytes int64
	// Clock is the server's clock, for the key sets' refresh; clock.New()
	// if nil. Token expiry is checked against node.State.Now.
	Clock clock.Clock
}

// DefaultVerifierConfig returns the default bounds; Tenants is left to
// the operator.
func DefaultVerifierConfig() VerifierConfig {
	return VerifierConfig{FetchTimeout: 10 * time.Second, MaxKeySetBytes: 256 << 10}
}

// Validate checks c. A tenant's empty IssuerURL and JWKSURL stand for the
// defaults.
func (c VerifierConfig) Validate() error {
	if len(c.Tenants) == 0 {
		return errors.New("azuremsi: at least one tenant is required: list the tenants whose managed identities may attest")
	}
	for id, t := range c.Tenants {
		if !IsGUID(id) {
			return fmt.Errorf("azuremsi: tenant %q is not a tenant ID: want a lowercase GUID", id)
		}
		if t.Resource == "" {
			return fmt.Errorf("azuremsi: tenant %s: resource is required (the resource the agents request their tokens for)", id)
		}
		for name, u := range map[string]string{"issuer_url": t.IssuerURL, "jwks_url": t.JWKSURL} {
			if u == "" {
				continue
			}
			p, err := url.Parse(u)
			if err != nil || (p.Scheme != "https" && p.Scheme != "http") || p.Host == "" {
				return fmt.Errorf("azuremsi: tenant %s: %s %q is not an http(s) URL", id, name, u)
			}
		}
	}
	if c.FetchTimeout <= 0 {
		return fmt.Errorf("azuremsi: fetch timeout %v: want a positive duration", c.FetchTimeout)
	}
	if c.MaxKeySetBytes <= 0 {
		return fmt.Errorf("azuremsi: key set size bound %d: want a positive number of bytes", c.MaxKeySetBytes)
	}
	return nil
}

type tenant struct {
	cfg  TenantConfig
	keys *jwks.KeySet
}

// Verifier is the server half. It is safe for concurrent use.
type Verifier struct {
	tenants map[string]*tenant
}

// NewVerifier returns the server half configured by c.
func NewVerifier(c VerifierConfig) (*Verifier, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	if c.Clock == nil {
		c.Clock = clock.New()
	}
	v := &Verifier{tenants: map[string]*tenant{}}
	for id, t := range c.Tenants {
		if t.IssuerURL == "" {
			t.IssuerURL = DefaultIssuer(id)
		}
		if t.JWKSURL == "" {
			t.JWKSURL = DefaultJWKSURL(id)
		}
		v.tenants[id] = &tenant{cfg: t, keys: jwks.ForURL(t.JWKSURL, []jose.SignatureAlgorithm{jose.RS256}, c.FetchTimeout, c.MaxKeySetBytes, c.Clock)}
	}
	return v, nil
}

// Name is the attestor name.
func (*Verifier) Name() string { return Name }

func refused(format string, args ...any) error {
	return &node.RefusedError{Public: Public, Reason: fmt.Sprintf(format, args...)}
}

// Verify checks the managed identity token in ex's payload; it sends no
// challenge.
func (v *Verifier) Verify(ctx context.Context, state node.State, ex node.Exchange) (*node.Result, error) {
	raw, tid, err := ParseToken(ex.Payload())
	if err != nil {
		return nil, err
	}
	t, ok := v.tenants[tid]
	if !ok {
		return nil, refused("tenant %s is not allowed", tid)
	}
	now := state.Now()
	tok, err := t.keys.Check(ctx, raw, t.cfg.IssuerURL, t.cfg.Resource, now)
	var invalid *jwks.InvalidError
	switch {
	case errors.As(err, &invalid):
		return nil, refused("%s", invalid.Reason)
	case err != nil && ctx.Err() != nil:
		return nil, fmt.Errorf("azuremsi: %w", err)
	case err != nil:
		return nil, fmt.Errorf("azuremsi: cannot verify the token now: %w", err)
	}
	var claims []byte
	if err := tok.Claims((*rawJSON)(&claims)); err != nil {
		return nil, refused("token claims: %v", err)
	}
	id, err := ParseIdentity(claims)
	if err != nil {
		return nil, refused("%v", err)
	}
	if id.Tenant != tid {
		return nil, refused("token of tenant %s verified with the keys of tenant %s", id.Tenant, tid)
	}
	switch rec, err := state.Agent(ctx, id.AgentID()); {
	case errors.Is(err, node.ErrNotFound):
	case err != nil:
		return nil, fmt.Errorf("azuremsi: looking up agent %s: %w", id.AgentID(), err)
	case rec.Banned:
		return nil, refused("managed identity %s is banned", id.AgentID())
	}
	return &node.Result{ID: id.AgentID(), Selectors: id.Selectors()}, nil
}

// rawJSON keeps a token's claims as JSON.
type rawJSON []byte

func (r *rawJSON) UnmarshalJSON(b []byte) error {
	*r = append((*r)[:0], b...)
	return nil
}
