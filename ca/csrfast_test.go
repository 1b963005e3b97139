package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"net/url"
	"strings"
	"testing"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"

	"github.com/sigil-id/sigil/internal/p256der"
)

// csrOf is x509.CreateCertificateRequest(tmpl) by key.
func csrOf(t testing.TB, key crypto.Signer, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// p256Key returns a fresh P-256 key.
func p256Key(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// fullPathAccepts reports whether crypto/x509 accepts der: it parses and
// its signature verifies; it returns the key.
func fullPathAccepts(der []byte) (crypto.PublicKey, bool) {
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil || csr.CheckSignature() != nil {
		return nil, false
	}
	return csr.PublicKey, true
}

// TestFastCSRTakesTheAgentsRequests: the request x509.CreateCertificateRequest
// writes for a P-256 key and an empty template (the bytes the agent
// writes, agent/csr_test.go) takes the fast path, and VerifyCSR returns
// the key crypto/x509 parses from it.
func TestFastCSRTakesTheAgentsRequests(t *testing.T) {
	for range 20 {
		key := p256Key(t)
		der := csrOf(t, key, &x509.CertificateRequest{})
		r, ok := splitFastCSR(der)
		if !ok {
			t.Fatalf("the fast path does not take %x", der)
		}
		point, err := key.PublicKey.Bytes()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(r.point, point) {
			t.Fatal("wrong point")
		}
		pub, err := VerifyCSR(der)
		if err != nil {
			t.Fatal(err)
		}
		want, ok := fullPathAccepts(der)
		if !ok || !pub.(*ecdsa.PublicKey).Equal(want) || !key.PublicKey.Equal(pub) {
			t.Fatal("VerifyCSR returned another key than crypto/x509's")
		}
	}
}

// TestFastCSRLeavesOtherRequestsToX509: requests outside the fast path's
// profile (a subject, attributes, another key type or curve, another
// signature algorithm) are not taken by it, and VerifyCSR still accepts
// them through crypto/x509.
func TestFastCSRLeavesOtherRequestsToX509(t *testing.T) {
	p256 := p256Key(t)
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse("spiffe://example.org/web")
	for _, c := range []struct {
		name string
		der  []byte
	}{
		{"subject", csrOf(t, p256, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "web"}})},
		{"SAN attribute", csrOf(t, p256, &x509.CertificateRequest{URIs: []*url.URL{u}})},
		{"extra extension", csrOf(t, p256, &x509.CertificateRequest{ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 55555, 1}, Value: []byte{5, 0}}}})},
		{"SHA-384 signature", csrOf(t, p256, &x509.CertificateRequest{SignatureAlgorithm: x509.ECDSAWithSHA384})},
		{"P-384", csrOf(t, p384, &x509.CertificateRequest{})},
		{"Ed25519", csrOf(t, ed, &x509.CertificateRequest{})},
		{"RSA", csrOf(t, rsaKey, &x509.CertificateRequest{})},
	} {
		t.Run(c.name, func(t *testing.T) {
			if _, ok := splitFastCSR(c.der); ok {
				t.Fatal("taken by the fast path")
			}
			pub, err := VerifyCSR(c.der)
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			want, ok := fullPathAccepts(c.der)
			if !ok || !pub.(interface{ Equal(crypto.PublicKey) bool }).Equal(want) {
				t.Fatal("VerifyCSR returned another key than crypto/x509's")
			}
		})
	}
}

// assembleCSR is the DER request SEQUENCE { tbs, alg, BIT STRING
// (unused bits) sig }.
func assembleCSR(t testing.TB, tbs, alg []byte, unused byte, sig []byte) []byte {
	t.Helper()
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddBytes(tbs)
		b.AddBytes(alg)
		b.AddASN1(cbasn1.BIT_STRING, func(b *cryptobyte.Builder) {
			b.AddUint8(unused)
			b.AddBytes(sig)
		})
	})
	der, err := b.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// signedCSR is a request over the CertificationRequestInfo made of
// these parts, signed by key with ECDSA and SHA-256.
func signedCSR(t testing.TB, key *ecdsa.PrivateKey, version int64, subject, spki, attrs []byte) []byte {
	t.Helper()
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1Int64(version)
		b.AddBytes(subject)
		b.AddBytes(spki)
		b.AddBytes(attrs)
	})
	tbs, err := b.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256(tbs)
	sig, err := ecdsa.SignASN1(rand.Reader, key, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	return assembleCSR(t, tbs, p256der.ECDSAWithSHA256, 0, sig)
}

// TestFastCSRRefusals: requests of the fast path's profile with a
// signature that does not verify or a point off the curve are refused by
// the fast path with the fault named; near misses of the profile (unused
// bits, trailing or missing bytes, another version, an empty signature,
// another key than the signer's) are refused by one path or the other.
// Every refusal is a "ca: " error, and crypto/x509 refuses each request
// too.
func TestFastCSRRefusals(t *testing.T) {
	key := p256Key(t)
	good := csrOf(t, key, &x509.CertificateRequest{})
	r, ok := splitFastCSR(good)
	if !ok {
		t.Fatal("the fast path does not take a good request")
	}
	other, _ := splitFastCSR(csrOf(t, p256Key(t), &x509.CertificateRequest{}))
	mutate := func(f func(b []byte)) []byte { b := bytes.Clone(good); f(b); return b }
	pointAt := bytes.Index(good, r.point)
	if pointAt < 0 {
		t.Fatal("point not found")
	}
	spki := func(point []byte) []byte { return append(bytes.Clone(p256der.SPKIPrefix), point...) }
	offCurve := bytes.Clone(r.point)
	offCurve[64] ^= 1
	emptyName, emptyAttrs := []byte{0x30, 0x00}, []byte{0xa0, 0x00}
	for _, c := range []struct {
		name, want string
		fast       bool // of the fast path's profile
		der        []byte
	}{
		{"signature byte flipped", "ca: CSR signature is invalid: ECDSA verification failure", true, mutate(func(b []byte) { b[len(b)-3] ^= 1 })},
		{"key of another request", "ca: CSR signature is invalid: ECDSA verification failure", true, assembleCSR(t, other.tbs, p256der.ECDSAWithSHA256, 0, r.sig)},
		{"signature of another request", "ca: CSR signature is invalid", true, assembleCSR(t, r.tbs, p256der.ECDSAWithSHA256, 0, other.sig)},
		{"signed by another key", "ca: CSR signature is invalid", true, signedCSR(t, p256Key(t), 0, emptyName, spki(r.point), emptyAttrs)},
		{"point off the curve", "ca: malformed CSR: public key is not a point of P-256", true, signedCSR(t, key, 0, emptyName, spki(offCurve), emptyAttrs)},
		{"compressed point marker", "ca: malformed CSR", true, mutate(func(b []byte) { b[pointAt] = 2 })},
		{"unused bits in the signature", "ca: ", false, assembleCSR(t, r.tbs, p256der.ECDSAWithSHA256, 1, r.sig)},
		{"empty signature", "ca: ", false, assembleCSR(t, r.tbs, p256der.ECDSAWithSHA256, 0, nil)},
		{"trailing byte", "ca: malformed CSR", false, append(bytes.Clone(good), 0)},
		{"truncated", "ca: malformed CSR", false, good[:len(good)-1]},
	} {
		t.Run(c.name, func(t *testing.T) {
			if _, ok := splitFastCSR(c.der); ok != c.fast {
				t.Fatalf("taken by the fast path: %v, want %v", ok, c.fast)
			}
			pub, err := VerifyCSR(c.der)
			if err == nil || pub != nil {
				t.Fatalf("accepted (%v)", pub)
			}
			if !strings.HasPrefix(err.Error(), c.want) {
				t.Fatalf("error %q, want %q...", err, c.want)
			}
			if _, ok := fullPathAccepts(c.der); ok {
				t.Fatal("crypto/x509 accepts it")
			}
		})
	}
	// The same parts, well signed, are accepted: the refusals above are
	// the faults', not the helpers'. Version 1 (crypto/x509 does not
	// check the version) is left to the full path, which accepts it.
	for _, c := range []struct {
		der  []byte
		fast bool
	}{
		{signedCSR(t, key, 0, emptyName, spki(r.point), emptyAttrs), true},
		{assembleCSR(t, r.tbs, p256der.ECDSAWithSHA256, 0, r.sig), true},
		{signedCSR(t, key, 1, emptyName, spki(r.point), emptyAttrs), false},
	} {
		if _, ok := splitFastCSR(c.der); ok != c.fast {
			t.Fatalf("taken by the fast path: %v, want %v", ok, c.fast)
		}
		if pub, err := VerifyCSR(c.der); err != nil || !key.PublicKey.Equal(pub) {
			t.Fatalf("a well-formed request is refused: %v", err)
		}
	}
}

// FuzzFastCSR: whatever the bytes, when the fast path takes a request it
// accepts it only if crypto/x509 parses it and its signature verifies,
// with the same key; it refuses it only if crypto/x509 refuses it too,
// with a "ca: " error. The seeds are requests of the profile, so that
// mutations explore it.
func FuzzFastCSR(f *testing.F) {
	key := p256Key(f)
	good := csrOf(f, key, &x509.CertificateRequest{})
	f.Add(good)
	f.Add(csrOf(f, p256Key(f), &x509.CertificateRequest{}))
	f.Add(csrOf(f, key, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "web"}}))
	f.Add(append(bytes.Clone(good), 0))
	f.Fuzz(func(t *testing.T, der []byte) {
		r, ok := splitFastCSR(der)
		if !ok {
			return
		}
		want, x509OK := fullPathAccepts(der)
		pub, err := verifyFastCSR(r)
		switch {
		case err == nil && !x509OK:
			t.Fatalf("the fast path accepts a request crypto/x509 refuses: %x", der)
		case err == nil && !pub.Equal(want):
			t.Fatal("the fast path returns another key than crypto/x509's")
		case err != nil && x509OK:
			t.Fatalf("the fast path refuses a request crypto/x509 accepts (%v): %x", err, der)
		case err != nil && !strings.HasPrefix(err.Error(), "ca: "):
			t.Fatalf("refusal without the package prefix: %v", err)
		}
	})
}
