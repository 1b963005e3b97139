package raftstore

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/binary"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-memdb"
	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/internal/storepb"
)

// maxFuzzCommands bounds the commands one fuzz input is split into.
const maxFuzzCommands = 16

// splitCommands cuts a fuzz input into Raft command payloads: each is a
// 2-byte big-endian length and that many bytes (fewer at the end).
func splitCommands(data []byte) [][]byte {
	var cmds [][]byte
	for len(data) > 0 && len(cmds) < maxFuzzCommands {
		if len(data) < 2 {
			cmds = append(cmds, data)
			break
		}
		n := int(binary.BigEndian.Uint16(data))
		data = data[2:]
		n = min(n, len(data))
		cmds = append(cmds, data[:n])
		data = data[n:]
	}
	return cmds
}

// joinCommands is the inverse of splitCommands, for seeds.
func joinCommands(cmds ...[]byte) []byte {
	var out []byte
	for _, c := range cmds {
		out = binary.BigEndian.AppendUint16(out, uint16(len(c)))
		out = append(out, c...)
	}
	return out
}

// fuzzCmd encodes cmd stamped with time at.
func fuzzCmd(tb testing.TB, at time.Time, cmd *storepb.Command) []byte {
	tb.Helper()
	cmd.Timestamp = at.UnixNano()
	b, err := proto.Marshal(cmd)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

func fuzzPutJWT(trustDomain, kid, serverID string, pub []byte, expires time.Time) *storepb.Command {
	return &storepb.Command{Op: &storepb.Command_PutJwtAuthority{PutJwtAuthority: &storepb.PutJWTAuthority{
		TrustDomain: trustDomain,
		Authority:   &sigilv1.JWTAuthority{KeyId: kid, PublicKey: pub, ServerId: serverID, ExpiresAt: expires.Unix()},
	}}}
}

// fuzzFixture holds the encoded commands the fuzz targets build on: base
// brings a fresh FSM to a populated state; seeds are commands of every
// kind, valid and not, for the seed corpus.
type fuzzFixture struct {
	base  [][]byte
	seeds [][]byte
	// fed are the federation commands among seeds.
	fed [][]byte

	once      sync.Once
	baseDB    *memdb.MemDB
	baseIndex uint64
}

func newFuzzFixture(tb testing.TB) *fuzzFixture {
	ca := makeCert(tb, true, t0.Add(24*time.Hour))
	ca2 := makeCert(tb, true, t0.Add(48*time.Hour))
	leaf := makeCert(tb, false, t0.Add(24*time.Hour))
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	pub, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		tb.Fatal(err)
	}
	at := func(d time.Duration, c *storepb.Command) []byte { return fuzzCmd(tb, t0.Add(d), c) }
	awsBundle := fedBundle(tb, aws, 5)
	awsBundle.X509Authorities = append(awsBundle.X509Authorities, &sigilv1.X509Authority{Certificate: leaf})
	fedEntry := entry("fed", "spiffe://example.org/fed", agent)
	fedEntry.FederatesWith = []string{gcp, aws}
	fx := &fuzzFixture{}
	fx.base = [][]byte{
		at(0, createEntries(
			entry("a", "spiffe://example.org/a", agent, sel("unix", "uid:1"), sel("k8s", "ns:x")),
			entry("b", "spiffe://example.org/b", "spiffe://example.org/a"),
			entry("alias", "spiffe://example.org/eu", alias, sel("region", "eu")),
		)),
		at(0, createJoinToken(tokenHash("x"), t0.Add(time.Hour))),
		at(0, createJoinToken(tokenHash("y"), t0.Add(time.Minute))),
		at(0, attestNode(agent, "", sel("region", "eu"))),
		at(0, putAuthority("example.org", "n1", ca)),
		at(0, fuzzPutJWT("example.org", "k1", "n1", pub, t0.Add(time.Hour))),
		// Use-once records: j1 for an hour, j2 for a minute.
		at(0, useOnce(oidcAgent, t0, cred("oidc:jti", "j1", t0.Add(time.Hour)), cred("oidc", "j2", t0.Add(time.Minute)))),
		// Federation: a relationship with its bootstrap bundle and a
		// status, a bundle set without one (with a leaf certificate
		// among its authorities), a partner, an entry federating with
		// both.
		at(0, putRel(gcpRel(), true, false, fedBundle(tb, gcp, 1))),
		at(0, setBundle(awsBundle, false, nil)),
		at(0, putStatus(&sigilv1.FederationStatus{TrustDomain: gcp, LastSuccessAt: t0.Unix(), LastAttemptAt: t0.Unix(), NextRefreshAt: t0.Unix() + 300})),
		at(0, recordFetch(gcp, 2)),
		at(0, createEntries(fedEntry)),
	}
	node2 := "spiffe://example.org/sigil/agent/join_token/a2"
	fx.seeds = [][]byte{
		at(0, createEntries(entry("c", "spiffe://example.org/c", agent), entry("a", "spiffe://example.org/dup", agent))),
		at(0, updateEntries(entry("a", "spiffe://example.org/a2", agent, sel("unix", "uid:2")))),
		at(0, updateEntries(entry("a", "spiffe://example.org/b", "spiffe://example.org/a"))),
		at(0, deleteEntries("b", "nope", "")),
		at(0, createJoinToken(tokenHash("z"), t0.Add(time.Hour))),
		// Refused (x exists) at a time when token y has expired.
		at(2*time.Minute, createJoinToken(tokenHash("x"), t0.Add(time.Hour))),
		at(2*time.Minute, attestNode(node2, tokenHash("x"))),
		at(2*time.Minute, attestNode(node2, tokenHash("y"))),
		at(0, updateNode(agent, "0a", t0.Add(time.Hour).Unix())),
		at(0, banNode(agent)),
		at(0, evictNode(agent)),
		at(0, putAuthority("example.org", "n2", ca2)),
		at(0, putAuthority("example.org", "n2", leaf)),
		at(0, putAuthority("other.org", "n2", ca2)),
		at(0, fuzzPutJWT("example.org", "k1", "n2", pub, t0.Add(2*time.Hour))),
		at(0, fuzzPutJWT("example.org", "k2", "n2", []byte("not a key"), t0.Add(2*time.Hour))),
		at(0, &storepb.Command{Op: &storepb.Command_RemoveAuthority{RemoveAuthority: &storepb.RemoveAuthority{TrustDomain: "example.org", X509Certificate: ca, JwtKeyId: "k1"}}}),
		at(30*time.Hour, &storepb.Command{Op: &storepb.Command_PruneBundle{PruneBundle: &storepb.PruneBundle{TrustDomain: "example.org"}}}),
		{},
		{0x72, 0x40, 0x01},
		// Use-once records: a replay, a reuse after expiry (which prunes
		// j2), malformed ones, and one with a join token.
		at(0, useOnce(node2, t0, cred("oidc:jti", "j1", t0.Add(time.Hour)))),
		at(2*time.Minute, useOnce(node2, t0.Add(2*time.Minute), cred("oidc", "j2", t0.Add(time.Hour)))),
		at(0, useOnce(node2, t0, cred("oidc:jti", "j3", t0.Add(48*time.Hour)))),
		at(0, useOnce(node2, t0, cred("join_token:x", "", t0.Add(time.Hour)), cred("a b", "j4", t0.Add(time.Hour)))),
		at(0, func() *storepb.Command {
			c := useOnce(node2, t0, cred("oidc:jti", "j5", t0.Add(time.Hour)))
			c.GetAttestNode().JoinTokenHash = tokenHash("x")
			return c
		}()),
	}
	// Federation commands, accepted and refused.
	azure := fedRel("azure.example", "https://azure.example", ProfileHTTPSWeb, "")
	federating := func(id string, tds ...string) *storepb.Command {
		e := entry(id, "spiffe://example.org/"+id, agent)
		e.FederatesWith = tds
		return createEntries(e)
	}
	fx.fed = [][]byte{
		at(0, putRel(fedRel(aws, "https://aws.example", ProfileHTTPSWeb, ""), true, false, nil)),
		at(time.Minute, putRel(gcpRel(), false, true, fedBundle(tb, gcp, 9))),
		at(0, putRel(proto.Clone(azure).(*sigilv1.FederationRelationship), false, false, fedBundle(tb, "azure.example", 1))),
		at(0, putRel(fedRel(aws, "http://aws.example", ProfileHTTPSWeb, ""), false, false, nil)),
		at(0, putRel(fedRel(aws, "https://aws.example", ProfileHTTPSSPIFFE, "spiffe://gcp.example/x"), false, false, nil)),
		at(0, deleteRel(gcp, false)),
		at(0, deleteRel(gcp, true)),
		at(time.Minute, setBundle(fedBundle(tb, gcp, 2), true, &sigilv1.FederationStatus{TrustDomain: gcp, LastSuccessAt: t0.Unix() + 60})),
		at(0, setBundle(fedBundle(tb, gcp, 0), true, nil)),
		at(0, setBundle(fedBundle(tb, "example.org", 1), false, nil)),
		at(0, setBundle(fedBundle(tb, "azure.example", 1), true, nil)),
		at(0, deleteBundle(aws)),
		at(0, deleteBundle(gcp)),
		at(0, putStatus(&sigilv1.FederationStatus{TrustDomain: gcp, LastError: "fetch failed", LastErrorAt: t0.Unix(), ConsecutiveFailures: 1})),
		at(0, putStatus(&sigilv1.FederationStatus{TrustDomain: aws})),
		at(2*time.Minute, requestRefresh(gcp)),
		at(0, requestRefresh(aws)),
		at(0, recordFetch(gcp, 3)),
		at(0, recordFetch(gcp, 1)),
		at(0, recordFetch(aws, 1)),
		at(0, recordFetch("azure.example", 1)),
		at(0, federating("fed2", gcp)),
		at(0, federating("fed3", "azure.example")),
		at(0, federating("fed4", "example.org")),
		at(0, updateEntries(fedEntry)),
	}
	fx.seeds = append(fx.seeds, fx.fed...)
	// Alerts: fired, fired again unchanged, changed, resolved; refused
	// (bad severity, fired and resolved at once).
	bad := alertRec("k/bad", "x")
	bad.Severity = "page"
	fx.seeds = append(fx.seeds,
		at(0, updateAlerts([]*storepb.AlertRecord{alertRec("svid_not_renewed/a", "a"), alertRec("cluster_no_leader", "b")})),
		at(0, updateAlerts([]*storepb.AlertRecord{alertRec("svid_not_renewed/a", "a")})),
		at(0, updateAlerts([]*storepb.AlertRecord{alertRec("svid_not_renewed/a", "a2")}, "cluster_no_leader")),
		at(0, updateAlerts([]*storepb.AlertRecord{bad})),
		at(0, updateAlerts([]*storepb.AlertRecord{alertRec("k/c", "c")}, "k/c")),
	)
	// Cluster-wide taint, revocation and retirement of a server's keys.
	caCert, err := x509.ParseCertificate(ca)
	if err != nil {
		tb.Fatal(err)
	}
	caID := X509AuthorityID(caCert)
	for _, c := range []*storepb.Command{
		{Op: &storepb.Command_TaintAuthority{TaintAuthority: &storepb.TaintAuthority{TrustDomain: "example.org", AuthorityId: caID}}},
		{Op: &storepb.Command_TaintAuthority{TaintAuthority: &storepb.TaintAuthority{TrustDomain: "example.org", AuthorityId: "k1"}}},
		{Op: &storepb.Command_RevokeAuthority{RevokeAuthority: &storepb.RevokeAuthority{TrustDomain: "example.org", AuthorityId: caID}}},
		{Op: &storepb.Command_RevokeAuthority{RevokeAuthority: &storepb.RevokeAuthority{TrustDomain: "example.org", AuthorityId: "k1"}}},
		{Op: &storepb.Command_RetireServer{RetireServer: &storepb.RetireServer{TrustDomain: "example.org", ServerId: "n1"}}},
		{Op: &storepb.Command_RetireServer{RetireServer: &storepb.RetireServer{TrustDomain: "example.org", ServerId: "n1", Revoke: true}}},
		// Upstream roots and a server's intermediate CA.
		{Op: &storepb.Command_SetUpstreamRoots{SetUpstreamRoots: &storepb.SetUpstreamRoots{TrustDomain: "example.org", Certificates: [][]byte{ca}}}},
		{Op: &storepb.Command_SetUpstreamRoots{SetUpstreamRoots: &storepb.SetUpstreamRoots{TrustDomain: "example.org", Replace: true}}},
		{Op: &storepb.Command_PutX509Authority{PutX509Authority: &storepb.PutX509Authority{TrustDomain: "example.org", Authority: &sigilv1.X509Authority{Certificate: ca, ServerId: "n2", Intermediate: true}}}},
	} {
		fx.seeds = append(fx.seeds, at(0, c))
	}
	return fx
}

// fuzzApplier applies commands to an FSM with consecutive log indexes.
type fuzzApplier struct {
	f     *fsm
	index uint64
}

func (a *fuzzApplier) apply(data []byte) interface{} {
	a.index++
	return a.f.Apply(&raft.Log{Index: a.index, Term: 1, Type: raft.LogCommand, Data: data})
}

// newFuzzApplier returns a fresh FSM, or one in the populated base state.
// The base state is built once and handed out as memdb snapshots, which
// are O(1) and independent of each other (stored objects are shared, which
// is safe because the FSM never modifies a stored object in place).
func (fx *fuzzFixture) newFuzzApplier(t testing.TB, populated bool) *fuzzApplier {
	a := &fuzzApplier{f: newFSM(td, nil)}
	if !populated {
		return a
	}
	fx.once.Do(func() {
		b := &fuzzApplier{f: newFSM(td, nil)}
		for i, c := range fx.base {
			if res, ok := b.apply(c).(*storepb.CommandResult); !ok || !allOK(res) {
				t.Fatalf("base command %d refused: %v", i, res)
			}
		}
		fx.baseDB, fx.baseIndex = b.f.state.Load().db, b.index
	})
	a.f.state.Store(&dbState{db: fx.baseDB.Snapshot(), abandon: make(chan struct{})})
	a.f.lastIndex.Store(fx.baseIndex)
	a.index = fx.baseIndex
	return a
}

func allOK(r *storepb.CommandResult) bool {
	for _, s := range r.Results {
		if s.Code != 0 {
			return false
		}
	}
	return true
}

func allRefused(r *storepb.CommandResult) bool {
	for _, s := range r.Results {
		if s.Code == 0 {
			return false
		}
	}
	return true
}

// sameResult reports whether two Apply results are the same outcome.
func sameResult(x, y interface{}) bool {
	switch x := x.(type) {
	case *CommandError:
		y, ok := y.(*CommandError)
		return ok && *x == *y
	case *storepb.CommandResult:
		y, ok := y.(*storepb.CommandResult)
		return ok && proto.Equal(x, y)
	}
	return false
}

// persistBytes is the full snapshot of f (state and index).
func persistBytes(t testing.TB, f *fsm) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := writeSnapshot(&buf, f.state.Load().db.Txn(false), f.lastIndex.Load()); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// FuzzFSMApply applies arbitrary bytes, cut into up to 16 Raft commands, to
// a fresh FSM and to a populated one. It checks that the FSM never panics
// and only answers with a CommandError or a CommandResult; that a refused
// command (or a batch whose items are all refused) changes nothing; that
// two FSMs fed the same log end in the same state with the same answers;
// and that a snapshot of the result restores, into a new FSM, to exactly
// the same state and snapshot bytes (so a follower can always take a
// leader's snapshot of anything the FSM accepted).
func FuzzFSMApply(f *testing.F) {
	fx := newFuzzFixture(f)
	for _, s := range fx.seeds {
		f.Add(joinCommands(s))
	}
	f.Add(joinCommands(fx.seeds...))
	f.Add(joinCommands(fx.base...))
	f.Add(joinCommands(fx.seeds[4], fx.seeds[6], fx.seeds[9], fx.seeds[8], fx.seeds[10], fx.seeds[6]))
	f.Add(joinCommands(fx.seeds[len(fx.seeds)-6:]...))
	// Federation: a relationship deleted with its bundle and partner;
	// another created, refreshed and federated with; a bundle kept
	// without its relationship, then deleted.
	f.Add(joinCommands(fx.fed[5], fx.fed[17], fx.fed[21], fx.fed[2], fx.fed[10], fx.fed[20], fx.fed[22], fx.fed[15]))
	f.Add(joinCommands(fx.fed[6], fx.fed[12], fx.fed[20], fx.fed[11], fx.fed[19], fx.fed[2], fx.fed[10], fx.fed[23]))
	// The generic consume field of AttestNode: a join token consumed
	// through it, a kind the store does not keep, one token twice.
	consume := func(id, legacy string, creds ...*storepb.Credential) *storepb.Command {
		c := attestNode(id, legacy)
		c.GetAttestNode().Consume = creds
		return c
	}
	f.Add(joinCommands(
		fuzzCmd(f, t0, consume("spiffe://example.org/sigil/agent/join_token/a3", "", &storepb.Credential{Kind: "join_token", Id: tokenHash("x")})),
		fuzzCmd(f, t0, consume("spiffe://example.org/sigil/agent/join_token/a4", "", &storepb.Credential{Kind: "other", Id: "n"})),
		fuzzCmd(f, t0, consume("spiffe://example.org/sigil/agent/join_token/a4", tokenHash("z"), &storepb.Credential{Kind: "join_token", Id: tokenHash("z")})),
	))
	f.Fuzz(func(t *testing.T, data []byte) {
		cmds := splitCommands(data)
		for _, populated := range []bool{false, true} {
			a, b := fx.newFuzzApplier(t, populated), fx.newFuzzApplier(t, populated)
			for i, c := range cmds {
				before := snapshotBytes(t, a.f)
				changed := a.f.changedCh()
				res := a.apply(c)
				switch r := res.(type) {
				case *CommandError:
					if !bytes.Equal(snapshotBytes(t, a.f), before) {
						t.Fatalf("command %d refused (%v) but changed the state", i, r)
					}
					select {
					case <-changed:
						t.Fatalf("command %d refused (%v) but woke watchers", i, r)
					default:
					}
				case *storepb.CommandResult:
					if len(r.Results) == 0 || !allRefused(r) {
						break
					}
					if !bytes.Equal(snapshotBytes(t, a.f), before) {
						t.Fatalf("command %d: every item refused (%v) but the state changed", i, r)
					}
				default:
					t.Fatalf("command %d: Apply returned %T %v", i, res, res)
				}
				if a.f.lastIndex.Load() != a.index {
					t.Fatalf("command %d: last index %d, want %d", i, a.f.lastIndex.Load(), a.index)
				}
				if other := b.apply(c); !sameResult(res, other) {
					t.Fatalf("command %d: two FSMs answered %v and %v", i, res, other)
				}
			}
			snap := persistBytes(t, a.f)
			if !bytes.Equal(persistBytes(t, b.f), snap) {
				t.Fatal("two FSMs applying the same log differ")
			}
			c := newFSM(td, nil)
			if err := c.Restore(io.NopCloser(bytes.NewReader(snap))); err != nil {
				t.Fatalf("snapshot of an applied state does not restore: %v", err)
			}
			if !bytes.Equal(persistBytes(t, c), snap) {
				t.Fatal("restored state differs from the snapshot")
			}
			// The restored FSM goes on like the original.
			next := fuzzCmd(t, t0.Add(time.Hour), createEntries(entry("zz", "spiffe://example.org/zz", agent)))
			ca := &fuzzApplier{f: c, index: a.index}
			if r1, r2 := a.apply(next), ca.apply(next); !sameResult(r1, r2) || !bytes.Equal(persistBytes(t, a.f), persistBytes(t, c)) {
				t.Fatalf("restored FSM diverges: %v vs %v", r1, r2)
			}
		}
	})
}
