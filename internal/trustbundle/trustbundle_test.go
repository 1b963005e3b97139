package trustbundle

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/mtls/mtlstest"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

// newCA returns a fresh self-signed CA certificate.
func newCA(t *testing.T) *x509.Certificate {
	t.Helper()
	return mtlstest.NewCA("example.org").Cert()
}

func TestFromProto(t *testing.T) {
	a, b := newCA(t), newCA(t)
	auths := []*sigilv1.X509Authority{{Certificate: a.Raw}, {Certificate: b.Raw}}

	got, err := FromProto(td, &sigilv1.Bundle{TrustDomain: "example.org", X509Authorities: auths})
	if err != nil {
		t.Fatal(err)
	}
	if got.TrustDomain() != td || len(got.X509Authorities()) != 2 || !got.HasX509Authority(a) || !got.HasX509Authority(b) {
		t.Fatalf("bundle %v with %d authorities", got.TrustDomain(), len(got.X509Authorities()))
	}
	if _, err := FromProto(td, &sigilv1.Bundle{X509Authorities: auths}); err != nil {
		t.Fatalf("a bundle naming no trust domain: %v", err)
	}

	for _, tc := range []struct {
		name string
		td   spiffeid.TrustDomain
		pb   *sigilv1.Bundle
		want string
	}{
		{"other trust domain", td, &sigilv1.Bundle{TrustDomain: "evil.org", X509Authorities: auths}, `trustbundle: bundle is for trust domain "evil.org", not "example.org"`},
		{"empty", td, &sigilv1.Bundle{TrustDomain: "example.org"}, `trustbundle: bundle of "example.org": no X.509 authorities`},
		{"nil", td, nil, `trustbundle: bundle of "example.org": no X.509 authorities`},
		{"bad certificate", td, &sigilv1.Bundle{X509Authorities: []*sigilv1.X509Authority{{Certificate: a.Raw}, {Certificate: []byte("junk")}}}, `trustbundle: bundle of "example.org": X.509 authority 2: `},
		{"no trust domain given", spiffeid.TrustDomain{}, &sigilv1.Bundle{X509Authorities: auths}, "trustbundle: no trust domain given"},
	} {
		got, err := FromProto(tc.td, tc.pb)
		if err == nil || got != nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%s: %v, %v; want error starting %q", tc.name, got, err, tc.want)
		}
	}
	if _, err := FromProto(td, &sigilv1.Bundle{}); !errors.Is(err, ErrEmpty) {
		t.Errorf("empty bundle: %v, want ErrEmpty", err)
	}
}

func TestPEMRoundTrip(t *testing.T) {
	a, b := newCA(t), newCA(t)
	data := EncodePEM([]*x509.Certificate{a, b})
	if n := strings.Count(string(data), "-----BEGIN CERTIFICATE-----"); n != 2 {
		t.Fatalf("%d CERTIFICATE blocks, want 2", n)
	}
	// A key block in the same file is skipped.
	withKey := append(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte("k")}), data...)
	got, err := ParsePEM(withKey)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || !got[0].Equal(a) || !got[1].Equal(b) {
		t.Fatalf("parsed %d certificates, not a then b", len(got))
	}
}

func TestParsePEMErrors(t *testing.T) {
	a := newCA(t)
	bad := append(EncodePEM([]*x509.Certificate{a}), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("not DER")})...)
	for _, tc := range []struct {
		name string
		data []byte
		want string
	}{
		{"empty", nil, "trustbundle: no PEM CERTIFICATE block: no X.509 authorities"},
		{"key only", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte("k")}), "trustbundle: no PEM CERTIFICATE block"},
		{"second certificate broken", bad, "trustbundle: certificate 2: "},
	} {
		got, err := ParsePEM(tc.data)
		if err == nil || got != nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%s: %v, %v; want error starting %q", tc.name, got, err, tc.want)
		}
	}
	if len(EncodePEM(nil)) != 0 {
		t.Error("EncodePEM(nil) is not empty")
	}
}
