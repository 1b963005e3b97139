package integration

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// signES256 makes a compact JWS with key, for tokens the server would never
// issue (expired, unknown key).
func signES256(t *testing.T, key *ecdsa.PrivateKey, kid string, claims map[string]any) string {
	t.Helper()
	h, _ := json.Marshal(map[string]string{"alg": "ES256", "kid": kid, "typ": "JWT"})
	c, _ := json.Marshal(claims)
	input := base64.RawURLEncoding.EncodeToString(h) + "." + base64.RawURLEncoding.EncodeToString(c)
	sum := sha256.Sum256([]byte(input))
	r, s, err := ecdsa.Sign(rand.Reader, key, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return input + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// TestJWTSVID: go-spiffe's JWTSource fetches a token for audience X;
// ValidateJWTSVID and jwtsvid.ParseAndValidate against the fetched JWT
// bundle accept it; a token for another audience, an expired one and one
// signed by an unknown key are refused with clear errors. The CLI fetches
// and validates too.
func TestJWTSVID(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	root := t.TempDir()
	s := newServerWith(t, filepath.Join(root, "server"), `
  jwt_svid_ttl = "4s"`)
	s.start()
	a := newAgent(t, s, filepath.Join(root, "agent"))
	a.start()
	want := "spiffe://" + trustDomain + "/it/jwt"
	createEntry(t, s, want, a.id, uidSelector(t))
	fetchID(t, a.socket, want)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	addr := workloadapi.WithClientOptions(workloadapi.WithAddr("unix://" + a.socket))
	src, err := workloadapi.NewJWTSource(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	svid, err := src.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "X"})
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID.String() != want || len(svid.Audience) != 1 || svid.Audience[0] != "X" {
		t.Fatalf("JWT-SVID %s for %v", svid.ID, svid.Audience)
	}
	token := svid.Marshal()

	// The fetched JWT bundle validates it; the Workload API does too.
	if _, err := jwtsvid.ParseAndValidate(token, src, []string{"X"}); err != nil {
		t.Fatalf("ParseAndValidate with the fetched bundle: %v", err)
	}
	client, err := workloadapi.New(ctx, workloadapi.WithAddr("unix://"+a.socket))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	got, err := client.ValidateJWTSVID(ctx, token, "X")
	if err != nil || got.ID.String() != want {
		t.Fatalf("ValidateJWTSVID: %v %v", got, err)
	}
	// Another audience is refused.
	if _, err := jwtsvid.ParseAndValidate(token, src, []string{"Y"}); err == nil || !strings.Contains(err.Error(), "audience") {
		t.Errorf("ParseAndValidate for audience Y: %v", err)
	}
	if _, err := client.ValidateJWTSVID(ctx, token, "Y"); err == nil || !strings.Contains(err.Error(), "audience") {
		t.Errorf("ValidateJWTSVID for audience Y: %v", err)
	}
	// A key nobody published is refused.
	stranger, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	forged := signES256(t, stranger, "not-a-sigil-key", map[string]any{"sub": want, "aud": []string{"X"}, "exp": time.Now().Add(time.Minute).Unix()})
	if _, err := jwtsvid.ParseAndValidate(forged, src, []string{"X"}); err == nil || !strings.Contains(err.Error(), "no JWT authority") {
		t.Errorf("ParseAndValidate of a token signed by an unknown key: %v", err)
	}
	if _, err := client.ValidateJWTSVID(ctx, forged, "X"); err == nil || !strings.Contains(err.Error(), "no JWT authority") {
		t.Errorf("ValidateJWTSVID of a token signed by an unknown key: %v", err)
	}
	// An expired token, signed with the server's real key (read from its
	// disk key manager, as only a test may), is refused.
	keyPEM, err := os.ReadFile(filepath.Join(s.dir, "data", "keys", "jwt-key-1.key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(keyPEM)
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	realKey := k.(*ecdsa.PrivateKey)
	kid := svidKid(t, token)
	expired := signES256(t, realKey, kid, map[string]any{"sub": want, "aud": []string{"X"}, "exp": time.Now().Add(-2 * time.Minute).Unix(), "iat": time.Now().Add(-3 * time.Minute).Unix()})
	if _, err := jwtsvid.ParseAndValidate(expired, src, []string{"X"}); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("ParseAndValidate of an expired token: %v", err)
	}
	if _, err := client.ValidateJWTSVID(ctx, expired, "X"); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("ValidateJWTSVID of an expired token: %v", err)
	}
	// The real key signing a fresh token is accepted: the forgeries were
	// refused for the right reason.
	fresh := signES256(t, realKey, kid, map[string]any{"sub": want, "aud": []string{"X"}, "exp": time.Now().Add(time.Minute).Unix()})
	if _, err := client.ValidateJWTSVID(ctx, fresh, "X"); err != nil {
		t.Errorf("ValidateJWTSVID of a well-signed token: %v", err)
	}

	// The agent caches the token and refreshes it past half its life
	// (4s TTL): the same token at once, a new one after 2.5s.
	again, err := src.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "X"})
	if err != nil || again.Marshal() != token {
		t.Errorf("second fetch: %v (same token: %v)", err, err == nil && again.Marshal() == token)
	}
	time.Sleep(2500 * time.Millisecond)
	later, err := src.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "X"})
	if err != nil || later.Marshal() == token {
		t.Errorf("fetch past half-life: %v (refreshed: %v)", err, err == nil && later.Marshal() != token)
	}
	// Once the first token expires (exp + the 1 minute leeway of go-jose
	// does not apply to the agent) the agent's validation refuses it.
	time.Sleep(time.Until(svid.Expiry.Add(1100 * time.Millisecond)))
	if _, err := client.ValidateJWTSVID(ctx, token, "X"); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("ValidateJWTSVID of a token past its exp: %v", err)
	}

	// The CLI.
	out := sigil(t, "svid", "fetch", "-jwt", "-audience", "X", "-socket", a.socket)
	if !strings.Contains(out, want) || !strings.Contains(out, "Token            : ey") {
		t.Fatalf("svid fetch -jwt:\n%s", out)
	}
	tok := out[strings.Index(out, "Token            : ")+len("Token            : "):]
	tok = strings.TrimSpace(strings.SplitN(tok, "\n", 2)[0])
	out = sigil(t, "jwt", "validate", "-audience", "X", "-token", tok, "-socket", a.socket)
	if !strings.Contains(out, "Valid            : yes") || !strings.Contains(out, want) {
		t.Fatalf("jwt validate:\n%s", out)
	}
	if out, err := sigilErr("jwt", "validate", "-audience", "Y", "-token", tok, "-socket", a.socket); err == nil || !strings.Contains(out, "not valid for audience") {
		t.Fatalf("jwt validate for another audience: %v\n%s", err, out)
	}
}

// svidKid returns the kid of a compact JWS.
func svidKid(t *testing.T, token string) string {
	t.Helper()
	h, err := base64.RawURLEncoding.DecodeString(strings.Split(token, ".")[0])
	if err != nil {
		t.Fatal(err)
	}
	var hdr struct {
		Kid string `json:"kid"`
	}
	json.Unmarshal(h, &hdr)
	return hdr.Kid
}
