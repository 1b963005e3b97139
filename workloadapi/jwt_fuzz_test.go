//go:build linux

package workloadapi

import (
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sigil-id/sigil/clock"
)

// signedBy reports whether token is a compact ES256 JWS whose header names
// key's key ID and whose signature verifies with key's public key. It is
// written independently of go-jose, which the server uses.
func signedBy(token string, key *jwtKey) bool {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return false
	}
	hdr, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil {
		return false
	}
	var h struct {
		Alg string `json:"alg"`
		Kid string `json:"kid"`
	}
	if json.Unmarshal(hdr, &h) != nil || h.Alg != "ES256" || h.Kid != key.kid {
		return false
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil || len(sig) != 64 {
		return false
	}
	pub, ok := key.key.Public().(*ecdsa.PublicKey)
	if !ok {
		return false
	}
	digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	r, s := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
	return ecdsa.Verify(pub, digest[:], r, s)
}

// jwtPart encodes v as a base64url JSON segment.
func jwtPart(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// FuzzValidateJWTSVID sends arbitrary tokens and audiences to a running
// Workload API's ValidateJWTSVID over its unix socket, with a go-spiffe
// gRPC client. Whatever the token, the server answers (no panic, no
// Internal error); it accepts a token only if an independent check finds
// it ES256-signed by the one key in the JWT bundle, and then reports a
// SPIFFE ID of the trust domain and the audience asked for.
func FuzzValidateJWTSVID(f *testing.F) {
	key := newJWTKey(f, td, nil, time.Hour)
	jc := newFakeJWTCache(key)
	jc.setJWTBundles(jwtBundleOf(key))
	fx := start(f, func(s *Server) {
		s.cache = jc
		s.clk = clock.NewFake(time.Now())
	})
	client := fx.rawClient(f)
	validate := func(token, aud string) (*workloadpb.ValidateJWTSVIDResponse, error) {
		ctx, cancel := context.WithTimeout(withHeader(context.Background()), 20*time.Second)
		defer cancel()
		return client.ValidateJWTSVID(ctx, &workloadpb.ValidateJWTSVIDRequest{Audience: aud, Svid: token})
	}

	id := spiffeid.RequireFromPath(td, "/workload")
	good := key.mint(f, id, "db", "cache")
	if _, err := validate(good, "db"); err != nil {
		f.Fatalf("a token signed by the bundle key is refused: %v", err)
	}
	parts := strings.Split(good, ".")
	other := newJWTKey(f, td, nil, time.Hour)
	otherTok := other.mint(f, id, "db")
	otherParts := strings.Split(otherTok, ".")
	claims := jwtPart(map[string]any{"sub": id.String(), "aud": []string{"db"}, "exp": time.Now().Add(time.Hour).Unix()})
	f.Add(good, "db")
	f.Add(good, "web")
	f.Add(otherTok, "db")
	// The bundle key's kid over another key's signature.
	f.Add(parts[0]+"."+otherParts[1]+"."+otherParts[2], "db")
	f.Add(parts[0]+"."+parts[1]+"."+otherParts[2], "db")
	// Unsigned and symmetric algorithms naming the bundle key.
	f.Add(jwtPart(map[string]string{"alg": "none", "kid": key.kid})+"."+claims+".", "db")
	f.Add(jwtPart(map[string]string{"alg": "HS256", "kid": key.kid, "typ": "JWT"})+"."+claims+"."+parts[2], "db")
	f.Add(parts[0]+"."+claims+"."+parts[2], "db")
	f.Add(parts[0]+"."+parts[1], "db")
	f.Add(good+"."+parts[2], "db")
	f.Add("not-a.jwt", "db")
	f.Add("", "db")
	f.Add(good, "")

	f.Fuzz(func(t *testing.T, token, aud string) {
		if !utf8.ValidString(token) || !utf8.ValidString(aud) {
			return // gRPC does not carry such strings
		}
		resp, err := validate(token, aud)
		if err != nil {
			if c := status.Code(err); c != codes.InvalidArgument {
				t.Fatalf("refusal with code %v: %v", c, err)
			}
			return
		}
		if !signedBy(token, key) {
			t.Fatalf("accepted a token not signed by the bundle key: %q", token)
		}
		got, err := spiffeid.FromString(resp.SpiffeId)
		if err != nil || got.TrustDomain() != td {
			t.Fatalf("accepted token with SPIFFE ID %q", resp.SpiffeId)
		}
		ok := false
		switch a := resp.Claims.AsMap()["aud"].(type) {
		case string:
			ok = a == aud
		case []any:
			for _, x := range a {
				ok = ok || x == aud
			}
		}
		if !ok {
			t.Fatalf("accepted token whose audience %v lacks %q", resp.Claims.AsMap()["aud"], aud)
		}
	})
}
