// Package jwks is the one implementation of what the server halves of the
// JWT-based node attestors (oidc, k8s_psat, gcp_iit, azure_msi) fetch from
// a platform: an issuer's signing keys. It holds the HTTP client of those
// fetches (bounded in time and size, following no redirect) and KeySet, a
// cached JWKS implementing go-oidc's oidc.KeySet that fetches only the
// configured JWKS URL (or the jwks_uri of the configured issuer's
// discovery document), refetches at most once per refresh interval for an
// unknown key id, remembers failures and fails closed.
package jwks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	gooidc "github.com/coreos/go-oidc/v3/oidc"
	jose "github.com/go-jose/go-jose/v4"

	"github.com/sigil-id/sigil/clock"
)

// MaxKeys bounds the keys kept of one JWKS.
const MaxKeys = 100

// ErrUnavailable is wrapped by every error about keys that could not be
// had (an unreachable issuer, a key set too large or malformed, a context
// that ended while waiting): the verifier cannot decide and fails closed
// without blaming the evidence.
var ErrUnavailable = errors.New("the issuer's keys are unavailable")

// ErrUnknownKey is wrapped when no cached or freshly fetched key has the
// token's key id.
var ErrUnknownKey = errors.New("unknown key id: no key of the issuer's key set has it")

// Config configures a KeySet.
type Config struct {
	// IssuerURL is the issuer whose discovery document names the JWKS
	// URL when JWKSURL is empty; the document must name this issuer.
	IssuerURL string
	// DiscoveryURL is where the discovery document is fetched; empty for
	// IssuerURL + "/.well-known/openid-configuration".
	DiscoveryURL string
	// HTTPSOnly refuses a discovered jwks_uri that is not https.
	HTTPSOnly bool
	// JWKSURL is the configured key set URL; empty to discover it.
	JWKSURL string
	// Algs are the signature algorithms accepted.
	Algs []jose.SignatureAlgorithm
	// Client makes the fetches (see NewClient).
	Client *http.Client
	// Clock tells the time of the cache.
	Clock clock.Clock
	// Timeout bounds one fetch (discovery and JWKS).
	Timeout time.Duration
	// Refresh is the least time between two fetch attempts (for an
	// unknown key id, or after a failure).
	Refresh time.Duration
	// CacheTTL is how long fetched keys (and the discovered JWKS URL)
	// are used before they are fetched again.
	CacheTTL time.Duration
	// MaxStale, when longer than CacheTTL, is how long fetched keys stay
	// in use while they cannot be fetched again (through an issuer's
	// outage); else keys older than CacheTTL are never used.
	MaxStale time.Duration
}

// KeySet is one issuer's signing keys: discovered (once) from the
// configured issuer URL unless a JWKS URL is configured, fetched from that
// URL only, cached for CacheTTL, and fetched again early (at most once per
// Refresh) when a token names a key id the cache does not hold. A failed
// fetch is remembered for the refresh interval, so an unreachable issuer
// costs one bounded attempt per interval and every verification in
// between fails closed at once. It implements go-oidc's KeySet and is safe
// for concurrent use.
type KeySet struct {
	cfg Config

	// sem is held by the one goroutine fetching (a lock that waiters can
	// leave when their context ends).
	sem chan struct{}
	// Guarded by sem.
	discovered  string
	discAt      time.Time // of discovered
	keys        []jose.JSONWebKey
	fetchedAt   time.Time // of keys
	attemptAt   time.Time // of the last fetch attempt
	lastErr     error
	everFetched bool
}

// Defaults of the key sets of platforms whose JWKS URL is fixed (see
// ForURL).
const (
	DefaultRefresh  = time.Minute
	DefaultCacheTTL = time.Hour
)

// ForURL returns the key set at the configured jwksURL (no discovery),
// signing with algs, each fetch bounded by timeout and maxBytes through
// NewClient(nil, ...), refreshed at most once per DefaultRefresh and kept
// for DefaultCacheTTL.
func ForURL(jwksURL string, algs []jose.SignatureAlgorithm, timeout time.Duration, maxBytes int64, clk clock.Clock) *KeySet {
	return New(Config{
		JWKSURL: jwksURL, Algs: algs, Client: NewClient(nil, timeout, maxBytes), Clock: clk,
		Timeout: timeout, Refresh: DefaultRefresh, CacheTTL: DefaultCacheTTL,
	})
}

// New returns the key set configured by c (nil Clock: the system's). It
// fetches nothing until the first verification.
func New(c Config) *KeySet {
	if c.Clock == nil {
		c.Clock = clock.New()
	}
	return &KeySet{cfg: c, sem: make(chan struct{}, 1)}
}

// VerifySignature verifies the compact JWS jwt with the issuer's key named
// by its kid (any key when it has none) and returns its payload. go-oidc
// calls it after checking the algorithm. An error wrapping ErrUnavailable
// is also recorded for Verify.
func (k *KeySet) VerifySignature(ctx context.Context, jwt string) ([]byte, error) {
	jws, err := jose.ParseSigned(jwt, k.cfg.Algs)
	if err != nil {
		return nil, fmt.Errorf("malformed token: %w", err)
	}
	if len(jws.Signatures) != 1 {
		return nil, errors.New("token must have exactly one signature")
	}
	kid := jws.Signatures[0].Header.KeyID
	keys, err := k.get(ctx, kid)
	if err != nil {
		if p, ok := ctx.Value(probeKey{}).(*probe); ok && errors.Is(err, ErrUnavailable) {
			p.err = err
		}
		return nil, err
	}
	for i := range keys {
		if kid != "" && keys[i].KeyID != kid {
			continue
		}
		if payload, err := jws.Verify(&keys[i]); err == nil {
			return payload, nil
		}
	}
	return nil, errors.New("the token's signature does not verify with the issuer's key")
}

// get returns the cached keys, fetching them first when there are none,
// when they are older than CacheTTL, or when none has kid and the last
// attempt is older than the refresh interval.
func (k *KeySet) get(ctx context.Context, kid string) ([]jose.JSONWebKey, error) {
	select {
	case k.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: waiting for them: %w", ErrUnavailable, ctx.Err())
	}
	defer func() { <-k.sem }()
	now := k.cfg.Clock.Now()
	stale := !k.everFetched || now.Sub(k.fetchedAt) >= k.cfg.CacheTTL
	missing := kid != "" && !hasKid(k.keys, kid)
	canRetry := k.attemptAt.IsZero() || now.Sub(k.attemptAt) >= k.cfg.Refresh
	if (stale || missing) && canRetry {
		keys, err := k.fetch(ctx)
		switch {
		case err == nil:
			k.keys, k.fetchedAt, k.everFetched, k.attemptAt, k.lastErr = keys, now, true, now, nil
		case ctx.Err() != nil:
			// The caller went away: not the issuer's failure, so the
			// next caller tries again.
			return nil, fmt.Errorf("%w: %w", ErrUnavailable, ctx.Err())
		default:
			k.attemptAt, k.lastErr = now, err
		}
	}
	if !k.everFetched || k.cfg.Clock.Now().Sub(k.fetchedAt) >= max(k.cfg.CacheTTL, k.cfg.MaxStale) {
		if k.lastErr != nil {
			return nil, fmt.Errorf("%w (fails closed; next attempt within %s): %w", ErrUnavailable, k.cfg.Refresh, k.lastErr)
		}
		return nil, fmt.Errorf("%w (fails closed)", ErrUnavailable)
	}
	if kid != "" && !hasKid(k.keys, kid) {
		return nil, fmt.Errorf("%w (%q)", ErrUnknownKey, kid)
	}
	return k.keys, nil
}

func hasKid(keys []jose.JSONWebKey, kid string) bool {
	for _, key := range keys {
		if key.KeyID == kid {
			return true
		}
	}
	return false
}

// fetch discovers the JWKS URL (once, unless configured) and fetches the
// key set, bounded by the fetch timeout. Called with sem held.
func (k *KeySet) fetch(ctx context.Context) ([]jose.JSONWebKey, error) {
	ctx, cancel := context.WithTimeout(ctx, k.cfg.Timeout)
	defer cancel()
	url := k.cfg.JWKSURL
	if url == "" {
		if k.discovered == "" || k.cfg.Clock.Now().Sub(k.discAt) >= k.cfg.CacheTTL {
			u, err := k.discover(ctx)
			if err != nil {
				return nil, err
			}
			k.discovered, k.discAt = u, k.cfg.Clock.Now()
		}
		url = k.discovered
	}
	body, err := k.getOK(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("JWKS at %s: %w", url, err)
	}
	keys, err := ParseSet(body)
	if err != nil {
		return nil, fmt.Errorf("JWKS at %s: %w", url, err)
	}
	return keys, nil
}

// discover fetches the discovery document and returns its jwks_uri. The
// document must name the configured issuer.
func (k *KeySet) discover(ctx context.Context) (string, error) {
	at := k.cfg.DiscoveryURL
	if at == "" {
		at = strings.TrimSuffix(k.cfg.IssuerURL, "/") + "/.well-known/openid-configuration"
	}
	body, err := k.getOK(ctx, at)
	if err != nil {
		return "", fmt.Errorf("discovery at %s: %w", at, err)
	}
	var doc struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return "", fmt.Errorf("discovery at %s: not a JSON discovery document", at)
	}
	if doc.Issuer != k.cfg.IssuerURL {
		return "", fmt.Errorf("discovery at %s: the document is for issuer %q, not %q", at, doc.Issuer, k.cfg.IssuerURL)
	}
	switch {
	case doc.JWKSURI == "":
		return "", fmt.Errorf("discovery at %s: no jwks_uri", at)
	case strings.HasPrefix(doc.JWKSURI, "https://"):
	case k.cfg.HTTPSOnly:
		return "", fmt.Errorf("discovery at %s: jwks_uri is not an https URL", at)
	case !strings.HasPrefix(doc.JWKSURI, "http://"):
		return "", fmt.Errorf("discovery at %s: jwks_uri is not an http(s) URL", at)
	}
	return doc.JWKSURI, nil
}

// getOK fetches url and returns its body if the answer is 200 OK.
func (k *KeySet) getOK(ctx context.Context, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := k.cfg.Client.Do(req)
	if err != nil {
		var ue interface{ Unwrap() error }
		if errors.As(err, &ue) && ue.Unwrap() != nil {
			err = ue.Unwrap() // drop *url.Error's repetition of the URL
		}
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, errors.New(resp.Status)
	}
	return body, nil
}

// ParseSet decodes a JWKS, keeping the public signing keys it can use (at
// most MaxKeys) and skipping keys of other types, so that an issuer that
// adds a key type the verifier does not know keeps working.
func ParseSet(body []byte) ([]jose.JSONWebKey, error) {
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(body, &set); err != nil {
		return nil, errors.New("not a JSON key set")
	}
	var out []jose.JSONWebKey
	for _, raw := range set.Keys {
		var key jose.JSONWebKey
		if err := key.UnmarshalJSON(raw); err != nil || !key.Valid() || !key.IsPublic() || key.Use == "enc" {
			continue
		}
		out = append(out, key)
		if len(out) == MaxKeys {
			break
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no usable public signing key")
	}
	return out, nil
}

// probeKey is the context key of the probe of one verification.
type probeKey struct{}

// probe records, for one verification, the key set's failure: go-oidc
// formats the key set's errors with %v, which drops ErrUnavailable.
type probe struct{ err error }

// Verify verifies raw with v, whose key set is a *KeySet, and returns the
// token. When the keys could not be had, the error wraps ErrUnavailable
// (an error of the server: fail closed, do not blame the evidence); when
// ctx ended, it wraps ctx.Err(); any other error is the token's.
func Verify(ctx context.Context, v *gooidc.IDTokenVerifier, raw string) (*gooidc.IDToken, error) {
	p := &probe{}
	tok, err := v.Verify(context.WithValue(ctx, probeKey{}, p), raw)
	switch {
	case err == nil:
		return tok, nil
	case p.err != nil:
		return nil, p.err
	case ctx.Err() != nil:
		return nil, ctx.Err()
	}
	return nil, err
}
