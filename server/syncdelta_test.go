package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"

	"github.com/hashicorp/go-memdb"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/internal/storepb"
	"github.com/sigil-id/sigil/raftstore"
	"github.com/sigil-id/sigil/registration"
)

// syncModel drives syncStates of several agents against a real server's
// store, and checks after every step that what each agent was sent is
// exactly what AuthorizedEntries gives at the step's index, and that the
// step's delta was exact: nothing sent that was already held, nothing
// deleted that was not held.
type syncModel struct {
	t      *testing.T
	h      *harness
	agents []string
	states map[string]*syncState
	views  map[string]map[string]uint64 // agent -> entry id -> modify index held
	steps  int
}

var nodeSelectorPool = []string{"join_token:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "join_token:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", "join_token:cccccccccccccccccccccccccccccccc", "join_token:dddddddddddddddddddddddddddddddd"}

func newSyncModel(t *testing.T, h *harness, nAgents int) *syncModel {
	m := &syncModel{t: t, h: h, states: map[string]*syncState{}, views: map[string]map[string]uint64{}}
	for i := range nAgents {
		id := "spiffe://example.org/sigil/agent/test/n" + strconv.Itoa(i)
		m.agents = append(m.agents, id)
		m.attestNode(id, nodeSelectorPool[:2+i%3]...)
		m.states[id] = newSyncState(id, registration.ServersID(testTD).String())
		m.views[id] = map[string]uint64{}
	}
	return m
}

func (m *syncModel) apply(cmd *storepb.Command) {
	m.t.Helper()
	if _, err := m.h.srv.store.Apply(context.Background(), cmd); err != nil {
		m.t.Fatal(err)
	}
}

// attestNode (re)attests the node id with these selectors.
func (m *syncModel) attestNode(id string, sels ...string) {
	m.t.Helper()
	n := &sigilv1.AttestedNode{SpiffeId: id, AttestationType: "test"}
	for _, s := range sels {
		n.Selectors = append(n.Selectors, sel(s))
	}
	m.apply(&storepb.Command{Op: &storepb.Command_AttestNode{AttestNode: &storepb.AttestNode{Node: n}}})
}

// step steps the state of agent and checks it; it returns the delta.
func (m *syncModel) step(agent string) *syncDelta {
	m.t.Helper()
	m.steps++
	st := m.states[agent]
	r, gen := m.h.srv.store.ReadGen()
	d, err := st.step(m.h.srv.store, r, gen, testTD.Name())
	if err != nil {
		m.t.Fatalf("step of %s: %v", agent, err)
	}
	want, err := r.AuthorizedEntries(agent)
	if err != nil {
		m.t.Fatal(err)
	}
	// The state's count of held SPIFFE IDs matches what it holds.
	held := map[string]int{}
	for _, e := range want {
		held[e.SpiffeId]++
	}
	if !maps.Equal(held, st.held) {
		m.t.Fatalf("%s: held SPIFFE IDs %v, want %v", agent, st.held, held)
	}
	view := m.views[agent]
	if d.full {
		clear(view)
	}
	seen := map[string]bool{}
	wantByID := map[string]*sigilv1.Entry{}
	for _, e := range want {
		wantByID[e.Id] = e
	}
	for _, se := range d.upserted {
		e := se.Entry()
		if !bytes.Equal(se.Wire(), mustMarshal(m.t, e)) || se.ID() != e.Id || se.SPIFFEID() != e.SpiffeId || se.ModifyIndex() != e.ModifyIndex || !slices.Equal(se.FederatesWith(), e.FederatesWith) {
			m.t.Fatalf("%s: entry %s read in place differs from its decoding", agent, e.Id)
		}
		if seen[e.Id] {
			m.t.Fatalf("%s: entry %s sent twice in one delta", agent, e.Id)
		}
		seen[e.Id] = true
		if mi, ok := view[e.Id]; ok && mi == e.ModifyIndex {
			m.t.Fatalf("%s: entry %s sent again unchanged (modify index %d)", agent, e.Id, mi)
		}
		if w := wantByID[e.Id]; w == nil || !proto.Equal(w, e) {
			m.t.Fatalf("%s: sent entry %s that is not authorized as sent: %v (authorized: %v)", agent, e.Id, e, w)
		}
		view[e.Id] = e.ModifyIndex
	}
	for _, id := range d.deleted {
		if seen[id] {
			m.t.Fatalf("%s: entry %s both upserted and deleted", agent, id)
		}
		seen[id] = true
		if _, ok := view[id]; !ok {
			m.t.Fatalf("%s: deleted %s, which it did not hold", agent, id)
		}
		delete(view, id)
	}
	if len(view) != len(want) {
		m.t.Fatalf("%s at index %d: holds %d entries, authorized for %d\nholds %v\nwant %v", agent, d.index, len(view), len(want), view, ids(want))
	}
	for _, e := range want {
		if mi, ok := view[e.Id]; !ok || mi != e.ModifyIndex {
			m.t.Fatalf("%s at index %d: entry %s held at modify index %d (held: %v), authorized at %d", agent, d.index, e.Id, mi, ok, e.ModifyIndex)
		}
	}
	if !sameIndexes(st.sent, view) {
		m.t.Fatalf("%s: the state's sent map differs from what was sent", agent)
	}
	return d
}

func sameIndexes(a, b map[string]uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func mustMarshal(t testing.TB, e *sigilv1.Entry) []byte {
	t.Helper()
	b, err := proto.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// syncIDs is ids for a delta's entries.
func syncIDs(es []raftstore.SyncEntry) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.ID())
	}
	return out
}

func ids(es []*sigilv1.Entry) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.Id)
	}
	return out
}

func (m *syncModel) entries() []*sigilv1.Entry {
	r := m.h.srv.store.Read()
	var out []*sigilv1.Entry
	tok := ""
	for {
		page, next, err := r.ListEntries(raftstore.EntryFilter{}, tok, 0)
		if err != nil {
			m.t.Fatal(err)
		}
		out = append(out, page...)
		if next == "" {
			return out
		}
		tok = next
	}
}

// TestSyncStateMatchesAuthorizedEntries: random creates, updates and
// deletes (workload entries, nested entries, cycles, node aliases),
// node selector changes, several commands between steps, feed
// truncation and snapshot restores; after every step every agent holds
// exactly its authorized entries, through exact deltas.
func TestSyncStateMatchesAuthorizedEntries(t *testing.T) {
	h := startServer(t)
	ctx := context.Background()
	m := newSyncModel(t, h, 3)
	for _, a := range m.agents {
		m.step(a)
	}
	serversID := registration.ServersID(testTD).String()
	rng := rand.New(rand.NewPCG(15, 2))
	spiffe := func() string { return "spiffe://example.org/w/" + strconv.Itoa(rng.IntN(8)) }
	parent := func() string {
		switch k := rng.IntN(10); {
		case k < 4:
			return m.agents[rng.IntN(len(m.agents))]
		case k < 5:
			return serversID
		case k < 9:
			return spiffe()
		default:
			return "spiffe://example.org/elsewhere"
		}
	}
	randomEntry := func(e *sigilv1.Entry) *sigilv1.Entry {
		e.SpiffeId, e.ParentId, e.Selectors = spiffe(), parent(), nil
		if e.ParentId == serversID {
			for _, s := range nodeSelectorPool {
				if rng.IntN(2) == 0 {
					e.Selectors = append(e.Selectors, sel(s))
				}
			}
		}
		if len(e.Selectors) == 0 {
			e.Selectors = []*sigilv1.Selector{sel("unix:uid:" + strconv.Itoa(rng.IntN(1000)))}
		}
		return e
	}
	var snapshot []byte
	rounds := 200
	if testing.Short() {
		rounds = 80
	}
	for round := range rounds {
		for range 1 + rng.IntN(3) {
			all := m.entries()
			switch k := rng.IntN(20); {
			case k < 8 || len(all) < 4:
				var es []*sigilv1.Entry
				for range 1 + rng.IntN(4) {
					es = append(es, randomEntry(&sigilv1.Entry{}))
				}
				if _, err := h.admin.BatchCreateEntry(ctx, &sigilv1.BatchCreateEntryRequest{Entries: es}); err != nil {
					t.Fatal(err)
				}
			case k < 13:
				var es []*sigilv1.Entry
				for range 1 + rng.IntN(2) {
					e := proto.Clone(all[rng.IntN(len(all))]).(*sigilv1.Entry)
					switch rng.IntN(3) {
					case 0:
						e.X509SvidTtl++ // same place, new version
					default:
						randomEntry(e)
					}
					es = append(es, e)
				}
				if _, err := h.admin.BatchUpdateEntry(ctx, &sigilv1.BatchUpdateEntryRequest{Entries: es}); err != nil {
					t.Fatal(err)
				}
			case k < 17:
				var del []string
				for range 1 + rng.IntN(2) {
					del = append(del, all[rng.IntN(len(all))].Id)
				}
				if _, err := h.admin.BatchDeleteEntry(ctx, &sigilv1.BatchDeleteEntryRequest{Ids: del}); err != nil {
					t.Fatal(err)
				}
			case k < 18:
				var sels []string
				for _, s := range nodeSelectorPool {
					if rng.IntN(2) == 0 {
						sels = append(sels, s)
					}
				}
				m.attestNode(m.agents[rng.IntN(len(m.agents))], sels...)
			case k < 19:
				// A renewal: the node row changes, its selectors do not.
				m.apply(&storepb.Command{Op: &storepb.Command_UpdateNode{UpdateNode: &storepb.UpdateNode{
					SpiffeId: m.agents[rng.IntN(len(m.agents))], CertSerial: strconv.Itoa(round)}}})
			default:
				if snapshot == nil || rng.IntN(2) == 0 {
					var buf bytes.Buffer
					if _, err := h.srv.store.SaveSnapshot(ctx, &buf); err != nil {
						t.Fatal(err)
					}
					snapshot = buf.Bytes()
				} else {
					if _, err := h.srv.store.RestoreSnapshot(ctx, bytes.NewReader(snapshot)); err != nil {
						t.Fatal(err)
					}
				}
			}
		}
		if rng.IntN(12) == 0 {
			// Truncate the feed below what the agents have read.
			h.srv.store.SetEntryFeedSize(1)
			h.srv.store.SetEntryFeedSize(0)
		}
		for _, a := range m.agents {
			if rng.IntN(4) != 0 { // sometimes let changes pile up
				m.step(a)
			}
		}
	}
	for _, a := range m.agents {
		m.step(a)
	}
	full, fromFeed := 0, 0
	for _, st := range m.states {
		full += st.fullRecomputes
		fromFeed += st.fromFeed
	}
	t.Logf("%d steps: %d from the feed, %d full recomputes; %d entries", m.steps, fromFeed, full, len(m.entries()))
	if full < 10 || fromFeed < 50 {
		t.Fatalf("both ways should be exercised: %d from the feed, %d recomputes", fromFeed, full)
	}

	// A banned agent's next step fails.
	m.apply(&storepb.Command{Op: &storepb.Command_BanNode{BanNode: &storepb.BanNode{SpiffeId: m.agents[0]}}})
	r, gen := h.srv.store.ReadGen()
	if _, err := m.states[m.agents[0]].step(h.srv.store, r, gen, testTD.Name()); !errors.Is(err, raftstore.ErrBanned) {
		t.Fatalf("step after ban: %v", err)
	}
	m.step(m.agents[1])
}

// TestSyncStateRecomputesOnlyWhenNeeded: each kind of change either is
// applied from the feed or recomputes everything, as documented on
// syncState; the deltas are exact either way (checked by step).
func TestSyncStateRecomputesOnlyWhenNeeded(t *testing.T) {
	h := startServer(t)
	ctx := context.Background()
	m := newSyncModel(t, h, 2)
	a, b := m.agents[0], m.agents[1] // node selectors: a has the first two of the pool, b the first three
	st := m.states[a]
	serversID := registration.ServersID(testTD).String()
	create := func(spiffeID, parentID string, sels ...string) *sigilv1.Entry {
		t.Helper()
		e := &sigilv1.Entry{SpiffeId: spiffeID, ParentId: parentID}
		for _, s := range sels {
			e.Selectors = append(e.Selectors, sel(s))
		}
		resp, err := h.admin.BatchCreateEntry(ctx, &sigilv1.BatchCreateEntryRequest{Entries: []*sigilv1.Entry{e}})
		if err != nil || resp.Results[0].Status.Code != 0 {
			t.Fatalf("create: %v %v", resp, err)
		}
		return resp.Results[0].Entry
	}
	update := func(e *sigilv1.Entry) *sigilv1.Entry {
		t.Helper()
		resp, err := h.admin.BatchUpdateEntry(ctx, &sigilv1.BatchUpdateEntryRequest{Entries: []*sigilv1.Entry{e}})
		if err != nil || resp.Results[0].Status.Code != 0 {
			t.Fatalf("update: %v %v", resp, err)
		}
		return resp.Results[0].Entry
	}
	del := func(id string) {
		t.Helper()
		resp, err := h.admin.BatchDeleteEntry(ctx, &sigilv1.BatchDeleteEntryRequest{Ids: []string{id}})
		if err != nil || resp.Results[0].Status.Code != 0 {
			t.Fatalf("delete: %v %v", resp, err)
		}
	}
	expect := func(what string, recompute bool, upserted, deleted []string) {
		t.Helper()
		before := st.fullRecomputes
		d := m.step(a)
		m.step(b)
		if got := st.fullRecomputes > before; got != recompute {
			t.Fatalf("%s: recomputed %v, want %v", what, got, recompute)
		}
		if got := syncIDs(d.upserted); !slices.Equal(sorted(got), sorted(upserted)) {
			t.Fatalf("%s: upserted %v, want %v", what, got, upserted)
		}
		if !slices.Equal(sorted(d.deleted), sorted(deleted)) {
			t.Fatalf("%s: deleted %v, want %v", what, d.deleted, deleted)
		}
	}
	m.step(a)
	m.step(b)

	w := create("spiffe://example.org/w", a, "unix:uid:1")
	expect("create", false, []string{w.Id}, nil)
	w.Hint = "new"
	w = update(w)
	expect("update", false, []string{w.Id}, nil)
	other := create("spiffe://example.org/other", b, "unix:uid:1")
	expect("another agent's entry", false, nil, nil)
	other.ParentId = a
	other = update(other)
	expect("moved to this agent", false, []string{other.Id}, nil)
	other.ParentId = b
	update(other)
	expect("moved away", false, nil, []string{other.Id})

	// Nested: an entry parented to w's SPIFFE ID; then one parented to it.
	n1 := create("spiffe://example.org/n1", w.SpiffeId, "unix:uid:2")
	expect("nested create", false, []string{n1.Id}, nil)
	n2 := create("spiffe://example.org/n2", n1.SpiffeId, "unix:uid:3")
	expect("nested twice", false, []string{n2.Id}, nil)
	// Changing w, which has children, recomputes (they might go).
	w.Hint = "newer"
	w = update(w)
	expect("parent of nested entries updated", true, []string{w.Id}, nil)
	// An entry whose SPIFFE ID already has children brings them along.
	del(w.Id)
	expect("parent of nested entries deleted", true, nil, []string{w.Id, n1.Id, n2.Id})
	w2 := create("spiffe://example.org/w", a, "unix:uid:4")
	expect("parent of nested entries back", false, []string{w2.Id, n1.Id, n2.Id}, nil)

	// Node aliases.
	alias := create("spiffe://example.org/alias", serversID, "join_token:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")
	expect("alias created", true, nil, nil)
	aw := create("spiffe://example.org/aw", alias.SpiffeId, "unix:uid:5")
	expect("entry under the alias", false, []string{aw.Id}, nil)
	notAlias := create("spiffe://example.org/notalias", serversID, "join_token:cccccccccccccccccccccccccccccccc")
	expect("an alias of another node", false, nil, nil)
	nw := create("spiffe://example.org/nw", notAlias.SpiffeId, "unix:uid:6")
	expect("entry under another node's alias", false, nil, nil)
	notAlias.Selectors = []*sigilv1.Selector{sel("join_token:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb")}
	update(notAlias)
	expect("alias now matching", true, []string{nw.Id}, nil)
	del(alias.Id)
	expect("alias deleted", true, nil, []string{aw.Id})

	// Node selectors.
	m.attestNode(a, "join_token:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")
	expect("node selectors changed", true, nil, []string{nw.Id})
	m.apply(&storepb.Command{Op: &storepb.Command_UpdateNode{UpdateNode: &storepb.UpdateNode{SpiffeId: a, CertSerial: "2"}}})
	expect("node renewed", false, nil, nil)

	// Truncation of the feed.
	h.srv.store.SetEntryFeedSize(2)
	var many []*sigilv1.Entry
	for i := range 5 {
		many = append(many, &sigilv1.Entry{SpiffeId: fmt.Sprintf("spiffe://example.org/m%d", i), ParentId: a, Selectors: []*sigilv1.Selector{sel("unix:uid:7")}})
	}
	resp, err := h.admin.BatchCreateEntry(ctx, &sigilv1.BatchCreateEntryRequest{Entries: many})
	if err != nil {
		t.Fatal(err)
	}
	expect("feed truncated", true, ids(resultEntries(resp.Results)), nil)
	h.srv.store.SetEntryFeedSize(0)

	// Snapshot restore: back to a state without the last entry.
	var snap bytes.Buffer
	if _, err := h.srv.store.SaveSnapshot(ctx, &snap); err != nil {
		t.Fatal(err)
	}
	last := create("spiffe://example.org/last", a, "unix:uid:8")
	expect("create", false, []string{last.Id}, nil)
	if _, err := h.srv.store.RestoreSnapshot(ctx, &snap); err != nil {
		t.Fatal(err)
	}
	expect("snapshot restored", true, nil, []string{last.Id})
	after := create("spiffe://example.org/after", a, "unix:uid:9")
	expect("create after restore", false, []string{after.Id}, nil)
}

func resultEntries(rs []*sigilv1.EntryResult) []*sigilv1.Entry {
	var out []*sigilv1.Entry
	for _, r := range rs {
		out = append(out, r.Entry)
	}
	return out
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// fired reports whether any channel of ws is closed.
func fired(ws memdb.WatchSet) bool {
	for ch := range ws {
		select {
		case <-ch:
			return true
		default:
		}
	}
	return false
}

// TestSyncWatchWakesOnlyForWhatMatters: a sync stream sleeps through
// commands that change nothing it sends (another node's attestation or
// renewal, join tokens), and wakes for entry changes, its own node's
// changes, bundle changes and snapshot restores.
func TestSyncWatchWakesOnlyForWhatMatters(t *testing.T) {
	h := startServer(t)
	ctx := context.Background()
	m := newSyncModel(t, h, 2)
	a, b := m.agents[0], m.agents[1]
	watch := func() memdb.WatchSet {
		t.Helper()
		m.step(a)
		r, gen := h.srv.store.ReadGen()
		ws, pending := h.srv.store.SyncWatch(r, gen, a, m.states[a].federatedWatched())
		if pending || fired(ws) {
			t.Fatalf("fired at once (pending %v)", pending)
		}
		return ws
	}
	ws := watch()
	m.attestNode(b, nodeSelectorPool[0])
	m.apply(&storepb.Command{Op: &storepb.Command_UpdateNode{UpdateNode: &storepb.UpdateNode{SpiffeId: b, CertSerial: "9"}}})
	if _, err := h.admin.CreateJoinToken(ctx, &sigilv1.CreateJoinTokenRequest{}); err != nil {
		t.Fatal(err)
	}
	if fired(ws) {
		t.Fatal("woken by changes that do not concern the agent")
	}
	if _, err := h.admin.BatchCreateEntry(ctx, &sigilv1.BatchCreateEntryRequest{Entries: []*sigilv1.Entry{
		{SpiffeId: "spiffe://example.org/x", ParentId: b, Selectors: []*sigilv1.Selector{sel("unix:uid:1")}}}}); err != nil {
		t.Fatal(err)
	}
	if !fired(ws) {
		t.Fatal("not woken by an entry change")
	}
	ws = watch()
	m.apply(&storepb.Command{Op: &storepb.Command_UpdateNode{UpdateNode: &storepb.UpdateNode{SpiffeId: a, CertSerial: "9"}}})
	if !fired(ws) {
		t.Fatal("not woken by its node's change")
	}
	ws = watch()
	der, _ := testCA(t, "extra CA")
	m.apply(&storepb.Command{Op: &storepb.Command_PutX509Authority{PutX509Authority: &storepb.PutX509Authority{
		TrustDomain: testTD.Name(), Authority: &sigilv1.X509Authority{Certificate: der, ServerId: "extra"}}}})
	if !fired(ws) {
		t.Fatal("not woken by a bundle change")
	}
	if d := m.step(a); d.bundle == nil {
		t.Fatal("the changed bundle is not sent")
	}
	ws = watch()
	var snap bytes.Buffer
	if _, err := h.srv.store.SaveSnapshot(ctx, &snap); err != nil {
		t.Fatal(err)
	}
	if _, err := h.srv.store.RestoreSnapshot(ctx, &snap); err != nil {
		t.Fatal(err)
	}
	if !fired(ws) {
		t.Fatal("not woken by a snapshot restore")
	}
	watch()
}
