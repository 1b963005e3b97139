package raftstore

import (
	"bytes"
	"errors"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/internal/storepb"
)

func TestFSMRefusesGarbage(t *testing.T) {
	tf := newTestFSM(t)
	if got := tf.batch(createEntries(entry("e1", "spiffe://example.org/web", agent))); got[0] != codes.OK {
		t.Fatalf("setup: %v", got)
	}
	before := snapshotBytes(t, tf.f)
	// Field 14 (attest_node) with a length running past the end, a field
	// number unknown to Command, an empty command, a command without a
	// timestamp, and plain noise.
	unknownOp := protowire.AppendTag(nil, 1, protowire.VarintType)
	unknownOp = protowire.AppendVarint(unknownOp, 5)
	unknownOp = protowire.AppendTag(unknownOp, 99, protowire.BytesType)
	unknownOp = protowire.AppendBytes(unknownOp, []byte("x"))
	noTS, _ := proto.Marshal(createEntries(entry("e2", "spiffe://example.org/db", agent)))
	cases := map[string][]byte{
		"truncated":  {0x72, 0x40, 0x01},
		"unknown op": unknownOp,
		"empty":      {},
		"no ts":      noTS,
		"noise":      {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01},
	}
	for name, data := range cases {
		t.Run(name, func(t *testing.T) {
			res := tf.applyRaw(data)
			ce, ok := res.(*CommandError)
			if !ok || ce.Code != codes.InvalidArgument {
				t.Fatalf("got %T %v, want InvalidArgument CommandError", res, res)
			}
			if !bytes.Equal(snapshotBytes(t, tf.f), before) {
				t.Fatal("state changed")
			}
		})
	}
}

func TestStoreRefusesGarbageThroughRaft(t *testing.T) {
	s := openMem(t, nil)
	before := snapshotBytes(t, s.fsm)
	changed := s.Changed()
	f := s.Raft().Apply([]byte{0x0a, 0xff, 0xff, 0x03, 0x00}, 5*time.Second)
	if err := f.Error(); err != nil {
		t.Fatal(err)
	}
	ce, ok := f.Response().(*CommandError)
	if !ok || ce.Code != codes.InvalidArgument {
		t.Fatalf("response %T %v, want InvalidArgument", f.Response(), f.Response())
	}
	if !bytes.Equal(snapshotBytes(t, s.fsm), before) {
		t.Fatal("state changed")
	}
	if s.LastIndex() != f.Index() {
		t.Fatalf("last index %d, want %d", s.LastIndex(), f.Index())
	}
	select {
	case <-changed:
		t.Fatal("Changed fired for a refused command")
	default:
	}
}

func TestCreateEntries(t *testing.T) {
	cases := []struct {
		name string
		e    *sigilv1.Entry
		want codes.Code
	}{
		{"duplicate id", entry("e1", "spiffe://example.org/other", agent), codes.AlreadyExists},
		{"duplicate key", entry("e9", "spiffe://example.org/web", agent), codes.AlreadyExists},
		{"duplicate key other selector order", &sigilv1.Entry{Id: "e9", SpiffeId: "spiffe://example.org/multi", ParentId: agent,
			Selectors: []*sigilv1.Selector{sel("unix", "gid:1"), sel("unix", "uid:1")}}, codes.AlreadyExists},
		{"reserved path", entry("e9", "spiffe://example.org/sigil/agent/x", agent), codes.InvalidArgument},
		{"other trust domain", entry("e9", "spiffe://other.org/web", agent), codes.InvalidArgument},
		{"empty id", entry("", "spiffe://example.org/new", agent), codes.InvalidArgument},
		{"control char id", entry("a\x00b", "spiffe://example.org/new", agent), codes.InvalidArgument},
		{"no selectors", &sigilv1.Entry{Id: "e9", SpiffeId: "spiffe://example.org/new", ParentId: agent}, codes.InvalidArgument},
		{"nil entry", nil, codes.InvalidArgument},
		{"ok", entry("e9", "spiffe://example.org/new", agent), codes.OK},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tf := newTestFSM(t)
			setup := tf.batch(createEntries(
				entry("e1", "spiffe://example.org/web", agent),
				&sigilv1.Entry{Id: "e2", SpiffeId: "spiffe://example.org/multi", ParentId: agent,
					Selectors: []*sigilv1.Selector{sel("unix", "uid:1"), sel("unix", "gid:1")}},
			))
			if !slices.Equal(setup, []codes.Code{codes.OK, codes.OK}) {
				t.Fatalf("setup %v", setup)
			}
			before := snapshotBytes(t, tf.f)
			got := tf.batch(createEntries(c.e))
			if got[0] != c.want {
				t.Fatalf("code %v, want %v", got[0], c.want)
			}
			if c.want != codes.OK {
				if !bytes.Equal(snapshotBytes(t, tf.f), before) {
					t.Fatal("refused item changed state")
				}
				return
			}
			e, err := tf.f.reader().Entry(c.e.Id)
			if err != nil {
				t.Fatal(err)
			}
			if e.ModifyIndex != tf.index || e.Revision != 0 || e.CreatedAt != t0.Unix() {
				t.Fatalf("stored entry %v (index %d)", e, tf.index)
			}
		})
	}
}

func TestCreateEntriesBatchItemsIndependent(t *testing.T) {
	tf := newTestFSM(t)
	in := entry("a", "spiffe://example.org/a", agent)
	in.CreatedAt = 1234
	in.Revision = 7
	got := tf.batch(createEntries(
		in,
		entry("b", "spiffe://example.org/sigil/x", agent), // reserved
		entry("c", "spiffe://example.org/a", agent),       // duplicate of a, in the same batch
		entry("d", "spiffe://example.org/d", agent),
	))
	want := []codes.Code{codes.OK, codes.InvalidArgument, codes.AlreadyExists, codes.OK}
	if !slices.Equal(got, want) {
		t.Fatalf("codes %v, want %v", got, want)
	}
	r := tf.f.reader()
	a, err := r.Entry("a")
	if err != nil || a.CreatedAt != 1234 || a.Revision != 0 {
		t.Fatalf("entry a %v %v", a, err)
	}
	for _, id := range []string{"b", "c"} {
		if _, err := r.Entry(id); !errors.Is(err, ErrNotFound) {
			t.Fatalf("entry %s: %v", id, err)
		}
	}
	if r.Index() != tf.index {
		t.Fatalf("reader index %d, want %d", r.Index(), tf.index)
	}
}

func TestUpdateEntries(t *testing.T) {
	tf := newTestFSM(t)
	a := entry("a", "spiffe://example.org/a", agent)
	a.CreatedAt = 100
	tf.batch(createEntries(a, entry("b", "spiffe://example.org/b", agent)))
	createdIndex := tf.index

	cases := []struct {
		name string
		e    *sigilv1.Entry
		want codes.Code
	}{
		{"unknown id", entry("zz", "spiffe://example.org/zz", agent), codes.NotFound},
		{"conflicts with b", entry("a", "spiffe://example.org/b", agent), codes.AlreadyExists},
		{"invalid", entry("a", "spiffe://example.org/sigil/server/x", agent), codes.InvalidArgument},
		{"ok", &sigilv1.Entry{Id: "a", SpiffeId: "spiffe://example.org/a2", ParentId: agent, Selectors: []*sigilv1.Selector{sel("k8s", "ns:x")}, CreatedAt: 999}, codes.OK},
		{"ok again", &sigilv1.Entry{Id: "a", SpiffeId: "spiffe://example.org/a2", ParentId: agent, Selectors: []*sigilv1.Selector{sel("k8s", "ns:y")}}, codes.OK},
	}
	for _, c := range cases {
		before := snapshotBytes(t, tf.f)
		got := tf.batch(updateEntries(c.e))[0]
		if got != c.want {
			t.Fatalf("%s: code %v, want %v", c.name, got, c.want)
		}
		if c.want != codes.OK && !bytes.Equal(snapshotBytes(t, tf.f), before) {
			t.Fatalf("%s: refused update changed state", c.name)
		}
	}
	r := tf.f.reader()
	got, err := r.Entry("a")
	if err != nil {
		t.Fatal(err)
	}
	if got.Revision != 2 || got.CreatedAt != 100 || got.ModifyIndex != tf.index || got.ModifyIndex == createdIndex || got.SpiffeId != "spiffe://example.org/a2" {
		t.Fatalf("updated entry %v", got)
	}
	// Old index values are gone, new ones present.
	if n := len(r.EntriesBySPIFFEID("spiffe://example.org/a")); n != 0 {
		t.Fatalf("old spiffe_id still indexed (%d)", n)
	}
	if n := len(r.EntriesBySelector(sel("k8s", "ns:x"))); n != 0 {
		t.Fatalf("old selector still indexed (%d)", n)
	}
	if n := len(r.EntriesBySelector(sel("k8s", "ns:y"))); n != 1 {
		t.Fatalf("new selector indexed %d times", n)
	}
}

func TestDeleteEntries(t *testing.T) {
	tf := newTestFSM(t)
	tf.batch(createEntries(entry("a", "spiffe://example.org/a", agent)))
	got := tf.batch(deleteEntries("a", "a", "nope", ""))
	want := []codes.Code{codes.OK, codes.NotFound, codes.NotFound, codes.InvalidArgument}
	if !slices.Equal(got, want) {
		t.Fatalf("codes %v, want %v", got, want)
	}
	if _, err := tf.f.reader().Entry("a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted entry: %v", err)
	}
	// The key is free again.
	if got := tf.batch(createEntries(entry("a2", "spiffe://example.org/a", agent))); got[0] != codes.OK {
		t.Fatalf("re-create after delete: %v", got)
	}
}

func TestJoinTokensAndNodes(t *testing.T) {
	h1, h2, h3 := tokenHash("one"), tokenHash("two"), tokenHash("three")
	node2 := "spiffe://example.org/sigil/agent/join_token/a2"
	type step struct {
		name string
		cmd  *storepb.Command
		at   time.Duration // command time relative to t0
		want codes.Code
	}
	steps := []step{
		{"create token", createJoinToken(h1, t0.Add(time.Hour)), 0, codes.OK},
		{"create token twice", createJoinToken(h1, t0.Add(time.Hour)), 0, codes.AlreadyExists},
		{"create short token", createJoinToken(h2, t0.Add(time.Minute)), 0, codes.OK},
		{"token hash not hex", createJoinToken("ZZ"+h3[2:], t0.Add(time.Hour)), 0, codes.InvalidArgument},
		{"token hash uppercase", createJoinToken("AB"+h3[2:], t0.Add(time.Hour)), 0, codes.InvalidArgument},
		{"token hash short", createJoinToken(h3[:63], t0.Add(time.Hour)), 0, codes.InvalidArgument},
		{"token already expired", createJoinToken(h3, t0), 0, codes.InvalidArgument},
		{"attest unknown token", attestNode(agent, h3), 0, codes.PermissionDenied},
		{"attest non-agent id", attestNode("spiffe://example.org/web", h1), 0, codes.InvalidArgument},
		{"attest other trust domain", attestNode("spiffe://other.org/sigil/agent/x/y", h1), 0, codes.InvalidArgument},
		{"attest with token", attestNode(agent, h1, sel("region", "eu")), 0, codes.OK},
		{"reuse token", attestNode(node2, h1), 0, codes.PermissionDenied},
		{"expired token", attestNode(node2, h2), 2 * time.Minute, codes.PermissionDenied},
		{"update node", updateNode(agent, "0a", t0.Add(time.Hour).Unix()), 0, codes.OK},
		{"update unknown node", updateNode(node2, "0b", 1), 0, codes.NotFound},
		{"ban unknown", banNode(node2), 0, codes.NotFound},
		{"ban", banNode(agent), 0, codes.OK},
		{"update banned node", updateNode(agent, "0c", 1), 0, codes.PermissionDenied},
		{"banned node re-attests", attestNode(agent, ""), 0, codes.PermissionDenied},
		{"evict", evictNode(agent), 0, codes.OK},
		{"evict again", evictNode(agent), 0, codes.NotFound},
		{"attest again after evict", attestNode(agent, ""), time.Hour, codes.OK},
	}
	tf := newTestFSM(t)
	for _, s := range steps {
		tf.now = t0.Add(s.at)
		before := snapshotBytes(t, tf.f)
		if got := tf.single(s.cmd); got != s.want {
			t.Fatalf("%s: code %v, want %v", s.name, got, s.want)
		}
		if s.want != codes.OK && !bytes.Equal(snapshotBytes(t, tf.f), before) {
			t.Fatalf("%s: refused command changed state", s.name)
		}
		r := tf.f.reader()
		switch s.name {
		case "attest with token":
			if _, err := r.JoinToken(h1); !errors.Is(err, ErrNotFound) {
				t.Fatalf("used token still present: %v", err)
			}
			n, err := r.Node(agent)
			if err != nil || n.CreatedAt != t0.Unix() || n.ModifyIndex != tf.index || len(n.Selectors) != 1 {
				t.Fatalf("node %v %v", n, err)
			}
		case "update node":
			n, _ := r.Node(agent)
			if n.CertSerial != "0a" || n.CertNotAfter != t0.Add(time.Hour).Unix() || n.CreatedAt != t0.Unix() || len(n.Selectors) != 1 {
				t.Fatalf("updated node %v", n)
			}
		case "ban":
			if n, _ := r.Node(agent); !n.Banned {
				t.Fatal("node not banned")
			}
		case "attest again after evict":
			n, err := r.Node(agent)
			if err != nil || n.Banned || n.CreatedAt != t0.Add(time.Hour).Unix() {
				t.Fatalf("re-attested node %v %v", n, err)
			}
			// The expired token h2 was swept by this command.
			if _, err := r.JoinToken(h2); !errors.Is(err, ErrNotFound) {
				t.Fatalf("expired token not removed: %v", err)
			}
		}
	}
}

func TestReattestPreservesCreatedAt(t *testing.T) {
	tf := newTestFSM(t)
	if c := tf.single(attestNode(agent, "")); c != codes.OK {
		t.Fatal(c)
	}
	tf.now = t0.Add(time.Hour)
	if c := tf.single(attestNode(agent, "", sel("a", "b"))); c != codes.OK {
		t.Fatal(c)
	}
	n, _ := tf.f.reader().Node(agent)
	if n.CreatedAt != t0.Unix() || len(n.Selectors) != 1 || n.ModifyIndex != 2 {
		t.Fatalf("re-attested node %v", n)
	}
}

func TestPutX509Authority(t *testing.T) {
	tf := newTestFSM(t)
	caLate := makeCert(t, true, t0.Add(48*time.Hour))
	caEarly := makeCert(t, true, t0.Add(24*time.Hour))
	leaf := makeCert(t, false, t0.Add(24*time.Hour))

	refusals := []struct {
		name string
		cmd  *storepb.Command
	}{
		{"leaf", putAuthority("example.org", "n1", leaf)},
		{"garbage", putAuthority("example.org", "n1", []byte("not a cert"))},
		{"empty", putAuthority("example.org", "n1", nil)},
		{"other td", putAuthority("other.org", "n1", caLate)},
		{"no server", putAuthority("example.org", "", caLate)},
		{"no authority", &storepb.Command{Op: &storepb.Command_PutX509Authority{PutX509Authority: &storepb.PutX509Authority{TrustDomain: "example.org"}}}},
	}
	for _, c := range refusals {
		if got := tf.single(c.cmd); got != codes.InvalidArgument {
			t.Fatalf("%s: %v, want InvalidArgument", c.name, got)
		}
	}
	if _, err := tf.f.reader().Bundle("example.org"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("refusals created a bundle: %v", err)
	}

	for _, c := range []*storepb.Command{
		putAuthority("example.org", "n1", caLate),
		putAuthority("example.org", "n2", caEarly),
		putAuthority("example.org", "n1", caLate), // replace: same server and cert
	} {
		if got := tf.single(c); got != codes.OK {
			t.Fatalf("put: %v", got)
		}
	}
	taint := putAuthority("example.org", "n1", caLate)
	taint.GetPutX509Authority().Authority.Tainted = true
	if got := tf.single(taint); got != codes.OK {
		t.Fatal(got)
	}
	b, err := tf.f.reader().Bundle("example.org")
	if err != nil {
		t.Fatal(err)
	}
	if len(b.X509Authorities) != 2 || b.SequenceNumber != 4 {
		t.Fatalf("bundle has %d authorities, sequence %d", len(b.X509Authorities), b.SequenceNumber)
	}
	first, second := b.X509Authorities[0], b.X509Authorities[1]
	if first.ServerId != "n2" || first.NotAfter != t0.Add(24*time.Hour).Unix() || second.ServerId != "n1" || !second.Tainted {
		t.Fatalf("authorities not sorted by not_after / not replaced: %v", b.X509Authorities)
	}
}

func TestStoredObjectsNotMutated(t *testing.T) {
	tf := newTestFSM(t)
	tf.single(attestNode(agent, ""))
	tf.single(putAuthority("example.org", "n1", makeCert(t, true, t0.Add(time.Hour))))
	r := tf.f.reader()
	n, _ := r.Node(agent)
	b, _ := r.Bundle("example.org")
	nodeBefore, bundleBefore := proto.Clone(n), proto.Clone(b)
	tf.single(updateNode(agent, "ff", 5))
	tf.single(banNode(agent))
	tf.single(putAuthority("example.org", "n2", makeCert(t, true, t0.Add(2*time.Hour))))
	if !proto.Equal(n, nodeBefore) || !proto.Equal(b, bundleBefore) {
		t.Fatal("an object handed to a reader was mutated in place")
	}
}
