package jwks_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/sigil-id/sigil/attestor/node/internal/jwks"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/internal/jwkstest"
)

var t0 = time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)

type fixture struct {
	iss *jwkstest.Issuer
	clk *clock.Fake
	tok string
}

func newFixture(t *testing.T) *fixture {
	k, _ := jwkstest.RSAKeys(t)
	iss := jwkstest.NewIssuer(t, jose.JSONWebKey{Key: k.Public(), KeyID: "k1", Algorithm: "RS256", Use: "sig"})
	iss.ServeDiscovery("GET /.well-known/openid-configuration", func(*http.Request) map[string]any {
		return map[string]any{"issuer": iss.URL, "jwks_uri": iss.URL + "/jwks"}
	})
	iss.ServeJWKS("GET /jwks")
	tok := jwkstest.Sign(t, jose.RS256, k, "k1", map[string]any{"iss": iss.URL, "sub": "s"})
	return &fixture{iss: iss, clk: clock.NewFake(t0), tok: tok}
}

func (f *fixture) keySet(jwksURL string, maxBytes int64) *jwks.KeySet {
	return jwks.New(jwks.Config{
		IssuerURL: f.iss.URL, JWKSURL: jwksURL, Algs: []jose.SignatureAlgorithm{jose.RS256},
		Client: jwks.NewClient(nil, time.Second, maxBytes), Clock: f.clk,
		Timeout: time.Second, Refresh: time.Minute, CacheTTL: time.Hour,
	})
}

// TestOnlyConfiguredURL: with a JWKS URL configured, the key set fetches
// that URL and nothing else (no discovery, no redirect followed). Moved
// from gcpiit's TestKeyFetcherOnlyConfiguredURL.
func TestOnlyConfiguredURL(t *testing.T) {
	f := newFixture(t)
	var redirected atomic.Int32
	f.iss.Mux.HandleFunc("GET /moved", func(w http.ResponseWriter, r *http.Request) {
		redirected.Add(1)
		http.Redirect(w, r, "/jwks", http.StatusFound)
	})
	if _, err := f.keySet(f.iss.URL+"/jwks", 1<<20).VerifySignature(context.Background(), f.tok); err != nil {
		t.Fatal(err)
	}
	if f.iss.DiscoveryHits.Load() != 0 || f.iss.JWKSHits.Load() != 1 {
		t.Fatalf("discovery %d, jwks %d fetches; want 0, 1", f.iss.DiscoveryHits.Load(), f.iss.JWKSHits.Load())
	}
	_, err := f.keySet(f.iss.URL+"/moved", 1<<20).VerifySignature(context.Background(), f.tok)
	if !errors.Is(err, jwks.ErrUnavailable) || !strings.Contains(err.Error(), "redirects are not followed") {
		t.Fatalf("redirect: %v", err)
	}
	if redirected.Load() != 1 || f.iss.JWKSHits.Load() != 1 {
		t.Fatalf("redirect followed (%d, %d)", redirected.Load(), f.iss.JWKSHits.Load())
	}
}

// TestDiscovery: without a JWKS URL, the key set is fetched from the
// jwks_uri of the issuer's discovery document, which must name the issuer.
func TestDiscovery(t *testing.T) {
	f := newFixture(t)
	if _, err := f.keySet("", 1<<20).VerifySignature(context.Background(), f.tok); err != nil {
		t.Fatal(err)
	}
	if f.iss.DiscoveryHits.Load() != 1 || f.iss.JWKSHits.Load() != 1 {
		t.Fatalf("discovery %d, jwks %d fetches; want 1, 1", f.iss.DiscoveryHits.Load(), f.iss.JWKSHits.Load())
	}
	ks := jwks.New(jwks.Config{
		IssuerURL: "https://other.example", DiscoveryURL: f.iss.URL + "/.well-known/openid-configuration",
		Algs: []jose.SignatureAlgorithm{jose.RS256}, Client: jwks.NewClient(nil, time.Second, 1<<20), Clock: f.clk,
		Timeout: time.Second, Refresh: time.Minute, CacheTTL: time.Hour,
	})
	if _, err := ks.VerifySignature(context.Background(), f.tok); !errors.Is(err, jwks.ErrUnavailable) || !strings.Contains(err.Error(), "not \"https://other.example\"") {
		t.Fatalf("discovery of another issuer: %v", err)
	}
}

// TestBoundedRefetchAndFailClosed: unknown key ids cost one fetch per
// refresh interval; a failed fetch is remembered and fails closed; an
// oversized key set is not used.
func TestBoundedRefetchAndFailClosed(t *testing.T) {
	f := newFixture(t)
	ks := f.keySet(f.iss.URL+"/jwks", 1<<20)
	if _, err := ks.VerifySignature(context.Background(), f.tok); err != nil {
		t.Fatal(err)
	}
	_, other := jwkstest.RSAKeys(t)
	for i := 0; i < 10; i++ {
		tok := jwkstest.Sign(t, jose.RS256, other, "unknown", map[string]any{"sub": "s"})
		if _, err := ks.VerifySignature(context.Background(), tok); !errors.Is(err, jwks.ErrUnknownKey) {
			t.Fatalf("unknown kid: %v", err)
		}
	}
	if n := f.iss.JWKSHits.Load(); n != 1 {
		t.Fatalf("%d fetches within the refresh interval, want 1", n)
	}
	// Past the cache TTL with the issuer gone: fails closed, and the
	// failure is remembered for the refresh interval.
	f.iss.Server.Close()
	f.clk.Add(time.Hour)
	for i := 0; i < 2; i++ {
		if _, err := ks.VerifySignature(context.Background(), f.tok); !errors.Is(err, jwks.ErrUnavailable) || !strings.Contains(err.Error(), "fails closed") {
			t.Fatalf("issuer gone: %v", err)
		}
	}

	g := newFixture(t)
	_, err := g.keySet(g.iss.URL+"/jwks", 100).VerifySignature(context.Background(), g.tok)
	if !errors.Is(err, jwks.ErrUnavailable) || !strings.Contains(err.Error(), "over 100 bytes") {
		t.Fatalf("oversized key set: %v", err)
	}
}
