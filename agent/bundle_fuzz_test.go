package agent

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/internal/trustbundle"
)

// pemCertDERs returns the DER bytes of the CERTIFICATE blocks of data.
func pemCertDERs(data []byte) [][]byte {
	var ders [][]byte
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return ders
		}
		if b.Type == "CERTIFICATE" {
			ders = append(ders, b.Bytes)
		}
	}
}

func containsDER(ders [][]byte, der []byte) bool {
	for _, d := range ders {
		if bytes.Equal(d, der) {
			return true
		}
	}
	return false
}

// FuzzTrustBundleFile feeds arbitrary bytes to the agent as its bootstrap
// trust bundle file (-trust-bundle-path) and as its saved bundle. Neither
// may panic; a bundle accepted is of the agent's trust domain and holds
// only certificates that stand, byte for byte, in a CERTIFICATE block of
// the file; a refusal is an "agent: " error; and an accepted bundle saved
// and loaded again is the same bundle.
func FuzzTrustBundleFile(f *testing.F) {
	ca1, ca2 := newTestCA(f, t0), newTestCA(f, t0)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	leaf := ca1.sign(f, testTD.ID(), key.Public(), t0, time.Hour)
	bundle := encodeCerts([]*x509.Certificate{ca1.cert, ca2.cert})
	f.Add(bundle)
	f.Add(encodeCerts(leaf))
	f.Add(append([]byte("comment\n-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), bundle...))
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("not DER")}))
	f.Add(bundle[:len(bundle)/2])
	f.Add([]byte("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"))
	f.Add([]byte{})

	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(dir, "bundle.pem")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		a := &Agent{cfg: Config{TrustDomain: testTD, TrustBundlePath: path, DataDir: t.TempDir()}, log: zap.NewNop()}
		b, err := a.bootstrapBundle()
		ders := pemCertDERs(data)
		if err != nil {
			if b != nil || !strings.HasPrefix(err.Error(), "agent: ") {
				t.Fatalf("refusal returned %v, %q", b, err)
			}
			if len(ders) > 0 && containsDERsAllParseAsCAs(ders) {
				t.Fatalf("refused a file whose certificates all parse as CA certificates: %v", err)
			}
			return
		}
		if b.TrustDomain() != testTD || b.Empty() {
			t.Fatalf("accepted bundle of %v, empty=%v", b.TrustDomain(), b.Empty())
		}
		for _, c := range b.X509Authorities() {
			if !containsDER(ders, c.Raw) {
				t.Fatalf("bundle holds a certificate that is not in the file")
			}
			if !c.IsCA || !c.BasicConstraintsValid {
				t.Fatalf("bundle holds a certificate that is not a CA certificate")
			}
		}
		// What the agent saves, it loads back the same.
		if err := saveBundle(a.cfg.DataDir, b); err != nil {
			t.Fatal(err)
		}
		saved, err := loadBundle(a.cfg.DataDir, testTD)
		if err != nil || saved == nil || !saved.Equal(b) {
			t.Fatalf("saved bundle loads as %v, %v", saved, err)
		}
	})
}

func containsDERsAllParseAsCAs(ders [][]byte) bool {
	for _, d := range ders {
		if c, err := x509.ParseCertificate(d); err != nil || !c.IsCA || !c.BasicConstraintsValid {
			return false
		}
	}
	return true
}

// FuzzServerBundle feeds arbitrary bytes, decoded as the bundle message
// the server sends, to the agent's X.509 bundle conversion and to its JWT
// authority cache. Neither may panic. An accepted X.509 bundle is of the
// agent's trust domain and holds exactly the authorities' certificates, in
// order. The JWT bundle the cache then serves holds only keys that parsed,
// under a key ID the server sent with that very key; any authority left
// out is reported as an error; only key IDs sent as tainted are tainted.
func FuzzServerBundle(f *testing.F) {
	ca := newTestCA(f, t0)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	pub, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		f.Fatal(err)
	}
	for _, pb := range []*sigilv1.Bundle{
		{TrustDomain: testTD.Name(), X509Authorities: []*sigilv1.X509Authority{{Certificate: ca.cert.Raw}},
			JwtAuthorities: []*sigilv1.JWTAuthority{{KeyId: "k1", PublicKey: pub}, {KeyId: "k2", PublicKey: pub, Tainted: true}}},
		{TrustDomain: "other.org", X509Authorities: []*sigilv1.X509Authority{{Certificate: ca.cert.Raw}}},
		{X509Authorities: []*sigilv1.X509Authority{{Certificate: []byte("x")}}},
		{JwtAuthorities: []*sigilv1.JWTAuthority{{KeyId: "", PublicKey: pub}, {KeyId: "k3", PublicKey: []byte("x")}, {KeyId: "k1", PublicKey: pub}}},
		{},
	} {
		b, err := proto.Marshal(pb)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}

	f.Fuzz(func(t *testing.T, data []byte) {
		pb := &sigilv1.Bundle{}
		if err := proto.Unmarshal(data, pb); err != nil {
			return
		}
		b, err := trustbundle.FromProto(testTD, pb)
		if err == nil {
			if pb.TrustDomain != "" && pb.TrustDomain != testTD.Name() {
				t.Fatalf("accepted a bundle of trust domain %q", pb.TrustDomain)
			}
			got := b.X509Authorities()
			if b.TrustDomain() != testTD || len(got) != len(pb.X509Authorities) {
				t.Fatalf("bundle of %v with %d authorities from %d", b.TrustDomain(), len(got), len(pb.X509Authorities))
			}
			for i, c := range got {
				if !bytes.Equal(c.Raw, pb.X509Authorities[i].Certificate) {
					t.Fatalf("authority %d differs from the server's", i)
				}
			}
		} else if b != nil {
			t.Fatalf("refusal (%v) returned a bundle", err)
		}

		c := newCache(testTD, zap.NewNop(), clock.NewFake(t0))
		_, err = c.setAuthorities(pb, nil)
		jb, _ := c.JWTBundles(nil)
		kept := 0
		for kid, k := range jb[testTD].JWTAuthorities() {
			kept++
			found := false
			for _, a := range pb.JwtAuthorities {
				if a.KeyId != kid {
					continue
				}
				if p, perr := x509.ParsePKIXPublicKey(a.PublicKey); perr == nil && p.(interface{ Equal(crypto.PublicKey) bool }).Equal(k) {
					found = true
				}
			}
			if !found {
				t.Fatalf("JWT bundle holds key ID %q with a key the server did not send under it", kid)
			}
		}
		valid := 0
		for _, a := range pb.JwtAuthorities {
			if _, perr := x509.ParsePKIXPublicKey(a.PublicKey); perr == nil && a.KeyId != "" {
				valid++
			}
		}
		if (err == nil) != (valid == len(pb.JwtAuthorities)) {
			t.Fatalf("error %v, but %d of %d JWT authorities are valid", err, valid, len(pb.JwtAuthorities))
		}
		c.jwt.mu.Lock()
		tainted := c.jwt.taintedJWT
		c.jwt.mu.Unlock()
		for kid := range tainted {
			ok := false
			for _, a := range pb.JwtAuthorities {
				ok = ok || (a.KeyId == kid && a.Tainted)
			}
			if !ok {
				t.Fatalf("key ID %q tainted but never sent as tainted", kid)
			}
		}
		if kept > len(pb.JwtAuthorities) {
			t.Fatalf("%d keys from %d authorities", kept, len(pb.JwtAuthorities))
		}
	})
}
