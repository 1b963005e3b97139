package workloadapi

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"strings"
	"testing"
)

// derOnly is id with only its encoded forms, as the agent's cache hands
// out its SVIDs.
func derOnly(t *testing.T, id X509Identity) X509Identity {
	t.Helper()
	key, err := x509.MarshalPKCS8PrivateKey(id.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	return X509Identity{EntryID: id.EntryID, SPIFFEID: id.SPIFFEID, Hint: id.Hint, ChainDER: concatDER(id.Chain), KeyDER: key}
}

func TestIdentityParsesDER(t *testing.T) {
	ca := newCA(t)
	full := ca.identity(t, "e1", "/web")
	id := derOnly(t, full)

	certs, err := id.Certificates()
	if err != nil {
		t.Fatal(err)
	}
	if len(certs) != len(full.Chain) || !certs[0].Equal(full.Chain[0]) {
		t.Fatalf("Certificates() = %d certificates, want the chain of %d", len(certs), len(full.Chain))
	}
	key, err := id.Signer()
	if err != nil {
		t.Fatal(err)
	}
	if !full.PrivateKey.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(key.Public()) {
		t.Fatal("Signer() is not the identity's key")
	}

	// Both encodings of the response hold the same bytes.
	want, err := x509SVIDResponse(&X509Snapshot{Identities: []X509Identity{full}})
	if err != nil {
		t.Fatal(err)
	}
	got, err := x509SVIDResponse(&X509Snapshot{Identities: []X509Identity{id}})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Svids[0].X509Svid, want.Svids[0].X509Svid) || !bytes.Equal(got.Svids[0].X509SvidKey, want.Svids[0].X509SvidKey) {
		t.Fatal("a DER-only identity is not served as its parsed form")
	}
	// SDS serves it too.
	sec, err := tlsCertificate("web", &id)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(sec.GetTlsCertificate().GetCertificateChain().GetInlineBytes()), "BEGIN CERTIFICATE") {
		t.Fatal("SDS secret has no certificate")
	}
}

func TestIdentityBadDER(t *testing.T) {
	ca := newCA(t)
	good := derOnly(t, ca.identity(t, "e1", "/web"))
	for _, tc := range []struct {
		name string
		id   X509Identity
		want string
	}{
		{"no chain", X509Identity{EntryID: "e1", KeyDER: good.KeyDER}, "empty certificate chain"},
		{"bad chain", X509Identity{EntryID: "e1", ChainDER: []byte{0x30, 0x03, 1, 2, 3}, KeyDER: good.KeyDER}, "certificate chain"},
		{"no key", X509Identity{EntryID: "e1", ChainDER: good.ChainDER}, "no private key"},
		{"bad key", X509Identity{EntryID: "e1", ChainDER: good.ChainDER, KeyDER: []byte{0x30, 0}}, "private key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, cerr := tc.id.Certificates()
			_, kerr := tc.id.Signer()
			err := cerr
			if err == nil {
				err = kerr
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one saying %q", err, tc.want)
			}
			// The served key is KeyDER as it is (the fetch path does
			// not parse it either); everything else is refused.
			if _, err := tlsCertificate("x", &tc.id); err == nil && tc.name != "bad key" {
				t.Fatal("SDS served an identity that does not parse")
			}
		})
	}
}
