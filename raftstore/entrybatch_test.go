package raftstore

import (
	"bytes"
	"io"
	"math/rand/v2"
	"slices"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/internal/storepb"
)

// TestEntryBatchSeesItsOwnWrites: each item of a batch command is checked
// against the state the items before it left (ids created, updated and
// deleted, keys taken and freed in the same command), exactly as if each
// item were a command of its own. Random batches of creates, updates and
// deletes over a few ids and keys are applied to one FSM as batches and to
// another item by item; every item's code and the final entries agree.
func TestEntryBatchSeesItsOwnWrites(t *testing.T) {
	rng := rand.New(rand.NewPCG(15, 2))
	ids := []string{"a", "b", "c", "d", "e", "f"}
	spiffeIDs := []string{"spiffe://example.org/w1", "spiffe://example.org/w2", "spiffe://example.org/w3"}
	parents := []string{agent, alias}
	selectors := [][]*sigilv1.Selector{
		{sel("unix", "uid:1")}, {sel("unix", "uid:2")}, {sel("unix", "uid:1"), sel("unix", "uid:2")}, {sel("unix", "uid:2"), sel("unix", "uid:1")},
	}
	randomEntry := func() *sigilv1.Entry {
		return &sigilv1.Entry{
			Id: ids[rng.IntN(len(ids))], SpiffeId: spiffeIDs[rng.IntN(len(spiffeIDs))],
			ParentId: parents[rng.IntN(len(parents))], Selectors: selectors[rng.IntN(len(selectors))],
		}
	}
	batched, single := newTestFSM(t), newTestFSM(t)
	for round := 0; round < 60; round++ {
		n := 1 + rng.IntN(12)
		var items []*storepb.Command
		var cmd *storepb.Command
		switch round % 3 {
		case 0:
			var es []*sigilv1.Entry
			for range n {
				e := randomEntry()
				es = append(es, e)
				items = append(items, createEntries(proto.Clone(e).(*sigilv1.Entry)))
			}
			cmd = createEntries(es...)
		case 1:
			var es []*sigilv1.Entry
			for range n {
				e := randomEntry()
				es = append(es, e)
				items = append(items, updateEntries(proto.Clone(e).(*sigilv1.Entry)))
			}
			cmd = updateEntries(es...)
		default:
			var del []string
			for range n / 3 {
				id := ids[rng.IntN(len(ids))]
				del = append(del, id)
				items = append(items, deleteEntries(id))
			}
			cmd = deleteEntries(del...)
		}
		got := batched.batch(cmd)
		var want []codes.Code
		for _, item := range items {
			want = append(want, single.batch(item)...)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("round %d: batch codes %v, item by item %v", round, got, want)
		}
		for _, id := range ids {
			g, gerr := batched.f.reader().Entry(id)
			w, werr := single.f.reader().Entry(id)
			if (gerr == nil) != (werr == nil) {
				t.Fatalf("round %d: entry %s: batch %v, item by item %v", round, id, gerr, werr)
			}
			if gerr != nil {
				continue
			}
			if g.SpiffeId != w.SpiffeId || g.ParentId != w.ParentId || !proto.Equal(&sigilv1.Entry{Selectors: g.Selectors}, &sigilv1.Entry{Selectors: w.Selectors}) || g.Revision != w.Revision {
				t.Fatalf("round %d: entry %s: batch %v, item by item %v", round, id, g, w)
			}
		}
	}
	// The state the batches left restores to itself.
	restored := newTestFSM(t)
	if err := restored.f.Restore(io.NopCloser(bytes.NewReader(persist(t, batched.f)))); err != nil {
		t.Fatalf("restoring the batched state: %v", err)
	}
	if !bytes.Equal(snapshotBytes(t, restored.f), snapshotBytes(t, batched.f)) {
		t.Fatal("restored state differs")
	}
}
