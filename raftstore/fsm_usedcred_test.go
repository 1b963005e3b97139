package raftstore

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/sigil-id/sigil/internal/storepb"
)

const oidcAgent = "spiffe://example.org/sigil/agent/oidc/n1"

// useOnce is an AttestNode command of node id consuming creds, at time at.
func useOnce(id string, at time.Time, creds ...*storepb.Credential) *storepb.Command {
	cmd := attestNode(id, "", sel("oidc", "sub:a"))
	cmd.GetAttestNode().Node.AttestationType = "oidc"
	cmd.GetAttestNode().Consume = creds
	cmd.Timestamp = at.UnixNano()
	return cmd
}

func cred(kind, id string, expires time.Time) *storepb.Credential {
	return &storepb.Credential{Kind: kind, Id: id, ExpiresAt: expires.Unix()}
}

// TestAttestNodeUseOnce: an AttestNode command records its use-once
// credentials with the node; another naming one of them before it
// expires is refused (AlreadyExists) with nothing changed, by the same
// node or another, alone or with a valid join token (which stays
// unconsumed); once the record has expired the credential is accepted
// again and its record renewed. Kinds are separate.
func TestAttestNodeUseOnce(t *testing.T) {
	tf := newTestFSM(t)
	h := tokenHash("t")
	if c := tf.single(createJoinToken(h, t0.Add(time.Hour))); c != codes.OK {
		t.Fatalf("create token: %v", c)
	}
	exp := t0.Add(10 * time.Minute)
	jti := cred("oidc:jti", "abc", exp)
	node2 := "spiffe://example.org/sigil/agent/oidc/n2"

	if c := tf.single(useOnce(oidcAgent, t0, jti)); c != codes.OK {
		t.Fatalf("first use: %v", c)
	}
	rec, err := tf.f.reader().UsedCredential("oidc:jti", "abc")
	if err != nil {
		t.Fatal(err)
	}
	if rec.ExpiresAt != exp.Unix() || rec.UsedAt != t0.Unix() || rec.SpiffeId != oidcAgent {
		t.Fatalf("record %v", rec)
	}
	withToken := useOnce(node2, t0.Add(time.Minute), jti)
	withToken.GetAttestNode().JoinTokenHash = h
	for name, cmd := range map[string]*storepb.Command{
		"same node":            useOnce(oidcAgent, t0.Add(time.Minute), jti),
		"other node":           useOnce(node2, t0.Add(time.Minute), jti),
		"with another":         useOnce(node2, t0.Add(time.Minute), cred("oidc:jti", "new", exp), jti),
		"with a join token":    withToken,
		"one second before":    useOnce(node2, exp.Add(-time.Second), jti),
		"with a longer expiry": useOnce(node2, t0.Add(time.Minute), cred("oidc:jti", "abc", exp.Add(time.Hour))),
	} {
		before := snapshotBytes(t, tf.f)
		if c := tf.single(cmd); c != codes.AlreadyExists {
			t.Fatalf("%s: replay code %v, want AlreadyExists", name, c)
		}
		if !bytes.Equal(snapshotBytes(t, tf.f), before) {
			t.Fatalf("%s: refused replay changed state", name)
		}
	}
	if _, err := tf.f.reader().JoinToken(h); err != nil {
		t.Fatalf("refused command consumed the join token: %v", err)
	}
	if _, err := tf.f.reader().UsedCredential("oidc:jti", "new"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("refused command recorded its other credential: %v", err)
	}
	// Another kind with the same id is another record.
	if c := tf.single(useOnce(node2, t0.Add(time.Minute), cred("aws_iid", "abc", exp))); c != codes.OK {
		t.Fatalf("other kind: %v", c)
	}
	// At expiry the record no longer counts.
	exp2 := exp.Add(time.Hour)
	if c := tf.single(useOnce(node2, exp, cred("oidc:jti", "abc", exp2))); c != codes.OK {
		t.Fatalf("use after expiry: %v", c)
	}
	rec, err = tf.f.reader().UsedCredential("oidc:jti", "abc")
	if err != nil || rec.ExpiresAt != exp2.Unix() || rec.SpiffeId != node2 {
		t.Fatalf("renewed record %v %v", rec, err)
	}
}

// TestAttestNodeUseOnceValidation: malformed use-once credentials are
// refused (InvalidArgument) and change nothing: an empty, odd or overlong
// kind, an empty or overlong id, an expiry at or before the command time
// or beyond 24 hours and the clock skew, a credential named twice, and
// more credentials than MaxConsume. The limits themselves are accepted.
func TestAttestNodeUseOnceValidation(t *testing.T) {
	tf := newTestFSM(t)
	exp := t0.Add(time.Hour)
	maxExp := t0.Add(MaxUsedCredentialTTL + UsedCredentialClockSkew)
	many := make([]*storepb.Credential, MaxConsume+1)
	for i := range many {
		many[i] = cred("oidc", fmt.Sprint(i), exp)
	}
	bad := map[string][]*storepb.Credential{
		"empty kind":         {cred("", "a", exp)},
		"kind with a space":  {cred("oidc jti", "a", exp)},
		"kind with a slash":  {cred("oidc/jti", "a", exp)},
		"kind with two ':'":  {cred("oidc:a:b", "a", exp)},
		"kind ':word'":       {cred(":jti", "a", exp)},
		"kind 'name:'":       {cred("oidc:", "a", exp)},
		"overlong kind":      {cred(strings.Repeat("k", MaxCredentialKindLen+1), "a", exp)},
		"empty id":           {cred("oidc", "", exp)},
		"overlong id":        {cred("oidc", strings.Repeat("i", MaxCredentialIDLen+1), exp)},
		"no expiry":          {{Kind: "oidc", Id: "a"}},
		"expired":            {cred("oidc", "a", t0)},
		"expiry beyond 24h":  {cred("oidc", "a", maxExp.Add(time.Second))},
		"huge expiry":        {{Kind: "oidc", Id: "a", ExpiresAt: 1<<63 - 1}},
		"twice":              {cred("oidc", "a", exp), cred("oidc", "a", exp.Add(time.Minute))},
		"more than the most": many,
	}
	for name, creds := range bad {
		before := snapshotBytes(t, tf.f)
		if c := tf.single(useOnce(oidcAgent, t0, creds...)); c != codes.InvalidArgument {
			t.Fatalf("%s: code %v, want InvalidArgument", name, c)
		}
		if !bytes.Equal(snapshotBytes(t, tf.f), before) {
			t.Fatalf("%s: refused command changed state", name)
		}
	}
	good := []*storepb.Credential{
		cred(strings.Repeat("k", MaxCredentialKindLen), strings.Repeat("i", MaxCredentialIDLen), maxExp),
		cred("aws_iid", "i-0abc/é\x00x", t0.Add(time.Second)),
		cred("k8s_psat:pod-uid", "a", exp),
	}
	good = append(good, many[:MaxConsume-len(good)]...)
	if c := tf.single(useOnce(oidcAgent, t0, good...)); c != codes.OK {
		t.Fatalf("credentials at the limits: %v", c)
	}
	for _, c := range good {
		if _, err := tf.f.reader().UsedCredential(c.Kind, c.Id); err != nil {
			t.Fatalf("%q not recorded: %v", c.Kind, err)
		}
	}
	if err := ValidateUseOnceCredential("join_token", tokenHash("x"), exp.Unix(), t0.Unix()); err == nil {
		t.Fatal("ValidateUseOnceCredential accepted a join token")
	}
	if err := ValidateUseOnceCredential("oidc:jti", "a", exp.Unix(), t0.Unix()); err != nil {
		t.Fatalf("ValidateUseOnceCredential: %v", err)
	}
}

// usedCount counts the use-once records, expired or not.
func usedCount(t *testing.T, f *fsm) int {
	t.Helper()
	it, err := f.state.Load().db.Txn(false).Get(tableUsedCredentials, indexID)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for raw := it.Next(); raw != nil; raw = it.Next() {
		n++
	}
	return n
}

// TestUsedCredentialsPruned: each successful AttestNode removes up to
// usedCredentialPrunePerCommand records expired at its time, the earliest
// first; unexpired records stay; a refused command prunes nothing.
func TestUsedCredentialsPruned(t *testing.T) {
	tf := newTestFSM(t)
	const n = 100
	for i := 0; i < n; i += MaxConsume {
		var creds []*storepb.Credential
		for j := i; j < min(i+MaxConsume, n); j++ {
			// Records i expire at t0+i+1 seconds.
			creds = append(creds, cred("oidc:jti", fmt.Sprintf("%03d", j), t0.Add(time.Duration(j+1)*time.Second)))
		}
		if c := tf.single(useOnce(oidcAgent, t0, creds...)); c != codes.OK {
			t.Fatalf("recording: %v", c)
		}
	}
	if got := usedCount(t, tf.f); got != n {
		t.Fatalf("%d records, want %d", got, n)
	}
	later := t0.Add(90 * time.Second) // records 0..89 expired
	// A refused command prunes nothing.
	if c := tf.single(useOnce(oidcAgent, later, cred("oidc:jti", "095", later.Add(time.Hour)))); c != codes.AlreadyExists {
		t.Fatalf("replay of an unexpired record: %v", c)
	}
	if got := usedCount(t, tf.f); got != n {
		t.Fatalf("refused command pruned: %d records", got)
	}
	if c := tf.single(useOnce(oidcAgent, later)); c != codes.OK {
		t.Fatalf("attest: %v", c)
	}
	if got := usedCount(t, tf.f); got != n-usedCredentialPrunePerCommand {
		t.Fatalf("after one prune %d records, want %d", got, n-usedCredentialPrunePerCommand)
	}
	r := tf.f.reader()
	if _, err := r.UsedCredential("oidc:jti", fmt.Sprintf("%03d", usedCredentialPrunePerCommand-1)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("earliest records not pruned first: %v", err)
	}
	if _, err := r.UsedCredential("oidc:jti", fmt.Sprintf("%03d", usedCredentialPrunePerCommand)); err != nil {
		t.Fatalf("record pruned out of order: %v", err)
	}
	if c := tf.single(useOnce(oidcAgent, later)); c != codes.OK {
		t.Fatalf("attest: %v", c)
	}
	if got := usedCount(t, tf.f); got != 10 {
		t.Fatalf("after two prunes %d records, want the 10 unexpired", got)
	}
}

// TestUsedCredentialsSnapshot: snapshots carry the use-once records (a
// restored server refuses a replay as the others do); a snapshot holding a
// malformed or duplicate record is refused and leaves the state as it
// was.
func TestUsedCredentialsSnapshot(t *testing.T) {
	src := newTestFSM(t)
	exp := t0.Add(time.Hour)
	if c := src.single(useOnce(oidcAgent, t0, cred("oidc:jti", "a", exp), cred("oidc:jti", "b", exp))); c != codes.OK {
		t.Fatalf("attest: %v", c)
	}
	data := persist(t, src.f)
	dst := newTestFSM(t)
	if err := dst.f.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(snapshotBytes(t, dst.f), snapshotBytes(t, src.f)) {
		t.Fatal("restored state differs")
	}
	if _, err := dst.f.reader().UsedCredential("oidc:jti", "b"); err != nil {
		t.Fatalf("record not restored: %v", err)
	}
	dst.index = src.index
	if c := dst.single(useOnce(oidcAgent, t0.Add(time.Minute), cred("oidc:jti", "a", exp))); c != codes.AlreadyExists {
		t.Fatalf("replay after restore: %v", c)
	}

	body := data[snapshotHeaderLen : len(data)-4]
	for name, mut := range map[string]func(s *storepb.Snapshot){
		"nil record":        func(s *storepb.Snapshot) { s.UsedCredentials[0] = nil },
		"bad kind":          func(s *storepb.Snapshot) { s.UsedCredentials[0].Kind = "join_token" },
		"empty id":          func(s *storepb.Snapshot) { s.UsedCredentials[0].Id = "" },
		"expiry too late":   func(s *storepb.Snapshot) { s.UsedCredentials[0].ExpiresAt = s.UsedCredentials[0].UsedAt + 2*86400 },
		"expiry before use": func(s *storepb.Snapshot) { s.UsedCredentials[0].ExpiresAt = s.UsedCredentials[0].UsedAt },
		"duplicate":         func(s *storepb.Snapshot) { s.UsedCredentials[1].Id = s.UsedCredentials[0].Id },
	} {
		s := &storepb.Snapshot{}
		if err := proto.Unmarshal(body, s); err != nil {
			t.Fatal(err)
		}
		mut(s)
		b, err := proto.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		frame := append([]byte{}, data[:16]...)
		frame = binary.BigEndian.AppendUint64(frame, uint64(len(b)))
		frame = append(frame, b...)
		frame = binary.BigEndian.AppendUint32(frame, crc32.Checksum(b, crcTable))
		tf := newTestFSM(t)
		if c := tf.single(useOnce(oidcAgent, t0, cred("oidc", "x", exp))); c != codes.OK {
			t.Fatal(c)
		}
		before := snapshotBytes(t, tf.f)
		if err := tf.f.Restore(io.NopCloser(bytes.NewReader(frame))); err == nil {
			t.Fatalf("%s: snapshot accepted", name)
		}
		if !bytes.Equal(snapshotBytes(t, tf.f), before) {
			t.Fatalf("%s: refused snapshot changed state", name)
		}
	}
}

// TestAttestNodeFirstAttestation: a first attestation (trust on first
// use) admits a node only if no agent with its SPIFFE ID is recorded; a
// second is refused with AlreadyExists and nothing changed, whatever
// arrives in between; after an eviction the node may attest again; a
// plain attestation of an attested node still updates it.
func TestAttestNodeFirstAttestation(t *testing.T) {
	tf := newTestFSM(t)
	first := func(at time.Time) *storepb.Command {
		cmd := useOnce(oidcAgent, at)
		cmd.GetAttestNode().FirstAttestation = true
		return cmd
	}
	if c := tf.single(first(t0)); c != codes.OK {
		t.Fatalf("first attestation: %v", c)
	}
	before := snapshotBytes(t, tf.f)
	if c := tf.single(first(t0.Add(time.Second))); c != codes.AlreadyExists {
		t.Fatalf("second first attestation: %v, want AlreadyExists", c)
	}
	if !bytes.Equal(snapshotBytes(t, tf.f), before) {
		t.Fatal("a refused first attestation changed the state")
	}
	if c := tf.single(useOnce(oidcAgent, t0.Add(2*time.Second))); c != codes.OK {
		t.Fatalf("plain re-attestation: %v", c)
	}
	if c := tf.single(&storepb.Command{Timestamp: t0.Add(3 * time.Second).UnixNano(),
		Op: &storepb.Command_EvictNode{EvictNode: &storepb.EvictNode{SpiffeId: oidcAgent}}}); c != codes.OK {
		t.Fatalf("evict: %v", c)
	}
	if c := tf.single(first(t0.Add(4 * time.Second))); c != codes.OK {
		t.Fatalf("first attestation after eviction: %v", c)
	}
}
