package raftstore

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-memdb"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/internal/storepb"
)

const (
	gcp     = "gcp.example"
	aws     = "aws.example"
	gcpURL  = "https://gcp.example:8443/bundle"
	gcpSVID = "spiffe://gcp.example/sigil/server"
)

func fedRel(td, u, profile, id string) *sigilv1.FederationRelationship {
	return &sigilv1.FederationRelationship{TrustDomain: td, BundleEndpointUrl: u, Profile: profile, EndpointSpiffeId: id}
}

func gcpRel() *sigilv1.FederationRelationship {
	return fedRel(gcp, gcpURL, ProfileHTTPSSPIFFE, gcpSVID)
}

func putRel(rel *sigilv1.FederationRelationship, create, update bool, boot *sigilv1.Bundle) *storepb.Command {
	return &storepb.Command{Op: &storepb.Command_PutFederationRelationship{PutFederationRelationship: &storepb.PutFederationRelationship{
		Relationship: rel, Create: create, Update: update, BootstrapBundle: boot}}}
}

func deleteRel(td string, keepBundle bool) *storepb.Command {
	return &storepb.Command{Op: &storepb.Command_DeleteFederationRelationship{DeleteFederationRelationship: &storepb.DeleteFederationRelationship{
		TrustDomain: td, KeepBundle: keepBundle}}}
}

func setBundle(b *sigilv1.Bundle, refresh bool, st *sigilv1.FederationStatus) *storepb.Command {
	return &storepb.Command{Op: &storepb.Command_SetFederatedBundle{SetFederatedBundle: &storepb.SetFederatedBundle{
		Bundle: b, Refresh: refresh, Status: st}}}
}

func deleteBundle(td string) *storepb.Command {
	return &storepb.Command{Op: &storepb.Command_DeleteFederatedBundle{DeleteFederatedBundle: &storepb.DeleteFederatedBundle{TrustDomain: td}}}
}

func putStatus(st *sigilv1.FederationStatus) *storepb.Command {
	return &storepb.Command{Op: &storepb.Command_PutFederationStatus{PutFederationStatus: &storepb.PutFederationStatus{Status: st}}}
}

func requestRefresh(td string) *storepb.Command {
	return &storepb.Command{Op: &storepb.Command_RequestFederationRefresh{RequestFederationRefresh: &storepb.RequestFederationRefresh{TrustDomain: td}}}
}

func recordFetch(td string, seq uint64) *storepb.Command {
	return &storepb.Command{Op: &storepb.Command_RecordPartnerFetch{RecordPartnerFetch: &storepb.RecordPartnerFetch{
		Fetch: &sigilv1.PartnerFetch{TrustDomain: td, SequenceNumber: seq}}}}
}

// pkixKey returns a fresh PKIX DER public key.
func pkixKey(tb testing.TB) []byte {
	tb.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(k.Public())
	if err != nil {
		tb.Fatal(err)
	}
	return der
}

// fedBundle is a bundle of a foreign trust domain as a document decodes
// to: one X.509 authority and one JWT key.
func fedBundle(tb testing.TB, trustDomain string, seq uint64) *sigilv1.Bundle {
	return &sigilv1.Bundle{
		TrustDomain:     trustDomain,
		X509Authorities: []*sigilv1.X509Authority{{Certificate: makeCert(tb, true, t0.Add(24*time.Hour))}},
		JwtAuthorities:  []*sigilv1.JWTAuthority{{KeyId: "kid-" + trustDomain, PublicKey: pkixKey(tb)}},
		RefreshHint:     300,
		SequenceNumber:  seq,
	}
}

// refused applies cmd, expects code, and checks that nothing changed.
func (tf *testFSM) refused(name string, cmd *storepb.Command, code codes.Code) {
	tf.t.Helper()
	before := snapshotBytes(tf.t, tf.f)
	changed := tf.f.changedCh()
	if got := tf.single(cmd); got != code {
		tf.t.Errorf("%s: %v, want %v", name, got, code)
		return
	}
	if !bytes.Equal(snapshotBytes(tf.t, tf.f), before) {
		tf.t.Errorf("%s: refused but changed the state", name)
	}
	select {
	case <-changed:
		tf.t.Errorf("%s: refused but woke watchers", name)
	default:
	}
}

func (tf *testFSM) ok(cmd *storepb.Command) {
	tf.t.Helper()
	if got := tf.single(cmd); got != codes.OK {
		tf.t.Fatalf("command refused: %v", tf.apply(cmd))
	}
}

func TestPutFederationRelationship(t *testing.T) {
	tf := newTestFSM(t)
	tf.ok(putRel(gcpRel(), true, false, nil))
	rel, err := tf.f.reader().FederationRelationship(gcp)
	if err != nil {
		t.Fatal(err)
	}
	if rel.CreatedAt != t0.Unix() || rel.ModifyIndex != tf.index || rel.BundleEndpointUrl != gcpURL {
		t.Fatalf("stored relationship %v", rel)
	}
	created := rel.CreatedAt

	long := "https://gcp.example/" + strings.Repeat("a", MaxBundleEndpointURLLen)
	for _, c := range []struct {
		name string
		cmd  *storepb.Command
		code codes.Code
	}{
		{"missing", putRel(nil, false, false, nil), codes.InvalidArgument},
		{"empty td", putRel(fedRel("", gcpURL, ProfileHTTPSWeb, ""), false, false, nil), codes.InvalidArgument},
		{"bad td", putRel(fedRel("GCP example", gcpURL, ProfileHTTPSWeb, ""), false, false, nil), codes.InvalidArgument},
		{"td as id", putRel(fedRel("spiffe://aws.example", "https://aws.example", ProfileHTTPSWeb, ""), false, false, nil), codes.InvalidArgument},
		{"local td", putRel(fedRel("example.org", "https://example.org", ProfileHTTPSWeb, ""), false, false, nil), codes.InvalidArgument},
		{"http url", putRel(fedRel(aws, "http://aws.example", ProfileHTTPSWeb, ""), false, false, nil), codes.InvalidArgument},
		{"no url", putRel(fedRel(aws, "", ProfileHTTPSWeb, ""), false, false, nil), codes.InvalidArgument},
		{"no host", putRel(fedRel(aws, "https:///bundle", ProfileHTTPSWeb, ""), false, false, nil), codes.InvalidArgument},
		{"opaque", putRel(fedRel(aws, "https:aws.example", ProfileHTTPSWeb, ""), false, false, nil), codes.InvalidArgument},
		{"user info", putRel(fedRel(aws, "https://u:p@aws.example", ProfileHTTPSWeb, ""), false, false, nil), codes.InvalidArgument},
		{"long url", putRel(fedRel(aws, long, ProfileHTTPSWeb, ""), false, false, nil), codes.InvalidArgument},
		{"bad url", putRel(fedRel(aws, "https://aws.example/%zz", ProfileHTTPSWeb, ""), false, false, nil), codes.InvalidArgument},
		{"profile", putRel(fedRel(aws, "https://aws.example", "https", ""), false, false, nil), codes.InvalidArgument},
		{"spiffe no id", putRel(fedRel(aws, "https://aws.example", ProfileHTTPSSPIFFE, ""), false, false, nil), codes.InvalidArgument},
		{"spiffe bad id", putRel(fedRel(aws, "https://aws.example", ProfileHTTPSSPIFFE, "aws.example/x"), false, false, nil), codes.InvalidArgument},
		{"spiffe other td", putRel(fedRel(aws, "https://aws.example", ProfileHTTPSSPIFFE, "spiffe://gcp.example/x"), false, false, nil), codes.InvalidArgument},
		{"web with id", putRel(fedRel(aws, "https://aws.example", ProfileHTTPSWeb, "spiffe://aws.example/x"), false, false, nil), codes.InvalidArgument},
		{"create and update", putRel(fedRel(aws, "https://aws.example", ProfileHTTPSWeb, ""), true, true, nil), codes.InvalidArgument},
		{"create existing", putRel(gcpRel(), true, false, nil), codes.AlreadyExists},
		{"update missing", putRel(fedRel(aws, "https://aws.example", ProfileHTTPSWeb, ""), false, true, nil), codes.NotFound},
		{"bootstrap other td", putRel(fedRel(aws, "https://aws.example", ProfileHTTPSWeb, ""), true, false, fedBundle(t, gcp, 1)), codes.InvalidArgument},
		{"bootstrap empty", putRel(fedRel(aws, "https://aws.example", ProfileHTTPSWeb, ""), true, false, &sigilv1.Bundle{TrustDomain: aws}), codes.InvalidArgument},
	} {
		tf.refused(c.name, c.cmd, c.code)
	}

	// Update keeps created_at; an upsert replaces too.
	tf.now = t0.Add(time.Hour)
	tf.ok(putRel(fedRel(gcp, "https://gcp.example/v2", ProfileHTTPSWeb, ""), false, true, nil))
	rel, _ = tf.f.reader().FederationRelationship(gcp)
	if rel.CreatedAt != created || rel.Profile != ProfileHTTPSWeb || rel.ModifyIndex != tf.index {
		t.Fatalf("updated relationship %v", rel)
	}
	up := fedRel(gcp, gcpURL, ProfileHTTPSSPIFFE, gcpSVID)
	up.FromConfig = true
	tf.ok(putRel(up, false, false, nil))
	rel, _ = tf.f.reader().FederationRelationship(gcp)
	if !rel.FromConfig || rel.CreatedAt != created || rel.ModifyIndex != tf.index {
		t.Fatalf("upserted relationship %v", rel)
	}
	// The same upsert again (a leader rewriting its configuration)
	// changes nothing.
	before := snapshotBytes(t, tf.f)
	tf.ok(putRel(proto.Clone(up).(*sigilv1.FederationRelationship), false, false, nil))
	if !bytes.Equal(snapshotBytes(t, tf.f), before) {
		t.Fatal("an identical upsert changed the state")
	}
	// An upsert of a new one creates it.
	tf.ok(putRel(fedRel(aws, "https://aws.example", ProfileHTTPSWeb, ""), false, false, nil))
	if rels := tf.f.reader().FederationRelationships(); len(rels) != 2 || rels[0].TrustDomain != aws || rels[1].TrustDomain != gcp {
		t.Fatalf("relationships %v", rels)
	}
}

func TestFederationRelationshipBootstrapBundle(t *testing.T) {
	tf := newTestFSM(t)
	boot := fedBundle(t, gcp, 3)
	boot.X509Authorities[0].ServerId = "someone"
	boot.X509Authorities[0].Tainted = true
	boot.ModifyIndex, boot.UpdatedAt = 99, 99
	tf.ok(putRel(gcpRel(), true, false, boot))
	b, err := tf.f.reader().FederatedBundle(gcp)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(b.X509Authorities[0].Certificate)
	if b.ModifyIndex != tf.index || b.UpdatedAt != t0.Unix() || b.SequenceNumber != 3 ||
		b.X509Authorities[0].ServerId != "" || b.X509Authorities[0].Tainted || b.X509Authorities[0].NotAfter != cert.NotAfter.Unix() {
		t.Fatalf("bootstrap bundle stored as %v", b)
	}
	// A bootstrap bundle never replaces a stored one.
	tf.ok(putRel(gcpRel(), false, true, fedBundle(t, gcp, 9)))
	if b2, _ := tf.f.reader().FederatedBundle(gcp); b2 != b {
		t.Fatalf("bootstrap bundle replaced a stored bundle: %v", b2)
	}
	// An invalid one is refused even then.
	bad := fedBundle(t, gcp, 9)
	bad.JwtAuthorities[0].PublicKey = []byte("junk")
	tf.refused("bad bootstrap", putRel(gcpRel(), false, true, bad), codes.InvalidArgument)
}

func TestFederationRelationshipLimit(t *testing.T) {
	tf := newTestFSM(t)
	for i := range MaxFederationRelationships {
		td := fmt.Sprintf("td%d.example", i)
		tf.ok(putRel(fedRel(td, "https://"+td, ProfileHTTPSWeb, ""), true, false, nil))
	}
	tf.refused("one too many", putRel(fedRel("more.example", "https://more.example", ProfileHTTPSWeb, ""), true, false, nil), codes.FailedPrecondition)
	tf.refused("upsert one too many", putRel(fedRel("more.example", "https://more.example", ProfileHTTPSWeb, ""), false, false, nil), codes.FailedPrecondition)
	// Replacing an existing one is fine at the limit.
	tf.ok(putRel(fedRel("td0.example", "https://td0.example/v2", ProfileHTTPSWeb, ""), false, true, nil))
	tf.ok(deleteRel("td1.example", false))
	tf.ok(putRel(fedRel("more.example", "https://more.example", ProfileHTTPSWeb, ""), true, false, nil))
}

func TestStaticFederatedBundleLimit(t *testing.T) {
	tf := newTestFSM(t)
	for i := range MaxFederationRelationships {
		tf.ok(setBundle(fedBundle(t, fmt.Sprintf("td%d.example", i), 1), false, nil))
	}
	before := snapshotBytes(t, tf.f)
	tf.refused("one too many", setBundle(fedBundle(t, "more.example", 1), false, nil), codes.FailedPrecondition)
	if !bytes.Equal(snapshotBytes(t, tf.f), before) {
		t.Fatal("a refused bundle changed the state")
	}
	// Replacing a stored one is fine at the limit, and a relationship's
	// bundle does not count.
	tf.ok(setBundle(fedBundle(t, "td0.example", 2), false, nil))
	tf.ok(putRel(gcpRel(), true, false, nil))
	tf.ok(setBundle(fedBundle(t, gcp, 1), false, nil))
}

func TestDeleteFederationRelationship(t *testing.T) {
	tf := newTestFSM(t)
	tf.ok(putRel(gcpRel(), true, false, fedBundle(t, gcp, 1)))
	tf.ok(requestRefresh(gcp))
	tf.ok(recordFetch(gcp, 4))
	tf.refused("missing", deleteRel(aws, false), codes.NotFound)
	tf.refused("local", deleteRel("example.org", false), codes.InvalidArgument)
	tf.refused("invalid", deleteRel("", false), codes.InvalidArgument)

	// keep_bundle keeps the bundle (and so the partner record).
	tf.ok(deleteRel(gcp, true))
	r := tf.f.reader()
	if _, err := r.FederationRelationship(gcp); !errors.Is(err, ErrNotFound) {
		t.Fatalf("relationship after delete: %v", err)
	}
	if _, err := r.FederationStatus(gcp); !errors.Is(err, ErrNotFound) {
		t.Fatalf("status after delete: %v", err)
	}
	if _, err := r.FederatedBundle(gcp); err != nil {
		t.Fatalf("kept bundle: %v", err)
	}
	if len(r.PartnerFetches()) != 1 {
		t.Fatal("partner fetch dropped while its bundle stays")
	}

	// Without it, everything goes.
	tf.ok(putRel(gcpRel(), true, false, nil))
	tf.ok(deleteRel(gcp, false))
	r = tf.f.reader()
	if _, err := r.FederatedBundle(gcp); !errors.Is(err, ErrNotFound) {
		t.Fatalf("bundle after delete: %v", err)
	}
	if len(r.PartnerFetches()) != 0 || len(r.FederatedBundles()) != 0 || len(r.FederationRelationships()) != 0 {
		t.Fatal("a relationship's delete left records behind")
	}
	// keep_bundle with no bundle drops the partner record too.
	tf.ok(putRel(gcpRel(), true, false, nil))
	tf.ok(recordFetch(gcp, 1))
	tf.ok(deleteRel(gcp, true))
	if n := len(tf.f.reader().PartnerFetches()); n != 0 {
		t.Fatalf("%d partner fetches of a trust domain the cluster no longer federates with", n)
	}
}

func TestSetFederatedBundle(t *testing.T) {
	tf := newTestFSM(t)
	valid := func() *sigilv1.Bundle { return fedBundle(t, gcp, 5) }
	mut := func(f func(b *sigilv1.Bundle)) *sigilv1.Bundle { b := valid(); f(b); return b }
	many := mut(func(b *sigilv1.Bundle) {
		pub := b.JwtAuthorities[0].PublicKey
		b.JwtAuthorities = nil
		for i := range MaxFederatedBundleAuthorities {
			b.JwtAuthorities = append(b.JwtAuthorities, &sigilv1.JWTAuthority{KeyId: fmt.Sprint(i), PublicKey: pub})
		}
	})
	for _, c := range []struct {
		name string
		cmd  *storepb.Command
		code codes.Code
	}{
		{"missing", setBundle(nil, false, nil), codes.InvalidArgument},
		{"local td", setBundle(mut(func(b *sigilv1.Bundle) { b.TrustDomain = "example.org" }), false, nil), codes.InvalidArgument},
		{"bad td", setBundle(mut(func(b *sigilv1.Bundle) { b.TrustDomain = "a b" }), false, nil), codes.InvalidArgument},
		{"no authority", setBundle(&sigilv1.Bundle{TrustDomain: gcp}, false, nil), codes.InvalidArgument},
		{"too many", setBundle(many, false, nil), codes.InvalidArgument},
		{"bad cert", setBundle(mut(func(b *sigilv1.Bundle) { b.X509Authorities[0].Certificate = []byte("x") }), false, nil), codes.InvalidArgument},
		{"no cert", setBundle(mut(func(b *sigilv1.Bundle) { b.X509Authorities[0].Certificate = nil }), false, nil), codes.InvalidArgument},
		{"nil x509", setBundle(mut(func(b *sigilv1.Bundle) { b.X509Authorities[0] = nil }), false, nil), codes.InvalidArgument},
		{"bad key", setBundle(mut(func(b *sigilv1.Bundle) { b.JwtAuthorities[0].PublicKey = []byte("x") }), false, nil), codes.InvalidArgument},
		{"no kid", setBundle(mut(func(b *sigilv1.Bundle) { b.JwtAuthorities[0].KeyId = "" }), false, nil), codes.InvalidArgument},
		{"long kid", setBundle(mut(func(b *sigilv1.Bundle) { b.JwtAuthorities[0].KeyId = strings.Repeat("k", maxKeyIDLen+1) }), false, nil), codes.InvalidArgument},
		{"dup kid", setBundle(mut(func(b *sigilv1.Bundle) { b.JwtAuthorities = append(b.JwtAuthorities, b.JwtAuthorities[0]) }), false, nil), codes.InvalidArgument},
		{"negative hint", setBundle(mut(func(b *sigilv1.Bundle) { b.RefreshHint = -1 }), false, nil), codes.InvalidArgument},
		{"refresh without relationship", setBundle(valid(), true, nil), codes.NotFound},
		{"status without relationship", setBundle(valid(), false, &sigilv1.FederationStatus{TrustDomain: gcp}), codes.NotFound},
		{"status of another td", setBundle(valid(), false, &sigilv1.FederationStatus{TrustDomain: aws}), codes.InvalidArgument},
	} {
		tf.refused(c.name, c.cmd, c.code)
	}

	// `sigil bundle set`: no relationship needed; a leaf certificate is
	// an authority too (the document decides).
	b := valid()
	b.X509Authorities = append(b.X509Authorities, &sigilv1.X509Authority{Certificate: makeCert(t, false, t0.Add(time.Hour)), ServerId: "x", NotAfter: 1})
	tf.ok(setBundle(b, false, nil))
	got, err := tf.f.reader().FederatedBundle(gcp)
	if err != nil {
		t.Fatal(err)
	}
	if got.ModifyIndex != tf.index || got.UpdatedAt != t0.Unix() || got.SequenceNumber != 5 || len(got.X509Authorities) != 2 ||
		got.X509Authorities[1].NotAfter != t0.Add(time.Hour).Unix() || got.X509Authorities[1].ServerId != "" {
		t.Fatalf("stored bundle %v", got)
	}
	// Reader.Bundle reads any trust domain.
	if rb, err := tf.f.reader().Bundle(gcp); err != nil || rb.SequenceNumber != 5 {
		t.Fatalf("Bundle(%q) = %v, %v", gcp, rb, err)
	}
	// The same content again succeeds and changes nothing.
	idx := got.ModifyIndex
	tf.now = t0.Add(time.Minute)
	before := snapshotBytes(t, tf.f)
	tf.ok(setBundle(proto.Clone(b).(*sigilv1.Bundle), false, nil))
	if !bytes.Equal(snapshotBytes(t, tf.f), before) {
		t.Fatal("a no-op bundle write changed the state")
	}
	// Without refresh a lower sequence replaces it.
	tf.ok(setBundle(fedBundle(t, gcp, 2), false, nil))
	if got, _ = tf.f.reader().FederatedBundle(gcp); got.SequenceNumber != 2 || got.ModifyIndex == idx || got.UpdatedAt != t0.Add(time.Minute).Unix() {
		t.Fatalf("replaced bundle %v", got)
	}

	// With refresh: a relationship, and no going back.
	tf.ok(putRel(gcpRel(), true, false, nil))
	tf.ok(requestRefresh(gcp))
	tf.refused("older sequence", setBundle(fedBundle(t, gcp, 1), true, nil), codes.FailedPrecondition)
	st := &sigilv1.FederationStatus{TrustDomain: gcp, LastSuccessAt: 10, LastAttemptAt: 10, NextRefreshAt: 20, ModifyIndex: 1, RefreshRequestedAt: 3}
	tf.ok(setBundle(fedBundle(t, gcp, 2), true, st))
	r := tf.f.reader()
	if got, _ = r.FederatedBundle(gcp); got.SequenceNumber != 2 || got.ModifyIndex != tf.index {
		t.Fatalf("refreshed bundle %v", got)
	}
	gotSt, err := r.FederationStatus(gcp)
	if err != nil || gotSt.LastSuccessAt != 10 || gotSt.RefreshRequestedAt != t0.Add(time.Minute).Unix() || gotSt.ModifyIndex != tf.index {
		t.Fatalf("status written with the bundle: %v, %v", gotSt, err)
	}
	// The same bundle with a new status: only the status changes.
	bundleIdx := got.ModifyIndex
	same := proto.Clone(got).(*sigilv1.Bundle)
	tf.ok(setBundle(same, true, &sigilv1.FederationStatus{TrustDomain: gcp, LastSuccessAt: 30, LastAttemptAt: 30}))
	r = tf.f.reader()
	if got, _ = r.FederatedBundle(gcp); got.ModifyIndex != bundleIdx {
		t.Fatal("an unchanged refreshed bundle got a new modify_index")
	}
	if gotSt, _ = r.FederationStatus(gcp); gotSt.LastSuccessAt != 30 || gotSt.ModifyIndex != tf.index {
		t.Fatalf("status %v", gotSt)
	}
	if bs := r.FederatedBundles(); len(bs) != 1 || bs[0].TrustDomain != gcp {
		t.Fatalf("federated bundles %v", bs)
	}
}

func TestDeleteFederatedBundle(t *testing.T) {
	tf := newTestFSM(t)
	tf.ok(putAuthority("example.org", "n1", makeCert(t, true, t0.Add(time.Hour))))
	tf.ok(setBundle(fedBundle(t, gcp, 1), false, nil))
	tf.ok(putRel(fedRel(aws, "https://aws.example", ProfileHTTPSWeb, ""), true, false, fedBundle(t, aws, 1)))
	tf.ok(recordFetch(gcp, 1))
	tf.refused("missing", deleteBundle("azure.example"), codes.NotFound)
	tf.refused("local", deleteBundle("example.org"), codes.InvalidArgument)
	tf.refused("invalid", deleteBundle("a b"), codes.InvalidArgument)
	tf.refused("relationship", deleteBundle(aws), codes.FailedPrecondition)
	tf.ok(deleteBundle(gcp))
	r := tf.f.reader()
	if _, err := r.FederatedBundle(gcp); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted bundle: %v", err)
	}
	if len(r.PartnerFetches()) != 0 {
		t.Fatal("partner fetch kept after its bundle was deleted")
	}
	if _, err := r.Bundle("example.org"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.FederatedBundle("example.org"); err == nil || errors.Is(err, ErrNotFound) {
		t.Fatalf("FederatedBundle of the local trust domain: %v", err)
	}
	if bs := r.FederatedBundles(); len(bs) != 1 || bs[0].TrustDomain != aws {
		t.Fatalf("federated bundles %v (the local one must not be among them)", bs)
	}
}

func TestOwnBundleCommandsRefuseForeignTrustDomains(t *testing.T) {
	tf := newTestFSM(t)
	tf.ok(setBundle(fedBundle(t, gcp, 1), false, nil))
	ca := makeCert(t, true, t0.Add(time.Hour))
	for name, cmd := range map[string]*storepb.Command{
		"put x509": putAuthority(gcp, "n1", ca),
		"put jwt": {Op: &storepb.Command_PutJwtAuthority{PutJwtAuthority: &storepb.PutJWTAuthority{TrustDomain: gcp,
			Authority: &sigilv1.JWTAuthority{KeyId: "k", PublicKey: pkixKey(t), ExpiresAt: t0.Add(time.Hour).Unix(), ServerId: "n1"}}}},
		"remove": {Op: &storepb.Command_RemoveAuthority{RemoveAuthority: &storepb.RemoveAuthority{TrustDomain: gcp, JwtKeyId: "kid-gcp.example"}}},
		"prune":  {Op: &storepb.Command_PruneBundle{PruneBundle: &storepb.PruneBundle{TrustDomain: gcp}}},
		"taint":  {Op: &storepb.Command_TaintAuthority{TaintAuthority: &storepb.TaintAuthority{TrustDomain: gcp, AuthorityId: "kid-gcp.example"}}},
		"revoke": {Op: &storepb.Command_RevokeAuthority{RevokeAuthority: &storepb.RevokeAuthority{TrustDomain: gcp, AuthorityId: "kid-gcp.example"}}},
		"retire": {Op: &storepb.Command_RetireServer{RetireServer: &storepb.RetireServer{TrustDomain: gcp, ServerId: "n1"}}},
	} {
		tf.refused(name, cmd, codes.InvalidArgument)
	}
}

// TestFederationRefreshRequestCount: requests are counted by the store, a
// status write keeps the count, and the answered count never goes down
// nor above the requests made.
func TestFederationRefreshRequestCount(t *testing.T) {
	tf := newTestFSM(t)
	tf.ok(putRel(gcpRel(), true, false, nil))
	tf.ok(requestRefresh(gcp))
	tf.ok(requestRefresh(gcp)) // in the same second: counted apart
	st, _ := tf.f.reader().FederationStatus(gcp)
	if st.RefreshRequests != 2 || st.RefreshesDone != 0 {
		t.Fatalf("after two requests: %v", st)
	}
	tf.ok(putStatus(&sigilv1.FederationStatus{TrustDomain: gcp, LastAttemptAt: 5, RefreshRequests: 99, RefreshesDone: 9}))
	st, _ = tf.f.reader().FederationStatus(gcp)
	if st.RefreshRequests != 2 || st.RefreshesDone != 2 {
		t.Fatalf("a status write set requests %d done %d; want 2, 2 (kept, capped)", st.RefreshRequests, st.RefreshesDone)
	}
	tf.ok(putStatus(&sigilv1.FederationStatus{TrustDomain: gcp, LastAttemptAt: 6}))
	st, _ = tf.f.reader().FederationStatus(gcp)
	if st.RefreshesDone != 2 {
		t.Fatalf("answered requests went down to %d", st.RefreshesDone)
	}
}

func TestFederationStatusCommands(t *testing.T) {
	tf := newTestFSM(t)
	tf.refused("no relationship", putStatus(&sigilv1.FederationStatus{TrustDomain: gcp}), codes.NotFound)
	tf.refused("refresh no relationship", requestRefresh(gcp), codes.NotFound)
	tf.refused("refresh local", requestRefresh("example.org"), codes.InvalidArgument)
	tf.ok(putRel(gcpRel(), true, false, nil))
	tf.refused("missing", putStatus(nil), codes.InvalidArgument)
	tf.refused("local", putStatus(&sigilv1.FederationStatus{TrustDomain: "example.org"}), codes.InvalidArgument)
	tf.refused("negative", putStatus(&sigilv1.FederationStatus{TrustDomain: gcp, NextRefreshAt: -1}), codes.InvalidArgument)

	// A refresh request before any status creates one.
	tf.now = t0.Add(time.Minute)
	tf.ok(requestRefresh(gcp))
	st, err := tf.f.reader().FederationStatus(gcp)
	if err != nil || st.RefreshRequestedAt != t0.Add(time.Minute).Unix() || st.ModifyIndex != tf.index {
		t.Fatalf("status after a refresh request: %v, %v", st, err)
	}
	// A status write keeps refresh_requested_at and cuts a long error.
	long := strings.Repeat("é", MaxFederationErrorLen) // two bytes each
	tf.ok(putStatus(&sigilv1.FederationStatus{TrustDomain: gcp, LastAttemptAt: 5, LastError: long, LastErrorAt: 5, ConsecutiveFailures: 2, RefreshRequestedAt: 1}))
	st, _ = tf.f.reader().FederationStatus(gcp)
	if st.RefreshRequestedAt != t0.Add(time.Minute).Unix() || st.ConsecutiveFailures != 2 || st.ModifyIndex != tf.index {
		t.Fatalf("status %v", st)
	}
	if len(st.LastError) != MaxFederationErrorLen || !strings.HasPrefix(long, st.LastError) {
		t.Fatalf("last_error of %d bytes stored as %d bytes", len(long), len(st.LastError))
	}
	// The same status again changes nothing.
	before := snapshotBytes(t, tf.f)
	tf.ok(putStatus(&sigilv1.FederationStatus{TrustDomain: gcp, LastAttemptAt: 5, LastError: long, LastErrorAt: 5, ConsecutiveFailures: 2}))
	if !bytes.Equal(snapshotBytes(t, tf.f), before) {
		t.Fatal("an identical status write changed the state")
	}
	// A later request moves refresh_requested_at.
	tf.now = t0.Add(2 * time.Minute)
	tf.ok(requestRefresh(gcp))
	if st, _ = tf.f.reader().FederationStatus(gcp); st.RefreshRequestedAt != t0.Add(2*time.Minute).Unix() || st.ConsecutiveFailures != 2 {
		t.Fatalf("status after a second request %v", st)
	}
	if sts := tf.f.reader().FederationStatuses(); len(sts) != 1 {
		t.Fatalf("statuses %v", sts)
	}
}

func TestRecordPartnerFetch(t *testing.T) {
	tf := newTestFSM(t)
	tf.refused("missing", &storepb.Command{Op: &storepb.Command_RecordPartnerFetch{RecordPartnerFetch: &storepb.RecordPartnerFetch{}}}, codes.InvalidArgument)
	tf.refused("invalid", recordFetch("a b", 1), codes.InvalidArgument)
	tf.refused("local", recordFetch("example.org", 1), codes.InvalidArgument)
	tf.refused("stranger", recordFetch(gcp, 1), codes.FailedPrecondition)
	tf.ok(putRel(gcpRel(), true, false, nil))
	tf.ok(setBundle(fedBundle(t, aws, 1), false, nil))

	tf.ok(recordFetch(gcp, 3))
	tf.ok(recordFetch(aws, 0))
	before := snapshotBytes(t, tf.f)
	tf.now = t0.Add(time.Minute)
	tf.ok(recordFetch(gcp, 3))
	tf.ok(recordFetch(gcp, 2))
	if !bytes.Equal(snapshotBytes(t, tf.f), before) {
		t.Fatal("a fetch of a sequence not above the stored one changed the state")
	}
	tf.ok(recordFetch(gcp, 4))
	pfs := tf.f.reader().PartnerFetches()
	if len(pfs) != 2 || pfs[0].TrustDomain != aws || pfs[1].TrustDomain != gcp ||
		pfs[1].SequenceNumber != 4 || pfs[1].FetchedAt != t0.Add(time.Minute).Unix() || pfs[0].FetchedAt != t0.Unix() {
		t.Fatalf("partner fetches %v", pfs)
	}
}

func TestEntryFederatesWith(t *testing.T) {
	tf := newTestFSM(t)
	fed := func(id string, tds ...string) *sigilv1.Entry {
		e := entry(id, "spiffe://example.org/"+id, agent)
		e.FederatesWith = tds
		return e
	}
	got := tf.batch(createEntries(fed("a", gcp)))
	if got[0] != codes.InvalidArgument {
		t.Fatalf("federates_with an unknown trust domain: %v", got[0])
	}
	res := tf.apply(createEntries(fed("a", gcp))).(*storepb.CommandResult)
	want := `federates_with: trust domain "gcp.example" has no federation relationship or bundle (sigil federation create or sigil bundle set first)`
	if res.Results[0].Message != want {
		t.Fatalf("message %q, want %q", res.Results[0].Message, want)
	}
	tf.ok(putRel(gcpRel(), true, false, nil))
	tf.ok(setBundle(fedBundle(t, aws, 1), false, nil))
	many := make([]string, MaxFederatesWith+1)
	for i := range many {
		many[i] = fmt.Sprintf("td%d.example", i)
	}
	before := snapshotBytes(t, tf.f)
	for name, e := range map[string]*sigilv1.Entry{
		"local":    fed("b", "example.org"),
		"dup":      fed("b", gcp, aws, gcp),
		"invalid":  fed("b", "GCP example"),
		"id form":  fed("b", "spiffe://gcp.example"),
		"empty":    fed("b", ""),
		"too many": fed("b", many...),
		"unknown":  fed("b", gcp, "azure.example"),
	} {
		if got := tf.batch(createEntries(e)); got[0] != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", name, got[0])
		}
	}
	if !bytes.Equal(snapshotBytes(t, tf.f), before) {
		t.Fatal("refused entries changed the state")
	}
	// A relationship or a bundle alone is enough.
	if got := tf.batch(createEntries(fed("a", gcp, aws))); got[0] != codes.OK {
		t.Fatalf("create: %v", got[0])
	}
	if e, _ := tf.f.reader().Entry("a"); len(e.FederatesWith) != 2 {
		t.Fatalf("stored entry %v", e)
	}
	if got := tf.batch(updateEntries(fed("a", gcp, "azure.example"))); got[0] != codes.InvalidArgument {
		t.Fatalf("update to an unknown trust domain: %v", got[0])
	}
	if got := tf.batch(updateEntries(fed("a", aws))); got[0] != codes.OK {
		t.Fatalf("update: %v", got[0])
	}
	// Deleting the bundle leaves the entry as it is.
	tf.ok(deleteBundle(aws))
	if e, _ := tf.f.reader().Entry("a"); len(e.FederatesWith) != 1 || e.FederatesWith[0] != aws {
		t.Fatalf("entry after its bundle went: %v", e)
	}
	// The entry can still be updated while it names the trust domain that
	// went: only trust domains an update adds must be federated.
	upd := fed("a", aws)
	upd.Hint = "still updatable"
	if got := tf.batch(updateEntries(upd)); got[0] != codes.OK {
		t.Fatalf("update of an entry whose trust domain went: %v", got[0])
	}
	if got := tf.batch(updateEntries(fed("a", aws, "azure.example"))); got[0] != codes.InvalidArgument {
		t.Fatalf("update adding an unknown trust domain: %v", got[0])
	}
}

func TestFederatedBundleWatch(t *testing.T) {
	tf := newTestFSM(t)
	// Apply commits (and closes the watch channels) before it returns.
	fired := func(ws memdb.WatchSet) bool {
		for ch := range ws {
			select {
			case <-ch:
				return true
			default:
			}
		}
		return false
	}
	notFired := func(ws memdb.WatchSet) bool { return !fired(ws) }

	// An absent bundle is watched: its creation fires.
	r := tf.f.reader()
	if _, err := r.FederatedBundle(gcp); !errors.Is(err, ErrNotFound) {
		t.Fatal(err)
	}
	ws := r.WatchSet()
	if !notFired(ws) {
		t.Fatal("watch fired before any change")
	}
	tf.ok(setBundle(fedBundle(t, gcp, 1), false, nil))
	if !fired(ws) {
		t.Fatal("creating a federated bundle did not fire the watch of its lookup")
	}

	// A change fires; a no-op write does not.
	r = tf.f.reader()
	b, _ := r.FederatedBundle(gcp)
	ws = r.WatchSet()
	tf.ok(setBundle(proto.Clone(b).(*sigilv1.Bundle), false, nil))
	if !notFired(ws) {
		t.Fatal("a no-op write fired the watch")
	}
	tf.ok(setBundle(fedBundle(t, gcp, 2), false, nil))
	if !fired(ws) {
		t.Fatal("changing a federated bundle did not fire the watch")
	}

	// The lists fire on a new bundle and a new relationship.
	r = tf.f.reader()
	r.FederatedBundles()
	ws = r.WatchSet()
	tf.ok(setBundle(fedBundle(t, aws, 1), false, nil))
	if !fired(ws) {
		t.Fatal("a new federated bundle did not fire the list's watch")
	}
	r = tf.f.reader()
	r.FederationRelationships()
	ws = r.WatchSet()
	tf.ok(putRel(gcpRel(), true, false, nil))
	if !fired(ws) {
		t.Fatal("a new relationship did not fire the list's watch")
	}
	r = tf.f.reader()
	if _, err := r.FederationRelationship(aws); !errors.Is(err, ErrNotFound) {
		t.Fatal(err)
	}
	ws = r.WatchSet()
	tf.ok(putRel(fedRel(aws, "https://aws.example", ProfileHTTPSWeb, ""), true, false, nil))
	if !fired(ws) {
		t.Fatal("creating a relationship did not fire the watch of its lookup")
	}
}

// federatedState brings tf to a state with every federation table in use.
func federatedState(t *testing.T) *testFSM {
	tf := populated(t)
	tf.ok(putRel(gcpRel(), true, false, fedBundle(t, gcp, 7)))
	tf.ok(putRel(fedRel(aws, "https://aws.example", ProfileHTTPSWeb, ""), true, false, nil))
	tf.ok(setBundle(fedBundle(t, "azure.example", 1), false, nil))
	tf.ok(putStatus(&sigilv1.FederationStatus{TrustDomain: gcp, LastSuccessAt: 1, LastAttemptAt: 1, NextRefreshAt: 2}))
	tf.ok(requestRefresh(aws))
	tf.ok(recordFetch(gcp, 3))
	tf.ok(recordFetch("azure.example", 1))
	e := entry("fed", "spiffe://example.org/fed", agent)
	e.FederatesWith = []string{gcp, "azure.example"}
	if got := tf.batch(createEntries(e)); got[0] != codes.OK {
		t.Fatal(got[0])
	}
	return tf
}

func TestSnapshotFederationRoundTrip(t *testing.T) {
	src := federatedState(t)
	data := persist(t, src.f)
	dst := newTestFSM(t)
	if err := dst.f.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(snapshotBytes(t, dst.f), snapshotBytes(t, src.f)) {
		t.Fatal("restored state differs")
	}
	r := dst.f.reader()
	if len(r.FederationRelationships()) != 2 || len(r.FederationStatuses()) != 2 || len(r.PartnerFetches()) != 2 || len(r.FederatedBundles()) != 2 {
		t.Fatalf("restored federation: %v %v %v %v", r.FederationRelationships(), r.FederationStatuses(), r.PartnerFetches(), r.FederatedBundles())
	}
	if _, err := r.Bundle("example.org"); err != nil {
		t.Fatal(err)
	}
}

func TestSnapshotFederationRefusesCorrupt(t *testing.T) {
	src := federatedState(t)
	data := persist(t, src.f)
	var snap storepb.Snapshot
	if err := proto.Unmarshal(data[snapshotHeaderLen:len(data)-4], &snap); err != nil {
		t.Fatal(err)
	}
	fedIdx := func(s *storepb.Snapshot, td string) int {
		for i, b := range s.Bundles {
			if b.TrustDomain == td {
				return i
			}
		}
		t.Fatalf("no bundle of %q", td)
		return -1
	}
	tooMany := func(s *storepb.Snapshot) {
		for i := range MaxFederationRelationships {
			td := fmt.Sprintf("td%d.example", i)
			s.FederationRelationships = append(s.FederationRelationships, fedRel(td, "https://"+td, ProfileHTTPSWeb, ""))
		}
	}
	for name, mut := range map[string]func(s *storepb.Snapshot){
		"nil relationship": func(s *storepb.Snapshot) { s.FederationRelationships = append(s.FederationRelationships, nil) },
		"dup relationship": func(s *storepb.Snapshot) {
			s.FederationRelationships = append(s.FederationRelationships, s.FederationRelationships[0])
		},
		"http relationship":  func(s *storepb.Snapshot) { s.FederationRelationships[0].BundleEndpointUrl = "http://x" },
		"local relationship": func(s *storepb.Snapshot) { s.FederationRelationships[0].TrustDomain = "example.org" },
		"too many":           tooMany,
		"orphan status":      func(s *storepb.Snapshot) { s.FederationStatuses[0].TrustDomain = "nowhere.example" },
		"dup status": func(s *storepb.Snapshot) {
			s.FederationStatuses = append(s.FederationStatuses, s.FederationStatuses[0])
		},
		"nil status": func(s *storepb.Snapshot) { s.FederationStatuses = append(s.FederationStatuses, nil) },
		"long status error": func(s *storepb.Snapshot) {
			s.FederationStatuses[0].LastError = strings.Repeat("e", MaxFederationErrorLen+1)
		},
		"orphan partner fetch": func(s *storepb.Snapshot) { s.PartnerFetches[0].TrustDomain = "nowhere.example" },
		"local partner fetch":  func(s *storepb.Snapshot) { s.PartnerFetches[0].TrustDomain = "example.org" },
		"nil partner fetch":    func(s *storepb.Snapshot) { s.PartnerFetches = append(s.PartnerFetches, nil) },
		"dup partner fetch":    func(s *storepb.Snapshot) { s.PartnerFetches = append(s.PartnerFetches, s.PartnerFetches[0]) },
		"empty federated": func(s *storepb.Snapshot) {
			i := fedIdx(s, gcp)
			s.Bundles[i].X509Authorities, s.Bundles[i].JwtAuthorities = nil, nil
		},
		"federated server_id": func(s *storepb.Snapshot) { s.Bundles[fedIdx(s, gcp)].X509Authorities[0].ServerId = "n1" },
		"federated not_after": func(s *storepb.Snapshot) { s.Bundles[fedIdx(s, gcp)].X509Authorities[0].NotAfter++ },
		"federated bad cert":  func(s *storepb.Snapshot) { s.Bundles[fedIdx(s, gcp)].X509Authorities[0].Certificate = []byte("x") },
		"federated bad key":   func(s *storepb.Snapshot) { s.Bundles[fedIdx(s, gcp)].JwtAuthorities[0].PublicKey = []byte("x") },
		"federated td as id":  func(s *storepb.Snapshot) { s.Bundles[fedIdx(s, gcp)].TrustDomain = "spiffe://gcp.example" },
		"entry local fed":     func(s *storepb.Snapshot) { s.Entries[len(s.Entries)-1].FederatesWith = []string{"example.org"} },
	} {
		s := proto.Clone(&snap).(*storepb.Snapshot)
		mut(s)
		body, err := proto.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		dst := federatedState(t)
		before := persist(t, dst.f)
		if err := dst.f.Restore(io.NopCloser(bytes.NewReader(frameSnapshot(9, body)))); err == nil {
			t.Errorf("%s: corrupt snapshot restored", name)
			continue
		}
		if !bytes.Equal(persist(t, dst.f), before) {
			t.Errorf("%s: refused snapshot changed the state", name)
		}
	}
}

// TestStoreFederationThroughRaft: the federation commands go through a
// real Raft log on disk, their refusals reach the caller as CommandErrors
// with their code, and the state survives a restart from a snapshot.
func TestStoreFederationThroughRaft(t *testing.T) {
	dir := t.TempDir()
	s := openDisk(t, dir, func(c *Config) { c.Clock = clock.NewFake(t0) })
	ctx := context.Background()
	for _, cmd := range []*storepb.Command{
		putRel(gcpRel(), true, false, fedBundle(t, gcp, 4)),
		requestRefresh(gcp),
		recordFetch(gcp, 2),
	} {
		if _, err := s.Apply(ctx, cmd); err != nil {
			t.Fatal(err)
		}
	}
	var ce *CommandError
	if _, err := s.Apply(ctx, deleteBundle(gcp)); !errors.As(err, &ce) || ce.Code != codes.FailedPrecondition {
		t.Fatalf("deleting a refreshed bundle: %v", err)
	}
	e := entry("fed", "spiffe://example.org/fed", agent)
	e.FederatesWith = []string{gcp}
	mustCreate(t, s, e)
	b, err := s.Read().FederatedBundle(gcp)
	if err != nil || b.SequenceNumber != 4 || b.UpdatedAt != t0.Unix() || b.ModifyIndex == 0 {
		t.Fatalf("federated bundle %v, %v", b, err)
	}
	if err := s.Raft().Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openDisk(t, dir)
	defer s.Close()
	r := s.Read()
	if st, err := r.FederationStatus(gcp); err != nil || st.RefreshRequestedAt != t0.Unix() {
		t.Fatalf("status after restart: %v, %v", st, err)
	}
	if pfs := r.PartnerFetches(); len(pfs) != 1 || pfs[0].SequenceNumber != 2 {
		t.Fatalf("partner fetches after restart: %v", pfs)
	}
	if got, err := r.FederatedBundle(gcp); err != nil || !proto.Equal(got, b) {
		t.Fatalf("bundle after restart: %v, %v", got, err)
	}
	if got, err := r.Entry("fed"); err != nil || len(got.FederatesWith) != 1 {
		t.Fatalf("entry after restart: %v, %v", got, err)
	}
}
