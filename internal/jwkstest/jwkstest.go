// Package jwkstest is the fake token issuer of the JWT node attestors'
// tests (oidc, gcp_iit, azure_msi): an httptest server on loopback that
// serves discovery documents and JWKS of test keys, and helpers to mint
// tokens with go-jose or by hand (alg none, HS256 with a public key as
// the secret, and other malformed tokens).
package jwkstest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/go-jose/go-jose/v4"
)

var (
	keysOnce   sync.Once
	rsaKey     *rsa.PrivateKey
	otherKey   *rsa.PrivateKey
	ecKey      *ecdsa.PrivateKey
	errKeyMake error
)

func makeKeys(t testing.TB) {
	t.Helper()
	keysOnce.Do(func() {
		if rsaKey, errKeyMake = rsa.GenerateKey(rand.Reader, 2048); errKeyMake != nil {
			return
		}
		if otherKey, errKeyMake = rsa.GenerateKey(rand.Reader, 2048); errKeyMake != nil {
			return
		}
		ecKey, errKeyMake = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	})
	if errKeyMake != nil {
		t.Fatal(errKeyMake)
	}
}

// RSAKeys returns two RSA keys, made once per test binary.
func RSAKeys(t testing.TB) (*rsa.PrivateKey, *rsa.PrivateKey) {
	makeKeys(t)
	return rsaKey, otherKey
}

// ECKey returns a P-256 key, made once per test binary.
func ECKey(t testing.TB) *ecdsa.PrivateKey {
	makeKeys(t)
	return ecKey
}

// Sign signs claims with key (an *rsa.PrivateKey or *ecdsa.PrivateKey)
// under alg and kid (none when empty), with typ JWT.
func Sign(t testing.TB, alg jose.SignatureAlgorithm, key any, kid string, claims map[string]any) string {
	t.Helper()
	return SignWithHeaders(t, alg, key, kid, claims, nil)
}

// SignWithHeaders is Sign with more protected headers (such as Entra
// ID's x5t).
func SignWithHeaders(t testing.TB, alg jose.SignatureAlgorithm, key any, kid string, claims map[string]any, headers map[jose.HeaderKey]any) string {
	t.Helper()
	opts := (&jose.SignerOptions{}).WithType("JWT")
	for k, v := range headers {
		opts = opts.WithHeader(k, v)
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: jose.JSONWebKey{Key: key, KeyID: kid}}, opts)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	jws, err := s.Sign(b)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jws.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// HandToken builds a compact JWS by hand: header and claims as given, the
// signature from sig over the signing input (for tokens go-jose will not
// make: alg none, HS256 keyed with a public key).
func HandToken(header, claims map[string]any, sig func(input []byte) []byte) string {
	hb, _ := json.Marshal(header)
	cb, _ := json.Marshal(claims)
	input := base64.RawURLEncoding.EncodeToString(hb) + "." + base64.RawURLEncoding.EncodeToString(cb)
	return input + "." + base64.RawURLEncoding.EncodeToString(sig([]byte(input)))
}

// Issuer is a fake issuer on a loopback httptest server. Tests register
// its discovery and JWKS endpoints (ServeDiscovery, ServeJWKS) and any
// other endpoint of the platform on Mux.
type Issuer struct {
	// Server is the running server; URL is Server.URL.
	Server *httptest.Server
	URL    string
	// Mux routes the server's requests.
	Mux *http.ServeMux
	// JWKSHits and DiscoveryHits count the requests served.
	JWKSHits, DiscoveryHits atomic.Int64

	mu   sync.Mutex
	keys []jose.JSONWebKey
}

// NewIssuer starts an issuer serving keys (closed when t ends).
func NewIssuer(t testing.TB, keys ...jose.JSONWebKey) *Issuer {
	t.Helper()
	i := &Issuer{Mux: http.NewServeMux(), keys: keys}
	i.Server = httptest.NewServer(i.Mux)
	i.URL = i.Server.URL
	t.Cleanup(i.Server.Close)
	return i
}

// ServeDiscovery serves, at pattern, the JSON document doc(r) returns.
func (i *Issuer) ServeDiscovery(pattern string, doc func(r *http.Request) map[string]any) {
	i.Mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		i.DiscoveryHits.Add(1)
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(doc(r))
	})
}

// ServeJWKS serves, at pattern, the issuer's current keys as a JWKS.
func (i *Issuer) ServeJWKS(pattern string) {
	i.Mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		i.JWKSHits.Add(1)
		i.mu.Lock()
		set := jose.JSONWebKeySet{Keys: append([]jose.JSONWebKey(nil), i.keys...)}
		i.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(set)
	})
}

// SetKeys replaces the keys the JWKS serves.
func (i *Issuer) SetKeys(keys ...jose.JSONWebKey) {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.keys = keys
}

// AddKeys adds keys to the JWKS (a rotation).
func (i *Issuer) AddKeys(keys ...jose.JSONWebKey) {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.keys = append(i.keys, keys...)
}
