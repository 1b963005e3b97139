package raftstore

import (
	"bytes"
	"crypto/x509"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/internal/storepb"
)

// Helpers of this file are prefixed "ra" (retire/revoke authority).

func raPutX509(serverID string, der []byte, tainted bool) *storepb.Command {
	return &storepb.Command{Op: &storepb.Command_PutX509Authority{PutX509Authority: &storepb.PutX509Authority{
		TrustDomain: "example.org",
		Authority:   &sigilv1.X509Authority{Certificate: der, ServerId: serverID, Tainted: tainted},
	}}}
}

func raPutJWT(serverID, kid string, pub []byte, expires time.Time) *storepb.Command {
	return &storepb.Command{Op: &storepb.Command_PutJwtAuthority{PutJwtAuthority: &storepb.PutJWTAuthority{
		TrustDomain: "example.org",
		Authority:   &sigilv1.JWTAuthority{KeyId: kid, PublicKey: pub, ExpiresAt: expires.Unix(), ServerId: serverID},
	}}}
}

func raTaint(id string) *storepb.Command {
	return &storepb.Command{Op: &storepb.Command_TaintAuthority{TaintAuthority: &storepb.TaintAuthority{TrustDomain: "example.org", AuthorityId: id}}}
}

func raRevoke(id string) *storepb.Command {
	return &storepb.Command{Op: &storepb.Command_RevokeAuthority{RevokeAuthority: &storepb.RevokeAuthority{TrustDomain: "example.org", AuthorityId: id}}}
}

func raRetire(node string, revoke bool) *storepb.Command {
	return &storepb.Command{Op: &storepb.Command_RetireServer{RetireServer: &storepb.RetireServer{TrustDomain: "example.org", ServerId: node, Revoke: revoke}}}
}

func raID(t *testing.T, der []byte) string {
	t.Helper()
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return X509AuthorityID(c)
}

// raState is the bundle as the servers' own view (PeerBundle) and the
// workload view (Bundle).
func raState(t *testing.T, tf *testFSM) (peer, workload *sigilv1.Bundle) {
	t.Helper()
	r := tf.f.reader()
	peer, err := r.PeerBundle("example.org")
	if err != nil {
		t.Fatal(err)
	}
	workload, err = r.Bundle("example.org")
	if err != nil {
		t.Fatal(err)
	}
	return peer, workload
}

func raX509(b *sigilv1.Bundle, der []byte) *sigilv1.X509Authority {
	for _, a := range b.X509Authorities {
		if bytes.Equal(a.Certificate, der) {
			return a
		}
	}
	return nil
}

func raJWT(b *sigilv1.Bundle, kid string) *sigilv1.JWTAuthority {
	for _, a := range b.JwtAuthorities {
		if a.KeyId == kid {
			return a
		}
	}
	return nil
}

// raCluster is a bundle with two servers' CA and JWT keys and identity CAs.
type raCluster struct {
	tf                   *testFSM
	caA, caB, idA, idB   []byte
	pubA, pubB           []byte
	kidA, kidB           string
	caAID, caBID, idBID  string
	expiry               time.Time
	jwtExpiry            time.Time
	snapshotBeforeChange []byte
}

func newRACluster(t *testing.T) *raCluster {
	tf := newTestFSM(t)
	c := &raCluster{tf: tf, expiry: t0.Add(24 * time.Hour), jwtExpiry: t0.Add(20 * time.Hour)}
	c.caA, c.caB = makeCert(t, true, c.expiry), makeCert(t, true, c.expiry)
	c.idA, c.idB = makeCert(t, true, c.expiry), makeCert(t, true, c.expiry)
	c.pubA, c.pubB = pubDER(t), pubDER(t)
	c.kidA, c.kidB = "kid-a", "kid-b"
	c.caAID, c.caBID, c.idBID = raID(t, c.caA), raID(t, c.caB), raID(t, c.idB)
	for _, cmd := range []*storepb.Command{
		raPutX509("a", c.caA, false), raPutX509("b", c.caB, false),
		raPutX509(IdentityAuthorityPrefix+"a", c.idA, false), raPutX509(IdentityAuthorityPrefix+"b", c.idB, false),
		raPutJWT("a", c.kidA, c.pubA, c.jwtExpiry), raPutJWT("b", c.kidB, c.pubB, c.jwtExpiry),
	} {
		if code := tf.single(cmd); code != codes.OK {
			t.Fatalf("setup: %v", code)
		}
	}
	return c
}

// TestIdentityCAsNotInWorkloadBundle: Reader.Bundle (what agents, the
// Workload API and `sigil bundle show` serve) holds no cluster identity
// CA; PeerBundle does.
func TestIdentityCAsNotInWorkloadBundle(t *testing.T) {
	c := newRACluster(t)
	peer, workload := raState(t, c.tf)
	if raX509(peer, c.idA) == nil || raX509(peer, c.idB) == nil {
		t.Fatal("peer bundle lacks the identity CAs")
	}
	if raX509(workload, c.idA) != nil || raX509(workload, c.idB) != nil {
		t.Fatal("workload bundle holds a cluster identity CA")
	}
	if raX509(workload, c.caA) == nil || raX509(workload, c.caB) == nil || len(workload.JwtAuthorities) != 2 {
		t.Fatalf("workload bundle lost server authorities: %v", workload)
	}
	if workload.SequenceNumber != peer.SequenceNumber {
		t.Fatalf("sequence numbers differ: %d vs %d", workload.SequenceNumber, peer.SequenceNumber)
	}
}

// TestTaintAndRevokeOtherServersAuthority: any authority, of any server,
// can be tainted and then revoked by its ID; revoking an untainted one is
// refused, and a revoked one cannot be put back by its server.
func TestTaintAndRevokeOtherServersAuthority(t *testing.T) {
	c := newRACluster(t)
	tf := c.tf

	before := snapshotBytes(t, tf.f)
	if code := tf.single(raRevoke(c.caBID)); code != codes.FailedPrecondition {
		t.Fatalf("revoking an untainted authority: %v, want FailedPrecondition", code)
	}
	if !bytes.Equal(before, snapshotBytes(t, tf.f)) {
		t.Fatal("refused revoke changed the state")
	}

	if code := tf.single(raTaint(c.caBID)); code != codes.OK {
		t.Fatalf("taint: %v", code)
	}
	if code := tf.single(raTaint(c.kidB)); code != codes.OK {
		t.Fatalf("taint jwt: %v", code)
	}
	peer, workload := raState(t, tf)
	if !raX509(workload, c.caB).Tainted || !raJWT(workload, c.kidB).Tainted {
		t.Fatal("b's authorities are not tainted")
	}
	if raX509(peer, c.caA).Tainted || raJWT(peer, c.kidA).Tainted {
		t.Fatal("a's authorities were tainted too")
	}
	// b republishes its key as it knows it (untainted): the taint stays.
	if code := tf.single(raPutX509("b", c.caB, false)); code != codes.OK {
		t.Fatalf("republish: %v", code)
	}
	if code := tf.single(raPutJWT("b", c.kidB, c.pubB, c.jwtExpiry)); code != codes.OK {
		t.Fatalf("republish jwt: %v", code)
	}
	_, workload = raState(t, tf)
	if !raX509(workload, c.caB).Tainted || !raJWT(workload, c.kidB).Tainted {
		t.Fatal("a put without the taint undid it")
	}

	if code := tf.single(raRevoke(c.caBID)); code != codes.OK {
		t.Fatalf("revoke: %v", code)
	}
	if code := tf.single(raRevoke(c.kidB)); code != codes.OK {
		t.Fatalf("revoke jwt: %v", code)
	}
	_, workload = raState(t, tf)
	if raX509(workload, c.caB) != nil || raJWT(workload, c.kidB) != nil {
		t.Fatal("revoked authorities are still in the bundle")
	}
	if !tf.f.reader().IsRevoked(AuthorityKindX509, c.caBID) || !tf.f.reader().IsRevoked(AuthorityKindJWT, c.kidB) {
		t.Fatal("no revocation record")
	}
	before = snapshotBytes(t, tf.f)
	if code := tf.single(raPutX509("b", c.caB, false)); code != codes.PermissionDenied {
		t.Fatalf("putting a revoked CA back: %v, want PermissionDenied", code)
	}
	if code := tf.single(raPutJWT("b", c.kidB, c.pubB, c.jwtExpiry)); code != codes.PermissionDenied {
		t.Fatalf("putting a revoked JWT key back: %v, want PermissionDenied", code)
	}
	if !bytes.Equal(before, snapshotBytes(t, tf.f)) {
		t.Fatal("refused puts changed the state")
	}

	// Revocation records survive a snapshot round trip and are pruned
	// once the authority has expired.
	f2 := newFSM(td, nil)
	var buf bytes.Buffer
	if err := writeSnapshot(&buf, tf.f.state.Load().db.Txn(false), tf.index); err != nil {
		t.Fatal(err)
	}
	if err := f2.Restore(nopCloser{&buf}); err != nil {
		t.Fatal(err)
	}
	if !f2.reader().IsRevoked(AuthorityKindX509, c.caBID) {
		t.Fatal("revocation record lost in a snapshot")
	}
	tf.now = c.expiry.Add(time.Second)
	if code := tf.single(&storepb.Command{Op: &storepb.Command_PruneBundle{PruneBundle: &storepb.PruneBundle{TrustDomain: "example.org"}}}); code != codes.OK {
		t.Fatalf("prune: %v", code)
	}
	if len(tf.f.reader().RevokedAuthorities()) != 0 {
		t.Fatal("expired revocation records were not pruned")
	}
}

type nopCloser struct{ *bytes.Buffer }

func (nopCloser) Close() error { return nil }

// TestTaintRevokeRefusals: bad or unknown IDs are refused and change
// nothing.
func TestTaintRevokeRefusals(t *testing.T) {
	c := newRACluster(t)
	tf := c.tf
	before := snapshotBytes(t, tf.f)
	for name, tc := range map[string]struct {
		cmd  *storepb.Command
		want codes.Code
	}{
		"taint unknown":       {raTaint("00ff"), codes.NotFound},
		"revoke unknown":      {raRevoke("00ff"), codes.NotFound},
		"taint empty":         {raTaint(""), codes.InvalidArgument},
		"taint control chars": {raTaint("ab\ncd"), codes.InvalidArgument},
		"taint too long":      {raTaint(string(bytes.Repeat([]byte("a"), 200))), codes.InvalidArgument},
		"taint other td": {&storepb.Command{Op: &storepb.Command_TaintAuthority{TaintAuthority: &storepb.TaintAuthority{
			TrustDomain: "other.org", AuthorityId: c.caBID}}}, codes.InvalidArgument},
		"retire empty":        {raRetire("", false), codes.InvalidArgument},
		"retire path":         {raRetire("cluster/b", false), codes.InvalidArgument},
		"revoke not retiring": {raRetire("b", true), codes.FailedPrecondition},
	} {
		if code := tf.single(tc.cmd); code != tc.want {
			t.Errorf("%s: %v, want %v", name, code, tc.want)
		}
	}
	if !bytes.Equal(before, snapshotBytes(t, tf.f)) {
		t.Fatal("refused commands changed the state")
	}
}

// TestRetireServer: retiring a removed member taints its CA and JWT keys
// at once, revokes its identity CA at once, refuses every later put of its
// authorities (old or new), and with revoke removes them for good.
func TestRetireServer(t *testing.T) {
	c := newRACluster(t)
	tf := c.tf
	if code := tf.single(raRetire("b", false)); code != codes.OK {
		t.Fatalf("retire: %v", code)
	}
	peer, workload := raState(t, tf)
	if a := raX509(workload, c.caB); a == nil || !a.Tainted {
		t.Fatalf("b's CA after retire: %v", a)
	}
	if a := raJWT(workload, c.kidB); a == nil || !a.Tainted {
		t.Fatalf("b's JWT key after retire: %v", a)
	}
	if raX509(peer, c.idB) != nil {
		t.Fatal("b's identity CA is still in the peer bundle")
	}
	if raX509(peer, c.caA).Tainted || raJWT(peer, c.kidA).Tainted || raX509(peer, c.idA) == nil {
		t.Fatal("a's authorities changed")
	}
	rs := tf.f.reader().RemovedServers()
	if len(rs) != 1 || rs[0].ServerId != "b" || rs[0].RemovedAt != t0.Unix() {
		t.Fatalf("removed servers %v", rs)
	}

	// The removed server cannot put its keys back untainted, nor new ones,
	// nor its identity CA.
	before := snapshotBytes(t, tf.f)
	for name, cmd := range map[string]*storepb.Command{
		"old CA":       raPutX509("b", c.caB, false),
		"new CA":       raPutX509("b", makeCert(t, true, c.expiry), false),
		"identity CA":  raPutX509(IdentityAuthorityPrefix+"b", c.idB, false),
		"new identity": raPutX509(IdentityAuthorityPrefix+"b", makeCert(t, true, c.expiry), false),
		"old JWT":      raPutJWT("b", c.kidB, c.pubB, c.jwtExpiry),
		"new JWT":      raPutJWT("b", "kid-b2", pubDER(t), c.jwtExpiry),
	} {
		if code := tf.single(cmd); code != codes.PermissionDenied {
			t.Errorf("%s: %v, want PermissionDenied", name, code)
		}
	}
	if !bytes.Equal(before, snapshotBytes(t, tf.f)) {
		t.Fatal("refused puts changed the state")
	}
	// Retiring again keeps the first removal time (the grace runs from it).
	tf.now = t0.Add(time.Minute)
	if code := tf.single(raRetire("b", false)); code != codes.OK {
		t.Fatalf("retire again: %v", code)
	}
	if rs := tf.f.reader().RemovedServers(); len(rs) != 1 || rs[0].RemovedAt != t0.Unix() {
		t.Fatalf("removed servers after a second retire %v", rs)
	}

	if code := tf.single(raRetire("b", true)); code != codes.OK {
		t.Fatalf("revoke: %v", code)
	}
	peer, _ = raState(t, tf)
	for _, a := range peer.X509Authorities {
		if ownerOf(a.ServerId) == "b" {
			t.Fatalf("b's authority %s left in the bundle", a.ServerId)
		}
	}
	if raJWT(peer, c.kidB) != nil {
		t.Fatal("b's JWT key left in the bundle")
	}
	if len(peer.X509Authorities) != 2 || len(peer.JwtAuthorities) != 1 {
		t.Fatalf("a's authorities changed: %v", peer)
	}
	if len(tf.f.reader().RemovedServers()) != 0 {
		t.Fatal("removal record not dropped")
	}
	// The old keys stay refused (revoked); a server re-added under the
	// name later may publish new keys.
	if code := tf.single(raPutX509("b", c.caB, false)); code != codes.PermissionDenied {
		t.Fatalf("old CA after revoke: %v", code)
	}
	if code := tf.single(raPutX509("b", makeCert(t, true, c.expiry), false)); code != codes.OK {
		t.Fatalf("new CA of a re-added server: %v", code)
	}
}

// TestAuthorityCommandsDeterministic: two replicas applying the same log
// (taint, retire, revoke, refused commands among them) end in the same
// state and return the same results.
func TestAuthorityCommandsDeterministic(t *testing.T) {
	c := newRACluster(t)
	extra := makeCert(t, true, c.expiry)
	log := []*storepb.Command{
		raTaint(c.caAID), raRevoke(c.kidA), raRetire("b", false), raPutX509("b", extra, false),
		raRevoke(c.caAID), raTaint("nosuch"), raRetire("b", true), raRevoke(c.idBID),
	}
	var datas [][]byte
	for i, cmd := range log {
		cmd.Timestamp = t0.Add(time.Duration(i) * time.Second).UnixNano()
		d, err := proto.Marshal(cmd)
		if err != nil {
			t.Fatal(err)
		}
		datas = append(datas, d)
	}
	base := snapshotBytes(t, c.tf.f)
	replay := func() (*fsm, []interface{}) {
		f := newFSM(td, nil)
		var buf bytes.Buffer
		if err := writeSnapshot(&buf, c.tf.f.state.Load().db.Txn(false), c.tf.index); err != nil {
			t.Fatal(err)
		}
		if err := f.Restore(nopCloser{&buf}); err != nil {
			t.Fatal(err)
		}
		var res []interface{}
		for i, d := range datas {
			res = append(res, f.Apply(&raft.Log{Index: c.tf.index + uint64(i) + 1, Type: raft.LogCommand, Data: d}))
		}
		return f, res
	}
	f1, r1 := replay()
	f2, r2 := replay()
	s1, s2 := snapshotBytes(t, f1), snapshotBytes(t, f2)
	if !bytes.Equal(s1, s2) {
		t.Fatal("replicas diverged")
	}
	if bytes.Equal(s1, base) {
		t.Fatal("the log changed nothing")
	}
	for i := range r1 {
		e1, ok1 := r1[i].(*CommandError)
		e2, ok2 := r2[i].(*CommandError)
		if ok1 != ok2 || (ok1 && (e1.Code != e2.Code || e1.Msg != e2.Msg)) {
			t.Fatalf("command %d: results differ: %v vs %v", i, r1[i], r2[i])
		}
	}
	// Spot checks of the outcome: a's JWT key revoke was refused (not
	// tainted), b's late put was refused, b's keys are gone.
	if _, ok := r1[1].(*CommandError); !ok {
		t.Fatal("revoking an untainted JWT key was accepted")
	}
	if _, ok := r1[3].(*CommandError); !ok {
		t.Fatal("a put by a retired server was accepted")
	}
	if _, ok := r1[4].(*CommandError); ok {
		t.Fatalf("revoking a's tainted CA was refused: %v", r1[4])
	}
}
