package server

import (
	"bytes"
	"context"
	"math/rand/v2"
	"strconv"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

func randomSyncEntry(rng *rand.Rand, i int) *sigilv1.Entry {
	e := &sigilv1.Entry{
		Id:          "id-" + strconv.Itoa(i),
		SpiffeId:    "spiffe://example.org/w/" + strconv.Itoa(rng.IntN(1000)),
		ParentId:    "spiffe://example.org/sigil/agent/x",
		ModifyIndex: uint64(rng.IntN(1 << 40)),
	}
	for range rng.IntN(4) {
		e.Selectors = append(e.Selectors, &sigilv1.Selector{Type: "unix", Value: "uid:" + strconv.Itoa(rng.IntN(100))})
	}
	if rng.IntN(2) == 0 {
		e.X509SvidTtl, e.JwtSvidTtl = int32(rng.IntN(100000)), int32(rng.IntN(3))
		e.DnsNames = []string{"a.example", "b.example"}
		e.FederatesWith = []string{"other.test"}
		e.Admin, e.Downstream = rng.IntN(2) == 0, rng.IntN(2) == 0
		e.Hint, e.CreatedAt, e.Revision = "hint", int64(rng.IntN(1e9)), int64(rng.IntN(5))
	}
	return e
}

// TestSyncWireMatchesProtoMarshal: messages assembled from shared entry
// encodings are byte for byte what proto.Marshal gives for the same
// SyncResponse, and decode to it.
func TestSyncWireMatchesProtoMarshal(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 300 {
		msg := &sigilv1.SyncResponse{
			Reset_: rng.IntN(2) == 0,
			Synced: rng.IntN(2) == 0,
			Index:  uint64(rng.IntN(3)) * uint64(rng.IntN(1<<40)),
		}
		w := &syncWireBuilder{reset: msg.Reset_, synced: msg.Synced, index: msg.Index}
		for i := range rng.IntN(5) {
			e := randomSyncEntry(rng, round*10+i)
			msg.Upserted = append(msg.Upserted, e)
			b, err := proto.Marshal(e)
			if err != nil {
				t.Fatal(err)
			}
			w.addEntry(b)
		}
		for i := range rng.IntN(3) {
			id := "deleted-" + strconv.Itoa(i)
			if i == 1 {
				id = "" // an empty repeated string is still written
			}
			msg.Deleted = append(msg.Deleted, id)
			w.deleted = append(w.deleted, id)
		}
		switch rng.IntN(3) {
		case 0:
			msg.Bundle = &sigilv1.Bundle{} // present but empty
		case 1:
			msg.Bundle = &sigilv1.Bundle{TrustDomain: "example.org", SequenceNumber: 7, RefreshHint: 30,
				X509Authorities: []*sigilv1.X509Authority{{Certificate: []byte{1, 2, 3}, ServerId: "s1"}}}
		}
		if msg.Bundle != nil {
			b, _ := proto.Marshal(msg.Bundle)
			w.hasBundle, w.bundle = true, b
		}
		for range rng.IntN(3) {
			fb := &sigilv1.Bundle{TrustDomain: "other.test", SequenceNumber: uint64(rng.IntN(9))}
			msg.FederatedBundles = append(msg.FederatedBundles, fb)
			b, _ := proto.Marshal(fb)
			w.addFederated(b)
		}
		for range rng.IntN(3) {
			msg.RemovedFederatedBundles = append(msg.RemovedFederatedBundles, "gone.test")
			w.removed = append(w.removed, "gone.test")
		}
		got := w.build().b
		want, err := proto.Marshal(msg)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("round %d: wire form differs from proto.Marshal\n got %x\nwant %x", round, got, want)
		}
		if w.size() != len(want) {
			t.Fatalf("round %d: size %d, encoded %d", round, w.size(), len(want))
		}
		var back sigilv1.SyncResponse
		if err := proto.Unmarshal(got, &back); err != nil || !proto.Equal(&back, msg) {
			t.Fatalf("round %d: decodes to %v (%v), want %v", round, &back, err, msg)
		}
	}
	// The codec sends a syncWire as it is and everything else through
	// the proto codec.
	c := newSyncCodec()
	wire := &syncWire{b: []byte{8, 1}}
	bs, err := c.Marshal(wire)
	if err != nil || !bytes.Equal(bs.Materialize(), wire.b) {
		t.Fatalf("codec on a syncWire: %x %v", bs.Materialize(), err)
	}
	req := &sigilv1.Entry{Id: "x"}
	bs, err = c.Marshal(req)
	want, _ := proto.Marshal(req)
	if err != nil || !bytes.Equal(bs.Materialize(), want) {
		t.Fatalf("codec on a message: %x %v", bs.Materialize(), err)
	}
}

// TestSyncEntryWire: an entry a sync stream reads from the store is sent
// as the store's own record of it, the same bytes every time (no stream
// encodes it again), which are what proto.Marshal gives for it.
func TestSyncEntryWire(t *testing.T) {
	h := startServer(t)
	resp, err := h.admin.BatchCreateEntry(context.Background(), &sigilv1.BatchCreateEntryRequest{Entries: []*sigilv1.Entry{{
		SpiffeId: "spiffe://example.org/w", ParentId: "spiffe://example.org/sigil/agent/x",
		Selectors: []*sigilv1.Selector{{Type: "unix", Value: "uid:1"}}, DnsNames: []string{"w.example"}, Hint: "h",
	}}})
	if err != nil || resp.Results[0].Status.GetCode() != 0 {
		t.Fatalf("create: %v %v", err, resp)
	}
	id := resp.Results[0].Entry.Id
	e1, ok1 := h.srv.store.Read().SyncEntryUnwatched(id)
	e2, ok2 := h.srv.store.Read().SyncEntryUnwatched(id)
	if !ok1 || !ok2 {
		t.Fatal("entry not found")
	}
	b1, b2 := e1.Wire(), e2.Wire()
	want, _ := proto.Marshal(e1.Entry())
	if !bytes.Equal(b1, want) || &b1[0] != &b2[0] {
		t.Fatalf("wire %x, want the store's record %x, shared", b1, want)
	}
	if _, ok := h.srv.store.Read().SyncEntryUnwatched("no-such-entry"); ok {
		t.Fatal("an absent entry was found")
	}
}

// TestSyncStreamExactAcrossTruncationAndRestore: a real agent's sync
// stream, through entry changes, a truncated feed, a node alias and a
// snapshot restore, ends up holding exactly its authorized entries each
// time, and is never told to delete an entry it does not hold.
func TestSyncStreamExactAcrossTruncationAndRestore(t *testing.T) {
	h := startServer(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := h.attest()
	stream, err := a.node.Sync(ctx, &sigilv1.SyncRequest{})
	if err != nil {
		t.Fatal(err)
	}
	type msgOrErr struct {
		m   *sigilv1.SyncResponse
		err error
	}
	msgs := make(chan msgOrErr, 1024)
	go func() {
		for {
			m, err := stream.Recv()
			msgs <- msgOrErr{m, err}
			if err != nil {
				return
			}
		}
	}()
	view := map[string]uint64{}
	converge := func(what string) {
		t.Helper()
		deadline := time.After(20 * time.Second)
		for {
			want, err := h.srv.store.Read().AuthorizedEntries(a.id)
			if err != nil {
				t.Fatal(err)
			}
			same := len(want) == len(view)
			for _, e := range want {
				if view[e.Id] != e.ModifyIndex {
					same = false
				}
			}
			if same {
				return
			}
			select {
			case m := <-msgs:
				if m.err != nil {
					t.Fatalf("%s: %v", what, m.err)
				}
				if m.m.Reset_ {
					clear(view)
				}
				for _, e := range m.m.Upserted {
					view[e.Id] = e.ModifyIndex
				}
				for _, id := range m.m.Deleted {
					if _, ok := view[id]; !ok {
						t.Fatalf("%s: deleted %s, not held", what, id)
					}
					delete(view, id)
				}
			case <-deadline:
				t.Fatalf("%s: holds %v, authorized for %v", what, view, ids(want))
			}
		}
	}
	converge("first set")
	var es []*sigilv1.Entry
	for i := range 20 {
		es = append(es, &sigilv1.Entry{SpiffeId: "spiffe://example.org/s/" + strconv.Itoa(i), ParentId: a.id, Selectors: []*sigilv1.Selector{sel("unix:uid:1")}})
	}
	if _, err := h.admin.BatchCreateEntry(ctx, &sigilv1.BatchCreateEntryRequest{Entries: es}); err != nil {
		t.Fatal(err)
	}
	converge("created")
	var snap bytes.Buffer
	if _, err := h.srv.store.SaveSnapshot(ctx, &snap); err != nil {
		t.Fatal(err)
	}
	// Truncated: 2 changes kept, 10 deleted and 10 created at once.
	h.srv.store.SetEntryFeedSize(2)
	all := h.srv.store.Read().EntriesByParentID(a.id)
	var del []string
	for _, e := range all[:10] {
		del = append(del, e.Id)
	}
	if _, err := h.admin.BatchDeleteEntry(ctx, &sigilv1.BatchDeleteEntryRequest{Ids: del}); err != nil {
		t.Fatal(err)
	}
	for i := range es {
		es[i].SpiffeId += "/new"
	}
	if _, err := h.admin.BatchCreateEntry(ctx, &sigilv1.BatchCreateEntryRequest{Entries: es[:10]}); err != nil {
		t.Fatal(err)
	}
	converge("after truncation")
	h.srv.store.SetEntryFeedSize(0)
	// A node alias matching the agent's own join token selector.
	node, _ := h.srv.store.Read().Node(a.id)
	alias := h.createEntry("spiffe://example.org/alias", "spiffe://example.org/sigil/server", "join_token:"+node.Selectors[0].Value)
	under := h.createEntry("spiffe://example.org/under-alias", alias.SpiffeId, "unix:uid:2")
	converge("alias")
	if _, ok := view[under.Id]; !ok {
		t.Fatal("the entry under the node alias did not arrive")
	}
	if _, err := h.srv.store.RestoreSnapshot(ctx, &snap); err != nil {
		t.Fatal(err)
	}
	converge("restored")
	if n := len(view); n != 20 {
		t.Fatalf("after the restore the agent holds %d entries, want the snapshot's 20", n)
	}
}
