package x509pop

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sigil-id/sigil/attestor/node"
	"github.com/sigil-id/sigil/clock"
)

const testTD = "example.org"

var t0 = time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)

// testCA is a real certificate authority: a self-signed root and,
// optionally, an intermediate that signs leaves.
type testCA struct {
	root, inter       *x509.Certificate
	rootKey, interKey crypto.Signer
}

var serial int64 = 0x1000

func nextSerial() *big.Int { serial++; return big.NewInt(serial) }

func newKey(t testing.TB, alg string) crypto.Signer {
	t.Helper()
	var (
		k   crypto.Signer
		err error
	)
	switch alg {
	case "p256":
		k, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "p384":
		k, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case "p521":
		k, err = ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	case "ed25519":
		_, k, err = ed25519.GenerateKey(rand.Reader)
	case "rsa":
		k, err = rsa.GenerateKey(rand.Reader, 2048)
	default:
		t.Fatalf("unknown key algorithm %q", alg)
	}
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mustCert(t testing.TB, tmpl, parent *x509.Certificate, pub any, signer crypto.Signer) *x509.Certificate {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// newTestCA returns a root (valid t0-1y .. t0+10y) and an intermediate.
func newTestCA(t testing.TB, name string) *testCA {
	t.Helper()
	ca := &testCA{rootKey: newKey(t, "p256"), interKey: newKey(t, "p256")}
	rootTmpl := &x509.Certificate{
		SerialNumber: nextSerial(), Subject: pkix.Name{CommonName: name + " root"},
		NotBefore: t0.AddDate(-1, 0, 0), NotAfter: t0.AddDate(10, 0, 0),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	ca.root = mustCert(t, rootTmpl, rootTmpl, ca.rootKey.Public(), ca.rootKey)
	ca.inter = mustCert(t, &x509.Certificate{
		SerialNumber: nextSerial(), Subject: pkix.Name{CommonName: name + " intermediate"},
		NotBefore: t0.AddDate(-1, 0, 0), NotAfter: t0.AddDate(5, 0, 0),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}, ca.root, ca.interKey.Public(), ca.rootKey)
	return ca
}

// leafOpts shape a leaf certificate.
type leafOpts struct {
	alg                 string
	cn                  string
	dns                 []string
	notBefore, notAfter time.Time
	eku                 []x509.ExtKeyUsage
	keyUsage            x509.KeyUsage
	isCA                bool
	direct              bool // signed by the root rather than the intermediate
}

// issue returns a leaf, its key and the chain DER (leaf, intermediate).
func (ca *testCA) issue(t testing.TB, o leafOpts) (*x509.Certificate, crypto.Signer, [][]byte) {
	t.Helper()
	if o.alg == "" {
		o.alg = "p256"
	}
	if o.notBefore.IsZero() {
		o.notBefore = t0.Add(-time.Hour)
	}
	if o.notAfter.IsZero() {
		o.notAfter = t0.Add(24 * time.Hour)
	}
	if o.eku == nil {
		o.eku = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	if o.keyUsage == 0 {
		o.keyUsage = x509.KeyUsageDigitalSignature
	}
	key := newKey(t, o.alg)
	tmpl := &x509.Certificate{
		SerialNumber: nextSerial(), Subject: pkix.Name{CommonName: o.cn}, DNSNames: o.dns,
		NotBefore: o.notBefore, NotAfter: o.notAfter, ExtKeyUsage: o.eku, KeyUsage: o.keyUsage,
		BasicConstraintsValid: o.isCA, IsCA: o.isCA,
	}
	if o.direct {
		leaf := mustCert(t, tmpl, ca.root, key.Public(), ca.rootKey)
		return leaf, key, [][]byte{leaf.Raw}
	}
	leaf := mustCert(t, tmpl, ca.inter, key.Public(), ca.interKey)
	return leaf, key, [][]byte{leaf.Raw, ca.inter.Raw}
}

func pemCerts(ders ...[]byte) []byte {
	var out []byte
	for _, d := range ders {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: d})...)
	}
	return out
}

func pemKey(t testing.TB, k crypto.Signer) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

func writeFile(t testing.TB, dir, name string, b []byte, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

// newVerifierFor returns a verifier trusting the roots of cas, with cfg's
// other settings.
func newVerifierFor(t testing.TB, cfg ServerConfig, cas ...*testCA) *Verifier {
	t.Helper()
	var ders [][]byte
	for _, ca := range cas {
		ders = append(ders, ca.root.Raw)
	}
	cfg.CABundlePath = writeFile(t, t.TempDir(), "bundle.pem", pemCerts(ders...), 0o644)
	v, err := NewVerifier(testTD, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// newAttestorFor writes chain and key to files and returns the agent half.
func newAttestorFor(t testing.TB, td string, chain [][]byte, key crypto.Signer) *Attestor {
	t.Helper()
	dir := t.TempDir()
	a, err := NewAttestor(td, AgentConfig{
		CertificatePath: writeFile(t, dir, "cert.pem", pemCerts(chain...), 0o644),
		PrivateKeyPath:  writeFile(t, dir, "key.pem", pemKey(t, key), 0o600),
	})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// fakeState is a node.State with a fake clock; x509pop uses only Now.
type fakeState struct{ clk *clock.Fake }

func newState() *fakeState { return &fakeState{clk: clock.NewFake(t0)} }

func (s *fakeState) Now() time.Time { return s.clk.Now() }
func (s *fakeState) CredentialExpiry(context.Context, node.Credential) (time.Time, error) {
	return time.Time{}, node.ErrNotFound
}
func (s *fakeState) Used(context.Context, node.Credential) (bool, error) {
	return false, os.ErrInvalid
}
func (s *fakeState) Agent(context.Context, string) (node.AgentRecord, error) {
	return node.AgentRecord{}, node.ErrNotFound
}

// exchange is a node.Exchange whose challenges are answered by answer (an
// agent's Attestor.Answer, or an attacker); it records the challenges and
// answers.
type exchange struct {
	payload    []byte
	answer     func(ctx context.Context, challenge []byte) ([]byte, error)
	challenges [][]byte
	answers    [][]byte
}

func (e *exchange) Payload() []byte { return e.payload }

func (e *exchange) Challenge(ctx context.Context, c []byte) ([]byte, error) {
	e.challenges = append(e.challenges, append([]byte(nil), c...))
	if e.answer == nil {
		return nil, node.ErrRoundsExhausted
	}
	a, err := e.answer(ctx, c)
	if err == nil {
		e.answers = append(e.answers, a)
	}
	return a, err
}

// attest runs one attestation of a against v, the way the server does.
func attest(t testing.TB, v node.Verifier, st node.State, a node.Attestor) (*node.Result, *exchange, error) {
	t.Helper()
	ctx := context.Background()
	p, err := a.Payload(ctx)
	if err != nil {
		t.Fatalf("Payload: %v", err)
	}
	ex := &exchange{payload: p, answer: a.Answer}
	res, err := v.Verify(ctx, st, ex)
	return res, ex, err
}
