package raftstore

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"math/big"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/internal/storepb"
)

var (
	td    = spiffeid.RequireTrustDomainFromString("example.org")
	t0    = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	agent = "spiffe://example.org/sigil/agent/join_token/a1"
	alias = "spiffe://example.org/sigil/server"
)

func sel(typ, value string) *sigilv1.Selector { return &sigilv1.Selector{Type: typ, Value: value} }

func entry(id, spiffeID, parentID string, sels ...*sigilv1.Selector) *sigilv1.Entry {
	if len(sels) == 0 {
		sels = []*sigilv1.Selector{sel("unix", "uid:1000")}
	}
	return &sigilv1.Entry{Id: id, SpiffeId: spiffeID, ParentId: parentID, Selectors: sels}
}

func tokenHash(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

// testFSM drives an fsm directly with consecutive log indexes.
type testFSM struct {
	t     testing.TB
	f     *fsm
	index uint64
	now   time.Time
}

func newTestFSM(t testing.TB) *testFSM {
	return &testFSM{t: t, f: newFSM(td, nil), now: t0}
}

func (tf *testFSM) applyRaw(data []byte) interface{} {
	tf.index++
	return tf.f.Apply(&raft.Log{Index: tf.index, Term: 1, Type: raft.LogCommand, Data: data})
}

func (tf *testFSM) apply(cmd *storepb.Command) interface{} {
	tf.t.Helper()
	if cmd.Timestamp == 0 {
		cmd.Timestamp = tf.now.UnixNano()
	}
	data, err := proto.Marshal(cmd)
	if err != nil {
		tf.t.Fatal(err)
	}
	return tf.applyRaw(data)
}

// single applies a single-item command and returns its refusal code (OK on
// success).
func (tf *testFSM) single(cmd *storepb.Command) codes.Code {
	tf.t.Helper()
	switch r := tf.apply(cmd).(type) {
	case *CommandError:
		return r.Code
	case *storepb.CommandResult:
		if len(r.Results) != 1 || r.Results[0].Code != 0 {
			tf.t.Fatalf("single command result %v", r)
		}
		return codes.OK
	default:
		tf.t.Fatalf("unexpected response %T %v", r, r)
		return codes.Unknown
	}
}

// batch applies a batch command and returns the item codes.
func (tf *testFSM) batch(cmd *storepb.Command) []codes.Code {
	tf.t.Helper()
	r, ok := tf.apply(cmd).(*storepb.CommandResult)
	if !ok {
		tf.t.Fatalf("batch command refused as a whole: %v", r)
	}
	out := make([]codes.Code, len(r.Results))
	for i, s := range r.Results {
		out[i] = codes.Code(s.Code)
	}
	return out
}

func createEntries(es ...*sigilv1.Entry) *storepb.Command {
	return &storepb.Command{Op: &storepb.Command_CreateEntries{CreateEntries: &storepb.CreateEntries{Entries: es}}}
}

func updateEntries(es ...*sigilv1.Entry) *storepb.Command {
	return &storepb.Command{Op: &storepb.Command_UpdateEntries{UpdateEntries: &storepb.UpdateEntries{Entries: es}}}
}

func deleteEntries(ids ...string) *storepb.Command {
	return &storepb.Command{Op: &storepb.Command_DeleteEntries{DeleteEntries: &storepb.DeleteEntries{Ids: ids}}}
}

func createJoinToken(hash string, expires time.Time) *storepb.Command {
	return &storepb.Command{Op: &storepb.Command_CreateJoinToken{CreateJoinToken: &storepb.CreateJoinToken{
		Token: &sigilv1.JoinToken{Hash: hash, ExpiresAt: expires.Unix()}}}}
}

func attestNode(id, tokenHash string, sels ...*sigilv1.Selector) *storepb.Command {
	return &storepb.Command{Op: &storepb.Command_AttestNode{AttestNode: &storepb.AttestNode{
		Node:          &sigilv1.AttestedNode{SpiffeId: id, AttestationType: "join_token", Selectors: sels},
		JoinTokenHash: tokenHash,
	}}}
}

func updateNode(id, serial string, notAfter int64) *storepb.Command {
	return &storepb.Command{Op: &storepb.Command_UpdateNode{UpdateNode: &storepb.UpdateNode{SpiffeId: id, CertSerial: serial, CertNotAfter: notAfter}}}
}

func evictNode(id string) *storepb.Command {
	return &storepb.Command{Op: &storepb.Command_EvictNode{EvictNode: &storepb.EvictNode{SpiffeId: id}}}
}

func banNode(id string) *storepb.Command {
	return &storepb.Command{Op: &storepb.Command_BanNode{BanNode: &storepb.BanNode{SpiffeId: id}}}
}

func putAuthority(trustDomain, serverID string, der []byte) *storepb.Command {
	return &storepb.Command{Op: &storepb.Command_PutX509Authority{PutX509Authority: &storepb.PutX509Authority{
		TrustDomain: trustDomain,
		Authority:   &sigilv1.X509Authority{Certificate: der, ServerId: serverID},
	}}}
}

// makeCert returns a self-signed DER certificate.
func makeCert(t testing.TB, isCA bool, notAfter time.Time) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test"},
		NotBefore:             t0.Add(-time.Hour),
		NotAfter:              notAfter,
		BasicConstraintsValid: true,
		IsCA:                  isCA,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// snapshotBytes is the serialized state of f, used to assert "nothing
// changed".
func snapshotBytes(t testing.TB, f *fsm) []byte {
	t.Helper()
	snap, err := buildSnapshot(f.state.Load().db.Txn(false))
	if err != nil {
		t.Fatal(err)
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(snap)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func openMem(t testing.TB, clk clock.Clock) *Store {
	t.Helper()
	cfg := DefaultConfig()
	cfg.TrustDomain = td
	cfg.NodeID = "n1"
	cfg.InMemory = true
	cfg.Clock = clk
	s, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	waitLeader(t, s)
	return s
}

func openDisk(t testing.TB, dir string, mut ...func(*Config)) *Store {
	t.Helper()
	cfg := DefaultConfig()
	cfg.TrustDomain = td
	cfg.NodeID = "n1"
	cfg.DataDir = dir
	for _, m := range mut {
		m(&cfg)
	}
	s, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	waitLeader(t, s)
	return s
}

func waitLeader(t testing.TB, s *Store) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.WaitForLeader(ctx); err != nil {
		t.Fatal(err)
	}
}
