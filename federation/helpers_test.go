package federation

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/mtls/mtlstest"
)

// testBundle is a bundle of ca's trust domain with ca's certificate and
// nJWT JWT authorities.
func testBundle(t testing.TB, ca *mtlstest.CA, seq uint64, nJWT int) *sigilv1.Bundle {
	t.Helper()
	b := &sigilv1.Bundle{
		TrustDomain:     ca.TrustDomain().Name(),
		X509Authorities: []*sigilv1.X509Authority{{Certificate: ca.Cert().Raw, NotAfter: ca.Cert().NotAfter.Unix()}},
		SequenceNumber:  seq,
		RefreshHint:     300,
	}
	for i := range nJWT {
		b.JwtAuthorities = append(b.JwtAuthorities, &sigilv1.JWTAuthority{
			KeyId:     fmt.Sprintf("key-%d", i+1),
			PublicKey: pkixKey(t, newKey(t).Public()),
		})
	}
	return b
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func pkixKey(t testing.TB, pub crypto.PublicKey) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// tlsCert is svid as a TLS certificate.
func tlsCert(svid *x509svid.SVID) *tls.Certificate {
	c := &tls.Certificate{PrivateKey: svid.PrivateKey, Leaf: svid.Certificates[0]}
	for _, cert := range svid.Certificates {
		c.Certificate = append(c.Certificate, cert.Raw)
	}
	return c
}

// listen returns a loopback listener and its https URL.
func listen(t testing.TB) (net.Listener, string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return l, "https://" + l.Addr().String() + "/bundle"
}

// serve runs e on a loopback listener until the test ends and returns
// its URL and a stop function that returns once Serve has returned.
func serve(t testing.TB, e *Endpoint) (string, func()) {
	t.Helper()
	l, url := listen(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Serve(ctx, l) }()
	var stopped atomic.Bool
	stop := func() {
		if stopped.Swap(true) {
			return
		}
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}
	t.Cleanup(stop)
	return url, stop
}

// webPKI is a CA issuing server certificates for 127.0.0.1.
type webPKI struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	next int64
}

func newWebPKI(t testing.TB) *webPKI {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "federation test web CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &webPKI{cert: cert, key: key, next: 100}
}

func (p *webPKI) pool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(p.cert)
	return pool
}

// issue returns PEM certificate and key for 127.0.0.1, and the serial.
func (p *webPKI) issue(t testing.TB) (certPEM, keyPEM []byte, serial int64) {
	t.Helper()
	p.next++
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(p.next),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.cert, key.Public(), p.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), p.next
}

// writePair writes a certificate and key to dir and returns their paths.
// mtime is set explicitly so that a rewrite is seen as a change however
// coarse the file system's timestamps are.
func writePair(t testing.TB, dir string, certPEM, keyPEM []byte, mtime time.Time) (string, string) {
	t.Helper()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	for name, data := range map[string][]byte{certFile: certPEM, keyFile: keyPEM} {
		if err := os.WriteFile(name, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(name, mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
	return certFile, keyFile
}

// wantErr fails t unless err is non-nil and contains every part.
func wantErr(t testing.TB, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want one containing %q", parts)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Fatalf("error %q does not contain %q", err, p)
		}
	}
	if strings.Count(err.Error(), "federation: ") > 1 {
		t.Fatalf("error %q has a doubled prefix", err)
	}
}

var errTest = errors.New("test error")
