package main

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/sigil-id/sigil/attestor/node"
	"github.com/sigil-id/sigil/attestor/node/oidc"
)

// oidcBenchDuration is how long each oidc measurement runs.
const oidcBenchDuration = 2 * time.Second

// benchAttestOIDC prints the oidc node attestor's verifications per second
// (oidc.Verifier.Verify in-process on a GitHub Actions-shaped token, keys
// cached after the first fetch from an issuer on loopback, jti checked
// against an in-memory State) beside the raw signature verification rate
// of the token's algorithm (SHA-256 and RSA-2048 PKCS#1 v1.5 for RS256,
// SHA-256 and ECDSA P-256 for ES256) over the same signing input.
func benchAttestOIDC(ctx context.Context) error {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	var issuer string
	mux := http.NewServeMux()
	mux.HandleFunc("/.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(map[string]any{"issuer": issuer, "jwks_uri": issuer + "/jwks"})
	})
	mux.HandleFunc("/jwks", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{
			{Key: rsaKey.Public(), KeyID: "rsa", Algorithm: "RS256", Use: "sig"},
			{Key: ecKey.Public(), KeyID: "ec", Algorithm: "ES256", Use: "sig"},
		}})
	})
	srv := httptest.NewServer(mux) // loopback
	defer srv.Close()
	issuer = srv.URL

	cfg := oidc.DefaultConfig()
	cfg.Issuers = []oidc.IssuerConfig{{
		Name: "github", IssuerURL: issuer, Audiences: []string{"sigil"},
		ClaimSelectors: map[string]string{"repository": "repo", "repository_owner": "owner", "workflow": "workflow"},
		AgentID:        "{{claims.repository}}/{{claims.run_id}}",
		RequiredClaims: map[string]string{"repository_owner": "acme"},
	}}
	v, err := oidc.NewVerifier(cfg)
	if err != nil {
		return err
	}
	now := time.Now()
	claims := map[string]any{
		"jti": "bench", "sub": "repo:acme/app:ref:refs/heads/main", "aud": "sigil", "iss": issuer,
		"repository": "acme/app", "repository_owner": "acme", "run_id": "9876543210", "workflow": "deploy",
		"ref": "refs/heads/main", "event_name": "push",
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(5 * time.Minute).Unix(),
	}
	st := benchOIDCState{}
	for _, tc := range []struct {
		alg   jose.SignatureAlgorithm
		key   crypto.Signer
		kid   string
		label string
		raw   func(digest, sig []byte) bool
	}{
		{jose.RS256, rsaKey, "rsa", "RS256 (RSA-2048)", func(d, s []byte) bool {
			return rsa.VerifyPKCS1v15(&rsaKey.PublicKey, crypto.SHA256, d, s) == nil
		}},
		{jose.ES256, ecKey, "ec", "ES256 (P-256)", func(d, s []byte) bool {
			// JWS ES256 signatures are r||s; the raw rate uses ASN.1, as
			// crypto/ecdsa verifies.
			return ecdsa.VerifyASN1(&ecKey.PublicKey, d, s)
		}},
	} {
		signer, err := jose.NewSigner(jose.SigningKey{Algorithm: tc.alg, Key: jose.JSONWebKey{Key: tc.key, KeyID: tc.kid}}, (&jose.SignerOptions{}).WithType("JWT"))
		if err != nil {
			return err
		}
		b, _ := json.Marshal(claims)
		jws, err := signer.Sign(b)
		if err != nil {
			return err
		}
		token, err := jws.CompactSerialize()
		if err != nil {
			return err
		}
		input := token[:strings.LastIndexByte(token, '.')]
		d := sha256.Sum256([]byte(input))
		sig, err := tc.key.Sign(rand.Reader, d[:], crypto.SHA256)
		if err != nil {
			return err
		}
		// The first verification fetches and caches the keys.
		if _, err := v.Verify(ctx, st, benchOIDCExchange(token)); err != nil {
			return fmt.Errorf("oidc bench: %w", err)
		}
		raw := parallelRate(oidcBenchDuration, func() error {
			d := sha256.Sum256([]byte(input))
			if !tc.raw(d[:], sig) {
				return errors.New("raw verify failed")
			}
			return nil
		})
		rate := parallelRate(oidcBenchDuration, func() error {
			_, err := v.Verify(ctx, st, benchOIDCExchange(token))
			return err
		})
		fmt.Printf("%-44s %9.0f /s\n", "limit  raw "+tc.label+" verifications:", raw)
		fmt.Printf("%-44s %9.0f /s  (%.2f of raw %s verify)\n", "attest oidc tokens verified ("+string(tc.alg)+"):", rate, rate/raw, tc.alg)
	}
	return nil
}

// benchOIDCState is a node.State with no use-once record: every jti is new.
type benchOIDCState struct{}

func (benchOIDCState) Now() time.Time { return time.Now() }
func (benchOIDCState) CredentialExpiry(context.Context, node.Credential) (time.Time, error) {
	return time.Time{}, node.ErrNotFound
}
func (benchOIDCState) Used(context.Context, node.Credential) (bool, error) { return false, nil }
func (benchOIDCState) Agent(context.Context, string) (node.AgentRecord, error) {
	return node.AgentRecord{}, node.ErrNotFound
}

type benchOIDCExchange []byte

func (e benchOIDCExchange) Payload() []byte { return e }
func (benchOIDCExchange) Challenge(context.Context, []byte) ([]byte, error) {
	return nil, errors.New("oidc bench: no challenge expected")
}
