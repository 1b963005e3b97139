package oidc

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

// Bounds of what the verifier fetches from an issuer.
const (
	// maxFetchBytes bounds a discovery document or a JWKS.
	maxFetchBytes = 1 << 20
	// maxKeys bounds the keys kept of one JWKS.
	maxKeys = 100
)

// keySet is one configured issuer's signing keys: discovered (once) from
// the configured issuer URL unless a jwks_url is configured, fetched from
// that URL only, cached for cacheTTL, and fetched again early (at most once
// per refresh interval) when a token names a key id the cache does not
// hold. A failed fetch is remembered for the refresh interval, so an
// unreachable issuer costs one bounded attempt per interval and every
// verification in between fails closed at once. It implements go-oidc's
// KeySet.
type keySet struct {
	issuerURL string
	jwksURL   string // configured; else discovered
	algs      []jose.SignatureAlgorithm
	client    *http.Client
	clock     clock.Clock
	timeout   time.Duration
	refresh   time.Duration
	cacheTTL  time.Duration

	// sem is held by the one goroutine fetching (a lock that waiters can
	// leave when their context ends).
	sem chan struct{}
	// Guarded by sem.
	discovered  string
	keys        []jose.JSONWebKey
	fetchedAt   time.Time // of keys
	attemptAt   time.Time // of the last fetch attempt
	lastErr     error
	everFetched bool
}

// errUnknownKey is wrapped when no cached or freshly fetched key has the
// token's key id.
var errUnknownKey = errors.New("no key of the issuer's key set has the token's key id")

// keysUnavailable starts the errors about keys that could not be had (an
// unreachable issuer, a bad key set, a context that ended while waiting).
const keysUnavailable = "the issuer's keys are unavailable"

func newKeySet(issuerURL, jwksURL string, algs []jose.SignatureAlgorithm, client *http.Client, clk clock.Clock, timeout, refresh, cacheTTL time.Duration) *keySet {
	return &keySet{
		issuerURL: issuerURL, jwksURL: jwksURL, algs: algs, client: client, clock: clk,
		timeout: timeout, refresh: refresh, cacheTTL: cacheTTL, sem: make(chan struct{}, 1),
	}
}

// VerifySignature verifies the compact JWS jwt with the issuer's key named
// by its kid (any key of a matching type when it has none) and returns its
// payload. go-oidc calls it after checking the algorithm.
func (k *keySet) VerifySignature(ctx context.Context, jwt string) ([]byte, error) {
	jws, err := jose.ParseSigned(jwt, k.algs)
	if err != nil {
		return nil, fmt.Errorf("malformed token: %w", err)
	}
	if len(jws.Signatures) != 1 {
		return nil, errors.New("token must have exactly one signature")
	}
	kid := jws.Signatures[0].Header.KeyID
	keys, err := k.get(ctx, kid)
	if err != nil {
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
// when they are older than cacheTTL, or when none has kid and the last
// attempt is older than the refresh interval.
func (k *keySet) get(ctx context.Context, kid string) ([]jose.JSONWebKey, error) {
	select {
	case k.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("%s: waiting for them: %w", keysUnavailable, ctx.Err())
	}
	defer func() { <-k.sem }()
	now := k.clock.Now()
	stale := !k.everFetched || now.Sub(k.fetchedAt) >= k.cacheTTL
	missing := kid != "" && !hasKid(k.keys, kid)
	canRetry := k.attemptAt.IsZero() || now.Sub(k.attemptAt) >= k.refresh
	if (stale || missing) && canRetry {
		keys, err := k.fetch(ctx)
		switch {
		case err == nil:
			k.keys, k.fetchedAt, k.everFetched, k.attemptAt, k.lastErr = keys, now, true, now, nil
		case ctx.Err() != nil:
			// The caller went away: not the issuer's failure, so the
			// next caller tries again.
			return nil, fmt.Errorf("%s: %w", keysUnavailable, ctx.Err())
		default:
			k.attemptAt, k.lastErr = now, err
		}
	}
	if !k.everFetched || k.clock.Now().Sub(k.fetchedAt) >= k.cacheTTL {
		if k.lastErr != nil {
			return nil, fmt.Errorf("%s (fails closed; next attempt within %s): %w", keysUnavailable, k.refresh, k.lastErr)
		}
		return nil, errors.New(keysUnavailable + " (fails closed)")
	}
	if kid != "" && !hasKid(k.keys, kid) {
		return nil, fmt.Errorf("%w (%q)", errUnknownKey, kid)
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
func (k *keySet) fetch(ctx context.Context) ([]jose.JSONWebKey, error) {
	ctx, cancel := context.WithTimeout(ctx, k.timeout)
	defer cancel()
	url := k.jwksURL
	if url == "" {
		url = k.discovered
	}
	if url == "" {
		// go-oidc checks that the document names the configured issuer.
		p, err := gooidc.NewProvider(gooidc.ClientContext(ctx, k.client), k.issuerURL)
		if err != nil {
			return nil, fmt.Errorf("discovery at %s: %w", k.issuerURL, err)
		}
		var doc struct {
			JWKSURI string `json:"jwks_uri"`
		}
		if err := p.Claims(&doc); err != nil || doc.JWKSURI == "" {
			return nil, fmt.Errorf("discovery at %s: no jwks_uri", k.issuerURL)
		}
		if !strings.HasPrefix(doc.JWKSURI, "https://") && !strings.HasPrefix(doc.JWKSURI, "http://") {
			return nil, fmt.Errorf("discovery at %s: jwks_uri is not an http(s) URL", k.issuerURL)
		}
		k.discovered = doc.JWKSURI
		url = doc.JWKSURI
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("JWKS request for %s: %w", url, err)
	}
	resp, err := k.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("JWKS at %s: %w", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("JWKS at %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("JWKS at %s: %s", url, resp.Status)
	}
	keys, err := parseJWKS(body)
	if err != nil {
		return nil, fmt.Errorf("JWKS at %s: %w", url, err)
	}
	return keys, nil
}

// parseJWKS decodes a JWKS, keeping the public signing keys it can use
// (at most maxKeys) and skipping keys of other types, so that an issuer
// that adds a key type the verifier does not know keeps working.
func parseJWKS(body []byte) ([]jose.JSONWebKey, error) {
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
		if len(out) == maxKeys {
			break
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no usable public signing key")
	}
	return out, nil
}

// newHTTPClient returns the client of every fetch the verifier makes:
// bounded in time (timeout) and size (maxFetchBytes per response body),
// following no redirect (only configured URLs are fetched).
func newHTTPClient(base http.RoundTripper, timeout time.Duration) *http.Client {
	if base == nil {
		base = http.DefaultTransport
	}
	return &http.Client{
		Timeout:   timeout,
		Transport: limitTransport{base},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return errors.New("redirects are not followed: configure the final URL")
		},
	}
}

type limitTransport struct{ base http.RoundTripper }

func (t limitTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.base.RoundTrip(r)
	if err != nil {
		return nil, err
	}
	resp.Body = &limitedBody{rc: resp.Body, n: maxFetchBytes}
	return resp, nil
}

// limitedBody fails a read past n bytes (io.LimitReader would truncate
// silently, and a truncated key set could parse).
type limitedBody struct {
	rc io.ReadCloser
	n  int64
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.n <= 0 {
		var one [1]byte
		n, err := b.rc.Read(one[:])
		if n > 0 {
			return 0, fmt.Errorf("response body over %d bytes", maxFetchBytes)
		}
		return 0, err
	}
	if int64(len(p)) > b.n {
		p = p[:b.n]
	}
	n, err := b.rc.Read(p)
	b.n -= int64(n)
	return n, err
}

func (b *limitedBody) Close() error { return b.rc.Close() }
