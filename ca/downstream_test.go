package ca_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/ca/keymanager/memory"
	"github.com/sigil-id/sigil/clock"
)

// newIntermediateCA returns a CA whose self-signed certificate allows one
// level of intermediate CAs (what a server with allow_downstream makes):
// ca.New reuses a certificate it finds at CertPath for the key it holds.
func newIntermediateCA(t *testing.T, clk clock.Clock) *ca.CA {
	t.Helper()
	cfg := testConfig(t, clk)
	key, err := cfg.KeyManager.GenerateKey(context.Background(), "x509-ca", ca.DefaultKeyType)
	if err != nil {
		t.Fatal(err)
	}
	now := clk.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(42),
		Subject:               pkix.Name{Organization: []string{"Sigil"}, CommonName: "Sigil CA server-1", SerialNumber: cfg.ServerID},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            1,
		URIs:                  []*url.URL{td.ID().URL()},
		SubjectKeyId:          []byte{1, 2, 3, 4},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cfg.CertPath = filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(cfg.CertPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	c := newCA(t, cfg)
	if c.Certificate().MaxPathLen != 1 || !c.AllowsIntermediates() {
		t.Fatal("the CA did not keep the certificate with path length 1")
	}
	return c
}

func downstreamCSR(t *testing.T, key crypto.Signer, uris ...string) []byte {
	t.Helper()
	tmpl := &x509.CertificateRequest{Subject: pkix.Name{Organization: []string{"Sigil"}, CommonName: "Sigil CA down-1", SerialNumber: "down-1"}}
	for _, u := range uris {
		pu, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, pu)
	}
	return mustCSR(t, key, tmpl)
}

func TestSignDownstreamCA(t *testing.T) {
	clk := clock.NewFake(start)
	c := newIntermediateCA(t, clk)
	key := genKey(t, "p256")
	chain, err := c.SignDownstreamCA(context.Background(), ca.X509CARequest{
		CSR: downstreamCSR(t, key, td.IDString()), TrustDomain: td, TTL: 48 * time.Hour,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) != 2 || chain[1] != c.Certificate() {
		t.Fatalf("chain of %d certificates, want the new one and the signer's", len(chain))
	}
	cert := chain[0]
	if !cert.NotAfter.Equal(c.Certificate().NotAfter) {
		t.Errorf("NotAfter %s, want it cut at the signer's %s", cert.NotAfter, c.Certificate().NotAfter)
	}
	if cert.NotBefore.Before(c.Certificate().NotBefore) {
		t.Errorf("NotBefore %s before the signer's %s", cert.NotBefore, c.Certificate().NotBefore)
	}
	if cert.Subject.CommonName != "Sigil CA down-1" || !cert.IsCA || !cert.MaxPathLenZero {
		t.Errorf("certificate %v: CA %v, path len zero %v", cert.Subject, cert.IsCA, cert.MaxPathLenZero)
	}
	roots := []*x509.Certificate{c.Certificate()}
	resp := &ca.X509CAResponse{Chain: chain[:1], Roots: roots}
	if err := ca.CheckUpstreamResponse(resp, td, key.Public(), clk.Now()); err != nil {
		t.Fatalf("the answer fails the server's checks: %v", err)
	}

	// A leaf signed by the new CA verifies through it to the signer.
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7), NotBefore: clk.Now(), NotAfter: clk.Now().Add(time.Hour),
		URIs:        []*url.URL{spiffeid.RequireFromPath(td, "/web").URL()},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	leafKey := genKey(t, "p256")
	der, err := x509.CreateCertificate(rand.Reader, leafTmpl, cert, leafKey.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	rootPool, inter := x509.NewCertPool(), x509.NewCertPool()
	rootPool.AddCert(c.Certificate())
	inter.AddCert(cert)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: rootPool, Intermediates: inter, CurrentTime: clk.Now(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatalf("a leaf of the downstream CA does not verify: %v", err)
	}
	// The name constraints hold: another trust domain's leaf does not.
	leafTmpl.URIs = []*url.URL{spiffeid.RequireFromPath(otherTD, "/web").URL()}
	der, _ = x509.CreateCertificate(rand.Reader, leafTmpl, cert, leafKey.Public(), key)
	leaf, _ = x509.ParseCertificate(der)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: rootPool, Intermediates: inter, CurrentTime: clk.Now(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err == nil {
		t.Fatal("a leaf of another trust domain verifies under the downstream CA")
	}
}

func TestSignDownstreamCARefuses(t *testing.T) {
	clk := clock.NewFake(start)
	c := newIntermediateCA(t, clk)
	key := genKey(t, "p256")
	good := downstreamCSR(t, key, td.IDString())
	badSig := append([]byte(nil), good...)
	badSig[len(badSig)-3] ^= 0xff
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range []struct {
		name string
		ctx  context.Context
		req  ca.X509CARequest
		want string
	}{
		{"wrong URI SAN", context.Background(), ca.X509CARequest{CSR: downstreamCSR(t, key, "spiffe://example.org/web"), TrustDomain: td, TTL: time.Hour}, "exactly one URI SAN"},
		{"no URI SAN", context.Background(), ca.X509CARequest{CSR: downstreamCSR(t, key), TrustDomain: td, TTL: time.Hour}, "exactly one URI SAN"},
		{"bad signature", context.Background(), ca.X509CARequest{CSR: badSig, TrustDomain: td, TTL: time.Hour}, "CSR"},
		{"oversized CSR", context.Background(), ca.X509CARequest{CSR: make([]byte, ca.MaxCSRSize+1), TrustDomain: td, TTL: time.Hour}, "too large"},
		{"other trust domain", context.Background(), ca.X509CARequest{CSR: downstreamCSR(t, key, otherTD.IDString()), TrustDomain: otherTD, TTL: time.Hour}, "trust domain"},
		{"no TTL", context.Background(), ca.X509CARequest{CSR: good, TrustDomain: td}, "not positive"},
		{"canceled", canceled, ca.X509CARequest{CSR: good, TrustDomain: td, TTL: time.Hour}, "canceled"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.SignDownstreamCA(tc.ctx, tc.req)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
	t.Run("expired", func(t *testing.T) {
		clk := clock.NewFake(start)
		c := newIntermediateCA(t, clk)
		clk.Add(25 * time.Hour)
		_, err := c.SignDownstreamCA(context.Background(), ca.X509CARequest{CSR: good, TrustDomain: td, TTL: time.Hour})
		if err == nil || !strings.Contains(err.Error(), "expired") {
			t.Fatalf("error %v, want expired", err)
		}
	})
}

// TestSignDownstreamCAPathLenZero: a CA whose certificate allows no
// intermediates (every self-signed CA without AllowIntermediates) refuses
// with the error that names the fix.
func TestSignDownstreamCAPathLenZero(t *testing.T) {
	c := newCA(t, testConfig(t, clock.NewFake(start)))
	if c.AllowsIntermediates() {
		t.Fatal("a default CA allows intermediates")
	}
	_, err := c.SignDownstreamCA(context.Background(), ca.X509CARequest{CSR: downstreamCSR(t, genKey(t, "p256"), td.IDString()), TrustDomain: td, TTL: time.Hour})
	if !errors.Is(err, ca.ErrNoIntermediates) {
		t.Fatalf("error %v, want ErrNoIntermediates", err)
	}
	if !strings.Contains(err.Error(), "set allow_downstream and rotate the CA") {
		t.Fatalf("error %q does not name the fix", err)
	}
}

// TestSignDownstreamCAChainedRefused: a CA whose certificate an upstream
// authority signed (path length 0) refuses, saying that nesting is one
// level deep.
func TestSignDownstreamCAChainedRefused(t *testing.T) {
	ctx := context.Background()
	clk := clock.NewFake(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
	b := &rootBundle{fakeBundle: fakeBundle{entries: map[string]string{}}}
	m := upstreamManager(t, newTestUpstream(t, clk, false), memory.New(), clk, filepath.Join(t.TempDir(), "slots.json"), b)
	for _, ev := range tick(ctx, m) {
		if ev.Err != nil {
			t.Fatal(ev.Err)
		}
	}
	c := m.X509CA()
	if c == nil || !c.Upstream() || c.AllowsIntermediates() {
		t.Fatal("want an upstream-signed CA that allows no intermediates")
	}
	_, err := c.SignDownstreamCA(ctx, ca.X509CARequest{CSR: downstreamCSR(t, genKey(t, "p256"), td.IDString()), TrustDomain: td, TTL: time.Hour})
	if !errors.Is(err, ca.ErrIntermediateCA) {
		t.Fatalf("error %v, want ErrIntermediateCA", err)
	}
}
