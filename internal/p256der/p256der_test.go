package p256der

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"testing"
)

// TestSPKIPrefixIsCryptoX509s: x509.MarshalPKIXPublicKey of a P-256 key
// is SPKIPrefix followed by the key's uncompressed point.
func TestSPKIPrefixIsCryptoX509s(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	point, err := key.PublicKey.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	if len(point) != PointLen || !bytes.Equal(der, append(bytes.Clone(SPKIPrefix), point...)) {
		t.Fatalf("MarshalPKIXPublicKey gives %x, want the prefix %x and the point %x", der, SPKIPrefix, point)
	}
}

// TestECDSAWithSHA256IsTheOID: ECDSAWithSHA256 is the AlgorithmIdentifier
// of 1.2.840.10045.4.3.2 with no parameters.
func TestECDSAWithSHA256IsTheOID(t *testing.T) {
	want, err := asn1.Marshal(pkix.AlgorithmIdentifier{Algorithm: asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ECDSAWithSHA256, want) {
		t.Fatalf("got %x, want %x", ECDSAWithSHA256, want)
	}
}
