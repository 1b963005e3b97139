package raftstore

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/internal/storepb"
)

// oldAttestNodeCommand encodes an AttestNode command by hand, field by
// field, in the form servers wrote before AttestNode.consume existed:
// timestamp (1), attest_node (14) holding node (1) and join_token_hash
// (2). It does not depend on the current generated code's encoding.
func oldAttestNodeCommand(t *testing.T, at time.Time, id, hash string) []byte {
	t.Helper()
	nodeBytes, err := proto.Marshal(&sigilv1.AttestedNode{SpiffeId: id, AttestationType: "join_token",
		Selectors: []*sigilv1.Selector{sel("join_token", "a1")}})
	if err != nil {
		t.Fatal(err)
	}
	var an []byte
	an = protowire.AppendTag(an, 1, protowire.BytesType)
	an = protowire.AppendBytes(an, nodeBytes)
	if hash != "" {
		an = protowire.AppendTag(an, 2, protowire.BytesType)
		an = protowire.AppendString(an, hash)
	}
	var cmd []byte
	cmd = protowire.AppendTag(cmd, 1, protowire.VarintType)
	cmd = protowire.AppendVarint(cmd, uint64(at.UnixNano()))
	cmd = protowire.AppendTag(cmd, 14, protowire.BytesType)
	cmd = protowire.AppendBytes(cmd, an)
	return cmd
}

func resultCode(t *testing.T, r interface{}) codes.Code {
	t.Helper()
	switch r := r.(type) {
	case *CommandError:
		return r.Code
	case *storepb.CommandResult:
		if len(r.Results) != 1 || r.Results[0].Code != 0 {
			t.Fatalf("single command result %v", r)
		}
		return codes.OK
	default:
		t.Fatalf("unexpected response %T %v", r, r)
		return codes.Unknown
	}
}

// TestAttestNodeOldFormCommand: an AttestNode command already in a Raft
// log, written by a server before the generic consume field, applies as
// it did: it consumes its join token (a second use is refused, an unknown
// or expired token refused and nothing changes), and leaves exactly the
// state the same command written by this version leaves.
func TestAttestNodeOldFormCommand(t *testing.T) {
	h1, h2 := tokenHash("one"), tokenHash("two")
	node2 := "spiffe://example.org/sigil/agent/join_token/a2"
	setup := func() *testFSM {
		tf := newTestFSM(t)
		for _, h := range []string{h1, h2} {
			if c := tf.single(createJoinToken(h, t0.Add(time.Minute))); c != codes.OK {
				t.Fatalf("create token: %v", c)
			}
		}
		return tf
	}
	old, cur := setup(), setup()

	steps := []struct {
		name string
		id   string
		hash string
		at   time.Duration
		want codes.Code
	}{
		{"attest with token", agent, h1, 0, codes.OK},
		{"reuse token", node2, h1, 0, codes.PermissionDenied},
		{"unknown token", node2, tokenHash("three"), 0, codes.PermissionDenied},
		{"malformed hash", node2, "ZZ" + h2[2:], 0, codes.InvalidArgument},
		{"expired token", node2, h2, 2 * time.Minute, codes.PermissionDenied},
		{"no token", node2, "", 2 * time.Minute, codes.OK},
	}
	for _, s := range steps {
		at := t0.Add(s.at)
		before := snapshotBytes(t, old.f)
		if got := resultCode(t, old.applyRaw(oldAttestNodeCommand(t, at, s.id, s.hash))); got != s.want {
			t.Fatalf("%s (old form): code %v, want %v", s.name, got, s.want)
		}
		if s.want != codes.OK && !bytes.Equal(snapshotBytes(t, old.f), before) {
			t.Fatalf("%s (old form): refused command changed state", s.name)
		}
		// The same command as this version writes it.
		cmd := attestNode(s.id, s.hash, sel("join_token", "a1"))
		cmd.Timestamp = at.UnixNano()
		if got := cur.single(cmd); got != s.want {
			t.Fatalf("%s (this version): code %v, want %v", s.name, got, s.want)
		}
		if !bytes.Equal(snapshotBytes(t, old.f), snapshotBytes(t, cur.f)) {
			t.Fatalf("%s: the old form and this version's command leave different states", s.name)
		}
	}
	if _, err := old.f.reader().JoinToken(h1); !errors.Is(err, ErrNotFound) {
		t.Fatalf("the old-form command did not consume its token: %v", err)
	}
}

// TestAttestNodeConsume: the generic consume field consumes join tokens as
// join_token_hash does, atomically with the node; a command naming a
// credential of another kind without a valid use-once kind or expiry (see
// fsm_usedcred_test.go for use-once records), or one credential twice, is
// refused and changes nothing.
func TestAttestNodeConsume(t *testing.T) {
	h1, h2 := tokenHash("one"), tokenHash("two")
	node2 := "spiffe://example.org/sigil/agent/join_token/a2"
	tf := newTestFSM(t)
	for _, h := range []string{h1, h2} {
		if c := tf.single(createJoinToken(h, t0.Add(time.Hour))); c != codes.OK {
			t.Fatalf("create token: %v", c)
		}
	}
	consume := func(id, legacy string, creds ...*storepb.Credential) *storepb.Command {
		cmd := attestNode(id, legacy)
		cmd.GetAttestNode().Consume = creds
		return cmd
	}
	jt := func(h string) *storepb.Credential { return &storepb.Credential{Kind: "join_token", Id: h} }
	steps := []struct {
		name string
		cmd  *storepb.Command
		want codes.Code
	}{
		{"unknown kind", consume(agent, "", &storepb.Credential{Kind: "x509pop_nonce", Id: "n"}), codes.InvalidArgument},
		{"unknown kind with a valid token", consume(agent, h1, &storepb.Credential{Kind: "", Id: h2}), codes.InvalidArgument},
		{"one token twice", consume(agent, h1, jt(h1)), codes.InvalidArgument},
		{"one token twice in consume", consume(agent, "", jt(h1), jt(h1)), codes.InvalidArgument},
		{"malformed id", consume(agent, "", jt("nothex")), codes.InvalidArgument},
		{"one valid, one unknown", consume(agent, "", jt(h1), jt(tokenHash("three"))), codes.PermissionDenied},
		{"consume one", consume(agent, "", jt(h1)), codes.OK},
		{"consume it again", consume(node2, "", jt(h1)), codes.PermissionDenied},
		{"consume it again through join_token_hash", consume(node2, h1), codes.PermissionDenied},
		{"consume the other", consume(node2, "", jt(h2)), codes.OK},
	}
	for _, s := range steps {
		before := snapshotBytes(t, tf.f)
		if got := tf.single(s.cmd); got != s.want {
			t.Fatalf("%s: code %v, want %v", s.name, got, s.want)
		}
		if s.want != codes.OK && !bytes.Equal(snapshotBytes(t, tf.f), before) {
			t.Fatalf("%s: refused command changed state", s.name)
		}
	}
	r := tf.f.reader()
	for _, h := range []string{h1, h2} {
		if _, err := r.JoinToken(h); !errors.Is(err, ErrNotFound) {
			t.Fatalf("consumed token still present: %v", err)
		}
	}
	for _, id := range []string{agent, node2} {
		if _, err := r.Node(id); err != nil {
			t.Fatalf("node %s not recorded: %v", id, err)
		}
	}
}
