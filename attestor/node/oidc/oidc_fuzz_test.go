package oidc

import (
	"context"
	"encoding/base64"
	"strings"
	"testing"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/sigil-id/sigil/internal/jwkstest"
)

// FuzzOIDCToken feeds arbitrary payloads to the verifier, configured with
// a fake issuer on loopback. Seeds: a valid token, its parts mangled,
// alg none, and malformed JSON. Invariants: no panic; an accepted token
// is one the test key signed (its ID is the github issuer's); an error has
// the one "oidc: " prefix and never echoes a long payload; the key set is
// fetched at most once (the fake clock never moves, so unknown key ids do
// not make the verifier fetch again).
func FuzzOIDCToken(f *testing.F) {
	iss := newFakeIssuer(f)
	st := newState()
	v := newTestVerifier(f, st.clk, githubIssuer(iss.srv.URL))
	c := githubClaims(iss.srv.URL)
	delete(c, "jti")
	good := jwkstest.Sign(f, jose.RS256, rsaKey, "rsa-1", c)
	parts := strings.Split(good, ".")
	enc := base64.RawURLEncoding.EncodeToString
	for _, s := range []string{good, parts[0] + "." + parts[1] + ".", parts[0] + ".." + parts[2], "..", "",
		enc([]byte(`{"alg":"none"}`)) + "." + parts[1] + ".",
		enc([]byte(`{"alg":"RS256","kid":"zz"}`)) + "." + parts[1] + "." + parts[2],
		enc([]byte(`{"alg":"RS256"}`)) + "." + enc([]byte(`{"iss":"`+iss.srv.URL+`","exp":1e400}`)) + ".AA",
		enc([]byte(`{"alg":"RS256"}`)) + "." + enc([]byte(`{"iss":[1],"aud":{}}`)) + ".AA",
		enc([]byte(`[]`)) + "." + enc([]byte(`null`)) + ".AA"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		res, err := v.Verify(context.Background(), st, exchange(payload))
		if err == nil {
			if !strings.HasPrefix(res.ID, "github/") || len(res.Selectors) == 0 {
				t.Fatalf("accepted %q with result %+v", payload, res)
			}
			return
		}
		msg := err.Error()
		if !strings.HasPrefix(msg, "oidc: ") || strings.HasPrefix(msg, "oidc: oidc:") {
			t.Fatalf("error %q: want one oidc: prefix", msg)
		}
		if len(payload) >= 24 && strings.Contains(msg, string(payload)) {
			t.Fatalf("error %q echoes the payload", msg)
		}
		if n := iss.jwksHits.Load(); n > 1 {
			t.Fatalf("JWKS fetched %d times", n)
		}
	})
}
