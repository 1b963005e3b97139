package raftstore

import (
	"bytes"
	"io"
	"reflect"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/sigil-id/sigil/registration"
)

func feedSince(t *testing.T, tf *testFSM, after uint64) []*EntryChange {
	t.Helper()
	recs, ok := tf.f.feed.since(tf.f.state.Load(), after, tf.index)
	if !ok {
		t.Fatalf("feed since %d: incomplete", after)
	}
	return recs
}

// TestEntryFeedRecordsChanges: every applied entry change is in the feed,
// once per command, with its before and after; refused items and other
// commands add nothing.
func TestEntryFeedRecordsChanges(t *testing.T) {
	tf := newTestFSM(t)
	serversID := registration.ServersID(td).String()
	a := entry("a", "spiffe://example.org/a", "spiffe://example.org/agent")
	alias := entry("alias", "spiffe://example.org/alias", serversID, sel("join_token", "x"))
	if got := tf.batch(createEntries(a, alias)); !slices.Equal(got, []codes.Code{codes.OK, codes.OK}) {
		t.Fatal(got)
	}
	created := tf.index
	a2 := entry("a", "spiffe://example.org/a2", "spiffe://example.org/agent2")
	a3 := entry("a", "spiffe://example.org/a3", "spiffe://example.org/agent3")
	// Two updates of one entry in one command: one change, first before, last after.
	if got := tf.batch(updateEntries(a2, a3, entry("missing", "spiffe://example.org/m", "spiffe://example.org/agent"))); got[2] != codes.NotFound {
		t.Fatal(got)
	}
	updated := tf.index
	if tf.single(createJoinToken(tokenHash("t"), t0.Add(time.Hour))) != codes.OK {
		t.Fatal("join token")
	}
	tf.batch(deleteEntries("alias"))
	deleted := tf.index

	got := feedSince(t, tf, 0)
	want := []*EntryChange{
		{Index: created, ID: "a", After: EntryRef{Exists: true, ParentID: "spiffe://example.org/agent", SPIFFEID: "spiffe://example.org/a"}},
		{Index: created, ID: "alias", After: EntryRef{Exists: true, ParentID: serversID, SPIFFEID: "spiffe://example.org/alias", Selectors: []string{"join_token:x"}}},
		{Index: updated, ID: "a",
			Before: EntryRef{Exists: true, ParentID: "spiffe://example.org/agent", SPIFFEID: "spiffe://example.org/a"},
			After:  EntryRef{Exists: true, ParentID: "spiffe://example.org/agent3", SPIFFEID: "spiffe://example.org/a3"}},
		{Index: deleted, ID: "alias", Before: EntryRef{Exists: true, ParentID: serversID, SPIFFEID: "spiffe://example.org/alias", Selectors: []string{"join_token:x"}}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("feed:\n%+v\nwant\n%+v", got, want)
	}
	if got := feedSince(t, tf, created); !reflect.DeepEqual(got, want[2:]) {
		t.Fatalf("since %d: %+v", created, got)
	}
	// Not past upto.
	recs, ok := tf.f.feed.since(tf.f.state.Load(), 0, created)
	if !ok || !reflect.DeepEqual(recs, want[:2]) {
		t.Fatalf("up to %d: %+v %v", created, recs, ok)
	}
	// Nothing asked, nothing given.
	if recs, ok := tf.f.feed.since(tf.f.state.Load(), deleted, deleted); !ok || recs != nil {
		t.Fatalf("empty range: %v %v", recs, ok)
	}
}

// TestEntryFeedTruncation: once the feed dropped a change after `after`,
// since refuses; from the last dropped index on it answers.
func TestEntryFeedTruncation(t *testing.T) {
	tf := newTestFSM(t)
	tf.f.feed.resize(3)
	for _, id := range []string{"a", "b", "c", "d"} {
		tf.batch(createEntries(entry(id, "spiffe://example.org/"+id, "spiffe://example.org/agent")))
	}
	gen := tf.f.state.Load()
	if _, ok := tf.f.feed.since(gen, 0, tf.index); ok {
		t.Fatal("since 0 answered after a drop")
	}
	if _, ok := tf.f.feed.since(gen, tf.index-4, tf.index); ok {
		t.Fatal("since before the first create answered after a drop")
	}
	recs, ok := tf.f.feed.since(gen, tf.index-3, tf.index)
	if !ok || len(recs) != 3 || recs[0].ID != "b" || recs[2].ID != "d" {
		t.Fatalf("since the dropped one: %+v %v", recs, ok)
	}
	// A command of two changes (e, f at one index), then another: d and
	// e are dropped, f stays, so that index is incomplete.
	tf.batch(createEntries(entry("e", "spiffe://example.org/e", "spiffe://example.org/agent"),
		entry("f", "spiffe://example.org/f", "spiffe://example.org/agent")))
	if recs, ok := tf.f.feed.since(gen, tf.index-2, tf.index); !ok || len(recs) != 3 {
		t.Fatalf("since before e and f: %+v %v", recs, ok)
	}
	tf.batch(createEntries(entry("g", "spiffe://example.org/g", "spiffe://example.org/agent"),
		entry("h", "spiffe://example.org/h", "spiffe://example.org/agent")))
	if _, ok := tf.f.feed.since(gen, tf.index-2, tf.index); ok {
		t.Fatal("answered across a partly dropped command")
	}
	if recs, ok := tf.f.feed.since(gen, tf.index-1, tf.index); !ok || len(recs) != 2 || recs[0].ID != "g" {
		t.Fatalf("since the partly dropped command: %+v %v", recs, ok)
	}
	// Growing keeps what is there.
	tf.f.feed.resize(0)
	if recs, ok := tf.f.feed.since(gen, tf.index-1, tf.index); !ok || len(recs) != 2 {
		t.Fatalf("after resize: %+v %v", recs, ok)
	}
}

// TestEntryFeedRestore: a snapshot restore starts a new generation; the
// old one gets no answer, the new one answers from the restored index.
func TestEntryFeedRestore(t *testing.T) {
	tf := newTestFSM(t)
	tf.batch(createEntries(entry("a", "spiffe://example.org/a", "spiffe://example.org/agent")))
	old := tf.f.state.Load()
	var framed bytes.Buffer
	if err := writeSnapshot(&framed, old.db.Txn(false), tf.index); err != nil {
		t.Fatal(err)
	}
	restoredAt := tf.index
	tf.batch(createEntries(entry("b", "spiffe://example.org/b", "spiffe://example.org/agent")))
	if err := tf.f.Restore(io.NopCloser(&framed)); err != nil {
		t.Fatal(err)
	}
	gen := tf.f.state.Load()
	if gen == old {
		t.Fatal("no new generation")
	}
	tf.index = restoredAt // the log goes on from the snapshot
	tf.batch(createEntries(entry("c", "spiffe://example.org/c", "spiffe://example.org/agent")))
	if _, ok := tf.f.feed.since(old, restoredAt, tf.index); ok {
		t.Fatal("old generation answered")
	}
	recs, ok := tf.f.feed.since(gen, restoredAt, tf.index)
	if !ok || len(recs) != 1 || recs[0].ID != "c" {
		t.Fatalf("new generation: %+v %v", recs, ok)
	}
}

// TestAuthorizationRoots: the agent's ID and its node aliases' SPIFFE
// IDs, nothing else; banned and unknown agents fail like
// AuthorizedEntries.
func TestAuthorizationRoots(t *testing.T) {
	tf := newTestFSM(t)
	serversID := registration.ServersID(td).String()
	agent := "spiffe://example.org/sigil/agent/join_token/" + "0123456789abcdef0123456789abcdef"
	tf.single(createJoinToken(tokenHash("t"), t0.Add(time.Hour)))
	if tf.single(attestNode(agent, tokenHash("t"), sel("join_token", "x"), sel("k", "y"))) != codes.OK {
		t.Fatal("attest")
	}
	tf.batch(createEntries(
		entry("al1", "spiffe://example.org/alias1", serversID, sel("join_token", "x")),
		entry("al2", "spiffe://example.org/alias2", serversID, sel("join_token", "x"), sel("k", "z")),
		entry("al3", "spiffe://example.org/alias3", serversID, sel("k", "y"), sel("join_token", "x")),
		entry("w", "spiffe://example.org/w", agent, sel("join_token", "x")),
	))
	r := tf.f.reader()
	roots, node, err := r.AuthorizationRoots(agent)
	if err != nil || node.SpiffeId != agent {
		t.Fatal(node, err)
	}
	slices.Sort(roots[1:])
	if want := []string{agent, "spiffe://example.org/alias1", "spiffe://example.org/alias3"}; !slices.Equal(roots, want) {
		t.Fatalf("roots %v, want %v", roots, want)
	}
	if _, _, err := r.AuthorizationRoots("spiffe://example.org/sigil/agent/join_token/unknown"); err == nil {
		t.Fatal("unknown agent")
	}
	tf.single(banNode(agent))
	if _, _, err := tf.f.reader().AuthorizationRoots(agent); err == nil {
		t.Fatal("banned agent")
	}
}

// TestEntryFeedWatch: the feed's channel closes when entry changes are
// recorded, not on other commands; pending says whether recorded changes
// lie beyond an index.
func TestEntryFeedWatch(t *testing.T) {
	tf := newTestFSM(t)
	gen := tf.f.state.Load()
	ch, pending := tf.f.feed.watch(gen, tf.index)
	if pending {
		t.Fatal("pending on an empty feed")
	}
	tf.single(createJoinToken(tokenHash("t"), t0.Add(time.Hour)))
	select {
	case <-ch:
		t.Fatal("closed by a command that changed no entry")
	default:
	}
	tf.batch(createEntries(entry("a", "spiffe://example.org/a", "spiffe://example.org/agent")))
	select {
	case <-ch:
	default:
		t.Fatal("not closed by an entry change")
	}
	if _, pending := tf.f.feed.watch(gen, tf.index-1); !pending {
		t.Fatal("a change above the index is not pending")
	}
	if _, pending := tf.f.feed.watch(gen, tf.index); pending {
		t.Fatal("pending at the last index")
	}
	if _, pending := tf.f.feed.watch(&dbState{}, 0); pending {
		t.Fatal("pending for another generation")
	}
}
