package gcpiit

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
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
const Public = "gcp_iit: instance identity token refused"

// CredentialKind is the kind of the use-once record of a token (its
// SHA-256): each token attests once.
const CredentialKind = Name

// VerifierConfig configures the server half.
type VerifierConfig struct {
	// Audience is the audience the tokens must carry (the agent asks the
	// metadata server for it). Required.
	Audience string
	// ProjectAllowList lists the project IDs whose instances may attest.
	// Required: an empty list admits nobody.
	ProjectAllowList []string
	// AllowReattestation lets an instance that is attested (and not
	// evicted) attest again with a new token. When false (the default),
	// an instance is admitted once (trust on first use) until an operator
	// evicts it. A banned agent is refused either way.
	AllowReattestation bool
	// IssuerURL is the tokens' issuer; DefaultIssuer. Change it only for
	// tests against a fake issuer.
	IssuerURL string
	// JWKSURL is the issuer's key set, the only URL the verifier fetches;
	// DefaultJWKSURL.
	JWKSURL string
	// FetchTimeout bounds one fetch of the key set.
	FetchTimeout time.Duration
	// MaxKeySetBytes bounds the key set's size.
	MaxKeySetBytes int64
	// Clock is the server's clock, for the key set's refresh; clock.New()
	// if nil. Token expiry is checked against node.State.Now.
	Clock clock.Clock
}

// DefaultVerifierConfig returns a configuration with Google's issuer and
// key set and the default bounds; Audience and ProjectAllowList are left
// to the operator.
func DefaultVerifierConfig() VerifierConfig {
	return VerifierConfig{
		IssuerURL:      DefaultIssuer,
		JWKSURL:        DefaultJWKSURL,
		FetchTimeout:   10 * time.Second,
		MaxKeySetBytes: 256 << 10,
	}
}

// Validate checks c.
func (c VerifierConfig) Validate() error {
	if c.Audience == "" {
		return errors.New("gcpiit: audience is required (the audience the agents request their tokens for)")
	}
	if len(c.ProjectAllowList) == 0 {
		return errors.New("gcpiit: project_allow_list is required: list the project IDs whose instances may attest")
	}
	for _, p := range c.ProjectAllowList {
		if !isSegment(p, 128) {
			return fmt.Errorf("gcpiit: project_allow_list: %q is not a project ID", p)
		}
	}
	for name, u := range map[string]string{"issuer_url": c.IssuerURL, "jwks_url": c.JWKSURL} {
		p, err := url.Parse(u)
		if err != nil || (p.Scheme != "https" && p.Scheme != "http") || p.Host == "" {
			return fmt.Errorf("gcpiit: %s %q is not an http(s) URL", name, u)
		}
	}
	if c.FetchTimeout <= 0 {
		return fmt.Errorf("gcpiit: fetch timeout %v: want a positive duration", c.FetchTimeout)
	}
	if c.MaxKeySetBytes <= 0 {
		return fmt.Errorf("gcpiit: key set size bound %d: want a positive number of bytes", c.MaxKeySetBytes)
	}
	return nil
}

// Verifier is the server half. It is safe for concurrent use.
type Verifier struct {
	cfg      VerifierConfig
	keys     *jwks.KeySet
	projects map[string]bool
}

// NewVerifier returns the server half configured by c.
func NewVerifier(c VerifierConfig) (*Verifier, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	if c.Clock == nil {
		c.Clock = clock.New()
	}
	v := &Verifier{cfg: c, projects: map[string]bool{}}
	for _, p := range c.ProjectAllowList {
		v.projects[p] = true
	}
	v.keys = jwks.ForURL(c.JWKSURL, []jose.SignatureAlgorithm{jose.RS256}, c.FetchTimeout, c.MaxKeySetBytes, c.Clock)
	return v, nil
}

// Name is the attestor name.
func (*Verifier) Name() string { return Name }

func refused(format string, args ...any) error {
	return &node.RefusedError{Public: Public, Reason: fmt.Sprintf(format, args...)}
}

// Verify checks the instance identity token in ex's payload; it sends no
// challenge.
func (v *Verifier) Verify(ctx context.Context, state node.State, ex node.Exchange) (*node.Result, error) {
	raw, err := ParseToken(ex.Payload())
	if err != nil {
		return nil, err
	}
	now := state.Now()
	tok, err := v.keys.Check(ctx, raw, v.cfg.IssuerURL, v.cfg.Audience, now)
	var invalid *jwks.InvalidError
	switch {
	case errors.As(err, &invalid):
		return nil, refused("%s", invalid.Reason)
	case err != nil && ctx.Err() != nil:
		return nil, fmt.Errorf("gcpiit: %w", err)
	case err != nil:
		return nil, fmt.Errorf("gcpiit: cannot verify the token now: %w", err)
	}
	if tok.Expiry.After(now.Add(24 * time.Hour)) {
		return nil, refused("token expires at %s, more than 24h from now: Google's instance identity tokens live an hour", tok.Expiry.UTC().Format(time.RFC3339))
	}
	var claims []byte
	if err := tok.Claims((*rawJSON)(&claims)); err != nil {
		return nil, refused("token claims: %v", err)
	}
	in, err := ParseInstance(claims)
	if err != nil {
		return nil, refused("%v", err)
	}
	if !v.projects[in.ProjectID] {
		return nil, refused("project %q is not in project_allow_list", in.ProjectID)
	}
	id := in.AgentID()
	switch rec, err := state.Agent(ctx, id); {
	case errors.Is(err, node.ErrNotFound):
	case err != nil:
		return nil, fmt.Errorf("gcpiit: looking up agent %s: %w", id, err)
	case rec.Banned:
		return nil, refused("instance %s is banned", id)
	case !v.cfg.AllowReattestation:
		return nil, refused("instance %s is already attested (since %s) and allow_reattestation is off: evict the agent to let it attest again", id, rec.AttestedAt.UTC().Format(time.RFC3339))
	}
	sum := sha256.Sum256([]byte(raw))
	cred := node.Credential{Kind: CredentialKind, ID: hex.EncodeToString(sum[:]), ExpiresAt: tok.Expiry}
	used, err := state.Used(ctx, cred)
	if err != nil {
		return nil, fmt.Errorf("gcpiit: checking whether the token was used: %w", err)
	}
	if used {
		return nil, refused("token of instance %s already used", id)
	}
	// Without re-attestation the instance is admitted once, decided
	// atomically by the Raft apply (see node.Result.FirstAttestation).
	return &node.Result{ID: id, Selectors: in.Selectors(), Consume: []node.Credential{cred}, FirstAttestation: !v.cfg.AllowReattestation}, nil
}

// rawJSON keeps a token's claims as JSON.
type rawJSON []byte

func (r *rawJSON) UnmarshalJSON(b []byte) error {
	*r = append((*r)[:0], b...)
	return nil
}
