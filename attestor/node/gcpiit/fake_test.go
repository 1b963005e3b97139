package gcpiit

import (
	"crypto/rsa"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/sigil-id/sigil/attestor/node/internal/nodetest"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/internal/jwkstest"
)

var t0 = time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)

const (
	testAudience = "https://sigil.example.org/gcp"
	testProject  = "sigil-prod-1"
)

// testKeys returns two RSA keys, made once for the package's tests.
func testKeys(t testing.TB) (*rsa.PrivateKey, *rsa.PrivateKey) { return jwkstest.RSAKeys(t) }

// fakeGoogle serves, on loopback, what Google serves to the attestor:
// the issuer's discovery document and key set (as www.googleapis.com's
// /oauth2/v3/certs does) and the metadata server's identity endpoint,
// which signs a format=full instance identity token for the requested
// audience.
type fakeGoogle struct {
	iss      *jwkstest.Issuer
	srv      *httptest.Server
	clk      *clock.Fake
	key      *rsa.PrivateKey
	kid      string
	jwksHits *atomic.Int64
	// claims are the compute_engine claims the metadata server signs.
	instance map[string]any
	// metadataStatus, when set, is what the metadata server answers.
	metadataStatus int
	// noFlavor drops the Metadata-Flavor header from the answers.
	noFlavor bool
}

func newFakeGoogle(t *testing.T) *fakeGoogle {
	k, _ := testKeys(t)
	f := &fakeGoogle{clk: clock.NewFake(t0), key: k, kid: "kid-1", instance: map[string]any{
		"instance_creation_timestamp": 1767000000,
		"instance_id":                 "5270481276397362849",
		"instance_name":               "web-1",
		"project_id":                  testProject,
		"project_number":              738198324413,
		"zone":                        "europe-west1-b",
	}}
	f.iss = jwkstest.NewIssuer(t, jose.JSONWebKey{Key: k.Public(), KeyID: f.kid, Algorithm: "RS256", Use: "sig"})
	f.srv, f.jwksHits = f.iss.Server, &f.iss.JWKSHits
	f.iss.ServeDiscovery("GET /.well-known/openid-configuration", func(*http.Request) map[string]any {
		return map[string]any{
			"issuer":                                f.srv.URL,
			"authorization_endpoint":                f.srv.URL + "/o/oauth2/v2/auth",
			"token_endpoint":                        f.srv.URL + "/token",
			"jwks_uri":                              f.srv.URL + "/oauth2/v3/certs",
			"response_types_supported":              []string{"code", "token", "id_token"},
			"subject_types_supported":               []string{"public"},
			"id_token_signing_alg_values_supported": []string{"RS256"},
		}
	})
	f.iss.ServeJWKS("GET /oauth2/v3/certs")
	f.iss.Mux.HandleFunc("GET /computeMetadata/v1/instance/service-accounts/default/identity", func(w http.ResponseWriter, r *http.Request) {
		if !f.noFlavor {
			w.Header().Set("Metadata-Flavor", "Google")
		}
		if r.Header.Get("Metadata-Flavor") != "Google" {
			http.Error(w, "Missing Metadata-Flavor:Google header.", http.StatusForbidden)
			return
		}
		if f.metadataStatus != 0 {
			http.Error(w, "unavailable", f.metadataStatus)
			return
		}
		aud := r.URL.Query().Get("audience")
		if aud == "" || r.URL.Query().Get("format") != "full" {
			http.Error(w, "non-empty audience parameter and format=full required", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "text/html")
		w.Write([]byte(f.token(t, f.claims(aud))))
	})
	return f
}

// claims returns the claims of a format=full token for aud, issued now.
func (f *fakeGoogle) claims(aud string) map[string]any {
	now := f.clk.Now()
	ce := map[string]any{}
	for k, v := range f.instance {
		ce[k] = v
	}
	return map[string]any{
		"aud":            aud,
		"azp":            "112233445566778899001",
		"email":          "123456789-compute@developer.gserviceaccount.com",
		"email_verified": true,
		"exp":            now.Add(time.Hour).Unix(),
		"iat":            now.Unix(),
		"iss":            f.srv.URL,
		"sub":            "112233445566778899001",
		"google":         map[string]any{"compute_engine": ce},
	}
}

// token signs claims with the issuer's key as Google does (RS256, kid).
func (f *fakeGoogle) token(t testing.TB, claims map[string]any) string {
	return jwkstest.Sign(t, jose.RS256, f.key, f.kid, claims)
}

// verifier returns a verifier of the fake's tokens (mutate adjusts the
// configuration).
func (f *fakeGoogle) verifier(t *testing.T, mutate func(*VerifierConfig)) *Verifier {
	t.Helper()
	c := DefaultVerifierConfig()
	c.Audience, c.ProjectAllowList = testAudience, []string{testProject}
	c.IssuerURL, c.JWKSURL, c.Clock = f.srv.URL, f.srv.URL+"/oauth2/v3/certs", f.clk
	if mutate != nil {
		mutate(&c)
	}
	v, err := NewVerifier(c)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func (f *fakeGoogle) attestor(t *testing.T) *Attestor {
	t.Helper()
	c := DefaultAttestorConfig()
	c.Audience = testAudience
	c.MetadataURL = f.srv.URL + "/computeMetadata/v1/instance/service-accounts/default/identity"
	a, err := NewAttestor(c)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// memState is the in-memory node.State of the tests; payload a
// challenge-free node.Exchange.
type (
	memState = nodetest.State
	payload  = nodetest.Payload
)

func newMemState(clk *clock.Fake) *memState { return nodetest.NewState(clk) }
