package agent

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
)

// TestTrustBundleRefusesLeafCertificates: a certificate that is not a CA,
// put in the bootstrap bundle file or in Config.TrustBundle, is refused
// with a clear error instead of being trusted as a root.
func TestTrustBundleRefusesLeafCertificates(t *testing.T) {
	ca := newTestCA(t, time.Now())
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leaf := ca.sign(t, testTD.ID(), key.Public(), time.Now(), time.Hour)[0]
	path := filepath.Join(t.TempDir(), "bundle.pem")

	// The CA alone is accepted: the refusal below is about the leaf.
	if err := os.WriteFile(path, encodeCerts([]*x509.Certificate{ca.cert}), 0o600); err != nil {
		t.Fatal(err)
	}
	a := &Agent{cfg: Config{TrustDomain: testTD, TrustBundlePath: path, DataDir: t.TempDir()}, log: zap.NewNop()}
	if _, err := a.bootstrapBundle(); err != nil {
		t.Fatalf("a bundle of one CA: %v", err)
	}

	if err := os.WriteFile(path, encodeCerts([]*x509.Certificate{ca.cert, leaf}), 0o600); err != nil {
		t.Fatal(err)
	}
	b, err := a.bootstrapBundle()
	if err == nil || b != nil || !strings.Contains(err.Error(), "certificate 2") || !strings.Contains(err.Error(), "is not a CA certificate") {
		t.Fatalf("bundle file with a leaf: %v, %v", b, err)
	}

	cfg := DefaultConfig()
	cfg.TrustDomain, cfg.ServerAddress, cfg.DataDir = testTD, "127.0.0.1:1", t.TempDir()
	cfg.TrustBundle = []*x509.Certificate{leaf}
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "is not a CA certificate") {
		t.Fatalf("Config.TrustBundle with a leaf: %v", err)
	}
}
