package agent

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"testing"
	"testing/cryptotest"
)

// TestMintCSRMatchesCreateCertificateRequest: with the same key (the same
// randomness), the request the agent encodes itself is byte for byte what
// x509.CreateCertificateRequest writes for an empty template with no
// random source (a deterministic RFC 6979 signature, see csr.go), and it
// parses and verifies (the server's proof-of-possession check).
func TestMintCSRMatchesCreateCertificateRequest(t *testing.T) {
	for seed := range uint64(50) {
		cryptotest.SetGlobalRandom(t, seed)
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		want, err := x509.CreateCertificateRequest(nil, &x509.CertificateRequest{}, key)
		if err != nil {
			t.Fatal(err)
		}
		cryptotest.SetGlobalRandom(t, seed)
		key2, csr, err := newMintKeyAndCSR()
		if err != nil {
			t.Fatal(err)
		}
		if !key2.(*ecdsa.PrivateKey).Equal(key) {
			t.Fatalf("seed %d: the same randomness gave another key", seed)
		}
		if !bytes.Equal(csr, want) {
			t.Fatalf("seed %d: request differs from CreateCertificateRequest's\n got %x\nwant %x", seed, csr, want)
		}
	}
}

// TestMintCSRDeterministic: the request's signature is RFC 6979's, the
// same for the same key every time (a randomized signature would differ
// each time), and it is the signature crypto/ecdsa makes with no random
// source.
func TestMintCSRDeterministic(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	first, err := p256CSR(key)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		again, err := p256CSR(key)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(again, first) {
			t.Fatalf("two requests over one key differ\n%x\n%x", first, again)
		}
	}
	req, err := x509.ParseCertificateRequest(first)
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256(req.RawTBSCertificateRequest)
	want, err := key.Sign(nil, digest[:], crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(req.Signature, want) {
		t.Fatalf("signature %x, want RFC 6979's %x", req.Signature, want)
	}
}

// TestMintCSRVerifies: with real randomness, the request parses and its
// signature (proof of possession of the key) verifies.
func TestMintCSRVerifies(t *testing.T) {
	for range 20 {
		key, csr, err := newMintKeyAndCSR()
		if err != nil {
			t.Fatal(err)
		}
		req, err := x509.ParseCertificateRequest(csr)
		if err != nil {
			t.Fatal(err)
		}
		if err := req.CheckSignature(); err != nil {
			t.Fatal(err)
		}
		if !key.Public().(*ecdsa.PublicKey).Equal(req.PublicKey) {
			t.Fatal("request carries another key")
		}
		if req.SignatureAlgorithm != x509.ECDSAWithSHA256 || len(req.RawSubject) != 2 || len(req.Extensions) != 0 {
			t.Fatalf("request: algorithm %v, subject %x, %d extensions", req.SignatureAlgorithm, req.RawSubject, len(req.Extensions))
		}
	}
}

// TestMintCSRRefusesOtherCurves: a key on another curve gets a clear
// error, not a request with a wrong key encoding.
func TestMintCSRRefusesOtherCurves(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p256CSR(key); err == nil || !bytes.Contains([]byte(err.Error()), []byte("P-384")) {
		t.Fatalf("P-384 key: err %v, want one naming the curve", err)
	}
}

// TestMarshalPKCS8MatchesX509: the key encoding of the SVIDs is byte for
// byte x509.MarshalPKCS8PrivateKey's, and parses back to the key; other
// keys go through x509.MarshalPKCS8PrivateKey.
func TestMarshalPKCS8MatchesX509(t *testing.T) {
	for range 200 {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		want, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		got, err := marshalPKCS8(key)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("PKCS#8 differs\n got %x\nwant %x", got, want)
		}
		back, err := x509.ParsePKCS8PrivateKey(got)
		if err != nil || !key.Equal(back) {
			t.Fatalf("PKCS#8 does not parse back to the key: %v", err)
		}
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	got, err := marshalPKCS8(p384)
	if err != nil {
		t.Fatal(err)
	}
	if back, err := x509.ParsePKCS8PrivateKey(got); err != nil || !p384.Equal(back) {
		t.Fatalf("P-384 key: %v", err)
	}
}

// TestMarshalPKCS8KnownMatchesX509: with the SubjectPublicKeyInfo of the
// agent's request, the key encoding is byte for byte
// x509.MarshalPKCS8PrivateKey's; with none, or one of another key form,
// it is marshalPKCS8's.
func TestMarshalPKCS8KnownMatchesX509(t *testing.T) {
	for range 200 {
		key, spki, _, err := newMintRequest()
		if err != nil {
			t.Fatal(err)
		}
		want, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range [][]byte{spki, nil, spki[:len(spki)-1]} {
			got, err := marshalPKCS8Known(key, s)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("PKCS#8 with SPKI %x differs\n got %x\nwant %x", s, got, want)
			}
		}
		if der, err := x509.MarshalPKIXPublicKey(key.Public()); err != nil || !bytes.Equal(der, spki) {
			t.Fatalf("request SPKI %x, x509's %x (%v)", spki, der, err)
		}
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	got, err := marshalPKCS8Known(p384, nil)
	if err != nil {
		t.Fatal(err)
	}
	if back, err := x509.ParsePKCS8PrivateKey(got); err != nil || !p384.Equal(back) {
		t.Fatalf("P-384 key: %v", err)
	}
}
