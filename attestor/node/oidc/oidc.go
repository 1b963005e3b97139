// Package oidc is the generic OIDC node attestor: an agent presents an
// OIDC ID token that its platform issued it (GitHub Actions, GitLab CI, a
// Kubernetes service account token of EKS, GKE or AKS, Vault, Dex…), and
// the server verifies it with go-oidc against the issuers it is configured
// with: the signature with the issuer's published keys (fetched only from
// the configured issuer's discovery document or configured JWKS URL, never
// from a URL in the token), the issuer, an audience, the expiry, not-before
// and issued-at times, a bounded lifetime and required claim values.
//
// The agent's ID is spiffe://<td>/sigil/agent/oidc/<issuer name>/<agent_id
// template rendered over the token's claims>; its selectors are
// oidc:issuer:<issuer name> and oidc:<issuer name>:<key>:<claim value> for
// each configured claim → key mapping. A token that has a jti claim is
// accepted once (a use-once record "oidc:jti" kept until the token
// expires); a token without one can be replayed until it expires, which
// the issuer's max_token_lifetime bounds.
//
// The agent half reads the token afresh for every attestation, from a file
// (a projected service account token, for example), from an environment
// variable, or from the GitHub Actions OIDC endpoint.
package oidc

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"
	"time"

	gooidc "github.com/coreos/go-oidc/v3/oidc"
	jose "github.com/go-jose/go-jose/v4"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/attestor/node"
	"github.com/sigil-id/sigil/attestor/node/internal/jwks"
	"github.com/sigil-id/sigil/clock"
)

// Name is the attestor name.
const Name = "oidc"

// CredentialKind is the kind of the use-once records of token ids (jti).
const CredentialKind = "oidc:jti"

// RefusedMessage is what a caller is told about a well-formed token that
// is refused, whatever the reason (the reason goes to the server's log).
const RefusedMessage = "oidc token refused"

// Limits of the configuration.
const (
	// MaxIssuers is the most issuers one verifier is configured with.
	MaxIssuers = 32
	// MaxClaimSelectors is the most claim → selector mappings per issuer.
	MaxClaimSelectors = 32
	// MaxRequiredClaims is the most required claims per issuer.
	MaxRequiredClaims = 32
	// MaxTokenLifetimeLimit is the largest max_token_lifetime: a use-once
	// record lives at most 24 hours.
	MaxTokenLifetimeLimit = 24 * time.Hour
	// maxClockSkew is the largest clock_skew.
	maxClockSkew = 5 * time.Minute
	// maxJTIIDLen is the longest jti kept as is in a credential id.
	maxJTIIDLen = 256
	// maxAgentIDLen bounds Result.ID, well within a SPIFFE ID's 2048 bytes.
	maxAgentIDLen = 1024
)

// defaultAlgs are the signing algorithms allowed when an issuer lists none.
var defaultAlgs = []string{"RS256", "ES256"}

// allowedAlgs are the algorithms an issuer may allow: asymmetric ones only
// (never none or HS*: a verifier holds no shared secret).
var allowedAlgs = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}

// IssuerConfig is one trusted issuer.
type IssuerConfig struct {
	// Name names the issuer in agent IDs and selectors: letters, digits,
	// '.', '-' and '_', not "issuer".
	Name string
	// IssuerURL is the issuer exactly as tokens spell their iss claim;
	// its discovery document is at IssuerURL/.well-known/openid-configuration.
	IssuerURL string
	// Audiences: a token's aud must contain one of them. Required.
	Audiences []string
	// JWKSURL, when set, is fetched for the keys instead of discovering
	// the JWKS URL.
	JWKSURL string
	// SigningAlgs are the accepted signature algorithms (default RS256
	// and ES256); only asymmetric algorithms may be listed.
	SigningAlgs []string
	// ClaimSelectors maps a claim (a name or a dotted path into nested
	// objects) to a selector key: the node gets oidc:<Name>:<key>:<value>
	// for each such claim the token has as a string, number or boolean of
	// at most MaxClaimValueLen printable bytes (other claims give no
	// selector).
	ClaimSelectors map[string]string
	// AgentID is the agent ID template (see the package doc and
	// docs/attestors/oidc.md); default "{{sub}}".
	AgentID string
	// RequiredClaims: the token is refused unless each claim is present
	// with exactly this value (string form of a string, number or
	// boolean).
	RequiredClaims map[string]string
	// MaxTokenLifetime bounds exp - iat and exp - now (default 1h, at most
	// 24h less twice the clock skew).
	MaxTokenLifetime time.Duration
}

// Config configures the server half.
type Config struct {
	// Issuers are the trusted issuers; at least one.
	Issuers []IssuerConfig
	// ClockSkew is the tolerance on exp, nbf and iat (default 30s, at most
	// 5m).
	ClockSkew time.Duration
	// FetchTimeout bounds each discovery or JWKS fetch (default 10s).
	FetchTimeout time.Duration
	// RefreshInterval is the least time between two fetches of one
	// issuer's keys for a token naming an unknown key id, and between two
	// attempts after a failed fetch (default 1m).
	RefreshInterval time.Duration
	// KeyCacheTTL is how long fetched keys are used before they are
	// fetched again (default 1h).
	KeyCacheTTL time.Duration
	// Clock times the key cache (default the real clock); tokens are
	// checked against node.State.Now.
	Clock clock.Clock
	// Transport carries the fetches (default http.DefaultTransport).
	Transport http.RoundTripper
}

// DefaultConfig returns a Config with the defaults and no issuer.
func DefaultConfig() Config {
	return Config{
		ClockSkew:       30 * time.Second,
		FetchTimeout:    10 * time.Second,
		RefreshInterval: time.Minute,
		KeyCacheTTL:     time.Hour,
	}
}

// Validate checks c, filling in the defaults of zero issuer fields.
func (c *Config) Validate() error {
	if len(c.Issuers) == 0 {
		return errors.New("oidc: no issuer configured")
	}
	if len(c.Issuers) > MaxIssuers {
		return fmt.Errorf("oidc: %d issuers (at most %d)", len(c.Issuers), MaxIssuers)
	}
	if c.ClockSkew < 0 || c.ClockSkew > maxClockSkew {
		return fmt.Errorf("oidc: clock_skew %s out of range (0 to %s)", c.ClockSkew, maxClockSkew)
	}
	if c.FetchTimeout <= 0 || c.RefreshInterval <= 0 || c.KeyCacheTTL <= 0 {
		return errors.New("oidc: fetch_timeout, refresh_interval and key_cache_ttl must be positive")
	}
	names, urls := map[string]bool{}, map[string]bool{}
	for i := range c.Issuers {
		is := &c.Issuers[i]
		if err := is.validate(c.ClockSkew); err != nil {
			return fmt.Errorf("oidc: issuer %q: %w", is.Name, err)
		}
		if names[is.Name] || urls[is.IssuerURL] {
			return fmt.Errorf("oidc: issuer %q: name or issuer_url configured twice", is.Name)
		}
		names[is.Name], urls[is.IssuerURL] = true, true
	}
	return nil
}

func (is *IssuerConfig) validate(skew time.Duration) error {
	if is.Name == "" || is.Name == "issuer" || len(is.Name) > 64 {
		return errors.New("name must be 1 to 64 characters and not \"issuer\"")
	}
	for i := 0; i < len(is.Name); i++ {
		if !isSegmentByte(is.Name[i]) || is.Name == "." || is.Name == ".." {
			return errors.New("name may hold letters, digits, '.', '-' and '_' only")
		}
	}
	if !strings.HasPrefix(is.IssuerURL, "https://") && !strings.HasPrefix(is.IssuerURL, "http://") {
		return errors.New("issuer_url must be an https URL (http only for tests on loopback)")
	}
	if is.JWKSURL != "" && !strings.HasPrefix(is.JWKSURL, "https://") && !strings.HasPrefix(is.JWKSURL, "http://") {
		return errors.New("jwks_url must be an https URL")
	}
	if len(is.Audiences) == 0 {
		return errors.New("no audiences: a token for any audience would do")
	}
	for _, a := range is.Audiences {
		if a == "" {
			return errors.New("an empty audience")
		}
	}
	if len(is.SigningAlgs) == 0 {
		is.SigningAlgs = slices.Clone(defaultAlgs)
	}
	for _, a := range is.SigningAlgs {
		if !slices.Contains(allowedAlgs, a) {
			return fmt.Errorf("signing algorithm %q is not allowed (allowed: %s)", a, strings.Join(allowedAlgs, ", "))
		}
	}
	if len(is.ClaimSelectors) > MaxClaimSelectors {
		return fmt.Errorf("%d claim_selectors (at most %d)", len(is.ClaimSelectors), MaxClaimSelectors)
	}
	keys := map[string]bool{}
	for claim, key := range is.ClaimSelectors {
		if _, err := parseClaimPath(claim); err != nil {
			return fmt.Errorf("claim_selectors: %w", err)
		}
		if !validKey(key) {
			return fmt.Errorf("claim_selectors: key %q for claim %q: want 1 to 64 letters, digits, '.', '-' or '_'", key, claim)
		}
		if keys[key] {
			return fmt.Errorf("claim_selectors: key %q used twice", key)
		}
		keys[key] = true
	}
	if len(is.RequiredClaims) > MaxRequiredClaims {
		return fmt.Errorf("%d required_claims (at most %d)", len(is.RequiredClaims), MaxRequiredClaims)
	}
	for claim, v := range is.RequiredClaims {
		if _, err := parseClaimPath(claim); err != nil {
			return fmt.Errorf("required_claims: %w", err)
		}
		if v == "" {
			return fmt.Errorf("required_claims: claim %q has an empty value", claim)
		}
	}
	if is.AgentID == "" {
		is.AgentID = "{{sub}}"
	}
	if _, err := parseTemplate(is.AgentID); err != nil {
		return err
	}
	if is.MaxTokenLifetime == 0 {
		is.MaxTokenLifetime = time.Hour
	}
	if limit := MaxTokenLifetimeLimit - 2*skew; is.MaxTokenLifetime < 0 || is.MaxTokenLifetime > limit {
		return fmt.Errorf("max_token_lifetime %s out of range (at most %s)", is.MaxTokenLifetime, limit)
	}
	return nil
}

func validKey(k string) bool {
	if k == "" || len(k) > 64 {
		return false
	}
	for i := 0; i < len(k); i++ {
		if !isSegmentByte(k[i]) {
			return false
		}
	}
	return true
}

// issuer is a configured issuer, ready to verify.
type issuer struct {
	cfg       IssuerConfig
	algs      []string
	template  *template
	selectors []claimSelector
	required  []requiredClaim
	keys      *jwks.KeySet
	verifier  *gooidc.IDTokenVerifier
}

type claimSelector struct {
	path []string
	key  string
}

type requiredClaim struct {
	path  []string
	value string
}

// Verifier is the server half. It is safe for concurrent use.
type Verifier struct {
	byURL map[string]*issuer
	skew  time.Duration
}

// NewVerifier checks c and returns the server half. It fetches nothing:
// each issuer's keys are fetched at its first token.
func NewVerifier(c Config) (*Verifier, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	clk := c.Clock
	if clk == nil {
		clk = clock.New()
	}
	client := jwks.NewClient(c.Transport, c.FetchTimeout, maxFetchBytes)
	v := &Verifier{byURL: map[string]*issuer{}, skew: c.ClockSkew}
	for _, ic := range c.Issuers {
		t, _ := parseTemplate(ic.AgentID)
		is := &issuer{cfg: ic, algs: ic.SigningAlgs, template: t}
		for claim, key := range ic.ClaimSelectors {
			p, _ := parseClaimPath(claim)
			is.selectors = append(is.selectors, claimSelector{path: p, key: key})
		}
		sort.Slice(is.selectors, func(i, j int) bool { return is.selectors[i].key < is.selectors[j].key })
		for claim, val := range ic.RequiredClaims {
			p, _ := parseClaimPath(claim)
			is.required = append(is.required, requiredClaim{path: p, value: val})
		}
		sort.Slice(is.required, func(i, j int) bool {
			return strings.Join(is.required[i].path, ".") < strings.Join(is.required[j].path, ".")
		})
		algs := make([]jose.SignatureAlgorithm, len(ic.SigningAlgs))
		for i, a := range ic.SigningAlgs {
			algs[i] = jose.SignatureAlgorithm(a)
		}
		is.keys = jwks.New(jwks.Config{
			IssuerURL: ic.IssuerURL, JWKSURL: ic.JWKSURL, Algs: algs, Client: client, Clock: clk,
			Timeout: c.FetchTimeout, Refresh: c.RefreshInterval, CacheTTL: c.KeyCacheTTL,
		})
		// go-oidc checks the algorithm, the signature (with is.keys) and
		// the issuer; the times and audiences are checked against the
		// server's State, below.
		is.verifier = gooidc.NewVerifier(ic.IssuerURL, is.keys, &gooidc.Config{
			SupportedSigningAlgs: ic.SigningAlgs,
			SkipClientIDCheck:    true,
			SkipExpiryCheck:      true,
		})
		v.byURL[ic.IssuerURL] = is
	}
	return v, nil
}

// Name returns "oidc".
func (*Verifier) Name() string { return Name }

func refused(format string, args ...any) error {
	return fmt.Errorf("oidc: %w", &node.RefusedError{Public: RefusedMessage, Reason: fmt.Sprintf(format, args...)})
}

// Verify checks the token in ex.Payload (see the package doc). It sends
// no challenge.
func (v *Verifier) Verify(ctx context.Context, state node.State, ex node.Exchange) (*node.Result, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if state == nil {
		return nil, errors.New("oidc: the verifier has no state")
	}
	payload := ex.Payload()
	// Check the length before copying the payload into a string.
	if len(payload) > MaxTokenLen+64 {
		return nil, fmt.Errorf("oidc: token of %d bytes is too long (at most %d)", len(payload), MaxTokenLen)
	}
	token := strings.TrimSpace(string(payload))
	h, unverified, err := splitToken(token)
	if err != nil {
		return nil, fmt.Errorf("oidc: %w", err)
	}
	iss, _ := unverified["iss"].(string)
	is, ok := v.byURL[iss]
	if !ok {
		return nil, refused("issuer %q is not configured", truncate(iss))
	}
	if !slices.Contains(is.algs, h.Alg) {
		return nil, refused("issuer %s: signature algorithm %q is not allowed (allowed: %s)", is.cfg.Name, truncate(h.Alg), strings.Join(is.algs, ", "))
	}
	idt, err := jwks.Verify(ctx, is.verifier, token)
	if err != nil {
		// An ended context or an unreachable issuer is an error of the
		// server (fail closed), not a token that does not verify.
		if ctx.Err() != nil || errors.Is(err, jwks.ErrUnavailable) {
			return nil, fmt.Errorf("oidc: issuer %s: %w", is.cfg.Name, err)
		}
		return nil, refused("issuer %s: %v", is.cfg.Name, err)
	}
	var raw []byte
	if err := idt.Claims(&jsonRaw{&raw}); err != nil {
		return nil, fmt.Errorf("oidc: issuer %s: reading the claims: %w", is.cfg.Name, err)
	}
	claims, err := decodeClaims(raw)
	if err != nil {
		return nil, fmt.Errorf("oidc: %w", err)
	}
	exp, err := v.checkTimes(is, claims, state.Now())
	if err != nil {
		return nil, err
	}
	if !slices.ContainsFunc(audiences(claims), func(a string) bool { return slices.Contains(is.cfg.Audiences, a) }) {
		return nil, refused("issuer %s: the token's audience is none of the configured audiences", is.cfg.Name)
	}
	for _, rc := range is.required {
		if got, ok := lookupScalar(claims, rc.path); !ok || got != rc.value {
			return nil, refused("issuer %s: required claim %q is missing or has another value", is.cfg.Name, strings.Join(rc.path, "."))
		}
	}
	rendered, err := is.template.render(claims)
	if err != nil {
		return nil, refused("issuer %s: %v", is.cfg.Name, err)
	}
	if len(is.cfg.Name)+1+len(rendered) > maxAgentIDLen {
		return nil, refused("issuer %s: the agent ID would be %d bytes (at most %d)", is.cfg.Name, len(is.cfg.Name)+1+len(rendered), maxAgentIDLen)
	}
	res := &node.Result{
		ID:        is.cfg.Name + "/" + rendered,
		Selectors: []*sigilv1.Selector{{Type: Name, Value: "issuer:" + is.cfg.Name}},
	}
	for _, cs := range is.selectors {
		val, ok := lookupScalar(claims, cs.path)
		if !ok || val == "" || len(val) > MaxClaimValueLen || !printable(val) {
			continue
		}
		res.Selectors = append(res.Selectors, &sigilv1.Selector{Type: Name, Value: is.cfg.Name + ":" + cs.key + ":" + val})
	}
	if jti, present := claims["jti"]; present {
		s, ok := jti.(string)
		if !ok || s == "" {
			return nil, refused("issuer %s: the jti claim is not a non-empty string", is.cfg.Name)
		}
		cred := node.Credential{Kind: CredentialKind, ID: jtiID(is.cfg.Name, s), ExpiresAt: exp.Add(v.skew)}
		used, err := state.Used(ctx, cred)
		if err != nil {
			return nil, fmt.Errorf("oidc: checking whether the token was used: %w", err)
		}
		if used {
			return nil, refused("issuer %s: the token (jti) was already used", is.cfg.Name)
		}
		res.Consume = []node.Credential{cred}
	}
	return res, nil
}

// checkTimes checks exp (required), nbf, iat and the lifetime against now
// and returns exp.
func (v *Verifier) checkTimes(is *issuer, claims map[string]any, now time.Time) (time.Time, error) {
	name := is.cfg.Name
	exp, ok, err := numericDate(claims, "exp")
	if err != nil {
		return time.Time{}, fmt.Errorf("oidc: %w", err)
	}
	if !ok {
		return time.Time{}, refused("issuer %s: the token has no exp", name)
	}
	if !now.Before(exp.Add(v.skew)) {
		return time.Time{}, refused("issuer %s: the token expired at %s (now %s)", name, exp.Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	nbf, ok, err := numericDate(claims, "nbf")
	if err != nil {
		return time.Time{}, fmt.Errorf("oidc: %w", err)
	}
	if ok && now.Add(v.skew).Before(nbf) {
		return time.Time{}, refused("issuer %s: the token is not valid before %s (now %s)", name, nbf.Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	iat, ok, err := numericDate(claims, "iat")
	if err != nil {
		return time.Time{}, fmt.Errorf("oidc: %w", err)
	}
	if ok {
		if now.Add(v.skew).Before(iat) {
			return time.Time{}, refused("issuer %s: the token is issued in the future (%s, now %s)", name, iat.Format(time.RFC3339), now.UTC().Format(time.RFC3339))
		}
		if exp.Sub(iat) > is.cfg.MaxTokenLifetime {
			return time.Time{}, refused("issuer %s: the token lives %s (max_token_lifetime %s)", name, exp.Sub(iat), is.cfg.MaxTokenLifetime)
		}
	}
	if exp.Sub(now) > is.cfg.MaxTokenLifetime+v.skew {
		return time.Time{}, refused("issuer %s: the token expires in %s (max_token_lifetime %s)", name, exp.Sub(now).Round(time.Second), is.cfg.MaxTokenLifetime)
	}
	return exp, nil
}

// jtiID is the credential id of a token id: "<issuer>/<jti>", or
// "<issuer>/sha256:<hex>" for a jti that is long or not printable ASCII.
func jtiID(issuerName, jti string) string {
	id := issuerName + "/" + jti
	plain := len(id) <= maxJTIIDLen && !strings.HasPrefix(jti, "sha256:")
	for i := 0; plain && i < len(jti); i++ {
		plain = jti[i] > 0x20 && jti[i] < 0x7f
	}
	if plain {
		return id
	}
	sum := sha256.Sum256([]byte(jti))
	return issuerName + "/sha256:" + hex.EncodeToString(sum[:])
}

// truncate bounds an unverified value that goes into a log reason.
func truncate(s string) string {
	if len(s) > 128 {
		return s[:128] + "…"
	}
	return s
}

// jsonRaw captures the raw claims go-oidc verified.
type jsonRaw struct{ b *[]byte }

func (j *jsonRaw) UnmarshalJSON(b []byte) error {
	*j.b = append([]byte(nil), b...)
	return nil
}

// maxFetchBytes bounds a discovery document or a JWKS.
const maxFetchBytes = 1 << 20
