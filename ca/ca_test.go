package ca_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/ca/keymanager/disk"
	"github.com/sigil-id/sigil/ca/keymanager/memory"
	"github.com/sigil-id/sigil/clock"
)

var (
	td      = spiffeid.RequireTrustDomainFromString("example.org")
	otherTD = spiffeid.RequireTrustDomainFromString("other.org")
	start   = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
)

func testConfig(t testing.TB, clk clock.Clock) ca.Config {
	t.Helper()
	cfg := ca.DefaultConfig()
	cfg.TrustDomain = td
	cfg.ServerID = "server-1"
	cfg.KeyManager = memory.New()
	cfg.Clock = clk
	return cfg
}

func newCA(t testing.TB, cfg ca.Config) *ca.CA {
	t.Helper()
	c, err := ca.New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("ca.New: %v", err)
	}
	return c
}

func genKey(t testing.TB, kind string) crypto.Signer {
	t.Helper()
	var (
		k   crypto.Signer
		err error
	)
	switch kind {
	case "p256":
		k, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "p384":
		k, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case "p521":
		k, err = ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	case "p224":
		k, err = ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	case "rsa2048":
		k, err = rsa.GenerateKey(rand.Reader, 2048)
	case "rsa1024":
		k, err = rsa.GenerateKey(rand.Reader, 1024)
	case "ed25519":
		_, k, err = ed25519.GenerateKey(rand.Reader)
	default:
		t.Fatalf("unknown key kind %q", kind)
	}
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mustCSR(t testing.TB, key crypto.Signer, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	if tmpl == nil {
		tmpl = &x509.CertificateRequest{}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestNewCACertificate(t *testing.T) {
	for _, kt := range []ca.KeyType{ca.KeyTypeECP256, ca.KeyTypeECP384, ca.KeyTypeRSA2048} {
		t.Run(string(kt), func(t *testing.T) {
			clk := clock.NewFake(start)
			cfg := testConfig(t, clk)
			cfg.KeyType = kt
			cert := newCA(t, cfg).Certificate()
			if !cert.IsCA || !cert.BasicConstraintsValid {
				t.Errorf("IsCA=%v BasicConstraintsValid=%v", cert.IsCA, cert.BasicConstraintsValid)
			}
			if want := x509.KeyUsageCertSign | x509.KeyUsageCRLSign; cert.KeyUsage != want {
				t.Errorf("KeyUsage = %v, want %v", cert.KeyUsage, want)
			}
			if len(cert.URIs) != 1 || cert.URIs[0].String() != "spiffe://example.org" {
				t.Errorf("URIs = %v", cert.URIs)
			}
			if !cert.NotBefore.Equal(start.Add(-ca.DefaultBackdate)) {
				t.Errorf("NotBefore = %v", cert.NotBefore)
			}
			if !cert.NotAfter.Equal(start.Add(ca.DefaultCATTL)) {
				t.Errorf("NotAfter = %v", cert.NotAfter)
			}
			if cert.SerialNumber.Sign() <= 0 || cert.SerialNumber.BitLen() < 64 {
				t.Errorf("serial %v is not a large positive number", cert.SerialNumber)
			}
			if len(cert.SubjectKeyId) == 0 {
				t.Error("no SubjectKeyId")
			}
			if cert.Subject.SerialNumber != "server-1" || !strings.Contains(cert.Subject.CommonName, "server-1") {
				t.Errorf("subject %v does not name the server", cert.Subject)
			}
			if err := cert.CheckSignatureFrom(cert); err != nil {
				t.Errorf("not self-signed: %v", err)
			}
		})
	}
}

func TestCAsOfDifferentServersDiffer(t *testing.T) {
	clk := clock.NewFake(start)
	cfg1 := testConfig(t, clk)
	cfg2 := testConfig(t, clk)
	cfg2.ServerID = "server-2"
	c1, c2 := newCA(t, cfg1).Certificate(), newCA(t, cfg2).Certificate()
	if bytes.Equal(c1.RawSubject, c2.RawSubject) {
		t.Errorf("both CAs have subject %v", c1.Subject)
	}
}

func TestSignX509SVID(t *testing.T) {
	clk := clock.NewFake(start)
	c := newCA(t, testConfig(t, clk))
	caCert := c.Certificate()
	roots := x509.NewCertPool()
	roots.AddCert(caCert)
	bundle := x509bundle.FromX509Authorities(td, []*x509.Certificate{caCert})
	id := spiffeid.RequireFromPath(td, "/ns/prod/sa/web")

	tests := []struct {
		name    string
		key     string
		dns     []string
		ttl     time.Duration
		wantTTL time.Duration
		wantKU  x509.KeyUsage
	}{
		{"p256 default ttl", "p256", nil, 0, time.Hour, x509.KeyUsageDigitalSignature},
		{"p384 one dns", "p384", []string{"web.example.org"}, 5 * time.Minute, 5 * time.Minute, x509.KeyUsageDigitalSignature},
		{"p521 two dns", "p521", []string{"web.example.org", "web"}, 2 * time.Hour, 2 * time.Hour, x509.KeyUsageDigitalSignature},
		{"rsa adds key encipherment", "rsa2048", []string{"a.example.org"}, 0, time.Hour, x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment},
		{"ed25519", "ed25519", nil, time.Minute, time.Minute, x509.KeyUsageDigitalSignature},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key := genKey(t, tt.key)
			chain, err := c.SignX509SVID(context.Background(), ca.X509SVIDParams{
				PublicKey: key.Public(), SPIFFEID: id, DNSNames: tt.dns, TTL: tt.ttl,
			})
			if err != nil {
				t.Fatalf("SignX509SVID: %v", err)
			}
			if len(chain) != 1 {
				t.Fatalf("chain has %d certificates, want just the leaf", len(chain))
			}
			leaf := chain[0]
			if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id.String() {
				t.Errorf("URIs = %v, want exactly [%s]", leaf.URIs, id)
			}
			if fmt.Sprint(leaf.DNSNames) != fmt.Sprint(tt.dns) && !(len(tt.dns) == 0 && len(leaf.DNSNames) == 0) {
				t.Errorf("DNSNames = %v, want %v", leaf.DNSNames, tt.dns)
			}
			wantCN := ""
			if len(tt.dns) > 0 {
				wantCN = tt.dns[0]
			}
			if leaf.Subject.CommonName != wantCN {
				t.Errorf("CN = %q, want %q", leaf.Subject.CommonName, wantCN)
			}
			if len(leaf.EmailAddresses)+len(leaf.IPAddresses) != 0 {
				t.Errorf("unexpected SANs: %v %v", leaf.EmailAddresses, leaf.IPAddresses)
			}
			// Backdating is at most a tenth of the TTL.
			if wantNB := start.Add(-min(ca.DefaultBackdate, tt.wantTTL/10)); !leaf.NotBefore.Equal(wantNB) {
				t.Errorf("NotBefore = %v, want %v", leaf.NotBefore, wantNB)
			}
			if !leaf.NotAfter.Equal(start.Add(tt.wantTTL)) {
				t.Errorf("NotAfter = %v, want %v", leaf.NotAfter, start.Add(tt.wantTTL))
			}
			if leaf.KeyUsage != tt.wantKU {
				t.Errorf("KeyUsage = %v, want %v", leaf.KeyUsage, tt.wantKU)
			}
			if fmt.Sprint(leaf.ExtKeyUsage) != fmt.Sprint([]x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}) {
				t.Errorf("ExtKeyUsage = %v", leaf.ExtKeyUsage)
			}
			if !leaf.BasicConstraintsValid || leaf.IsCA {
				t.Errorf("BasicConstraintsValid=%v IsCA=%v, want a non-CA", leaf.BasicConstraintsValid, leaf.IsCA)
			}
			if !bytes.Equal(leaf.AuthorityKeyId, caCert.SubjectKeyId) {
				t.Errorf("AuthorityKeyId %x != CA SubjectKeyId %x", leaf.AuthorityKeyId, caCert.SubjectKeyId)
			}
			if leaf.SerialNumber.Sign() <= 0 || leaf.SerialNumber.BitLen() < 64 {
				t.Errorf("serial %v: want positive with >= 64 bits", leaf.SerialNumber)
			}
			if pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(leaf.PublicKey) {
				t.Error("leaf does not carry the requested public key")
			}
			if _, err := leaf.Verify(x509.VerifyOptions{
				Roots:       roots,
				CurrentTime: clk.Now(),
				KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
			}); err != nil {
				t.Errorf("x509 Verify: %v", err)
			}
			// go-spiffe's own SVID rules (one URI SAN, no CA, key usage).
			gotID, _, err := x509svid.Verify(chain, bundle, x509svid.WithTime(clk.Now()))
			if err != nil {
				t.Errorf("x509svid.Verify: %v", err)
			} else if gotID != id {
				t.Errorf("x509svid.Verify ID = %s", gotID)
			}
			keyDER, err := x509.MarshalPKCS8PrivateKey(key)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := x509svid.ParseRaw(leaf.Raw, keyDER); err != nil {
				t.Errorf("x509svid.ParseRaw: %v", err)
			}
		})
	}
}

func TestSerialsAreDistinct(t *testing.T) {
	c := newCA(t, testConfig(t, clock.NewFake(start)))
	pub := genKey(t, "p256").Public()
	id := spiffeid.RequireFromPath(td, "/w")
	seen := map[string]bool{c.Certificate().SerialNumber.String(): true}
	short := 0
	for i := 0; i < 300; i++ {
		chain, err := c.SignX509SVID(context.Background(), ca.X509SVIDParams{PublicKey: pub, SPIFFEID: id})
		if err != nil {
			t.Fatal(err)
		}
		s := chain[0].SerialNumber
		if seen[s.String()] {
			t.Fatalf("serial %v repeated", s)
		}
		seen[s.String()] = true
		if s.BitLen() < 100 {
			short++
		}
	}
	// 127 random bits: fewer than 100 significant bits has probability 2^-27.
	if short > 0 {
		t.Errorf("%d serials have fewer than 100 bits", short)
	}
}

func TestSignX509SVIDClampsToCAExpiry(t *testing.T) {
	tests := []struct {
		name         string
		advance      time.Duration // from CA creation
		ttl          time.Duration
		wantNotAfter func(caNotAfter, now time.Time) time.Time
		wantErr      string
	}{
		{"far from expiry", 10 * time.Hour, time.Hour, func(_, now time.Time) time.Time { return now.Add(time.Hour) }, ""},
		{"default ttl clamped", ca.DefaultCATTL - 30*time.Minute, 0, func(ca, _ time.Time) time.Time { return ca }, ""},
		{"explicit ttl clamped", ca.DefaultCATTL - time.Second, 10 * time.Hour, func(ca, _ time.Time) time.Time { return ca }, ""},
		{"exactly at expiry", ca.DefaultCATTL, time.Hour, nil, "expired"},
		{"past expiry", ca.DefaultCATTL + time.Hour, time.Hour, nil, "expired"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := clock.NewFake(start)
			c := newCA(t, testConfig(t, clk))
			clk.Add(tt.advance)
			chain, err := c.SignX509SVID(context.Background(), ca.X509SVIDParams{
				PublicKey: genKey(t, "p256").Public(),
				SPIFFEID:  spiffeid.RequireFromPath(td, "/w"),
				TTL:       tt.ttl,
			})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := tt.wantNotAfter(c.Certificate().NotAfter, clk.Now())
			if got := chain[0].NotAfter; !got.Equal(want) {
				t.Errorf("NotAfter = %v, want %v", got, want)
			}
			if chain[0].NotAfter.After(c.Certificate().NotAfter) {
				t.Error("SVID outlives its CA")
			}
			if !chain[0].NotBefore.Equal(clk.Now().Add(-ca.DefaultBackdate)) {
				t.Errorf("NotBefore = %v", chain[0].NotBefore)
			}
		})
	}
}

func TestSignX509SVIDRefuses(t *testing.T) {
	c := newCA(t, testConfig(t, clock.NewFake(start)))
	good := genKey(t, "p256").Public()
	id := spiffeid.RequireFromPath(td, "/w")
	ecdhKey, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		p       ca.X509SVIDParams
		wantErr string
	}{
		{"zero id", ca.X509SVIDParams{PublicKey: good}, "SPIFFE ID is empty"},
		{"other trust domain", ca.X509SVIDParams{PublicKey: good, SPIFFEID: spiffeid.RequireFromPath(otherTD, "/w")}, "not in trust domain"},
		{"trust domain id", ca.X509SVIDParams{PublicKey: good, SPIFFEID: td.ID()}, "no path"},
		{"nil key", ca.X509SVIDParams{SPIFFEID: id}, "public key is missing"},
		{"ecdh key", ca.X509SVIDParams{PublicKey: ecdhKey.PublicKey(), SPIFFEID: id}, "unsupported public key type"},
		{"p224 key", ca.X509SVIDParams{PublicKey: genKey(t, "p224").Public(), SPIFFEID: id}, "unsupported ECDSA curve"},
		{"small rsa", ca.X509SVIDParams{PublicKey: genKey(t, "rsa1024").Public(), SPIFFEID: id}, "too small"},
		{"private key", ca.X509SVIDParams{PublicKey: genKey(t, "p256"), SPIFFEID: id}, "unsupported public key type"},
		{"negative ttl", ca.X509SVIDParams{PublicKey: good, SPIFFEID: id, TTL: -time.Second}, "negative"},
		{"empty dns", ca.X509SVIDParams{PublicKey: good, SPIFFEID: id, DNSNames: []string{""}}, "DNS name is empty"},
		{"dns with space", ca.X509SVIDParams{PublicKey: good, SPIFFEID: id, DNSNames: []string{"a b"}}, "invalid character"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chain, err := c.SignX509SVID(context.Background(), tt.p)
			if err == nil {
				t.Fatalf("signed %v", chain[0].URIs)
			}
			if !strings.HasPrefix(err.Error(), "ca: ") || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("err = %q, want prefix \"ca: \" and %q", err, tt.wantErr)
			}
		})
	}
}

func TestSignX509SVIDFromCSR(t *testing.T) {
	c := newCA(t, testConfig(t, clock.NewFake(start)))
	key := genKey(t, "p256")
	id := spiffeid.RequireFromPath(td, "/ns/prod/sa/web")
	evil, _ := url.Parse("spiffe://example.org/ns/kube-system/sa/admin")
	evilOther, _ := url.Parse("spiffe://other.org/admin")

	good := mustCSR(t, key, nil)
	tampered := bytes.Clone(good)
	tampered[len(tampered)-3] ^= 0x01 // inside the signature BIT STRING
	claiming := mustCSR(t, key, &x509.CertificateRequest{
		Subject:        pkix.Name{CommonName: "admin.example.org", Organization: []string{"root"}},
		URIs:           []*url.URL{evil, evilOther},
		DNSNames:       []string{"admin.example.org", "evil.example.com"},
		EmailAddresses: []string{"root@example.org"},
	})
	otherKeyCSR := mustCSR(t, genKey(t, "p256"), nil)
	// A CSR whose body is kept but whose signature is from another key.
	swapped := bytes.Clone(good)
	sigGood := mustParseCSR(t, good).Signature
	sigOther := mustParseCSR(t, otherKeyCSR).Signature
	if i := bytes.Index(swapped, sigGood); i >= 0 && len(sigGood) == len(sigOther) {
		copy(swapped[i:], sigOther)
	} else {
		swapped = tampered
	}

	tests := []struct {
		name    string
		csr     []byte
		dns     []string
		wantErr string
	}{
		{"good", good, []string{"web.example.org"}, ""},
		{"identity claims in CSR are ignored", claiming, nil, ""},
		{"tampered signature", tampered, nil, "signature"},
		{"signature from another key", swapped, nil, "signature"},
		{"garbage", []byte("not a csr"), nil, "malformed CSR"},
		{"empty", nil, nil, "empty"},
		{"truncated", good[:len(good)/2], nil, "malformed CSR"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chain, err := c.SignX509SVIDFromCSR(context.Background(), tt.csr, id, tt.dns, 0)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.HasPrefix(err.Error(), "ca: ") {
					t.Fatalf("err = %v, want containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			leaf := chain[0]
			if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id.String() {
				t.Errorf("URIs = %v, want only %s", leaf.URIs, id)
			}
			if fmt.Sprint(leaf.DNSNames) != fmt.Sprint(tt.dns) && len(tt.dns)+len(leaf.DNSNames) > 0 {
				t.Errorf("DNSNames = %v, want %v", leaf.DNSNames, tt.dns)
			}
			if len(leaf.EmailAddresses) != 0 || len(leaf.Subject.Organization) != 0 {
				t.Errorf("CSR fields leaked into the SVID: %v %v", leaf.EmailAddresses, leaf.Subject)
			}
			if leaf.Subject.CommonName == "admin.example.org" {
				t.Error("CSR subject CN leaked into the SVID")
			}
			if !key.Public().(*ecdsa.PublicKey).Equal(leaf.PublicKey) {
				t.Error("SVID does not carry the CSR's public key")
			}
		})
	}
}

func mustParseCSR(t *testing.T, der []byte) *x509.CertificateRequest {
	t.Helper()
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	return csr
}

func TestVerifyCSRReturnsKey(t *testing.T) {
	for _, kind := range []string{"p256", "p384", "rsa2048", "ed25519"} {
		t.Run(kind, func(t *testing.T) {
			key := genKey(t, kind)
			pub, err := ca.VerifyCSR(mustCSR(t, key, nil))
			if err != nil {
				t.Fatal(err)
			}
			if !key.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(pub) {
				t.Error("wrong public key")
			}
		})
	}
	if _, err := ca.VerifyCSR(mustCSR(t, genKey(t, "rsa1024"), nil)); err == nil {
		t.Error("accepted a CSR with a 1024-bit RSA key")
	}
}

func TestReloadFromDisk(t *testing.T) {
	type setup struct {
		dir      string
		certPath string
		clk      *clock.Fake
		cfg      func() ca.Config
	}
	newSetup := func(t *testing.T) *setup {
		s := &setup{dir: t.TempDir(), clk: clock.NewFake(start)}
		s.certPath = filepath.Join(s.dir, "ca", "ca.pem")
		s.cfg = func() ca.Config {
			km, err := disk.New(filepath.Join(s.dir, "keys"))
			if err != nil {
				t.Fatal(err)
			}
			cfg := testConfig(t, s.clk)
			cfg.KeyManager = km
			cfg.CertPath = s.certPath
			return cfg
		}
		return s
	}
	tests := []struct {
		name     string
		between  func(t *testing.T, s *setup, cfg *ca.Config)
		wantSame bool
		wantErr  string
	}{
		{"restart keeps the CA", func(*testing.T, *setup, *ca.Config) {}, true, ""},
		{"restart later but before expiry", func(_ *testing.T, s *setup, _ *ca.Config) { s.clk.Add(ca.DefaultCATTL - time.Minute) }, true, ""},
		{"expired CA is replaced", func(_ *testing.T, s *setup, _ *ca.Config) { s.clk.Add(ca.DefaultCATTL) }, false, ""},
		{"other trust domain is replaced", func(_ *testing.T, _ *setup, cfg *ca.Config) { cfg.TrustDomain = otherTD }, false, ""},
		{"other server id is replaced", func(_ *testing.T, _ *setup, cfg *ca.Config) { cfg.ServerID = "server-9" }, false, ""},
		{"missing key is replaced", func(t *testing.T, s *setup, _ *ca.Config) {
			if err := os.Remove(filepath.Join(s.dir, "keys", "x509-ca.key.pem")); err != nil {
				t.Fatal(err)
			}
		}, false, ""},
		{"missing certificate is replaced", func(t *testing.T, s *setup, _ *ca.Config) {
			if err := os.Remove(s.certPath); err != nil {
				t.Fatal(err)
			}
		}, false, ""},
		{"key that does not match is replaced", func(t *testing.T, s *setup, cfg *ca.Config) {
			if _, err := cfg.KeyManager.GenerateKey(context.Background(), "x509-ca", ca.KeyTypeECP256); err != nil {
				t.Fatal(err)
			}
		}, false, ""},
		{"corrupt certificate is an error", func(t *testing.T, s *setup, _ *ca.Config) {
			if err := os.WriteFile(s.certPath, []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}, false, "ca: CA certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSetup(t)
			first := newCA(t, s.cfg())
			fi, err := os.Stat(s.certPath)
			if err != nil {
				t.Fatalf("certificate not persisted: %v", err)
			}
			if fi.Mode().Perm() != 0o644 {
				t.Errorf("certificate file mode %v, want 0644", fi.Mode().Perm())
			}
			cfg := s.cfg()
			tt.between(t, s, &cfg)
			second, err := ca.New(context.Background(), cfg)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			same := bytes.Equal(first.Certificate().Raw, second.Certificate().Raw)
			if same != tt.wantSame {
				t.Fatalf("same certificate = %v, want %v", same, tt.wantSame)
			}
			// The reloaded CA signs with the key of its certificate.
			chain, err := second.SignX509SVID(context.Background(), ca.X509SVIDParams{
				PublicKey: genKey(t, "p256").Public(), SPIFFEID: spiffeid.RequireFromPath(cfg.TrustDomain, "/w"),
			})
			if err != nil {
				t.Fatal(err)
			}
			if err := chain[0].CheckSignatureFrom(second.Certificate()); err != nil {
				t.Errorf("SVID not signed by the CA key: %v", err)
			}
			if !tt.wantSame {
				// What is on disk now is the new CA.
				third := newCA(t, func() ca.Config { c := s.cfg(); c.TrustDomain, c.ServerID = cfg.TrustDomain, cfg.ServerID; return c }())
				if !bytes.Equal(third.Certificate().Raw, second.Certificate().Raw) {
					t.Error("replacement CA was not persisted")
				}
			}
		})
	}
}

// TestPrivateKeyNeverReturned checks that the bytes of the CA private key
// appear in nothing the CA hands out or persists.
func TestPrivateKeyNeverReturned(t *testing.T) {
	for _, kt := range []ca.KeyType{ca.KeyTypeECP256, ca.KeyTypeRSA2048} {
		t.Run(string(kt), func(t *testing.T) {
			dir := t.TempDir()
			km := memory.New()
			cfg := testConfig(t, clock.NewFake(start))
			cfg.KeyManager = km
			cfg.KeyType = kt
			cfg.CertPath = filepath.Join(dir, "ca.pem")
			c := newCA(t, cfg)
			key, err := km.GetKey(context.Background(), "x509-ca")
			if err != nil {
				t.Fatal(err)
			}
			var secrets [][]byte
			switch k := key.(type) {
			case *ecdsa.PrivateKey:
				d, err := k.Bytes()
				if err != nil {
					t.Fatal(err)
				}
				secrets = append(secrets, d)
			case *rsa.PrivateKey:
				secrets = append(secrets, k.D.Bytes(), k.Primes[0].Bytes(), k.Primes[1].Bytes())
			}
			pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
			if err != nil {
				t.Fatal(err)
			}
			chain, err := c.SignX509SVIDFromCSR(context.Background(), mustCSR(t, genKey(t, "p256"), nil), spiffeid.RequireFromPath(td, "/w"), []string{"w.example.org"}, 0)
			if err != nil {
				t.Fatal(err)
			}
			pemFile, err := os.ReadFile(cfg.CertPath)
			if err != nil {
				t.Fatal(err)
			}
			outputs := map[string][]byte{
				"CA certificate":  c.Certificate().Raw,
				"SVID":            chain[0].Raw,
				"persisted PEM":   pemFile,
				"CA %+v":          []byte(fmt.Sprintf("%+v", c)),
				"CA %#v":          []byte(fmt.Sprintf("%#v", c)),
				"certificate %+v": []byte(fmt.Sprintf("%+v", c.Certificate())),
			}
			for name, out := range outputs {
				for _, s := range secrets {
					if bytes.Contains(out, s) {
						t.Errorf("%s contains private key bytes", name)
					}
					if strings.Contains(strings.ToLower(string(out)), fmt.Sprintf("%x", s)) {
						t.Errorf("%s contains private key hex", name)
					}
				}
				if bytes.Contains(out, pkcs8) {
					t.Errorf("%s contains the PKCS#8 key", name)
				}
			}
			files, _ := os.ReadDir(dir)
			if len(files) != 1 {
				t.Errorf("CA wrote %d files next to the certificate, want 1", len(files))
			}
		})
	}
}

type countingMeter struct {
	mu         sync.Mutex
	ok, failed int
}

func (m *countingMeter) X509SVIDSigned(d time.Duration, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err != nil {
		m.failed++
	} else {
		m.ok++
	}
}

func TestMeterAndConcurrentSigning(t *testing.T) {
	m := &countingMeter{}
	cfg := testConfig(t, clock.NewFake(start))
	cfg.Meter = m
	c := newCA(t, cfg)
	csr := mustCSR(t, genKey(t, "p256"), nil)
	id := spiffeid.RequireFromPath(td, "/w")
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 10; j++ {
				if _, err := c.SignX509SVIDFromCSR(context.Background(), csr, id, nil, 0); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	if _, err := c.SignX509SVIDFromCSR(context.Background(), []byte("x"), id, nil, 0); err == nil {
		t.Fatal("garbage CSR accepted")
	}
	if _, err := c.SignX509SVID(context.Background(), ca.X509SVIDParams{SPIFFEID: id}); err == nil {
		t.Fatal("nil key accepted")
	}
	if m.ok != 80 || m.failed != 2 {
		t.Errorf("meter saw %d ok, %d failed; want 80, 2", m.ok, m.failed)
	}
}

func TestConfigValidate(t *testing.T) {
	km := memory.New()
	base := func() ca.Config {
		return ca.Config{TrustDomain: td, ServerID: "s1", KeyManager: km}
	}
	tests := []struct {
		name    string
		mod     func(*ca.Config)
		wantErr string
	}{
		{"minimal gets defaults", func(*ca.Config) {}, ""},
		{"no trust domain", func(c *ca.Config) { c.TrustDomain = spiffeid.TrustDomain{} }, "trust domain"},
		{"no server id", func(c *ca.Config) { c.ServerID = "" }, "server ID"},
		{"no key manager", func(c *ca.Config) { c.KeyManager = nil }, "key manager"},
		{"bad key type", func(c *ca.Config) { c.KeyType = "dsa-1024" }, "unsupported key type"},
		{"negative CA TTL", func(c *ca.Config) { c.CATTL = -time.Hour }, "CA TTL"},
		{"negative SVID TTL", func(c *ca.Config) { c.X509SVIDTTL = -time.Hour }, "X509-SVID TTL"},
		{"negative backdate", func(c *ca.Config) { c.Backdate = -time.Second }, "backdate"},
		{"backdate over CA TTL", func(c *ca.Config) { c.CATTL = time.Second; c.Backdate = time.Minute }, "backdate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := base()
			tt.mod(&cfg)
			err := cfg.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				d := ca.DefaultConfig()
				if cfg.KeyType != d.KeyType || cfg.CATTL != d.CATTL || cfg.X509SVIDTTL != d.X509SVIDTTL ||
					cfg.Backdate != d.Backdate || cfg.Clock == nil || cfg.Meter == nil {
					t.Errorf("defaults not applied: %+v", cfg)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.HasPrefix(err.Error(), "ca: ") {
				t.Errorf("err = %v, want %q", err, tt.wantErr)
			}
			if _, err := ca.New(context.Background(), cfg); err == nil {
				t.Error("New accepted an invalid config")
			}
		})
	}
}

func TestKeyManagerErrorIsReported(t *testing.T) {
	cfg := testConfig(t, clock.NewFake(start))
	cfg.KeyManager = failingKM{}
	cfg.CertPath = filepath.Join(t.TempDir(), "ca.pem")
	if _, err := ca.New(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "hsm offline") {
		t.Fatalf("err = %v", err)
	}
	if _, err := os.Stat(cfg.CertPath); !errors.Is(err, os.ErrNotExist) {
		t.Error("certificate written although key generation failed")
	}
}

type failingKM struct{}

func (failingKM) GenerateKey(context.Context, string, ca.KeyType) (crypto.Signer, error) {
	return nil, errors.New("hsm offline")
}
func (failingKM) GetKey(context.Context, string) (crypto.Signer, error) {
	return nil, ca.ErrKeyNotFound
}
