package ca_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"

	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/clock"
)

func TestJWTSignerRoundTrip(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	id := spiffeid.RequireFromPath(td, "/web")
	ec256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ec384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	for name, key := range map[string]crypto.Signer{"ES256": ec256, "ES384": ec384, "RS256": rsaKey} {
		t.Run(name, func(t *testing.T) {
			now := time.Now()
			clk := clock.NewFake(now)
			s, err := ca.NewJWTSigner(td, "kid1", key, now.Add(time.Hour), 0, clk)
			if err != nil {
				t.Fatal(err)
			}
			tok, exp, err := s.SignJWTSVID(context.Background(), ca.JWTSVIDParams{SPIFFEID: id, Audience: []string{"a", "b"}})
			if err != nil {
				t.Fatal(err)
			}
			if got := exp.Sub(now); got > ca.DefaultJWTSVIDTTL || got < ca.DefaultJWTSVIDTTL-time.Second {
				t.Errorf("lifetime %v, want the default %v", got, ca.DefaultJWTSVIDTTL)
			}
			b := jwtbundle.New(td)
			b.AddJWTAuthority("kid1", key.Public())
			svid, err := jwtsvid.ParseAndValidate(tok, b, []string{"b"})
			if err != nil {
				t.Fatalf("go-spiffe refuses the token: %v", err)
			}
			if svid.ID != id || !svid.Expiry.Equal(exp) {
				t.Errorf("svid %v exp %v, want %v %v", svid.ID, svid.Expiry, id, exp)
			}
			if _, err := jwtsvid.ParseAndValidate(tok, b, []string{"c"}); err == nil {
				t.Error("token accepted for another audience")
			}
		})
	}
}

func TestJWTSignerRefusals(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	now := time.Now()
	clk := clock.NewFake(now)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	s, err := ca.NewJWTSigner(td, "kid1", key, now.Add(time.Minute), time.Hour, clk)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	id := spiffeid.RequireFromPath(td, "/web")
	for _, tc := range []struct {
		name string
		p    ca.JWTSVIDParams
		want string
	}{
		{"no audience", ca.JWTSVIDParams{SPIFFEID: id}, "audience is required"},
		{"empty audience", ca.JWTSVIDParams{SPIFFEID: id, Audience: []string{""}}, "audience is empty"},
		{"no id", ca.JWTSVIDParams{Audience: []string{"a"}}, "SPIFFE ID is empty"},
		{"other td", ca.JWTSVIDParams{SPIFFEID: spiffeid.RequireFromString("spiffe://other.org/x"), Audience: []string{"a"}}, "not in trust domain"},
		{"negative ttl", ca.JWTSVIDParams{SPIFFEID: id, Audience: []string{"a"}, TTL: -time.Second}, "negative"},
	} {
		if _, _, err := s.SignJWTSVID(ctx, tc.p); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
	// Never past the key's expiry.
	_, exp, err := s.SignJWTSVID(ctx, ca.JWTSVIDParams{SPIFFEID: id, Audience: []string{"a"}})
	if err != nil || exp.After(now.Add(time.Minute)) {
		t.Errorf("exp %v past the key's expiry: %v", exp, err)
	}
	clk.Add(time.Minute)
	if _, _, err := s.SignJWTSVID(ctx, ca.JWTSVIDParams{SPIFFEID: id, Audience: []string{"a"}}); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("signing with an expired key: %v", err)
	}
}
