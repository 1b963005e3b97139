package agent

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/clock"
)

// FuzzFederatedBundle feeds arbitrary serialized sigilv1.Bundle messages
// to the agent as federated bundles from the server. Nothing may panic; a
// bundle accepted is of the trust domain it names, never the agent's own,
// holds exactly the certificates and keys sent, byte for byte; a bundle
// refused leaves the cache as it was, the own bundle included.
func FuzzFederatedBundle(f *testing.F) {
	ca := newTestCA(f, t0)
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	key := &testJWTKey{kid: "k1", key: ecKey}
	good := fedProto(f, partnerTD, 1, []*testCA{ca}, key)
	for _, pb := range []*sigilv1.Bundle{
		good,
		fedProto(f, partnerTD, 2, nil, key),
		fedProto(f, testTD, 1, []*testCA{ca}),
		{TrustDomain: "partner.test"},
		{TrustDomain: "partner.test", X509Authorities: []*sigilv1.X509Authority{{Certificate: []byte("junk")}}},
		{TrustDomain: "Bad TD", X509Authorities: good.X509Authorities},
		{TrustDomain: "partner.test", JwtAuthorities: []*sigilv1.JWTAuthority{{KeyId: "k", PublicKey: []byte{0x30}}}},
	} {
		data, err := proto.Marshal(pb)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}

	f.Fuzz(func(t *testing.T, data []byte) {
		pb := &sigilv1.Bundle{}
		if proto.Unmarshal(data, pb) != nil {
			return
		}
		c := newCache(testTD, zap.NewNop(), clock.NewFake(t0))
		own := x509bundle.FromX509Authorities(testTD, []*x509.Certificate{ca.cert})
		c.SetBundle(own)
		c.SetFederated(false, []*sigilv1.Bundle{good}, nil)
		before := c.federatedBundles()[partnerTD]

		b, err := parseFederated(testTD, pb)
		c.SetFederated(false, []*sigilv1.Bundle{pb}, nil)
		held := c.federatedBundles()
		if !c.Bundle().Equal(own) {
			t.Fatal("a federated bundle changed the own bundle")
		}
		if _, ok := held[testTD]; ok {
			t.Fatal("holds a federated bundle of the own trust domain")
		}
		if err != nil {
			if b != nil {
				t.Fatal("refusal returned a bundle")
			}
			if held[partnerTD] != before {
				t.Fatalf("a refused bundle (%v) replaced partner.test's", err)
			}
			return
		}
		td := spiffeid.RequireTrustDomainFromString(pb.GetTrustDomain())
		if b.td != td || td == testTD {
			t.Fatalf("accepted bundle of %v for %q", b.td, pb.GetTrustDomain())
		}
		if got := held[td]; got == nil || !got.equal(b) {
			t.Fatal("accepted bundle not held")
		}
		var nx int
		if b.x509 != nil {
			nx = len(b.x509.X509Authorities())
			for _, c := range b.x509.X509Authorities() {
				found := false
				for _, a := range pb.GetX509Authorities() {
					found = found || bytes.Equal(a.GetCertificate(), c.Raw)
				}
				if !found {
					t.Fatal("X.509 authority not sent by the server")
				}
			}
		}
		if nx == 0 && len(pb.GetX509Authorities()) > 0 {
			t.Fatal("X.509 authorities dropped")
		}
		if b.jwt != nil {
			if len(b.jwt.JWTAuthorities()) != len(pb.GetJwtAuthorities()) {
				t.Fatal("JWT authorities dropped")
			}
			for _, a := range pb.GetJwtAuthorities() {
				k, ok := b.jwt.FindJWTAuthority(a.GetKeyId())
				der, merr := x509.MarshalPKIXPublicKey(k)
				if !ok || merr != nil {
					t.Fatalf("JWT authority %q missing", a.GetKeyId())
				}
				want, _ := x509.ParsePKIXPublicKey(a.GetPublicKey())
				wantDER, _ := x509.MarshalPKIXPublicKey(want)
				if !bytes.Equal(der, wantDER) {
					t.Fatalf("JWT authority %q holds another key", a.GetKeyId())
				}
			}
		}
	})
}
