package awskms

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"path/filepath"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-id/sigil/ca"
)

// TestCAWithKeyInKMS runs the real CA on a key in the fake KMS, for each
// key type: the self-signed CA certificate and an X509-SVID it signs
// verify, and a restarted CA finds the same key through its alias.
func TestCAWithKeyInKMS(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	for _, kt := range []ca.KeyType{ca.KeyTypeECP256, ca.KeyTypeECP384, ca.KeyTypeRSA2048} {
		t.Run(string(kt), func(t *testing.T) {
			cfg := ca.DefaultConfig()
			cfg.TrustDomain = f.cfg.TrustDomain
			cfg.ServerID = f.cfg.NodeName
			cfg.KeyType = kt
			cfg.CertPath = filepath.Join(t.TempDir(), "ca.pem")
			cfg.KeyManager = openKM(t, f.open(t), ca.KeyScopeAuthorities)
			authority, err := ca.New(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			workloadKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			chain, err := authority.SignX509SVID(ctx, ca.X509SVIDParams{
				PublicKey: workloadKey.Public(),
				SPIFFEID:  spiffeid.RequireFromPath(cfg.TrustDomain, "/web"),
			})
			if err != nil {
				t.Fatal(err)
			}
			roots := x509.NewCertPool()
			roots.AddCert(authority.Certificate())
			if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
				t.Fatalf("SVID signed in KMS does not verify: %v", err)
			}

			// Restart: a new store, the same certificate and key.
			cfg.KeyManager = openKM(t, f.open(t), ca.KeyScopeAuthorities)
			again, err := ca.New(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			if !again.Certificate().Equal(authority.Certificate()) {
				t.Fatal("the restarted CA made a new certificate: its key was not found again")
			}
		})
	}
}
