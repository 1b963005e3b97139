package raftstore

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sort"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/internal/storepb"
	"github.com/sigil-id/sigil/registration"
)

// entryModel is the reference model of the entry table: a map by id,
// queried by scanning.
type entryModel map[string]*sigilv1.Entry

func (m entryModel) sorted(pred func(*sigilv1.Entry) bool) []string {
	var out []string
	for id, e := range m {
		if pred(e) {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
}

// duplicateOf is an entry other than e's id with e's spiffe_id, parent_id
// and selectors.
func (m entryModel) duplicateOf(e *sigilv1.Entry) bool {
	for id, x := range m {
		if id != e.Id && sameEntryKey(x, e) {
			return true
		}
	}
	return false
}

// create, update and delete apply one item as the FSM must and return
// its code.
func (m entryModel) create(e *sigilv1.Entry) codes.Code {
	if _, ok := m[e.Id]; ok || m.duplicateOf(e) {
		return codes.AlreadyExists
	}
	m[e.Id] = e
	return codes.OK
}

func (m entryModel) update(e *sigilv1.Entry) codes.Code {
	if _, ok := m[e.Id]; !ok {
		return codes.NotFound
	}
	if m.duplicateOf(e) {
		return codes.AlreadyExists
	}
	m[e.Id] = e
	return codes.OK
}

func (m entryModel) delete(id string) codes.Code {
	if _, ok := m[id]; !ok {
		return codes.NotFound
	}
	delete(m, id)
	return codes.OK
}

// authorized is AuthorizedEntries computed on the model by a plain
// breadth-first walk.
func (m entryModel) authorized(agentID string, nodeSels []*sigilv1.Selector, serversID string) []string {
	have := registration.NewSelectorSet(nodeSels)
	ids := map[string]bool{agentID: true}
	for _, e := range m {
		if e.ParentId == serversID && have.Contains(e.Selectors) {
			ids[e.SpiffeId] = true
		}
	}
	out := map[string]bool{}
	for changed := true; changed; {
		changed = false
		for id, e := range m {
			if !out[id] && ids[e.ParentId] {
				out[id] = true
				if !ids[e.SpiffeId] {
					ids[e.SpiffeId] = true
				}
				changed = true
			}
		}
	}
	var list []string
	for id := range out {
		list = append(list, id)
	}
	slices.Sort(list)
	return list
}

func entryIDs(es []*sigilv1.Entry) []string {
	out := make([]string, 0, len(es))
	for _, e := range es {
		out = append(out, e.Id)
	}
	return out
}

// TestEntryTableMatchesModel: random commands of creates, updates and
// deletes (batches with conflicts, repeats and refusals), with snapshot
// restores between them, applied to the FSM and to a map-based model.
// After every command every query agrees with the model: by id, SPIFFE
// ID, parent, alias selector, ListEntries pages under every filter,
// EntriesBySelector, AuthorizedEntries, AuthorizationRoots; the change
// feed holds exactly the command's changes; and the interned strings are
// shared and counted exactly.
func TestEntryTableMatchesModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(15, 3))
	serversID := registration.ServersID(td).String()
	other := "spiffe://example.org/sigil/agent/join_token/other"
	var ids []string
	for i := range 40 {
		ids = append(ids, fmt.Sprintf("%02x-%d", i*37%256, i))
	}
	spiffeIDs := []string{"spiffe://example.org/a", "spiffe://example.org/b", "spiffe://example.org/c",
		"spiffe://example.org/d", "spiffe://example.org/e", "spiffe://example.org/f"}
	parents := append([]string{agent, agent, other, serversID, serversID}, spiffeIDs[:4]...)
	// "uid:1" has two types: keyed by value, the interner shares one.
	selPool := [][2]string{{"unix", "uid:1"}, {"k8s", "uid:1"}, {"region", "eu"}, {"region", "us"}, {"type", "gpu"}, {"k8s", "ns:x"}}
	randomEntry := func() *sigilv1.Entry {
		e := &sigilv1.Entry{Id: ids[rng.IntN(len(ids))], SpiffeId: spiffeIDs[rng.IntN(len(spiffeIDs))],
			ParentId: parents[rng.IntN(len(parents))], X509SvidTtl: int32(rng.IntN(3)) * 3600}
		for e.ParentId == e.SpiffeId {
			e.ParentId = parents[rng.IntN(len(parents))]
		}
		for _, i := range rng.Perm(len(selPool))[:1+rng.IntN(3)] {
			e.Selectors = append(e.Selectors, sel(selPool[i][0], selPool[i][1]))
		}
		return e
	}
	nodeSels := []*sigilv1.Selector{sel("region", "eu"), sel("type", "gpu")}

	tf := newTestFSM(t)
	tf.single(attestNode(agent, "", nodeSels...))
	tf.single(attestNode(other, "", sel("region", "us")))
	model := entryModel{}
	for step := range 400 {
		var cmd *storepb.Command
		var want []codes.Code
		before := copyModel(model)
		switch k := rng.IntN(10); {
		case k < 4:
			var es []*sigilv1.Entry
			for range 1 + rng.IntN(8) {
				e := randomEntry()
				es = append(es, e)
				want = append(want, model.create(proto.Clone(e).(*sigilv1.Entry)))
			}
			cmd = createEntries(es...)
		case k < 7:
			var es []*sigilv1.Entry
			for range 1 + rng.IntN(8) {
				e := randomEntry()
				es = append(es, e)
				want = append(want, model.update(proto.Clone(e).(*sigilv1.Entry)))
			}
			cmd = updateEntries(es...)
		case k < 9:
			var del []string
			for range 1 + rng.IntN(6) {
				id := ids[rng.IntN(len(ids))]
				del = append(del, id)
				want = append(want, model.delete(id))
			}
			cmd = deleteEntries(del...)
		default:
			// Restore a snapshot of the state into a new FSM and go on
			// with it.
			restored := newTestFSM(t)
			if err := restored.f.Restore(io.NopCloser(bytes.NewReader(persist(t, tf.f)))); err != nil {
				t.Fatalf("step %d: restore: %v", step, err)
			}
			restored.index = tf.index
			tf = restored
			checkEntryTable(t, step, tf, model, agent, nodeSels)
			continue
		}
		if got := tf.batch(cmd); !slices.Equal(got, want) {
			t.Fatalf("step %d: codes %v, model %v", step, got, want)
		}
		checkEntryTable(t, step, tf, model, agent, nodeSels)
		if slices.Contains(want, codes.OK) {
			// (A command that changed nothing records nothing: after a
			// restore, the feed would not even know the generation.)
			checkFeedStep(t, step, tf, before, model)
		}
	}
	if len(model) == 0 {
		t.Fatal("the model ended empty: the test exercised little")
	}
}

// copyModel copies a model.
func copyModel(m entryModel) entryModel {
	out := make(entryModel, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// checkFeedStep checks that the feed's records of the last command are
// exactly the entries whose state changed from before to after.
func checkFeedStep(t *testing.T, step int, tf *testFSM, before, after entryModel) {
	t.Helper()
	recs, ok := tf.f.feed.since(tf.f.state.Load(), tf.index-1, tf.index)
	if !ok {
		t.Fatalf("step %d: feed incomplete", step)
	}
	got := map[string]*EntryChange{}
	for _, r := range recs {
		if got[r.ID] != nil {
			t.Fatalf("step %d: entry %s twice in the feed", step, r.ID)
		}
		got[r.ID] = r
	}
	ref := func(e *sigilv1.Entry) (bool, string, string) {
		if e == nil {
			return false, "", ""
		}
		return true, e.ParentId, e.SpiffeId
	}
	for _, id := range unionIDs(before, after) {
		b, a := before[id], after[id]
		changed := (b == nil) != (a == nil) || (b != nil && !proto.Equal(stripStored(b), stripStored(a)))
		r := got[id]
		delete(got, id)
		if !changed {
			// An update that sets the same values is still a change.
			if r != nil && (r.Before.Exists != (b != nil) || r.After.Exists != (a != nil)) {
				t.Fatalf("step %d: feed record of unchanged %s: %+v", step, id, r)
			}
			continue
		}
		if r == nil {
			t.Fatalf("step %d: change of %s not in the feed", step, id)
		}
		if ex, p, s := ref(b); r.Before.Exists != ex || r.Before.ParentID != p || r.Before.SPIFFEID != s {
			t.Fatalf("step %d: %s before %+v, model %v", step, id, r.Before, b)
		}
		if ex, p, s := ref(a); r.After.Exists != ex || r.After.ParentID != p || r.After.SPIFFEID != s {
			t.Fatalf("step %d: %s after %+v, model %v", step, id, r.After, a)
		}
	}
	if len(got) != 0 {
		t.Fatalf("step %d: feed records of entries that did not change: %v", step, got)
	}
}

func unionIDs(a, b entryModel) []string {
	set := map[string]bool{}
	for id := range a {
		set[id] = true
	}
	for id := range b {
		set[id] = true
	}
	var out []string
	for id := range set {
		out = append(out, id)
	}
	sort.Strings(out)
	return out
}

// stripStored is e without what the FSM sets (revision, indexes, times).
func stripStored(e *sigilv1.Entry) *sigilv1.Entry {
	c := proto.Clone(e).(*sigilv1.Entry)
	c.Revision, c.ModifyIndex, c.CreatedAt = 0, 0, 0
	return c
}

// checkEntryTable compares every query of a fresh Reader with the model.
func checkEntryTable(t *testing.T, step int, tf *testFSM, model entryModel, agentID string, nodeSels []*sigilv1.Selector) {
	t.Helper()
	r := tf.f.reader()
	ents := r.entriesUnwatched()
	if ents.len() != len(model) || ents.bySPIFFE.Len() != len(model) || ents.byParent.Len() != len(model) {
		t.Fatalf("step %d: table holds %d/%d/%d entries, model %d", step, ents.len(), ents.bySPIFFE.Len(), ents.byParent.Len(), len(model))
	}
	spiffeIDs, parents, sels := map[string]bool{"spiffe://example.org/none": true}, map[string]bool{"spiffe://example.org/none": true}, map[string]bool{"none:x": true}
	for id, want := range model {
		got, err := r.Entry(id)
		if err != nil {
			t.Fatalf("step %d: entry %s: %v", step, id, err)
		}
		if !proto.Equal(stripStored(got), stripStored(want)) {
			t.Fatalf("step %d: entry %s is %v, model %v", step, id, got, want)
		}
		spiffeIDs[want.SpiffeId], parents[want.ParentId] = true, true
		for _, s := range want.Selectors {
			sels[registration.FormatSelector(s)] = true
		}
	}
	if _, err := r.Entry("absent"); err == nil {
		t.Fatalf("step %d: an absent entry was found", step)
	}
	for s := range spiffeIDs {
		want := model.sorted(func(e *sigilv1.Entry) bool { return e.SpiffeId == s })
		if got := entryIDs(r.EntriesBySPIFFEID(s)); !slices.Equal(got, want) {
			t.Fatalf("step %d: by SPIFFE ID %s: %v, model %v", step, s, got, want)
		}
		var each []string
		r.EachEntryWithSPIFFEID(s, func(e *sigilv1.Entry) bool { each = append(each, e.Id); return true })
		if !slices.Equal(each, want) {
			t.Fatalf("step %d: each with SPIFFE ID %s: %v, model %v", step, s, each, want)
		}
		checkPages(t, step, r, EntryFilter{SPIFFEID: s}, model)
	}
	for p := range parents {
		want := model.sorted(func(e *sigilv1.Entry) bool { return e.ParentId == p })
		if got := entryIDs(r.EntriesByParentID(p)); !slices.Equal(got, want) {
			t.Fatalf("step %d: by parent %s: %v, model %v", step, p, got, want)
		}
		if r.HasEntryParentedTo(p) != (len(want) > 0) {
			t.Fatalf("step %d: HasEntryParentedTo(%s) is %v with %d entries", step, p, r.HasEntryParentedTo(p), len(want))
		}
		var each []string
		r.EachEntryParentedTo(p, func(e *sigilv1.Entry) bool { each = append(each, e.Id); return len(each) < 2 })
		if !slices.Equal(each, want[:min(2, len(want))]) {
			t.Fatalf("step %d: each parented to %s (stopping at 2): %v, model %v", step, p, each, want)
		}
		checkPages(t, step, r, EntryFilter{ParentID: p}, model)
		for s := range spiffeIDs {
			checkPages(t, step, r, EntryFilter{SPIFFEID: s, ParentID: p}, model)
		}
	}
	for s := range sels {
		want := model.sorted(func(e *sigilv1.Entry) bool {
			if e.ParentId != ents.serversID {
				return false
			}
			for _, x := range e.Selectors {
				if registration.FormatSelector(x) == s {
					return true
				}
			}
			return false
		})
		var got []string
		ents.eachAlias(s, func(e entryRec) bool { got = append(got, e.id()); return true })
		if !slices.Equal(got, want) {
			t.Fatalf("step %d: aliases with %s: %v, model %v", step, s, got, want)
		}
		typ, value, _ := cutSelector(s)
		selector := sel(typ, value)
		wantAll := model.sorted(matchesEntry(EntryFilter{Selectors: []*sigilv1.Selector{selector}}))
		if got := entryIDs(r.EntriesBySelector(selector)); !slices.Equal(got, wantAll) {
			t.Fatalf("step %d: by selector %s: %v, model %v", step, s, got, wantAll)
		}
		checkPages(t, step, r, EntryFilter{Selectors: []*sigilv1.Selector{selector}}, model)
	}
	checkPages(t, step, r, EntryFilter{}, model)

	got, err := r.AuthorizedEntries(agentID)
	if err != nil {
		t.Fatal(err)
	}
	if want := model.authorized(agentID, nodeSels, ents.serversID); !slices.Equal(entryIDs(got), want) {
		t.Fatalf("step %d: authorized %v, model %v", step, entryIDs(got), want)
	}
	roots, _, err := r.AuthorizationRoots(agentID)
	if err != nil {
		t.Fatal(err)
	}
	wantRoots := map[string]bool{agentID: true}
	have := registration.NewSelectorSet(nodeSels)
	for _, e := range model {
		if e.ParentId == ents.serversID && have.Contains(e.Selectors) {
			wantRoots[e.SpiffeId] = true
		}
	}
	if len(roots) != len(wantRoots) {
		t.Fatalf("step %d: roots %v, model %v", step, roots, wantRoots)
	}
	for _, x := range roots {
		if !wantRoots[x] {
			t.Fatalf("step %d: roots %v, model %v", step, roots, wantRoots)
		}
	}
	checkRecords(t, step, ents)
}

func cutSelector(s string) (string, string, bool) {
	for i := 0; i < len(s); i++ {
		if s[i] == ':' {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

// checkPages lists every page of f at several page sizes and compares
// their concatenation, and each token, with the model.
func checkPages(t *testing.T, step int, r *Reader, f EntryFilter, model entryModel) {
	t.Helper()
	want := model.sorted(matchesEntry(f))
	for _, size := range []int{1, 3, 1000} {
		var got []string
		tok := ""
		for pages := 0; ; pages++ {
			page, next, err := r.ListEntries(f, tok, size)
			if err != nil {
				t.Fatalf("step %d: list %+v: %v", step, f, err)
			}
			if len(page) > size || (next != "" && len(page) != size) {
				t.Fatalf("step %d: list %+v size %d: page of %d, next %q", step, f, size, len(page), next)
			}
			got = append(got, entryIDs(page)...)
			if next == "" {
				break
			}
			tok = next
			if pages > len(model)+1 {
				t.Fatalf("step %d: list %+v does not end", step, f)
			}
		}
		if !slices.Equal(got, want) {
			t.Fatalf("step %d: list %+v size %d: %v, model %v", step, f, size, got, want)
		}
	}
}

// checkRecords: every record of the table is the deterministic encoding
// of the entry it decodes to, its keys read in place are that entry's,
// and the secondary trees hold the same records.
func checkRecords(t *testing.T, step int, ents *entryTable) {
	t.Helper()
	ents.byID.Ascend(func(rec entryRec) bool {
		e := rec.entry()
		want, err := proto.MarshalOptions{Deterministic: true}.Marshal(e)
		if err != nil || !bytes.Equal(rec.bytes(), want) {
			t.Fatalf("step %d: record of %s is not its entry's encoding (%v)", step, e.Id, err)
		}
		if rec.id() != e.Id || rec.spiffeID() != e.SpiffeId || rec.parentID() != e.ParentId || rec.modifyIndex() != e.ModifyIndex ||
			!slices.Equal(rec.federatesWith(), e.FederatesWith) {
			t.Fatalf("step %d: keys of %s read in place differ from the entry's", step, e.Id)
		}
		var sels []string
		rec.eachSelector(func(typ, value string) bool { sels = append(sels, typ+":"+value); return true })
		for i, x := range e.Selectors {
			if i >= len(sels) || sels[i] != registration.FormatSelector(x) {
				t.Fatalf("step %d: selectors of %s read in place: %v, entry %v", step, e.Id, sels, e.Selectors)
			}
		}
		if len(sels) != len(e.Selectors) {
			t.Fatalf("step %d: selectors of %s read in place: %v, entry %v", step, e.Id, sels, e.Selectors)
		}
		for _, tr := range []interface {
			Get(entryRec) (entryRec, bool)
		}{ents.bySPIFFE, ents.byParent} {
			if got, ok := tr.Get(rec); !ok || got != rec {
				t.Fatalf("step %d: %s missing from a secondary tree", step, e.Id)
			}
		}
		return true
	})
}

// matchesEntry is f.matches for an entry of the model.
func matchesEntry(f EntryFilter) func(*sigilv1.Entry) bool {
	return func(e *sigilv1.Entry) bool {
		rec, err := encodeEntry(e)
		if err != nil {
			panic(err)
		}
		return f.matches(rec)
	}
}

// TestEntryTableReadersKeepTheirVersion: readers on old versions of the
// entry table, walking every query while the FSM commits creates,
// updates and deletes, each see exactly the version they started with,
// whole and consistent (run with -race: the writer changes clones of the
// trees the readers walk).
func TestEntryTableReadersKeepTheirVersion(t *testing.T) {
	tf := newTestFSM(t)
	createRealistic(t, tf, 0, 3000)

	// view is what one reader reads of everything.
	type view struct {
		all      []string
		bySPIFFE map[string][]string
		byParent map[string][]string
	}
	read := func(r *Reader) view {
		v := view{bySPIFFE: map[string][]string{}, byParent: map[string][]string{}}
		page, next, err := r.ListEntries(EntryFilter{}, "", 100000)
		if err != nil || next != "" {
			panic(fmt.Sprint("list: ", err, next))
		}
		for _, e := range page {
			v.all = append(v.all, e.Id+"/"+e.SpiffeId+"/"+e.ParentId)
			if got, err := r.Entry(e.Id); err != nil || !proto.Equal(got, e) {
				panic("entry by id differs from the list")
			}
		}
		for _, i := range []int{0, 1, 7, 10, 3001} {
			s := realisticEntry(i).SpiffeId
			v.bySPIFFE[s] = entryIDs(r.EntriesBySPIFFEID(s))
			p := realisticEntry(i).ParentId
			v.byParent[p] = entryIDs(r.EntriesByParentID(p))
		}
		return v
	}
	equal := func(a, b view) bool {
		if !slices.Equal(a.all, b.all) {
			return false
		}
		for k, v := range a.bySPIFFE {
			if !slices.Equal(v, b.bySPIFFE[k]) {
				return false
			}
		}
		for k, v := range a.byParent {
			if !slices.Equal(v, b.byParent[k]) {
				return false
			}
		}
		return true
	}

	stop := make(chan struct{})
	errs := make(chan error, 4)
	var wg sync.WaitGroup
	for g := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for round := 0; ; round++ {
				select {
				case <-stop:
					errs <- nil
					return
				default:
				}
				r := tf.f.reader()
				first := read(r)
				if n := len(first.all); n < 2000 || n > 4000 {
					errs <- fmt.Errorf("reader %d: a version with %d entries", g, n)
					return
				}
				for range 3 {
					if again := read(r); !equal(first, again) {
						errs <- fmt.Errorf("reader %d round %d: the version changed while it was read", g, round)
						return
					}
				}
			}
		}()
	}
	// The writer: 60 commands of creates, updates (new SPIFFE IDs and
	// parents) and deletes over the same entries the readers walk.
	for n := range 60 {
		var cmd *storepb.Command
		switch n % 3 {
		case 0:
			var es []*sigilv1.Entry
			for i := range 50 {
				es = append(es, realisticEntry(3000+n*50+i))
			}
			cmd = createEntries(es...)
		case 1:
			var es []*sigilv1.Entry
			for i := range 50 {
				e := realisticEntry(n*40 + i)
				e.SpiffeId += fmt.Sprintf("/v%d", n)
				e.ParentId = realisticEntry(n*40 + i + 1).ParentId
				es = append(es, e)
			}
			cmd = updateEntries(es...)
		default:
			var del []string
			for i := range 50 {
				del = append(del, entryIDFor(n*45+i))
			}
			cmd = deleteEntries(del...)
		}
		for i, c := range tf.batch(cmd) {
			if c != codes.OK && c != codes.NotFound {
				t.Fatalf("command %d item %d: %v", n, i, c)
			}
		}
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

// sameRecKeys is sameEntryKey for two stored entries.
func sameRecKeys(x, y entryRec) bool {
	if x.spiffeID() != y.spiffeID() || x.parentID() != y.parentID() {
		return false
	}
	type sel struct{ typ, value string }
	var ys []sel
	y.eachSelector(func(typ, value string) bool { ys = append(ys, sel{typ, value}); return true })
	n, all := 0, true
	x.eachSelector(func(typ, value string) bool {
		n++
		all = slices.Contains(ys, sel{typ, value})
		return all
	})
	return all && n == len(ys)
}

// TestRestoreFindsDuplicatesAsThePairwiseCheck: finish's one walk of the
// spiffe_id tree refuses a set of entries exactly when some two of them
// have the same spiffe_id, parent_id and set of selectors (compared pair
// by pair with sameRecKeys), and the two ids it names are such a pair.
// The entries are drawn from few spiffe_ids, parents and selectors, in
// shuffled selector order, so that long runs and near misses are common.
func TestRestoreFindsDuplicatesAsThePairwiseCheck(t *testing.T) {
	rng := rand.New(rand.NewPCG(15, 3))
	sels := []*sigilv1.Selector{
		{Type: "unix", Value: "uid:0"}, {Type: "unix", Value: "uid:1"},
		{Type: "k8s", Value: "ns:a"}, {Type: "k8s", Value: "ns:a:b"}, {Type: "k8s", Value: "ns"},
	}
	refused := 0
	for round := range 400 {
		n := 1 + rng.IntN(40)
		r := newEntryRestore("spiffe://example.org/sigil/servers")
		var recs []entryRec
		for i := range n {
			e := &sigilv1.Entry{
				Id:       fmt.Sprintf("e%03d", i),
				SpiffeId: fmt.Sprintf("spiffe://example.org/w%d", rng.IntN(3)),
				ParentId: fmt.Sprintf("spiffe://example.org/agent%d", rng.IntN(3)),
			}
			for _, j := range rng.Perm(len(sels))[:1+rng.IntN(3)] {
				e.Selectors = append(e.Selectors, sels[j])
			}
			if err := r.add(e); err != nil {
				t.Fatal(err)
			}
			rec, err := encodeEntry(e)
			if err != nil {
				t.Fatal(err)
			}
			recs = append(recs, rec)
		}
		want := false
		for i := range recs {
			for j := i + 1; j < len(recs); j++ {
				want = want || sameRecKeys(recs[i], recs[j])
			}
		}
		err := r.finish(newMemDB("spiffe://example.org/sigil/servers").Txn(true))
		if (err != nil) != want {
			t.Fatalf("round %d, %d entries: finish: %v; a duplicate pair exists: %v", round, n, err, want)
		}
		if err == nil {
			continue
		}
		refused++
		var a, b string
		if _, scanErr := fmt.Sscanf(err.Error(), "raftstore: snapshot: entries %q and %q are duplicates", &a, &b); scanErr != nil {
			t.Fatalf("round %d: %v (%v)", round, err, scanErr)
		}
		byID := func(id string) entryRec {
			for _, rec := range recs {
				if rec.id() == id {
					return rec
				}
			}
			t.Fatalf("round %d: no entry %q", round, id)
			return ""
		}
		if a == b || !sameRecKeys(byID(a), byID(b)) {
			t.Fatalf("round %d: %v, but they are not duplicates", round, err)
		}
	}
	if refused < 50 || refused > 350 {
		t.Fatalf("%d of 400 rounds had duplicates: the draw does not exercise both outcomes", refused)
	}
}
