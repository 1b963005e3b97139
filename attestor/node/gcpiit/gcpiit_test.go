package gcpiit

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/sigil-id/sigil/attestor/node"
	"github.com/sigil-id/sigil/attestor/node/internal/jwks"
	"github.com/sigil-id/sigil/internal/eventually"
	"github.com/sigil-id/sigil/internal/jwkstest"
)

func selectorStrings(res *node.Result) []string {
	var out []string
	for _, s := range res.Selectors {
		out = append(out, s.Type+":"+s.Value)
	}
	return out
}

func wantRefused(t *testing.T, err error, reason string) {
	t.Helper()
	var r *node.RefusedError
	if !errors.As(err, &r) {
		t.Fatalf("want a refusal (%s), got %v", reason, err)
	}
	if r.Public != Public {
		t.Fatalf("public text %q, want %q", r.Public, Public)
	}
	if !strings.Contains(r.Reason, reason) {
		t.Fatalf("reason %q does not say %q", r.Reason, reason)
	}
}

func TestAttestAccepted(t *testing.T) {
	f := newFakeGoogle(t)
	p, err := f.attestor(t).Payload(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	st := newMemState(f.clk)
	res, err := f.verifier(t, nil).Verify(context.Background(), st, payload(p))
	if err != nil {
		t.Fatal(err)
	}
	if res.ID != "sigil-prod-1/europe-west1-b/5270481276397362849" {
		t.Fatalf("agent id %q", res.ID)
	}
	want := []string{
		"gcp_iit:project-id:sigil-prod-1", "gcp_iit:zone:europe-west1-b",
		"gcp_iit:instance-name:web-1", "gcp_iit:instance-id:5270481276397362849",
	}
	if got := selectorStrings(res); !slices.Equal(got, want) {
		t.Fatalf("selectors %v, want %v", got, want)
	}
	for _, s := range res.Selectors {
		if err := ValidateSelector(s.Value); err != nil {
			t.Fatalf("produced selector %q fails ValidateSelector: %v", s.Value, err)
		}
	}
	sum := sha256.Sum256(p)
	if len(res.Consume) != 1 || res.Consume[0].Kind != "gcp_iit" || res.Consume[0].ID != hex.EncodeToString(sum[:]) ||
		!res.Consume[0].ExpiresAt.Equal(t0.Add(time.Hour)) {
		t.Fatalf("consume %+v", res.Consume)
	}
	// The token works once.
	st.Record(res)
	_, err = f.verifier(t, func(c *VerifierConfig) { c.AllowReattestation = true }).Verify(context.Background(), st, payload(p))
	wantRefused(t, err, "already used")
}

// mutated returns a token of the fake's claims changed by mutate.
func mutated(t *testing.T, f *fakeGoogle, mutate func(map[string]any)) string {
	c := f.claims(testAudience)
	mutate(c)
	return f.token(t, c)
}

func b64(v any) string {
	b, _ := json.Marshal(v)
	return base64.RawURLEncoding.EncodeToString(b)
}

func TestVerifyRefusals(t *testing.T) {
	f := newFakeGoogle(t)
	_, other := testKeys(t)
	ce := func(c map[string]any) map[string]any {
		return c["google"].(map[string]any)["compute_engine"].(map[string]any)
	}
	hs256 := func() string {
		// HS256 with the issuer's public key as the secret: the
		// classic confusion attack.
		der, _ := x509.MarshalPKIXPublicKey(f.key.Public())
		head := b64(map[string]any{"alg": "HS256", "kid": f.kid, "typ": "JWT"})
		body := b64(f.claims(testAudience))
		m := hmac.New(sha256.New, der)
		m.Write([]byte(head + "." + body))
		return head + "." + body + "." + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
	}
	for _, c := range []struct {
		name, token, reason string
	}{
		{"wrong issuer", mutated(t, f, func(c map[string]any) { c["iss"] = "https://accounts.example.com" }), "different provider"},
		{"wrong audience", mutated(t, f, func(c map[string]any) { c["aud"] = "https://other.example.org" }), "expected audience"},
		{"expired", mutated(t, f, func(c map[string]any) { c["exp"] = t0.Add(-time.Second).Unix() }), "token expired"},
		{"not yet valid", mutated(t, f, func(c map[string]any) { c["nbf"] = t0.Add(time.Hour).Unix() }), "nbf"},
		{"issued in the future", mutated(t, f, func(c map[string]any) { c["iat"] = t0.Add(time.Hour).Unix() }), "issued in the future"},
		{"lives too long", mutated(t, f, func(c map[string]any) { c["exp"] = t0.Add(25 * time.Hour).Unix() }), "more than 24h"},
		{"project not allowed", mutated(t, f, func(c map[string]any) { ce(c)["project_id"] = "someone-else" }), "not in project_allow_list"},
		{"standard format", mutated(t, f, func(c map[string]any) { delete(c, "google") }), "format=full"},
		{"domain-scoped project", mutated(t, f, func(c map[string]any) { ce(c)["project_id"] = "example.com:proj" }), "domain-scoped"},
		{"bad instance id", mutated(t, f, func(c map[string]any) { ce(c)["instance_id"] = "12/../34" }), "instance_id"},
		{"instance id as a number", mutated(t, f, func(c map[string]any) { ce(c)["instance_id"] = 12 }), "claims"},
		{"unknown kid", jwkstest.Sign(t, jose.RS256, f.key, "kid-unknown", f.claims(testAudience)), "failed to verify"},
		{"other key, known kid", jwkstest.Sign(t, jose.RS256, other, f.kid, f.claims(testAudience)), "failed to verify"},
		{"alg none", b64(map[string]any{"alg": "none", "typ": "JWT"}) + "." + b64(f.claims(testAudience)) + ".AAAA", "malformed jwt"},
		{"HS256 with the public key", hs256(), "malformed jwt"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := f.verifier(t, nil).Verify(context.Background(), newMemState(f.clk), payload(c.token))
			wantRefused(t, err, c.reason)
			if strings.Contains(err.Error(), c.token) {
				t.Fatal("the error echoes the token")
			}
		})
	}
}

func TestVerifyMalformed(t *testing.T) {
	f := newFakeGoogle(t)
	v := f.verifier(t, nil)
	for _, p := range []string{"", "not a token", "a.b", "a..c", "a.b.c.d", "a.b.c\n", strings.Repeat("a", MaxTokenLen) + ".b.c"} {
		_, err := v.Verify(context.Background(), newMemState(f.clk), payload(p))
		var r *node.RefusedError
		if err == nil || errors.As(err, &r) || !strings.HasPrefix(err.Error(), "gcpiit: ") {
			t.Errorf("payload %.20q: %v", p, err)
		}
	}
	// Well-formed base64url parts that are not a JWS are refused.
	_, err := v.Verify(context.Background(), newMemState(f.clk), payload("abc.def.ghi"))
	wantRefused(t, err, "malformed jwt")
	if f.jwksHits.Load() != 0 {
		t.Fatalf("malformed tokens fetched the key set %d times", f.jwksHits.Load())
	}
}

func TestTrustOnFirstUse(t *testing.T) {
	f := newFakeGoogle(t)
	a := f.attestor(t)
	st := newMemState(f.clk)
	attest := func(v *Verifier) (*node.Result, error) {
		p, err := a.Payload(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return v.Verify(context.Background(), st, payload(p))
	}
	tofu := f.verifier(t, nil)
	res, err := attest(tofu)
	if err != nil {
		t.Fatal(err)
	}
	if !res.FirstAttestation {
		t.Fatal("a trust-on-first-use attestation is not marked FirstAttestation: two concurrent ones could both get in")
	}
	st.Record(res)
	f.clk.Add(time.Second) // a new token
	_, err = attest(tofu)
	wantRefused(t, err, "already attested")
	again := f.verifier(t, func(c *VerifierConfig) { c.AllowReattestation = true })
	if res, err := attest(again); err != nil || res.FirstAttestation {
		t.Fatalf("re-attestation allowed: %+v %v", res, err)
	}
	// Evicted: admitted again.
	delete(st.Agents, res.ID)
	if _, err := attest(tofu); err != nil {
		t.Fatalf("after eviction: %v", err)
	}
	// Banned: never.
	st.Agents[res.ID] = node.AgentRecord{Banned: true}
	for _, v := range []*Verifier{tofu, again} {
		_, err = attest(v)
		wantRefused(t, err, "banned")
	}
	// The state failing fails the attestation closed.
	st.Err = errors.New("store unavailable")
	if _, err := attest(again); err == nil || !strings.Contains(err.Error(), "store unavailable") {
		t.Fatalf("state error: %v", err)
	}
}

func TestKeySetUnreachable(t *testing.T) {
	f := newFakeGoogle(t)
	tok := f.token(t, f.claims(testAudience))
	// A port nobody listens on.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + l.Addr().String() + "/certs"
	l.Close()
	// A server that never answers.
	hang := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	}))
	defer slow.Close()
	defer close(hang)
	for name, u := range map[string]string{"refused": closed, "hanging": slow.URL + "/certs"} {
		t.Run(name, func(t *testing.T) {
			v := f.verifier(t, func(c *VerifierConfig) { c.JWKSURL, c.FetchTimeout = u, 200*time.Millisecond })
			done := make(chan error, 1)
			go func() {
				_, err := v.Verify(context.Background(), newMemState(f.clk), payload(tok))
				done <- err
			}()
			select {
			case err := <-done:
				var r *node.RefusedError
				if err == nil || errors.As(err, &r) || !errors.Is(err, jwks.ErrUnavailable) {
					t.Fatalf("want a key set failure, got %v", err)
				}
				if !strings.HasPrefix(err.Error(), "gcpiit: cannot verify the token now") {
					t.Fatalf("error %q", err)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("Verify did not return within the fetch timeout's bound")
			}
		})
	}
}

func TestVerifyReturnsWhenContextEnds(t *testing.T) {
	f := newFakeGoogle(t)
	hang := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	}))
	defer slow.Close()
	defer close(hang)
	v := f.verifier(t, func(c *VerifierConfig) { c.JWKSURL = slow.URL + "/certs" })
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := v.Verify(ctx, newMemState(f.clk), payload(f.token(t, f.claims(testAudience))))
	var r *node.RefusedError
	if !errors.Is(err, context.Canceled) || errors.As(err, &r) || !strings.HasPrefix(err.Error(), "gcpiit: ") {
		t.Fatalf("cancelled: %v", err)
	}
}

func TestKeySetBoundedAndCached(t *testing.T) {
	f := newFakeGoogle(t)
	v := f.verifier(t, nil)
	st := newMemState(f.clk)
	good := f.token(t, f.claims(testAudience))
	if _, err := v.Verify(context.Background(), st, payload(good)); err != nil {
		t.Fatal(err)
	}
	// A flood of unknown key ids costs one fetch per refresh interval.
	for i := 0; i < 20; i++ {
		_, err := v.Verify(context.Background(), st, payload(jwkstest.Sign(t, jose.RS256, f.key, "kid-new", f.claims(testAudience))))
		wantRefused(t, err, "failed to verify")
	}
	if n := f.jwksHits.Load(); n != 1 {
		t.Fatalf("key set fetched %d times, want 1 within the refresh interval", n)
	}
	// Google rotates: the new key is served; after the interval it is
	// fetched and its tokens accepted.
	_, k2 := testKeys(t)
	f.iss.AddKeys(jose.JSONWebKey{Key: k2.Public(), KeyID: "kid-2", Algorithm: "RS256", Use: "sig"})
	f.clk.Add(time.Minute)
	rotated := jwkstest.Sign(t, jose.RS256, k2, "kid-2", f.claims(testAudience))
	// go-oidc lets a verification join a key set refresh already in
	// flight, whose answer (the old set, from before the interval) may
	// not have the new key yet: the next verification refreshes.
	eventually.NoError(t, 10*time.Second, func() error {
		_, err := v.Verify(context.Background(), st, payload(rotated))
		return err
	})
	if n := f.jwksHits.Load(); n != 2 {
		t.Fatalf("key set fetched %d times, want 2", n)
	}
	// A key set over the size bound is not used.
	big := f.verifier(t, func(c *VerifierConfig) { c.MaxKeySetBytes = 100 })
	if _, err := big.Verify(context.Background(), st, payload(good)); !errors.Is(err, jwks.ErrUnavailable) || !strings.Contains(err.Error(), "over 100 bytes") {
		t.Fatalf("oversized key set: %v", err)
	}
}

func TestAttestorMetadataServer(t *testing.T) {
	f := newFakeGoogle(t)
	a := f.attestor(t)
	p, err := a.Payload(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// The fake signed what the attestor asked for: the audience, with
	// the instance claims (format=full).
	res, err := f.verifier(t, nil).Verify(context.Background(), newMemState(f.clk), payload(p))
	if err != nil || res.ID == "" {
		t.Fatalf("%v", err)
	}
	if !a.ChallengeFree() {
		t.Fatal("not challenge-free")
	}
	if _, err := a.Answer(context.Background(), []byte("x")); err == nil {
		t.Fatal("Answer accepted a challenge")
	}
	f.metadataStatus = http.StatusServiceUnavailable
	if _, err := a.Payload(context.Background()); err == nil || !strings.Contains(err.Error(), "503") {
		t.Fatalf("503: %v", err)
	}
	f.metadataStatus = 0
	f.noFlavor = true
	if _, err := a.Payload(context.Background()); err == nil || !strings.Contains(err.Error(), "Metadata-Flavor") {
		t.Fatalf("no Metadata-Flavor: %v", err)
	}
	c := DefaultAttestorConfig()
	if c.MetadataURL != DefaultMetadataURL || c.Validate() == nil {
		t.Fatalf("default config %+v", c)
	}
}

func TestVerifierConfigValidate(t *testing.T) {
	ok := DefaultVerifierConfig()
	ok.Audience, ok.ProjectAllowList = "aud", []string{"p-1"}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, m := range map[string]func(*VerifierConfig){
		"audience":           func(c *VerifierConfig) { c.Audience = "" },
		"project_allow_list": func(c *VerifierConfig) { c.ProjectAllowList = nil },
		"not a project ID":   func(c *VerifierConfig) { c.ProjectAllowList = []string{"a/b"} },
		"issuer_url":         func(c *VerifierConfig) { c.IssuerURL = "ftp://x" },
		"jwks_url":           func(c *VerifierConfig) { c.JWKSURL = "" },
		"fetch timeout":      func(c *VerifierConfig) { c.FetchTimeout = 0 },
		"size bound":         func(c *VerifierConfig) { c.MaxKeySetBytes = 0 },
	} {
		c := ok
		m(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), name) || !strings.HasPrefix(err.Error(), "gcpiit: ") {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestValidateSelector(t *testing.T) {
	for _, v := range []string{"project-id:p-1", "zone:us-central1-a", "instance-name:web-1", "instance-id:123"} {
		if err := ValidateSelector(v); err != nil {
			t.Errorf("%q: %v", v, err)
		}
	}
	for _, v := range []string{"", "project-id", "project-id:", "zone:a/b", "instance-id:12a", "region:x", "instance-name:" + strings.Repeat("a", 64)} {
		if err := ValidateSelector(v); err == nil {
			t.Errorf("%q accepted", v)
		}
	}
}

// The fetcher recognizes the configured key set URL however it is
// spelled, as go-oidc's requests spell it.
func TestKeySetURLSpelling(t *testing.T) {
	f := newFakeGoogle(t)
	v := f.verifier(t, func(c *VerifierConfig) { c.JWKSURL = "HTTP://" + strings.TrimPrefix(c.JWKSURL, "http://") })
	if _, err := v.Verify(context.Background(), newMemState(f.clk), payload(f.token(t, f.claims(testAudience)))); err != nil {
		t.Fatal(err)
	}
}
