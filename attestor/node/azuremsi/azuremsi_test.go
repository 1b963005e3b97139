package azuremsi

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sigil-id/sigil/attestor/node"
	"github.com/sigil-id/sigil/attestor/node/internal/jwks"
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
	f := newFakeAzure(t)
	a := f.attestor(t)
	v := f.verifier(t, nil)
	st := newMemState(f.clk)
	p, err := a.Payload(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	res, err := v.Verify(context.Background(), st, payload(p))
	if err != nil {
		t.Fatal(err)
	}
	if res.ID != testTenant+"/"+testOID || len(res.Consume) != 0 {
		t.Fatalf("result %+v", res)
	}
	want := []string{"azure_msi:tenant:" + testTenant, "azure_msi:subscription:" + testSub,
		"azure_msi:resource-group:prod-rg", "azure_msi:vm-name:web-1"}
	if got := selectorStrings(res); !slices.Equal(got, want) {
		t.Fatalf("selectors %v, want %v", got, want)
	}
	for _, s := range res.Selectors {
		if err := ValidateSelector(s.Value); err != nil {
			t.Fatalf("produced selector %q fails ValidateSelector: %v", s.Value, err)
		}
	}
	// Re-attestation is allowed, with the same (cached) token too.
	st.Agents[res.ID] = node.AgentRecord{AttestedAt: t0}
	if _, err := v.Verify(context.Background(), st, payload(p)); err != nil {
		t.Fatalf("re-attestation: %v", err)
	}
	// A banned identity is refused.
	st.Agents[res.ID] = node.AgentRecord{Banned: true}
	_, err = v.Verify(context.Background(), st, payload(p))
	wantRefused(t, err, "banned")
	st.Err = errors.New("store unavailable")
	if _, err := v.Verify(context.Background(), st, payload(p)); err == nil || !strings.Contains(err.Error(), "store unavailable") {
		t.Fatalf("state error: %v", err)
	}
}

func TestSelectorsFromResourceID(t *testing.T) {
	for _, c := range []struct {
		mirid string
		want  []string
	}{
		{"", []string{"azure_msi:tenant:" + testTenant}},
		{"/subscriptions/" + strings.ToUpper(testSub) + "/resourceGroups/rg1/providers/Microsoft.ManagedIdentity/userAssignedIdentities/sigil-id",
			[]string{"azure_msi:tenant:" + testTenant, "azure_msi:subscription:" + testSub, "azure_msi:resource-group:rg1"}},
		{"/subscriptions/" + testSub + "/resourcegroups/rg2/providers/Microsoft.Compute/virtualMachineScaleSets/pool",
			[]string{"azure_msi:tenant:" + testTenant, "azure_msi:subscription:" + testSub, "azure_msi:resource-group:rg2"}},
	} {
		f := newFakeAzure(t)
		f.mirid = c.mirid
		res, err := f.verifier(t, nil).Verify(context.Background(), newMemState(f.clk), payload(f.token(t, f.claims(testTenant, testResource))))
		if err != nil {
			t.Fatalf("%q: %v", c.mirid, err)
		}
		if got := selectorStrings(res); !slices.Equal(got, c.want) {
			t.Errorf("%q: selectors %v, want %v", c.mirid, got, c.want)
		}
	}
}

func b64(v any) string {
	b, _ := json.Marshal(v)
	return base64.RawURLEncoding.EncodeToString(b)
}

func TestVerifyRefusals(t *testing.T) {
	f := newFakeAzure(t)
	_, other := testKeys(t)
	mut := func(m func(map[string]any)) string {
		c := f.claims(testTenant, testResource)
		m(c)
		return f.token(t, c)
	}
	hs256 := func() string {
		der, _ := x509.MarshalPKIXPublicKey(f.key.Public())
		head := b64(map[string]any{"alg": "HS256", "kid": f.kid, "typ": "JWT"})
		body := b64(f.claims(testTenant, testResource))
		m := hmac.New(sha256.New, der)
		m.Write([]byte(head + "." + body))
		return head + "." + body + "." + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
	}
	for _, c := range []struct{ name, token, reason string }{
		{"wrong issuer", mut(func(c map[string]any) { c["iss"] = "https://login.microsoftonline.com/" + testTenant + "/v2.0" }), "different provider"},
		{"another tenant's issuer", mut(func(c map[string]any) { c["iss"] = f.issuer(otherTenant) }), "different provider"},
		{"wrong resource", mut(func(c map[string]any) { c["aud"] = "https://management.azure.com/" }), "expected audience"},
		{"expired", mut(func(c map[string]any) { c["exp"] = t0.Add(-time.Second).Unix() }), "token expired"},
		{"not yet valid", mut(func(c map[string]any) { c["nbf"] = t0.Add(time.Hour).Unix() }), "nbf"},
		{"issued in the future", mut(func(c map[string]any) { c["iat"] = t0.Add(time.Hour).Unix() }), "issued in the future"},
		{"tenant not allowed", f.token(t, f.claims(otherTenant, testResource)), "tenant " + otherTenant + " is not allowed"},
		{"no oid", mut(func(c map[string]any) { delete(c, "oid") }), "oid"},
		{"bad xms_mirid", mut(func(c map[string]any) { c["xms_mirid"] = "/subscriptions/x/resourcegroups/y" }), "xms_mirid"},
		{"unknown kid", signRS256(t, f.key, "kid-unknown", f.claims(testTenant, testResource)), "failed to verify"},
		{"other key, known kid", signRS256(t, other, f.kid, f.claims(testTenant, testResource)), "failed to verify"},
		{"alg none", b64(map[string]any{"alg": "none", "typ": "JWT"}) + "." + b64(f.claims(testTenant, testResource)) + ".AAAA", "malformed jwt"},
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
	// Two tenants configured: a token is verified with its own tenant's
	// issuer, never the other's.
	v := f.verifier(t, func(c *VerifierConfig) { c.Tenants[otherTenant] = f.tenantConfig(otherTenant) })
	if _, err := v.Verify(context.Background(), newMemState(f.clk), payload(f.token(t, f.claims(otherTenant, testResource)))); err != nil {
		t.Fatalf("second tenant: %v", err)
	}
	c := f.claims(testTenant, testResource)
	c["iss"] = f.issuer(otherTenant)
	_, err := v.Verify(context.Background(), newMemState(f.clk), payload(f.token(t, c)))
	wantRefused(t, err, "different provider")
}

func TestVerifyMalformed(t *testing.T) {
	f := newFakeAzure(t)
	v := f.verifier(t, nil)
	for _, p := range []string{"", "not a token", "a.b", "a..c", "a.b.c.d", "a.b.c\n", "a.!!.c", "a.bm90IGpzb24.c",
		"a." + b64(map[string]any{"tid": "NOT-A-GUID"}) + ".c", strings.Repeat("a", MaxTokenLen) + ".b.c"} {
		_, err := v.Verify(context.Background(), newMemState(f.clk), payload(p))
		var r *node.RefusedError
		if err == nil || errors.As(err, &r) || !strings.HasPrefix(err.Error(), "azuremsi: ") {
			t.Errorf("payload %.20q: %v", p, err)
		}
	}
	_, err := v.Verify(context.Background(), newMemState(f.clk), payload("abc."+b64(map[string]any{"tid": testTenant})+".ghi"))
	wantRefused(t, err, "malformed jwt")
	if f.jwksHits.Load() != 0 {
		t.Fatalf("malformed tokens fetched the key set %d times", f.jwksHits.Load())
	}
}

func TestKeySetUnreachable(t *testing.T) {
	f := newFakeAzure(t)
	tok := f.token(t, f.claims(testTenant, testResource))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + l.Addr().String() + "/keys"
	l.Close()
	hang := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	}))
	defer slow.Close()
	defer close(hang)
	for name, u := range map[string]string{"refused": closed, "hanging": slow.URL + "/keys"} {
		t.Run(name, func(t *testing.T) {
			v := f.verifier(t, func(c *VerifierConfig) {
				tc := c.Tenants[testTenant]
				tc.JWKSURL = u
				c.Tenants[testTenant] = tc
				c.FetchTimeout = 200 * time.Millisecond
			})
			done := make(chan error, 1)
			go func() {
				_, err := v.Verify(context.Background(), newMemState(f.clk), payload(tok))
				done <- err
			}()
			select {
			case err := <-done:
				var r *node.RefusedError
				if err == nil || errors.As(err, &r) || !errors.Is(err, jwks.ErrUnavailable) ||
					!strings.HasPrefix(err.Error(), "azuremsi: cannot verify the token now") {
					t.Fatalf("want a key set failure, got %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("Verify did not return within the fetch timeout's bound")
			}
		})
	}
}

func TestKeySetCached(t *testing.T) {
	f := newFakeAzure(t)
	v := f.verifier(t, nil)
	st := newMemState(f.clk)
	for i := 0; i < 5; i++ {
		if _, err := v.Verify(context.Background(), st, payload(f.token(t, f.claims(testTenant, testResource)))); err != nil {
			t.Fatal(err)
		}
		_, err := v.Verify(context.Background(), st, payload(signRS256(t, f.key, "unknown", f.claims(testTenant, testResource))))
		wantRefused(t, err, "failed to verify")
	}
	if n := f.jwksHits.Load(); n != 1 {
		t.Fatalf("key set fetched %d times, want 1", n)
	}
	big := f.verifier(t, func(c *VerifierConfig) { c.MaxKeySetBytes = 64 })
	if _, err := big.Verify(context.Background(), st, payload(f.token(t, f.claims(testTenant, testResource)))); !errors.Is(err, jwks.ErrUnavailable) {
		t.Fatalf("oversized key set: %v", err)
	}
}

func TestAttestorIMDS(t *testing.T) {
	f := newFakeAzure(t)
	a := f.attestor(t)
	if !a.ChallengeFree() || a.Name() != Name {
		t.Fatal("attestor identity")
	}
	if _, err := a.Answer(context.Background(), []byte("x")); err == nil {
		t.Fatal("Answer accepted a challenge")
	}
	f.imdsStatus = http.StatusBadRequest
	if _, err := a.Payload(context.Background()); err == nil || !strings.Contains(err.Error(), "Identity not found") {
		t.Fatalf("IMDS error: %v", err)
	}
	c := DefaultAttestorConfig()
	if c.MetadataURL != DefaultMetadataURL || c.Validate() == nil {
		t.Fatalf("default config %+v", c)
	}
	c.Resource, c.MetadataURL = "r", "http://127.0.0.1:1/metadata/identity/oauth2/token"
	bad, _ := NewAttestor(c)
	if _, err := bad.Payload(context.Background()); err == nil || !strings.Contains(err.Error(), "managed identity") {
		t.Fatalf("unreachable IMDS: %v", err)
	}
}

func TestVerifierConfigValidate(t *testing.T) {
	ok := DefaultVerifierConfig()
	ok.Tenants = map[string]TenantConfig{testTenant: {Resource: "r"}}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	v, _ := NewVerifier(ok)
	if got := v.tenants[testTenant].cfg; got.IssuerURL != "https://sts.windows.net/"+testTenant+"/" ||
		got.JWKSURL != "https://login.microsoftonline.com/"+testTenant+"/discovery/keys" {
		t.Fatalf("defaults %+v", got)
	}
	for name, c := range map[string]VerifierConfig{
		"at least one tenant":  {FetchTimeout: time.Second, MaxKeySetBytes: 1},
		"lowercase GUID":       {Tenants: map[string]TenantConfig{strings.ToUpper(testTenant): {Resource: "r"}}, FetchTimeout: time.Second, MaxKeySetBytes: 1},
		"resource is required": {Tenants: map[string]TenantConfig{testTenant: {}}, FetchTimeout: time.Second, MaxKeySetBytes: 1},
		"jwks_url":             {Tenants: map[string]TenantConfig{testTenant: {Resource: "r", JWKSURL: "file:///x"}}, FetchTimeout: time.Second, MaxKeySetBytes: 1},
		"fetch timeout":        {Tenants: map[string]TenantConfig{testTenant: {Resource: "r"}}, MaxKeySetBytes: 1},
		"size bound":           {Tenants: map[string]TenantConfig{testTenant: {Resource: "r"}}, FetchTimeout: time.Second},
	} {
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), name) || !strings.HasPrefix(err.Error(), "azuremsi: ") {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestValidateSelector(t *testing.T) {
	for _, v := range []string{"tenant:" + testTenant, "subscription:" + testSub, "resource-group:prod-rg", "vm-name:web-1", "resource-group:équipe"} {
		if err := ValidateSelector(v); err != nil {
			t.Errorf("%q: %v", v, err)
		}
	}
	for _, v := range []string{"", "tenant", "tenant:" + strings.ToUpper(testTenant), "subscription:x", "resource-group:Prod", "vm-name:a/b", "vm-name:", "region:x"} {
		if err := ValidateSelector(v); err == nil {
			t.Errorf("%q accepted", v)
		}
	}
}
