package ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	mrand "math/rand/v2"
	"testing"
	"testing/cryptotest"
	"time"
)

// TestCSRKeySVIDMatchesCreateCertificate: an SVID minted from the CSRKey
// of a request, of the agents' profile (P-256, whose point the encoder
// then writes as the request carried it) or any other (a P-256 request
// with a subject, P-384, RSA, Ed25519: the full path), is byte for byte
// what x509.CreateCertificate writes for the same template and the CSR's
// key, with every CA key type; the CSRKey's key is the one VerifyCSR
// returns, and the SVID's key is the request's.
func TestCSRKeySVIDMatchesCreateCertificate(t *testing.T) {
	keys := fastKeys()
	r := mrand.New(mrand.NewPCG(17, uint64(time.Now().UnixNano())))
	now := time.Date(2026, 12, 2, 5, 0, 0, 123_000_000, time.UTC)
	ctx := context.Background()
	type request struct {
		name     string
		key      crypto.Signer
		tmpl     *x509.CertificateRequest
		hasPoint bool
	}
	reqs := []request{
		{"agents-profile", p256Key(t), &x509.CertificateRequest{}, true},
		{"p256-subject", p256Key(t), &x509.CertificateRequest{Subject: pkix.Name{CommonName: "w"}}, false},
		{"p384", keys["p384"], &x509.CertificateRequest{}, false},
		{"rsa2048", keys["rsa2048"], &x509.CertificateRequest{}, false},
		{"ed25519", keys["ed25519"], &x509.CertificateRequest{}, false},
	}
	for _, caKind := range fastCAKinds {
		c := fastCA(t, keys[caKind], now, 24*time.Hour)
		for _, rq := range reqs {
			t.Run(caKind+"/"+rq.name, func(t *testing.T) {
				der := csrOf(t, rq.key, rq.tmpl)
				key, err := VerifyCSRKey(der)
				if err != nil {
					t.Fatal(err)
				}
				if key.hasPoint != rq.hasPoint {
					t.Fatalf("hasPoint %v, want %v", key.hasPoint, rq.hasPoint)
				}
				pub, err := VerifyCSR(der)
				if err != nil {
					t.Fatal(err)
				}
				if !pub.(interface{ Equal(crypto.PublicKey) bool }).Equal(key.Public()) ||
					!pub.(interface{ Equal(crypto.PublicKey) bool }).Equal(rq.key.Public()) {
					t.Fatal("VerifyCSRKey's key is not VerifyCSR's, or not the request's")
				}
				for i := range 5 {
					p := randomParams(r, nil)
					p.PublicKey, p.CSRKey = nil, key
					seed := uint64(i)
					cryptotest.SetGlobalRandom(t, seed)
					tmpl, err := c.x509SVIDTemplate(p)
					if err != nil {
						t.Fatal(err)
					}
					want, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, rq.key.Public(), c.signer)
					if err != nil {
						t.Fatal(err)
					}
					cryptotest.SetGlobalRandom(t, seed)
					svid, err := c.SignX509SVIDRaw(ctx, p)
					if err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(svid.Chain[0], want) {
						t.Fatalf("SVID from CSRKey differs from x509.CreateCertificate:\n got %x\nwant %x", svid.Chain[0], want)
					}
				}
			})
		}
	}
}

// TestCSRKeyPointIsACopy: the point a CSRKey keeps is its own: changing
// the request's bytes after the check changes nothing in the SVID, whose
// key stays the one that was checked.
func TestCSRKeyPointIsACopy(t *testing.T) {
	keys := fastKeys()
	c := fastCA(t, keys["ca-p256"], time.Now(), 24*time.Hour)
	k := p256Key(t)
	der := csrOf(t, k, &x509.CertificateRequest{})
	key, err := VerifyCSRKey(der)
	if err != nil {
		t.Fatal(err)
	}
	for i := range der {
		der[i] ^= 0xff
	}
	p := randomParams(mrand.New(mrand.NewPCG(1, 2)), nil)
	p.PublicKey, p.CSRKey = nil, key
	svid, err := c.SignX509SVIDRaw(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(svid.Chain[0])
	if err != nil {
		t.Fatal(err)
	}
	if !k.PublicKey.Equal(leaf.PublicKey) {
		t.Fatal("the SVID's key is not the checked request's")
	}
}

// TestCSRKeyAndPublicKeyRefused: params with both a PublicKey and a
// CSRKey are refused.
func TestCSRKeyAndPublicKeyRefused(t *testing.T) {
	keys := fastKeys()
	c := fastCA(t, keys["ca-p256"], time.Now(), 24*time.Hour)
	k := p256Key(t)
	key, err := VerifyCSRKey(csrOf(t, k, &x509.CertificateRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	p := randomParams(mrand.New(mrand.NewPCG(1, 2)), k.Public())
	p.CSRKey = key
	if _, err := c.SignX509SVIDRaw(context.Background(), p); err == nil {
		t.Fatal("params with both PublicKey and CSRKey were accepted")
	}
	if _, err := c.SignX509SVID(context.Background(), p); err == nil {
		t.Fatal("params with both PublicKey and CSRKey were accepted by SignX509SVID")
	}
}
