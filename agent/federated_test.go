package agent

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/workloadapi"
)

var (
	partnerTD = spiffeid.RequireTrustDomainFromString("partner.test")
	otherTD   = spiffeid.RequireTrustDomainFromString("other.test")
)

// fedProto is the federated bundle of td as the server sends it: the
// CAs' certificates and the JWT keys.
func fedProto(t testing.TB, td spiffeid.TrustDomain, seq uint64, cas []*testCA, keys ...*testJWTKey) *sigilv1.Bundle {
	t.Helper()
	pb := &sigilv1.Bundle{TrustDomain: td.Name(), SequenceNumber: seq, ModifyIndex: seq}
	for _, ca := range cas {
		pb.X509Authorities = append(pb.X509Authorities, &sigilv1.X509Authority{Certificate: ca.cert.Raw})
	}
	for _, k := range keys {
		der, err := x509.MarshalPKIXPublicKey(k.key.Public())
		if err != nil {
			t.Fatal(err)
		}
		pb.JwtAuthorities = append(pb.JwtAuthorities, &sigilv1.JWTAuthority{KeyId: k.kid, PublicKey: der})
	}
	return pb
}

// fedEntry is entry() federating with tds.
func fedEntry(id, path string, createdAt int64, sel string, tds ...spiffeid.TrustDomain) *sigilv1.Entry {
	e := entry(id, path, createdAt, sel)
	for _, td := range tds {
		e.FederatesWith = append(e.FederatesWith, td.Name())
	}
	return e
}

// nonCACert is a self-signed leaf certificate with no SPIFFE ID.
func nonCACert(t *testing.T) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(testSerial.Add(1)),
		Subject:      pkix.Name{CommonName: "partner root, not a CA by flags"},
		NotBefore:    t0.Add(-time.Hour),
		NotAfter:     t0.Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestParseFederated(t *testing.T) {
	ca := newTestCA(t, t0)
	key := newTestJWTKey(t, clock.NewFake(t0))
	good := fedProto(t, partnerTD, 3, []*testCA{ca}, key)

	b, err := parseFederated(testTD, good)
	if err != nil {
		t.Fatal(err)
	}
	if b.td != partnerTD || b.seq != 3 {
		t.Errorf("td %v seq %d", b.td, b.seq)
	}
	if b.x509 == nil || b.x509.TrustDomain() != partnerTD || !b.x509.HasX509Authority(ca.cert) {
		t.Error("X.509 bundle lacks the partner's CA")
	}
	if b.jwt == nil || b.jwt.TrustDomain() != partnerTD || !b.jwt.HasJWTAuthority(key.kid) {
		t.Error("JWT bundle lacks the partner's key")
	}

	// JWT only, X.509 only, and a root that is not CA-flagged: accepted.
	jwtOnly := fedProto(t, partnerTD, 1, nil, key)
	if b, err := parseFederated(testTD, jwtOnly); err != nil || b.x509 != nil || b.jwt == nil {
		t.Errorf("JWT-only bundle: %v", err)
	}
	x509Only := fedProto(t, partnerTD, 1, []*testCA{ca})
	if b, err := parseFederated(testTD, x509Only); err != nil || b.x509 == nil || b.jwt != nil {
		t.Errorf("X.509-only bundle: %v", err)
	}
	leaf := &sigilv1.Bundle{TrustDomain: "partner.test", X509Authorities: []*sigilv1.X509Authority{{Certificate: nonCACert(t).Raw}}}
	if _, err := parseFederated(testTD, leaf); err != nil {
		t.Errorf("a partner root without CA flags was refused: %v", err)
	}

	der, _ := x509.MarshalPKIXPublicKey(key.key.Public())
	many := &sigilv1.Bundle{TrustDomain: "partner.test"}
	for range maxFederatedAuthorities + 1 {
		many.X509Authorities = append(many.X509Authorities, &sigilv1.X509Authority{Certificate: ca.cert.Raw})
	}
	for _, tc := range []struct {
		name string
		pb   *sigilv1.Bundle
		want string
	}{
		{"own trust domain", fedProto(t, testTD, 1, []*testCA{ca}), "agent's own trust domain"},
		{"no trust domain", &sigilv1.Bundle{X509Authorities: good.X509Authorities}, "bad trust domain"},
		{"bad trust domain", &sigilv1.Bundle{TrustDomain: "Partner Test", X509Authorities: good.X509Authorities}, "bad trust domain"},
		{"empty", &sigilv1.Bundle{TrustDomain: "partner.test"}, "no authorities"},
		{"bad certificate", &sigilv1.Bundle{TrustDomain: "partner.test", X509Authorities: []*sigilv1.X509Authority{{Certificate: []byte("junk")}}}, "X.509 authority 1"},
		{"bad JWT key", &sigilv1.Bundle{TrustDomain: "partner.test", JwtAuthorities: []*sigilv1.JWTAuthority{{KeyId: "k", PublicKey: []byte("junk")}}}, `JWT authority "k"`},
		{"no key ID", &sigilv1.Bundle{TrustDomain: "partner.test", JwtAuthorities: []*sigilv1.JWTAuthority{{PublicKey: der}}}, "no key ID"},
		{"duplicate key ID", &sigilv1.Bundle{TrustDomain: "partner.test", JwtAuthorities: []*sigilv1.JWTAuthority{{KeyId: "k", PublicKey: der}, {KeyId: "k", PublicKey: der}}}, `duplicate key ID "k"`},
		{"too many authorities", many, "more than 1024"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := parseFederated(testTD, tc.pb)
			if err == nil || b != nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, %v; want an error containing %q", b, err, tc.want)
			}
		})
	}
}

// fedFixture is a synced cache with entry a (uid:1) federating with
// partner.test and entry b (uid:2) federating with no one, both minted,
// and a subscription for each.
type fedFixture struct {
	*cacheFixture
	subA, subB workloadapi.X509Subscription
}

func newFedFixture(t *testing.T) *fedFixture {
	f := &fedFixture{cacheFixture: newCacheFixture(t)}
	f.c.SetBundle(f.bundle(f.ca))
	f.c.ReplaceEntries([]*sigilv1.Entry{
		fedEntry("a", "a", 1, "uid:1", partnerTD),
		entry("b", "b", 2, "uid:2"),
	})
	if n := f.mintAll(f.ca); n != 2 {
		t.Fatalf("minted %d", n)
	}
	f.subA = f.c.SubscribeX509([]*sigilv1.Selector{sel("uid:1")})
	f.subB = f.c.SubscribeX509([]*sigilv1.Selector{sel("uid:2")})
	t.Cleanup(f.subA.Close)
	t.Cleanup(f.subB.Close)
	if s := recv(t, f.subA); len(s.Federated) != 0 {
		t.Fatalf("federated bundles before any: %v", s.Federated)
	}
	recv(t, f.subB)
	return f
}

// wantFederated checks that snap holds exactly the bundles of cas for
// partner.test (none when cas is empty).
func wantFederated(t *testing.T, snap *workloadapi.X509Snapshot, cas ...*testCA) {
	t.Helper()
	if len(cas) == 0 {
		if len(snap.Federated) != 0 {
			t.Fatalf("federated = %v, want none", snap.Federated)
		}
		return
	}
	if len(snap.Federated) != 1 {
		t.Fatalf("federated = %v, want partner.test's", snap.Federated)
	}
	b := snap.Federated[partnerTD]
	if b == nil || len(b.X509Authorities()) != len(cas) {
		t.Fatalf("partner.test bundle = %v", b)
	}
	for _, ca := range cas {
		if !b.HasX509Authority(ca.cert) {
			t.Fatalf("partner.test bundle lacks a CA")
		}
	}
	if snap.Bundle == nil || snap.Bundle.TrustDomain() != testTD {
		t.Fatalf("own bundle = %v", snap.Bundle)
	}
}

func TestCacheFederatedBundlePushes(t *testing.T) {
	f := newFedFixture(t)
	p1, p2 := newTestCA(t, t0), newTestCA(t, t0)

	// A workload whose entry federates with partner.test gets its bundle;
	// the other one gets nothing new.
	f.c.SetFederated(false, []*sigilv1.Bundle{fedProto(t, partnerTD, 1, []*testCA{p1})}, nil)
	wantFederated(t, recv(t, f.subA), p1)
	noRecv(t, f.subB)

	// The same bundle again (a reconnect, say): nothing is pushed.
	f.c.SetFederated(false, []*sigilv1.Bundle{fedProto(t, partnerTD, 1, []*testCA{p1})}, nil)
	noRecv(t, f.subA)

	// A bundle no workload's entry names: nothing is pushed.
	o1 := newTestCA(t, t0)
	f.c.SetFederated(false, []*sigilv1.Bundle{fedProto(t, otherTD, 1, []*testCA{o1})}, nil)
	noRecv(t, f.subA)
	noRecv(t, f.subB)

	// A change of partner.test's JWT keys alone: no X.509 snapshot.
	f.c.SetFederated(false, []*sigilv1.Bundle{fedProto(t, partnerTD, 1, []*testCA{p1}, newTestJWTKey(t, f.clk))}, nil)
	noRecv(t, f.subA)

	// A change of partner.test's bundle (a rotation): pushed.
	f.c.SetFederated(false, []*sigilv1.Bundle{fedProto(t, partnerTD, 2, []*testCA{p1, p2})}, nil)
	wantFederated(t, recv(t, f.subA), p1, p2)
	noRecv(t, f.subB)

	// Entry b now federates with other.test: b's workload gets it.
	f.c.ApplyDelta([]*sigilv1.Entry{fedEntry("b", "b", 2, "uid:2", otherTD)}, nil)
	f.mintAll(f.ca)
	s := recv(t, f.subB)
	if len(s.Federated) != 1 || s.Federated[otherTD] == nil || !s.Federated[otherTD].HasX509Authority(o1.cert) {
		t.Fatalf("b's federated = %v", s.Federated)
	}

	// Removed: the workload loses it.
	f.c.SetFederated(false, nil, []string{"partner.test"})
	wantFederated(t, recv(t, f.subA))
	noRecv(t, f.subB)
	if got := f.c.federatedBundles(); len(got) != 1 || got[otherTD] == nil {
		t.Fatalf("held = %v", got)
	}
}

func TestCacheFederatedFullSetReplaces(t *testing.T) {
	f := newFedFixture(t)
	p1 := newTestCA(t, t0)
	f.c.SetFederated(false, []*sigilv1.Bundle{
		fedProto(t, partnerTD, 1, []*testCA{p1}),
		fedProto(t, otherTD, 1, []*testCA{newTestCA(t, t0)}),
	}, nil)
	wantFederated(t, recv(t, f.subA), p1)

	// A full set (reset) that no longer holds partner.test: dropped, and
	// so is other.test; the same full set again changes nothing.
	p2 := newTestCA(t, t0)
	third := spiffeid.RequireTrustDomainFromString("third.test")
	full := []*sigilv1.Bundle{fedProto(t, third, 1, []*testCA{p2})}
	f.c.SetFederated(true, full, nil)
	wantFederated(t, recv(t, f.subA))
	if got := f.c.federatedBundles(); len(got) != 1 || got[third] == nil {
		t.Fatalf("held after the full set = %v", got)
	}
	f.c.SetFederated(true, full, nil)
	noRecv(t, f.subA)

	// An empty full set drops everything.
	f.c.SetFederated(true, nil, nil)
	if got := f.c.federatedBundles(); len(got) != 0 {
		t.Fatalf("held after an empty full set = %v", got)
	}
}

func TestCacheBadFederatedBundleKeepsPrevious(t *testing.T) {
	f := newFedFixture(t)
	p1 := newTestCA(t, t0)
	f.c.SetFederated(false, []*sigilv1.Bundle{fedProto(t, partnerTD, 1, []*testCA{p1})}, nil)
	wantFederated(t, recv(t, f.subA), p1)
	own := f.c.Bundle()

	bad := &sigilv1.Bundle{TrustDomain: "partner.test", X509Authorities: []*sigilv1.X509Authority{{Certificate: []byte("junk")}}}
	// A delta with a bad bundle, and a full set with it: partner.test's
	// previous bundle stays in both.
	f.c.SetFederated(false, []*sigilv1.Bundle{bad}, nil)
	noRecv(t, f.subA)
	f.c.SetFederated(true, []*sigilv1.Bundle{bad}, nil)
	noRecv(t, f.subA)
	if got := f.c.federatedBundles()[partnerTD]; got == nil || !got.x509.HasX509Authority(p1.cert) {
		t.Fatalf("partner.test's bundle after bad updates = %v", got)
	}

	// A "federated" bundle of the agent's own trust domain is refused and
	// does not touch the own bundle.
	f.c.SetFederated(false, []*sigilv1.Bundle{fedProto(t, testTD, 9, []*testCA{newTestCA(t, t0)})}, nil)
	noRecv(t, f.subA)
	noRecv(t, f.subB)
	if f.c.Bundle() != own {
		t.Fatal("the own bundle changed")
	}
	if _, ok := f.c.federatedBundles()[testTD]; ok {
		t.Fatal("holds a federated bundle for the own trust domain")
	}
}

func TestCacheFederatedBound(t *testing.T) {
	f := newCacheFixture(t)
	ca := newTestCA(t, t0)
	var bundles []*sigilv1.Bundle
	for i := range maxFederatedBundles + 10 {
		td := spiffeid.RequireTrustDomainFromString(fmt.Sprintf("td%03d.test", i))
		bundles = append(bundles, fedProto(t, td, 1, []*testCA{ca}))
	}
	f.c.SetFederated(true, bundles, nil)
	if n := len(f.c.federatedBundles()); n != maxFederatedBundles {
		t.Fatalf("holds %d federated bundles, want %d", n, maxFederatedBundles)
	}
	// A delta beyond the bound is ignored too; a removal makes room.
	extra := spiffeid.RequireTrustDomainFromString("extra.test")
	f.c.SetFederated(false, []*sigilv1.Bundle{fedProto(t, extra, 1, []*testCA{ca})}, nil)
	if _, ok := f.c.federatedBundles()[extra]; ok {
		t.Fatal("accepted a bundle beyond the bound")
	}
	f.c.SetFederated(false, []*sigilv1.Bundle{fedProto(t, extra, 1, []*testCA{ca})}, []string{bundles[0].TrustDomain})
	if got := f.c.federatedBundles(); len(got) != maxFederatedBundles || got[extra] == nil {
		t.Fatalf("after a removal: %d bundles, extra held: %v", len(got), got[extra] != nil)
	}
}

func TestCacheFederatedJWTBundles(t *testing.T) {
	f := newJWTFixture(t)
	f.c.ReplaceEntries([]*sigilv1.Entry{
		fedEntry("a", "a", 1, "uid:1", partnerTD),
		entry("b", "b", 2, "uid:2"),
	})
	uid1, uid2 := []*sigilv1.Selector{sel("uid:1")}, []*sigilv1.Selector{sel("uid:2")}
	pk1 := newTestJWTKey(t, f.clk)

	bs, changedA := f.c.JWTBundles(uid1)
	if len(bs) != 1 || bs[testTD] == nil {
		t.Fatalf("a's JWT bundles before federation = %v", bs)
	}

	f.c.SetFederated(false, []*sigilv1.Bundle{fedProto(t, partnerTD, 1, nil, pk1)}, nil)
	waitFor(t, changedA, "a's JWT bundles to change")
	bs, changedA = f.c.JWTBundles(uid1)
	if len(bs) != 2 || bs[testTD] == nil || bs[partnerTD] == nil || !bs[partnerTD].HasJWTAuthority(pk1.kid) {
		t.Fatalf("a's JWT bundles = %v", bs)
	}
	// b federates with no one: its set is the own bundle alone.
	if bs, _ := f.c.JWTBundles(uid2); len(bs) != 1 || bs[testTD] == nil {
		t.Fatalf("b's JWT bundles = %v", bs)
	}

	// b's entry starts federating with partner.test: its set changes.
	_, changedB := f.c.JWTBundles(uid2)
	f.c.ApplyDelta([]*sigilv1.Entry{fedEntry("b", "b", 2, "uid:2", partnerTD)}, nil)
	waitFor(t, changedB, "b's JWT bundles to change")
	if bs, _ := f.c.JWTBundles(uid2); len(bs) != 2 || bs[partnerTD] == nil {
		t.Fatalf("b's JWT bundles after federating = %v", bs)
	}

	// A rotation of partner.test's JWT key wakes the watchers.
	pk2 := newTestJWTKey(t, f.clk)
	f.c.SetFederated(false, []*sigilv1.Bundle{fedProto(t, partnerTD, 2, nil, pk2)}, nil)
	waitFor(t, changedA, "a's JWT bundles to change on rotation")
	bs, _ = f.c.JWTBundles(uid1)
	if bs[partnerTD] == nil || !bs[partnerTD].HasJWTAuthority(pk2.kid) || bs[partnerTD].HasJWTAuthority(pk1.kid) {
		t.Fatalf("a's partner JWT bundle after rotation = %v", bs[partnerTD])
	}

	// An unrelated entry change that names no federated trust domain
	// does not wake the watchers.
	_, changedA = f.c.JWTBundles(uid1)
	f.c.ApplyDelta([]*sigilv1.Entry{entry("c", "c", 3, "uid:3")}, nil)
	select {
	case <-changedA:
		t.Fatal("JWT bundle watchers woken by an entry that names no federated trust domain")
	default:
	}
}
