package oidc

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/hmac"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-id/sigil/attestor/node"
	"github.com/sigil-id/sigil/attestor/node/internal/jwks"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/internal/jwkstest"
	"github.com/sigil-id/sigil/registration"
)

// keysUnavailable starts the errors about keys that could not be had.
var keysUnavailable = jwks.ErrUnavailable.Error()

var t0 = time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)

var (
	keysOnce sync.Once
	rsaKey   *rsa.PrivateKey
	ecKey    *ecdsa.PrivateKey
	otherKey *rsa.PrivateKey
)

func testKeys(t testing.TB) {
	t.Helper()
	keysOnce.Do(func() {
		rsaKey, otherKey = jwkstest.RSAKeys(t)
		ecKey = jwkstest.ECKey(t)
	})
}

// fakeIssuer is an OIDC issuer on loopback: discovery and a JWKS with the
// RSA key "rsa-1" and the EC key "ec-1" (keys can be swapped by tests).
type fakeIssuer struct {
	*jwkstest.Issuer
	srv                 *httptest.Server
	jwksHits, discoHits *atomic.Int64
}

func newFakeIssuer(t testing.TB) *fakeIssuer {
	t.Helper()
	testKeys(t)
	iss := jwkstest.NewIssuer(t,
		jose.JSONWebKey{Key: rsaKey.Public(), KeyID: "rsa-1", Algorithm: "RS256", Use: "sig"},
		jose.JSONWebKey{Key: ecKey.Public(), KeyID: "ec-1", Algorithm: "ES256", Use: "sig"})
	iss.ServeDiscovery("/.well-known/openid-configuration", func(*http.Request) map[string]any {
		return map[string]any{
			"issuer":                                iss.URL,
			"jwks_uri":                              iss.URL + "/jwks",
			"id_token_signing_alg_values_supported": []string{"RS256", "ES256"},
			"response_types_supported":              []string{"id_token"},
			"subject_types_supported":               []string{"public"},
		}
	})
	iss.ServeJWKS("/jwks")
	return &fakeIssuer{Issuer: iss, srv: iss.Server, jwksHits: &iss.JWKSHits, discoHits: &iss.DiscoveryHits}
}

func (f *fakeIssuer) setKeys(keys ...jose.JSONWebKey) { f.SetKeys(keys...) }

// githubClaims are a GitHub Actions token's claims (shape of
// token.actions.githubusercontent.com), issued at t0 for 5 minutes.
func githubClaims(iss string) map[string]any {
	return map[string]any{
		"jti":              "example-id-1",
		"sub":              "repo:acme/app:ref:refs/heads/main",
		"aud":              "sigil",
		"ref":              "refs/heads/main",
		"sha":              "d2b3c4e5f60718293a4b5c6d7e8f901234567890",
		"repository":       "acme/app",
		"repository_owner": "acme",
		"run_id":           json.Number("9876543210123456789"),
		"run_attempt":      "1",
		"workflow":         "deploy",
		"event_name":       "push",
		"iss":              iss,
		"nbf":              t0.Add(-5 * time.Second).Unix(),
		"iat":              t0.Unix(),
		"exp":              t0.Add(5 * time.Minute).Unix(),
	}
}

// memState is a node.State: a fake clock and use-once records.
type memState struct {
	mu      sync.Mutex
	clk     *clock.Fake
	used    map[node.Credential]bool
	usedErr error
	queries int
}

func newState() *memState {
	return &memState{clk: clock.NewFake(t0), used: map[node.Credential]bool{}}
}

func (m *memState) Now() time.Time { return m.clk.Now() }
func (m *memState) CredentialExpiry(context.Context, node.Credential) (time.Time, error) {
	return time.Time{}, node.ErrNotFound
}
func (m *memState) Used(_ context.Context, c node.Credential) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.queries++
	if m.usedErr != nil {
		return false, m.usedErr
	}
	return m.used[c], nil
}
func (m *memState) Agent(context.Context, string) (node.AgentRecord, error) {
	return node.AgentRecord{}, node.ErrNotFound
}

// consume records what the server would consume after an acceptance.
func (m *memState) consume(r *node.Result) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, c := range r.Consume {
		m.used[c] = true
	}
}

type exchange []byte

func (e exchange) Payload() []byte { return e }
func (exchange) Challenge(context.Context, []byte) ([]byte, error) {
	return nil, errors.New("no challenge expected")
}

func githubIssuer(url string) IssuerConfig {
	return IssuerConfig{
		Name:           "github",
		IssuerURL:      url,
		Audiences:      []string{"sigil", "other"},
		ClaimSelectors: map[string]string{"repository": "repo", "repository_owner": "owner", "run_id": "run", "workflow": "workflow"},
		AgentID:        "{{claims.repository}}/{{claims.run_id}}",
		RequiredClaims: map[string]string{"repository_owner": "acme"},
	}
}

func newTestVerifier(t testing.TB, clk clock.Clock, issuers ...IssuerConfig) *Verifier {
	t.Helper()
	c := DefaultConfig()
	c.Issuers = issuers
	c.Clock = clk
	v, err := NewVerifier(c)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func selectorStrings(r *node.Result) []string {
	var out []string
	for _, s := range r.Selectors {
		out = append(out, registration.FormatSelector(s))
	}
	return out
}

func TestVerifyAcceptsGitHubActionsToken(t *testing.T) {
	f := newFakeIssuer(t)
	st := newState()
	v := newTestVerifier(t, st.clk, githubIssuer(f.srv.URL))
	for _, tc := range []struct {
		alg jose.SignatureAlgorithm
		key any
		kid string
	}{{jose.RS256, rsaKey, "rsa-1"}, {jose.ES256, ecKey, "ec-1"}} {
		claims := githubClaims(f.srv.URL)
		claims["jti"] = "jti-" + string(tc.alg)
		res, err := v.Verify(context.Background(), st, exchange(jwkstest.Sign(t, tc.alg, tc.key, tc.kid, claims)))
		if err != nil {
			t.Fatalf("%s: %v", tc.alg, err)
		}
		if want := "github/acme_2Fapp/9876543210123456789"; res.ID != want {
			t.Errorf("%s: ID %q, want %q", tc.alg, res.ID, want)
		}
		// Every segment is a valid SPIFFE path segment (registration.AgentID
		// splits a multi-segment id on the attestor branches).
		segs := append([]string{"sigil", "agent", Name}, strings.Split(res.ID, "/")...)
		if _, err := spiffeid.FromSegments(spiffeid.RequireTrustDomainFromString("example.org"), segs...); err != nil {
			t.Errorf("%s: agent ID: %v", tc.alg, err)
		}
		got := strings.Join(selectorStrings(res), " ")
		want := "oidc:issuer:github oidc:github:owner:acme oidc:github:repo:acme/app oidc:github:run:9876543210123456789 oidc:github:workflow:deploy"
		if got != want {
			t.Errorf("%s: selectors\n %s\nwant\n %s", tc.alg, got, want)
		}
		for _, s := range res.Selectors {
			if err := registration.ValidateSelectorInput(s); err != nil {
				t.Errorf("selector %v: %v", s, err)
			}
		}
		wantCred := node.Credential{Kind: CredentialKind, ID: "github/jti-" + string(tc.alg), ExpiresAt: t0.Add(5*time.Minute + 30*time.Second)}
		if len(res.Consume) != 1 || res.Consume[0] != wantCred {
			t.Errorf("%s: Consume %+v, want %+v", tc.alg, res.Consume, wantCred)
		}
	}
	if n := f.discoHits.Load(); n != 1 {
		t.Errorf("discovery fetched %d times, want 1 (cached)", n)
	}
	if n := f.jwksHits.Load(); n != 1 {
		t.Errorf("JWKS fetched %d times, want 1 (cached)", n)
	}
}

func isRefused(err error) bool {
	var r *node.RefusedError
	return errors.As(err, &r) && r.Public == RefusedMessage
}

func TestVerifyRefuses(t *testing.T) {
	f := newFakeIssuer(t)
	other := newFakeIssuer(t) // a second configured issuer, with its own keys
	other.setKeys(jose.JSONWebKey{Key: otherKey.Public(), KeyID: "rsa-1", Algorithm: "RS256", Use: "sig"})
	otherCfg := githubIssuer(other.srv.URL)
	otherCfg.Name = "other"
	pubDER, _ := x509.MarshalPKIXPublicKey(rsaKey.Public())
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	hs256 := func(secret []byte) func([]byte) []byte {
		return func(in []byte) []byte { m := hmac.New(sha256.New, secret); m.Write(in); return m.Sum(nil) }
	}
	with := func(mod func(map[string]any)) map[string]any {
		c := githubClaims(f.srv.URL)
		mod(c)
		return c
	}
	for _, tc := range []struct {
		name  string
		token func(t *testing.T) string
	}{
		{"alg none", func(t *testing.T) string {
			return jwkstest.HandToken(map[string]any{"alg": "none", "typ": "JWT"}, githubClaims(f.srv.URL), func([]byte) []byte { return nil })
		}},
		{"HS256 with the public key (PEM) as secret", func(t *testing.T) string {
			return jwkstest.HandToken(map[string]any{"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, githubClaims(f.srv.URL), hs256(pubPEM))
		}},
		{"HS256 with the public key (DER) as secret", func(t *testing.T) string {
			return jwkstest.HandToken(map[string]any{"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, githubClaims(f.srv.URL), hs256(pubDER))
		}},
		{"RS256 signature by another key under a known kid", func(t *testing.T) string {
			return jwkstest.Sign(t, jose.RS256, otherKey, "rsa-1", githubClaims(f.srv.URL))
		}},
		{"tampered claims", func(t *testing.T) string {
			tok := jwkstest.Sign(t, jose.RS256, rsaKey, "rsa-1", githubClaims(f.srv.URL))
			parts := strings.Split(tok, ".")
			cb, _ := json.Marshal(with(func(c map[string]any) { c["repository_owner"] = "acme"; c["repository"] = "acme/evil" }))
			return parts[0] + "." + base64.RawURLEncoding.EncodeToString(cb) + "." + parts[2]
		}},
		{"unconfigured issuer", func(t *testing.T) string {
			return jwkstest.Sign(t, jose.RS256, rsaKey, "rsa-1", with(func(c map[string]any) { c["iss"] = "https://evil.example" }))
		}},
		{"issuer of another configured issuer's key", func(t *testing.T) string {
			// Signed by the "other" issuer's key, claiming the github issuer.
			return jwkstest.Sign(t, jose.RS256, otherKey, "rsa-1", githubClaims(f.srv.URL))
		}},
		{"wrong audience", func(t *testing.T) string {
			return jwkstest.Sign(t, jose.RS256, rsaKey, "rsa-1", with(func(c map[string]any) { c["aud"] = []string{"someone-else"} }))
		}},
		{"no audience", func(t *testing.T) string {
			return jwkstest.Sign(t, jose.RS256, rsaKey, "rsa-1", with(func(c map[string]any) { delete(c, "aud") }))
		}},
		{"expired", func(t *testing.T) string {
			return jwkstest.Sign(t, jose.RS256, rsaKey, "rsa-1", with(func(c map[string]any) {
				c["iat"] = t0.Add(-10 * time.Minute).Unix()
				c["nbf"] = t0.Add(-10 * time.Minute).Unix()
				c["exp"] = t0.Add(-31 * time.Second).Unix()
			}))
		}},
		{"no exp", func(t *testing.T) string {
			return jwkstest.Sign(t, jose.RS256, rsaKey, "rsa-1", with(func(c map[string]any) { delete(c, "exp") }))
		}},
		{"not yet valid", func(t *testing.T) string {
			return jwkstest.Sign(t, jose.RS256, rsaKey, "rsa-1", with(func(c map[string]any) { c["nbf"] = t0.Add(2 * time.Minute).Unix() }))
		}},
		{"issued in the future", func(t *testing.T) string {
			return jwkstest.Sign(t, jose.RS256, rsaKey, "rsa-1", with(func(c map[string]any) { c["iat"] = t0.Add(2 * time.Minute).Unix() }))
		}},
		{"lifetime over max_token_lifetime", func(t *testing.T) string {
			return jwkstest.Sign(t, jose.RS256, rsaKey, "rsa-1", with(func(c map[string]any) { c["exp"] = t0.Add(2 * time.Hour).Unix() }))
		}},
		{"exp too far ahead without iat", func(t *testing.T) string {
			return jwkstest.Sign(t, jose.RS256, rsaKey, "rsa-1", with(func(c map[string]any) { delete(c, "iat"); c["exp"] = t0.Add(2 * time.Hour).Unix() }))
		}},
		{"unknown kid", func(t *testing.T) string {
			return jwkstest.Sign(t, jose.RS256, rsaKey, "rsa-unknown", githubClaims(f.srv.URL))
		}},
		{"required claim with another value", func(t *testing.T) string {
			return jwkstest.Sign(t, jose.RS256, rsaKey, "rsa-1", with(func(c map[string]any) { c["repository_owner"] = "mallory" }))
		}},
		{"required claim missing", func(t *testing.T) string {
			return jwkstest.Sign(t, jose.RS256, rsaKey, "rsa-1", with(func(c map[string]any) { delete(c, "repository_owner") }))
		}},
		{"templated claim missing", func(t *testing.T) string {
			return jwkstest.Sign(t, jose.RS256, rsaKey, "rsa-1", with(func(c map[string]any) { delete(c, "run_id") }))
		}},
		{"templated claim not a scalar", func(t *testing.T) string {
			return jwkstest.Sign(t, jose.RS256, rsaKey, "rsa-1", with(func(c map[string]any) { c["run_id"] = []string{"1", "2"} }))
		}},
		{"templated claim too long", func(t *testing.T) string {
			return jwkstest.Sign(t, jose.RS256, rsaKey, "rsa-1", with(func(c map[string]any) { c["run_id"] = strings.Repeat("1", MaxClaimValueLen+1) }))
		}},
		{"agent ID too long", func(t *testing.T) string {
			// 256 bytes escaped to 768, twice: over the agent ID bound.
			return jwkstest.Sign(t, jose.RS256, rsaKey, "rsa-1", with(func(c map[string]any) {
				c["repository"] = strings.Repeat("/", MaxClaimValueLen)
				c["run_id"] = strings.Repeat("/", MaxClaimValueLen)
			}))
		}},
		{"templated claim renders dot-dot", func(t *testing.T) string {
			return jwkstest.Sign(t, jose.RS256, rsaKey, "rsa-1", with(func(c map[string]any) { c["run_id"] = ".." }))
		}},
		{"jti not a string", func(t *testing.T) string {
			return jwkstest.Sign(t, jose.RS256, rsaKey, "rsa-1", with(func(c map[string]any) { c["jti"] = 7 }))
		}},
		{"RS256 not among the issuer's signing algs", func(t *testing.T) string {
			return jwkstest.Sign(t, jose.RS384, rsaKey, "rsa-1", githubClaims(f.srv.URL))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := newState()
			v := newTestVerifier(t, st.clk, githubIssuer(f.srv.URL), otherCfg)
			_, err := v.Verify(context.Background(), st, exchange(tc.token(t)))
			if !isRefused(err) {
				t.Fatalf("Verify: %v, want a RefusedError", err)
			}
			if want := refusalReasons[tc.name]; want == "" || !strings.Contains(err.Error(), want) {
				t.Errorf("Verify: %v, want the reason %q", err, want)
			}
			if !strings.HasPrefix(err.Error(), "oidc: ") || strings.Contains(err.Error(), "oidc: oidc:") {
				t.Errorf("error %q: want one oidc: prefix", err)
			}
		})
	}
}

// refusalReasons are the reasons (in the log, not the public text) of
// TestVerifyRefuses' cases.
var refusalReasons = map[string]string{
	"alg none": `algorithm "none" is not allowed`,
	"HS256 with the public key (PEM) as secret":        `algorithm "HS256" is not allowed`,
	"HS256 with the public key (DER) as secret":        `algorithm "HS256" is not allowed`,
	"RS256 signature by another key under a known kid": "signature does not verify",
	"tampered claims":                           "signature does not verify",
	"unconfigured issuer":                       `issuer "https://evil.example" is not configured`,
	"issuer of another configured issuer's key": "signature does not verify",
	"wrong audience":                            "audience",
	"no audience":                               "audience",
	"expired":                                   "expired at",
	"no exp":                                    "no exp",
	"not yet valid":                             "not valid before",
	"issued in the future":                      "issued in the future",
	"lifetime over max_token_lifetime":          "the token lives",
	"exp too far ahead without iat":             "the token expires in",
	"unknown kid":                               "key id",
	"required claim with another value":         `required claim "repository_owner"`,
	"required claim missing":                    `required claim "repository_owner"`,
	"templated claim missing":                   `claim "run_id" is missing`,
	"templated claim not a scalar":              `claim "run_id" is missing or not a string`,
	"templated claim too long":                  `claim "run_id" has 257 bytes`,
	"agent ID too long":                         "the agent ID would be",
	"templated claim renders dot-dot":           `renders a ".." path segment`,
	"jti not a string":                          "jti claim",
	"RS256 not among the issuer's signing algs": `algorithm "RS384" is not allowed`,
}

func TestVerifyJTIOnce(t *testing.T) {
	f := newFakeIssuer(t)
	st := newState()
	v := newTestVerifier(t, st.clk, githubIssuer(f.srv.URL))
	tok := jwkstest.Sign(t, jose.RS256, rsaKey, "rsa-1", githubClaims(f.srv.URL))
	res, err := v.Verify(context.Background(), st, exchange(tok))
	if err != nil {
		t.Fatal(err)
	}
	st.consume(res)
	if _, err := v.Verify(context.Background(), st, exchange(tok)); !isRefused(err) || !strings.Contains(err.Error(), "already used") {
		t.Fatalf("replayed token: %v, want refused as already used", err)
	}
	// The same jti from another issuer is another record.
	if got, want := jtiID("gitlab", "example-id-1"), "gitlab/example-id-1"; got != want {
		t.Errorf("jtiID %q, want %q", got, want)
	}
	// A store that cannot answer fails closed.
	st2 := newState()
	st2.usedErr = errors.New("use-once records are not kept")
	if _, err := v.Verify(context.Background(), st2, exchange(tok)); err == nil || isRefused(err) {
		t.Fatalf("Verify with a failing State.Used: %v, want a (non-refusal) error", err)
	}
}

func TestVerifyWithoutJTIConsumesNothing(t *testing.T) {
	f := newFakeIssuer(t)
	st := newState()
	v := newTestVerifier(t, st.clk, githubIssuer(f.srv.URL))
	c := githubClaims(f.srv.URL)
	delete(c, "jti")
	for i := 0; i < 2; i++ { // replayable until exp, as documented
		res, err := v.Verify(context.Background(), st, exchange(jwkstest.Sign(t, jose.ES256, ecKey, "ec-1", c)))
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Consume) != 0 {
			t.Fatalf("Consume %+v, want none", res.Consume)
		}
	}
	if st.queries != 0 {
		t.Errorf("State.Used asked %d times for a token without jti", st.queries)
	}
}

func TestJTIIDHashesLongAndOddIDs(t *testing.T) {
	long := strings.Repeat("x", 300)
	for _, jti := range []string{long, "has space", "sha256:abc", "tab\t"} {
		id := jtiID("github", jti)
		if !strings.HasPrefix(id, "github/sha256:") || len(id) != len("github/sha256:")+64 {
			t.Errorf("jtiID(%q) = %q, want github/sha256:<hex>", jti, id)
		}
	}
	if jtiID("github", "a") == jtiID("github", "b") {
		t.Error("different jtis give one id")
	}
}

func TestVerifyMalformed(t *testing.T) {
	f := newFakeIssuer(t)
	st := newState()
	v := newTestVerifier(t, st.clk, githubIssuer(f.srv.URL))
	for _, p := range []string{"", "abc", "a.b", "a.b.c.d", "!!.e30.", "e30.!!.", "e30.e30.", "bnVsbA.e30.",
		base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"RS256"}`)) + ".W10.", strings.Repeat("a", MaxTokenLen+1)} {
		_, err := v.Verify(context.Background(), st, exchange(p))
		if err == nil || isRefused(err) || !strings.HasPrefix(err.Error(), "oidc: ") {
			t.Errorf("Verify(%.20q): %v, want a malformed-token error", p, err)
		}
	}
	if f.jwksHits.Load() != 0 || f.discoHits.Load() != 0 {
		t.Error("a malformed token made the verifier fetch")
	}
}

func TestVerifyUnreachableIssuerFailsClosed(t *testing.T) {
	testKeys(t)
	// A closed port: connection refused.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedURL := "http://" + l.Addr().String()
	l.Close()
	st := newState()
	v := newTestVerifier(t, st.clk, githubIssuer(closedURL))
	tok := jwkstest.Sign(t, jose.RS256, rsaKey, "rsa-1", githubClaims(closedURL))
	_, err = v.Verify(context.Background(), st, exchange(tok))
	if err == nil || isRefused(err) || !strings.Contains(err.Error(), keysUnavailable) {
		t.Fatalf("Verify against a closed port: %v, want a keys-unavailable error", err)
	}
	if strings.Contains(err.Error(), tok) {
		t.Error("the error echoes the token")
	}
	// The failure is remembered: the next verification fails at once.
	if _, err2 := v.Verify(context.Background(), st, exchange(tok)); err2 == nil || !strings.Contains(err2.Error(), "next attempt") {
		t.Fatalf("second Verify: %v, want the remembered failure", err2)
	}

	// An issuer that never answers: the caller's context bounds the wait.
	block := make(chan struct{})
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-block:
		case <-r.Context().Done():
		}
	}))
	defer hang.Close()
	defer close(block)
	v2 := newTestVerifier(t, st.clk, githubIssuer(hang.URL))
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := v2.Verify(ctx, st, exchange(jwkstest.Sign(t, jose.RS256, rsaKey, "rsa-1", githubClaims(hang.URL))))
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Verify against a hanging issuer: %v, want the context's deadline", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Verify did not return when its context ended")
	}
}

func TestKeyRotationAndUnknownKidRefetchBound(t *testing.T) {
	f := newFakeIssuer(t)
	st := newState()
	v := newTestVerifier(t, st.clk, githubIssuer(f.srv.URL))
	ok := func() {
		t.Helper()
		c := githubClaims(f.srv.URL)
		delete(c, "jti")
		if _, err := v.Verify(context.Background(), st, exchange(jwkstest.Sign(t, jose.RS256, rsaKey, "rsa-1", c))); err != nil {
			t.Fatal(err)
		}
	}
	ok()
	// Tokens naming an unknown kid: one refetch per refresh interval.
	unknown := jwkstest.Sign(t, jose.RS256, otherKey, "rsa-2", githubClaims(f.srv.URL))
	for i := 0; i < 5; i++ {
		if _, err := v.Verify(context.Background(), st, exchange(unknown)); !isRefused(err) {
			t.Fatalf("unknown kid: %v", err)
		}
	}
	if n := f.jwksHits.Load(); n != 1 {
		t.Fatalf("JWKS fetched %d times within the refresh interval, want 1", n)
	}
	// The issuer rotates to rsa-2; after the refresh interval the new key
	// is fetched for the token that names it.
	f.setKeys(jose.JSONWebKey{Key: otherKey.Public(), KeyID: "rsa-2", Algorithm: "RS256", Use: "sig"})
	st.clk.Add(DefaultConfig().RefreshInterval)
	c := githubClaims(f.srv.URL)
	c["iat"], c["nbf"], c["exp"] = st.Now().Unix(), st.Now().Unix(), st.Now().Add(time.Minute).Unix()
	if _, err := v.Verify(context.Background(), st, exchange(jwkstest.Sign(t, jose.RS256, otherKey, "rsa-2", c))); err != nil {
		t.Fatalf("rotated key: %v", err)
	}
	if n := f.jwksHits.Load(); n != 2 {
		t.Fatalf("JWKS fetched %d times, want 2", n)
	}
}

func TestConfigValidate(t *testing.T) {
	good := func() Config {
		c := DefaultConfig()
		c.Issuers = []IssuerConfig{githubIssuer("https://token.actions.githubusercontent.com")}
		return c
	}
	c := good()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(c.Issuers[0].SigningAlgs, ","); got != "RS256,ES256" {
		t.Errorf("default algs %s", got)
	}
	for name, mod := range map[string]func(*Config){
		"no issuer":        func(c *Config) { c.Issuers = nil },
		"HS256":            func(c *Config) { c.Issuers[0].SigningAlgs = []string{"HS256"} },
		"none":             func(c *Config) { c.Issuers[0].SigningAlgs = []string{"none"} },
		"no audience":      func(c *Config) { c.Issuers[0].Audiences = nil },
		"name issuer":      func(c *Config) { c.Issuers[0].Name = "issuer" },
		"name with colon":  func(c *Config) { c.Issuers[0].Name = "a:b" },
		"bad url":          func(c *Config) { c.Issuers[0].IssuerURL = "ftp://x" },
		"bad template":     func(c *Config) { c.Issuers[0].AgentID = "{{sub" },
		"literal template": func(c *Config) { c.Issuers[0].AgentID = "fixed" },
		"bad key":          func(c *Config) { c.Issuers[0].ClaimSelectors = map[string]string{"sub": "a:b"} },
		"duplicate key":    func(c *Config) { c.Issuers[0].ClaimSelectors = map[string]string{"sub": "k", "aud": "k"} },
		"lifetime 24h":     func(c *Config) { c.Issuers[0].MaxTokenLifetime = 24 * time.Hour },
		"duplicate issuer": func(c *Config) { c.Issuers = append(c.Issuers, c.Issuers[0]) },
		"skew":             func(c *Config) { c.ClockSkew = time.Hour },
	} {
		c := good()
		mod(&c)
		if err := c.Validate(); err == nil || !strings.HasPrefix(err.Error(), "oidc: ") {
			t.Errorf("%s: Validate = %v, want an oidc: error", name, err)
		}
	}
}

func TestTemplate(t *testing.T) {
	claims := map[string]any{"sub": "repo:acme/app:ref:refs/heads/main", "n": json.Number("12"), "b": true,
		"nested": map[string]any{"ns": "prod"}, "under_score": "a_b", "dots": "..", "empty": "", "arr": []any{"x"},
		"kubernetes.io": map[string]any{"namespace": "sigil", "serviceaccount": map[string]any{"name": "agent"}}}
	for tmpl, want := range map[string]string{
		"{{sub}}":                      "repo_3Aacme_2Fapp_3Aref_3Arefs_2Fheads_2Fmain",
		"{{claims.sub}}":               "repo_3Aacme_2Fapp_3Aref_3Arefs_2Fheads_2Fmain",
		"run-{{n}}/{{b}}":              "run-12/true",
		"{{claims.nested.ns}}/x_{{n}}": "prod/x_12",
		"{{under_score}}":              "a_5Fb",
		"{{kubernetes.io.namespace}}/{{kubernetes.io.serviceaccount.name}}": "sigil/agent",
	} {
		tp, err := parseTemplate(tmpl)
		if err != nil {
			t.Fatalf("%s: %v", tmpl, err)
		}
		got, err := tp.render(claims)
		if err != nil || got != want {
			t.Errorf("%s: %q, %v; want %q", tmpl, got, err, want)
		}
	}
	for _, tmpl := range []string{"{{dots}}", "{{empty}}", "{{arr}}", "{{missing}}", "{{nested}}"} {
		tp, err := parseTemplate(tmpl)
		if err != nil {
			t.Fatalf("%s: %v", tmpl, err)
		}
		if got, err := tp.render(claims); err == nil {
			t.Errorf("%s rendered %q, want an error", tmpl, got)
		}
	}
	for _, bad := range []string{"", "/{{sub}}", "{{sub}}/", "a//{{sub}}", "{{sub}}}", "{{}}", "{{a..b}}", "x y{{sub}}", "./{{sub}}",
		"{{a}}/{{b}}/{{c}}/{{d}}/{{e}}/{{f}}/{{g}}/{{h}}/{{i}}", "{{a.b.c.d.e.f.g}}", "sub", "{{s ub}}"} {
		if _, err := parseTemplate(bad); err == nil {
			t.Errorf("parseTemplate(%q) accepted", bad)
		}
	}
	if escapeSegment("a_b") == escapeSegment("a/b") || escapeSegment("_2F") == escapeSegment("/") {
		t.Error("escaping is not injective")
	}
}

func TestValidateSelector(t *testing.T) {
	for _, ok := range []string{"issuer:github", "github:repo:acme/app", "github:run:1:2"} {
		if err := ValidateSelector(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"github", "issuer:", "issuer:a:b", "github:repo", "github:repo:", "gi thub:k:v", ":k:v"} {
		if err := ValidateSelector(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

var _ crypto.Signer = (*rsa.PrivateKey)(nil)

func TestVerifyIssuerFetchesFailClosed(t *testing.T) {
	testKeys(t)
	good := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: rsaKey.Public(), KeyID: "rsa-1", Algorithm: "RS256", Use: "sig"}}}
	var url string
	var discoHits atomic.Int32
	mux := http.NewServeMux()
	mux.HandleFunc("/.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		discoHits.Add(1)
		json.NewEncoder(w).Encode(map[string]any{"issuer": "https://someone-else.example", "jwks_uri": url + "/jwks"})
	})
	mux.HandleFunc("/jwks", func(w http.ResponseWriter, r *http.Request) { json.NewEncoder(w).Encode(good) })
	mux.HandleFunc("/huge", func(w http.ResponseWriter, r *http.Request) {
		// A valid key set, padded past the bound with white space.
		b, _ := json.Marshal(good)
		w.Write([]byte(strings.Repeat(" ", maxFetchBytes)))
		w.Write(b)
	})
	mux.HandleFunc("/redirect", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/jwks", http.StatusFound) })
	srv := httptest.NewServer(mux)
	defer srv.Close()
	url = srv.URL
	c := githubClaims(url)
	delete(c, "jti")
	tok := exchange(jwkstest.Sign(t, jose.RS256, rsaKey, "rsa-1", c))

	// Discovery naming another issuer: refused to use it.
	st := newState()
	v := newTestVerifier(t, st.clk, githubIssuer(url))
	if _, err := v.Verify(context.Background(), st, tok); err == nil || !strings.Contains(err.Error(), keysUnavailable) {
		t.Fatalf("discovery of another issuer: %v", err)
	}
	// A configured jwks_url skips discovery.
	is := githubIssuer(url)
	is.JWKSURL = url + "/jwks"
	v = newTestVerifier(t, st.clk, is)
	before := discoHits.Load()
	if _, err := v.Verify(context.Background(), st, tok); err != nil {
		t.Fatalf("with jwks_url: %v", err)
	}
	if discoHits.Load() != before {
		t.Error("discovery fetched although jwks_url is configured")
	}
	// An oversized key set and a redirect are refused.
	for path, want := range map[string]string{"/huge": "over 1048576 bytes", "/redirect": "redirects are not followed"} {
		is.JWKSURL = url + path
		v = newTestVerifier(t, st.clk, is)
		if _, err := v.Verify(context.Background(), st, tok); err == nil || !strings.Contains(err.Error(), keysUnavailable) || !strings.Contains(err.Error(), want) {
			t.Errorf("jwks_url %s: %v, want keys unavailable: %s", path, err, want)
		}
	}
}
