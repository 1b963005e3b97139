package azuremsi

import (
	"crypto/rsa"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
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
	testTenant   = "72f988bf-86f1-41af-91ab-2d7cd011db47"
	otherTenant  = "0d3b3f4e-1111-4a2b-9c3d-5e6f7a8b9c0d"
	testResource = "api://sigil-attestation"
	testOID      = "9a0b1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d"
	testSub      = "11111111-2222-4333-8444-555555555555"
	testMirID    = "/subscriptions/" + testSub + "/resourcegroups/Prod-RG/providers/Microsoft.Compute/virtualMachines/Web-1"
)

func testKeys(t testing.TB) (*rsa.PrivateKey, *rsa.PrivateKey) { return jwkstest.RSAKeys(t) }

// fakeAzure serves, on loopback, what Microsoft Entra ID and IMDS serve
// to the attestor: per tenant, the v1 discovery document (issuer
// <srv>/<tenant>/, as https://sts.windows.net/<tenant>/) and key set
// (<srv>/<tenant>/discovery/keys), and IMDS's token endpoint, which signs
// a v1 managed identity access token for the requested resource.
type fakeAzure struct {
	iss      *jwkstest.Issuer
	srv      *httptest.Server
	clk      *clock.Fake
	key      *rsa.PrivateKey
	kid      string
	jwksHits *atomic.Int64
	// mirid is the xms_mirid claim IMDS's tokens carry ("" for none).
	mirid      string
	imdsStatus int
}

func newFakeAzure(t *testing.T) *fakeAzure {
	k, _ := testKeys(t)
	f := &fakeAzure{clk: clock.NewFake(t0), key: k, kid: "nOo3ZDrODXEK1jKWhXslHR_KXEg", mirid: testMirID}
	f.iss = jwkstest.NewIssuer(t, jose.JSONWebKey{Key: k.Public(), KeyID: f.kid, Use: "sig"})
	f.srv, f.jwksHits = f.iss.Server, &f.iss.JWKSHits
	f.iss.ServeDiscovery("GET /{tenant}/.well-known/openid-configuration", func(r *http.Request) map[string]any {
		tid := r.PathValue("tenant")
		return map[string]any{
			"token_endpoint":                        f.srv.URL + "/" + tid + "/oauth2/token",
			"jwks_uri":                              f.srv.URL + "/" + tid + "/discovery/keys",
			"issuer":                                f.issuer(tid),
			"response_types_supported":              []string{"code", "id_token", "code id_token", "token id_token", "token"},
			"subject_types_supported":               []string{"pairwise"},
			"id_token_signing_alg_values_supported": []string{"RS256"},
			"tenant_region_scope":                   "WW",
		}
	})
	f.iss.ServeJWKS("GET /{tenant}/discovery/keys")
	f.iss.Mux.HandleFunc("GET /metadata/identity/oauth2/token", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		if r.Header.Get("Metadata") != "true" {
			w.WriteHeader(http.StatusBadRequest)
			json.NewEncoder(w).Encode(map[string]string{"error": "invalid_request", "error_description": "Required metadata header not specified"})
			return
		}
		if f.imdsStatus != 0 {
			w.WriteHeader(f.imdsStatus)
			json.NewEncoder(w).Encode(map[string]string{"error": "invalid_request", "error_description": "Identity not found"})
			return
		}
		res := r.URL.Query().Get("resource")
		if r.URL.Query().Get("api-version") != MetadataAPIVersion || res == "" {
			w.WriteHeader(http.StatusBadRequest)
			json.NewEncoder(w).Encode(map[string]string{"error": "invalid_request", "error_description": "api-version and resource required"})
			return
		}
		now := f.clk.Now()
		json.NewEncoder(w).Encode(map[string]string{
			"access_token":   f.token(t, f.claims(testTenant, res)),
			"client_id":      "5f1e8a3b-0c2d-4e6f-8a9b-1c2d3e4f5a6b",
			"expires_in":     "86399",
			"expires_on":     strconv.FormatInt(now.Add(24*time.Hour).Unix(), 10),
			"ext_expires_in": "86399",
			"not_before":     strconv.FormatInt(now.Unix(), 10),
			"resource":       res,
			"token_type":     "Bearer",
		})
	})
	return f
}

func (f *fakeAzure) issuer(tid string) string { return f.srv.URL + "/" + tid + "/" }

// claims returns the claims of a v1 managed identity token of tid for
// resource, issued now.
func (f *fakeAzure) claims(tid, resource string) map[string]any {
	now := f.clk.Now()
	c := map[string]any{
		"aud":      resource,
		"iss":      f.issuer(tid),
		"iat":      now.Unix(),
		"nbf":      now.Unix(),
		"exp":      now.Add(24 * time.Hour).Unix(),
		"aio":      "E2ZgYJh1bW5ydW5f",
		"appid":    "5f1e8a3b-0c2d-4e6f-8a9b-1c2d3e4f5a6b",
		"appidacr": "2",
		"idp":      f.issuer(tid),
		"idtyp":    "app",
		"oid":      testOID,
		"rh":       "0.AAAAv4j5cvGGr0GRqy180BHbR.",
		"sub":      testOID,
		"tid":      tid,
		"uti":      "Ab1Cd2Ef3Gh4Ij5Kl6Mn7",
		"ver":      "1.0",
	}
	if f.mirid != "" {
		c["xms_mirid"] = f.mirid
	}
	return c
}

func (f *fakeAzure) token(t testing.TB, claims map[string]any) string {
	return signRS256(t, f.key, f.kid, claims)
}

func signRS256(t testing.TB, k *rsa.PrivateKey, kid string, claims map[string]any) string {
	t.Helper()
	return jwkstest.SignWithHeaders(t, jose.RS256, k, kid, claims, map[jose.HeaderKey]any{"x5t": kid})
}

func (f *fakeAzure) tenantConfig(tid string) TenantConfig {
	return TenantConfig{Resource: testResource, IssuerURL: f.issuer(tid), JWKSURL: f.srv.URL + "/" + tid + "/discovery/keys"}
}

func (f *fakeAzure) verifier(t *testing.T, mutate func(*VerifierConfig)) *Verifier {
	t.Helper()
	c := DefaultVerifierConfig()
	c.Tenants = map[string]TenantConfig{testTenant: f.tenantConfig(testTenant)}
	c.Clock = f.clk
	if mutate != nil {
		mutate(&c)
	}
	v, err := NewVerifier(c)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func (f *fakeAzure) attestor(t *testing.T) *Attestor {
	t.Helper()
	c := DefaultAttestorConfig()
	c.Resource = testResource
	c.MetadataURL = f.srv.URL + "/metadata/identity/oauth2/token"
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
