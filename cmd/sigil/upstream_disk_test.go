package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/sigil-id/sigil/ca/upstream/disk"
	"github.com/sigil-id/sigil/cmd/sigil/internal/config"
)

// A server block with upstream_authority "disk" gives the server its
// upstream authority; a bad one is refused at its line.
func TestServerUpstreamDisk(t *testing.T) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Upstream Root"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "root.pem"), filepath.Join(dir, "root.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	src := func(cert string) string {
		return `server {
  trust_domain = "example.org"
  data_dir     = "` + t.TempDir() + `"
  plugins {
    node_attestor "join_token" {}
    key_manager "memory" {}
    upstream_authority "disk" {
      cert_file = "` + cert + `"
      key_file  = "` + keyFile + `"
    }
  }
}`
	}
	f, err := config.LoadFile(writeConfig(t, src(certFile)))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Server.Validate(); err != nil {
		t.Fatal(err)
	}
	cfg, err := serverConfig(f.Server, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	ua, ok := cfg.UpstreamAuthority.(*disk.Authority)
	if !ok {
		t.Fatalf("the server's upstream authority is a %T", cfg.UpstreamAuthority)
	}
	closeUpstream(ua, zap.NewNop())
	closeUpstream(nil, zap.NewNop())

	missing := filepath.Join(dir, "missing.pem")
	p, err := serverFromFile(t, src(missing))
	want := p + `:7: upstream_authority "disk": ca/upstream/disk: cert_file ` + missing + `: no such file or directory`
	if err == nil || err.Error() != want {
		t.Fatalf("err = %v\nwant %s", err, want)
	}
	if strings.Count(err.Error(), "ca/upstream/disk") != 1 {
		t.Fatalf("doubled prefix: %v", err)
	}
}
