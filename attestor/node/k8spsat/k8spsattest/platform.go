// Package k8spsattest is a fake Kubernetes cluster for tests of the
// k8s_psat attestor: a loopback TLS server that serves the service account
// issuer's OIDC discovery document and JWKS, the TokenReview API and the
// node and pod objects, in the shapes a real API server gives them, and
// that mints projected service account tokens signed by its RSA key.
package k8spsattest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// KeyID is the kid of the platform's signing key.
const KeyID = "fake-k8s-sa-key-1"

// Pod is a pod the fake API server knows.
type Pod struct {
	UID      string
	NodeName string
}

// Node is a node the fake API server knows.
type Node struct {
	UID    string
	Labels map[string]string
}

// Platform is a fake cluster. Its maps may be changed between calls
// under Lock/Unlock.
type Platform struct {
	// URL is the server's base URL (https://127.0.0.1:port); Issuer is
	// the service account issuer (the same URL, so discovery is found at
	// Issuer/.well-known/openid-configuration).
	URL, Issuer string
	// CAPath is a PEM file of the CA of the server's certificate (a CA
	// of this platform's own).
	CAPath string
	// ReviewerTokenPath is a file holding the bearer token the fake API
	// server accepts (ReviewerToken).
	ReviewerTokenPath, ReviewerToken string
	// Key signs tokens.
	Key *rsa.PrivateKey

	mu    sync.Mutex
	pods  map[string]Pod // "<ns>/<name>"
	nodes map[string]Node
	// Unavailable makes every request fail with 503.
	unavailable atomic.Bool
	counts      sync.Map // path kind -> *atomic.Int64
	srv         *httptest.Server
}

// New starts a fake cluster on loopback; it stops at the end of t.
func New(t testing.TB) *Platform {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	p := &Platform{Key: key, pods: map[string]Pod{}, nodes: map[string]Node{}, ReviewerToken: "reviewer-bearer-token"}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(p.serve))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv.Listener = ln
	caPEM, leaf := newCert(t)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{leaf}, MinVersion: tls.VersionTLS12}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	p.srv = srv
	p.URL, p.Issuer = srv.URL, srv.URL
	dir := t.TempDir()
	p.CAPath = filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(p.CAPath, caPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	p.ReviewerTokenPath = filepath.Join(dir, "reviewer.token")
	if err := os.WriteFile(p.ReviewerTokenPath, []byte(p.ReviewerToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// newCert makes a CA of the platform's own (each platform trusts only its
// own) and a server certificate for 127.0.0.1 issued by it.
func newCert(t testing.TB) (caPEM []byte, leaf tls.Certificate) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fake kubernetes CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "kube-apiserver"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// SetPod adds or replaces the pod ns/name.
func (p *Platform) SetPod(ns, name string, pod Pod) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.pods[ns+"/"+name] = pod
}

// DeletePod removes the pod ns/name.
func (p *Platform) DeletePod(ns, name string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.pods, ns+"/"+name)
}

// SetNode adds or replaces the node name.
func (p *Platform) SetNode(name string, n Node) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.nodes[name] = n
}

// SetUnavailable makes the server answer every request with 503 (or
// again normally).
func (p *Platform) SetUnavailable(v bool) { p.unavailable.Store(v) }

// Count returns how many requests of kind ("discovery", "jwks",
// "tokenreview", "node", "pod") the server received.
func (p *Platform) Count(kind string) int64 {
	v, ok := p.counts.Load(kind)
	if !ok {
		return 0
	}
	return v.(*atomic.Int64).Load()
}

func (p *Platform) count(kind string) {
	v, _ := p.counts.LoadOrStore(kind, new(atomic.Int64))
	v.(*atomic.Int64).Add(1)
}

// Claims are the claims of a projected service account token.
type Claims struct {
	Issuer    string
	Audience  []string
	Namespace string
	SA, SAUID string
	PodName   string
	PodUID    string
	NodeName  string // empty: no node claim (Kubernetes before 1.30)
	NodeUID   string
	IssuedAt  time.Time
	Expiry    time.Time
	JTI       string
}

// Claims returns the claims of a token of the service account ns:sa in
// the pod ns/pod on node, for audience, issued at now for an hour, with
// the UIDs the platform's objects have (SetPod, SetNode) or made up.
func (p *Platform) Claims(now time.Time, audience, ns, sa, pod, node string) Claims {
	p.mu.Lock()
	defer p.mu.Unlock()
	return Claims{
		Issuer: p.Issuer, Audience: []string{audience}, Namespace: ns, SA: sa, SAUID: "5a0c0bd1-0000-4000-8000-" + pad(sa),
		PodName: pod, PodUID: p.pods[ns+"/"+pod].UID, NodeName: node, NodeUID: p.nodes[node].UID,
		IssuedAt: now, Expiry: now.Add(time.Hour), JTI: "jti-" + pod + "-" + now.Format("150405.000"),
	}
}

func pad(s string) string {
	s = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'f' || r >= '0' && r <= '9' {
			return r
		}
		return '0'
	}, s)
	return (s + "000000000000")[:12]
}

// JSON returns the claims in the shape the kube-apiserver signs.
func (c Claims) JSON() map[string]any {
	k8s := map[string]any{
		"namespace":      c.Namespace,
		"serviceaccount": map[string]any{"name": c.SA, "uid": c.SAUID},
	}
	if c.PodName != "" {
		k8s["pod"] = map[string]any{"name": c.PodName, "uid": c.PodUID}
	}
	if c.NodeName != "" {
		k8s["node"] = map[string]any{"name": c.NodeName, "uid": c.NodeUID}
	}
	m := map[string]any{
		"aud":           c.Audience,
		"exp":           c.Expiry.Unix(),
		"iat":           c.IssuedAt.Unix(),
		"nbf":           c.IssuedAt.Unix(),
		"iss":           c.Issuer,
		"sub":           "system:serviceaccount:" + c.Namespace + ":" + c.SA,
		"kubernetes.io": k8s,
	}
	if c.JTI != "" {
		m["jti"] = c.JTI
	}
	return m
}

// Token signs c with the platform's key (RS256, kid KeyID).
func (p *Platform) Token(t testing.TB, c Claims) string {
	t.Helper()
	return Sign(t, jose.SigningKey{Algorithm: jose.RS256, Key: p.Key}, KeyID, c.JSON())
}

// Sign signs claims with key, kid in the header (none if empty).
func Sign(t testing.TB, key jose.SigningKey, kid string, claims any) string {
	t.Helper()
	opts := (&jose.SignerOptions{}).WithType("JWT")
	if kid != "" {
		opts = opts.WithHeader("kid", kid)
	}
	s, err := jose.NewSigner(key, opts)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(s).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// PublicKeyPEM is the platform key's public half in PEM (for "HS256 with
// the public key as the secret" tokens).
func (p *Platform) PublicKeyPEM() []byte {
	der, _ := x509.MarshalPKIXPublicKey(&p.Key.PublicKey)
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// status is a metav1.Status, the API server's error body.
func status(w http.ResponseWriter, code int, reason, msg string) {
	writeJSON(w, code, map[string]any{"kind": "Status", "apiVersion": "v1", "metadata": map[string]any{},
		"status": "Failure", "message": msg, "reason": reason, "code": code})
}

func (p *Platform) serve(w http.ResponseWriter, r *http.Request) {
	if p.unavailable.Load() {
		status(w, http.StatusServiceUnavailable, "ServiceUnavailable", "unavailable")
		return
	}
	switch {
	case r.Method == http.MethodGet && r.URL.Path == "/.well-known/openid-configuration":
		p.count("discovery")
		writeJSON(w, 200, map[string]any{
			"issuer": p.Issuer, "jwks_uri": p.URL + "/openid/v1/jwks",
			"response_types_supported": []string{"id_token"}, "subject_types_supported": []string{"public"},
			"id_token_signing_alg_values_supported": []string{"RS256"},
		})
	case r.Method == http.MethodGet && r.URL.Path == "/openid/v1/jwks":
		p.count("jwks")
		writeJSON(w, 200, jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &p.Key.PublicKey, KeyID: KeyID, Algorithm: "RS256", Use: "sig"}}})
	case r.URL.Path == "/apis/authentication.k8s.io/v1/tokenreviews":
		p.count("tokenreview")
		if !p.authorized(w, r) {
			return
		}
		if r.Method != http.MethodPost {
			status(w, http.StatusMethodNotAllowed, "MethodNotAllowed", "the server does not allow this method on the requested resource")
			return
		}
		p.tokenReview(w, r)
	case r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/api/v1/nodes/"):
		p.count("node")
		if !p.authorized(w, r) {
			return
		}
		name := strings.TrimPrefix(r.URL.Path, "/api/v1/nodes/")
		p.mu.Lock()
		n, ok := p.nodes[name]
		p.mu.Unlock()
		if !ok {
			status(w, 404, "NotFound", `nodes "`+name+`" not found`)
			return
		}
		writeJSON(w, 200, map[string]any{"kind": "Node", "apiVersion": "v1",
			"metadata": map[string]any{"name": name, "uid": n.UID, "resourceVersion": "1", "labels": n.Labels},
			"spec":     map[string]any{"podCIDR": "10.244.0.0/24"},
			"status":   map[string]any{"nodeInfo": map[string]any{"kubeletVersion": "v1.31.0"}}})
	case r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/api/v1/namespaces/"):
		p.count("pod")
		if !p.authorized(w, r) {
			return
		}
		parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/api/v1/namespaces/"), "/")
		if len(parts) != 3 || parts[1] != "pods" {
			status(w, 404, "NotFound", "the server could not find the requested resource")
			return
		}
		p.mu.Lock()
		pod, ok := p.pods[parts[0]+"/"+parts[2]]
		p.mu.Unlock()
		if !ok {
			status(w, 404, "NotFound", `pods "`+parts[2]+`" not found`)
			return
		}
		writeJSON(w, 200, map[string]any{"kind": "Pod", "apiVersion": "v1",
			"metadata": map[string]any{"name": parts[2], "namespace": parts[0], "uid": pod.UID},
			"spec":     map[string]any{"nodeName": pod.NodeName, "serviceAccountName": "x"},
			"status":   map[string]any{"phase": "Running"}})
	default:
		status(w, 404, "NotFound", "the server could not find the requested resource")
	}
}

func (p *Platform) authorized(w http.ResponseWriter, r *http.Request) bool {
	if r.Header.Get("Authorization") != "Bearer "+p.ReviewerToken {
		status(w, http.StatusUnauthorized, "Unauthorized", "Unauthorized")
		return false
	}
	return true
}

// tokenReview judges a token as the API server does: its signature, its
// issuer, its expiry (against the real clock), the audiences, and that the
// pod it is bound to still exists with the same UID.
func (p *Platform) tokenReview(w http.ResponseWriter, r *http.Request) {
	var req struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Spec       struct {
			Token     string   `json:"token"`
			Audiences []string `json:"audiences"`
		} `json:"spec"`
	}
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&req); err != nil || req.Kind != "TokenReview" || req.APIVersion != "authentication.k8s.io/v1" {
		status(w, 400, "BadRequest", "invalid TokenReview")
		return
	}
	resp := map[string]any{"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
		"metadata": map[string]any{"creationTimestamp": nil},
		"spec":     map[string]any{"token": req.Spec.Token, "audiences": req.Spec.Audiences}}
	deny := func(msg string) {
		resp["status"] = map[string]any{"user": map[string]any{}, "error": msg}
		writeJSON(w, 201, resp)
	}
	tok, err := jwt.ParseSigned(req.Spec.Token, []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		deny("[invalid bearer token, token lookup failed]")
		return
	}
	type ref struct {
		Name string `json:"name"`
		UID  string `json:"uid"`
	}
	var std jwt.Claims
	var ext struct {
		K8s struct {
			Namespace string `json:"namespace"`
			SA        ref    `json:"serviceaccount"`
			Pod       *ref   `json:"pod"`
			Node      *ref   `json:"node"`
		} `json:"kubernetes.io"`
	}
	if err := tok.Claims(&p.Key.PublicKey, &std, &ext); err != nil {
		deny("[invalid bearer token, square/go-jose: error in cryptographic primitive]")
		return
	}
	if std.Issuer != p.Issuer {
		deny("[invalid bearer token, token issuer mismatch]")
		return
	}
	if err := std.ValidateWithLeeway(jwt.Expected{Time: time.Now()}, 0); err != nil {
		deny("[invalid bearer token, service account token has expired]")
		return
	}
	var auds []string
	for _, a := range req.Spec.Audiences {
		for _, ta := range std.Audience {
			if a == ta {
				auds = append(auds, a)
			}
		}
	}
	if len(auds) == 0 {
		deny("[invalid bearer token, token audiences " + strings.Join(std.Audience, ",") + " is invalid for the target audiences " + strings.Join(req.Spec.Audiences, ",") + "]")
		return
	}
	extra := map[string][]string{"authentication.kubernetes.io/credential-id": {"JTI=" + std.ID}}
	if ext.K8s.Pod != nil {
		p.mu.Lock()
		pod, ok := p.pods[ext.K8s.Namespace+"/"+ext.K8s.Pod.Name]
		p.mu.Unlock()
		if !ok || pod.UID != ext.K8s.Pod.UID {
			deny("[invalid bearer token, pod \"" + ext.K8s.Pod.Name + "\" not found]")
			return
		}
		extra["authentication.kubernetes.io/pod-name"] = []string{ext.K8s.Pod.Name}
		extra["authentication.kubernetes.io/pod-uid"] = []string{ext.K8s.Pod.UID}
	}
	if ext.K8s.Node != nil {
		extra["authentication.kubernetes.io/node-name"] = []string{ext.K8s.Node.Name}
		extra["authentication.kubernetes.io/node-uid"] = []string{ext.K8s.Node.UID}
	}
	resp["status"] = map[string]any{
		"authenticated": true,
		"user": map[string]any{
			"username": std.Subject,
			"uid":      ext.K8s.SA.UID,
			"groups":   []string{"system:serviceaccounts", "system:serviceaccounts:" + ext.K8s.Namespace, "system:authenticated"},
			"extra":    extra,
		},
		"audiences": auds,
	}
	writeJSON(w, 201, resp)
}
