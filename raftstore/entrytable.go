package raftstore

import (
	"fmt"
	"strings"
	"sync"

	"github.com/google/btree"
	"github.com/hashicorp/go-memdb"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/registration"
)

// Registration entries are not rows of memdb. They are held in an
// entryTable: ordered, copy-on-write B-trees (github.com/google/btree)
// without watch channels, one by id and one each by (spiffe_id, id),
// (parent_id, id) and, for node aliases only, (selector, id). The whole
// table is ONE row of the memdb table "entry_set": a write transaction
// that changes entries clones the table (O(1): the trees share every node
// until one is written), changes the clone and replaces the row with it.
// So entry changes commit atomically with the other tables, a memdb read
// transaction sees one consistent version of the entries, and "the
// entries changed" is the watch channel of that row.
//
// A table stored in the row is never modified again: readers of an old
// version walk its trees while the writer changes a clone. That is
// google/btree's copy-on-write contract (nodes are shared read-only
// between a tree and its clones; a write copies every node it would
// change that its own tree did not create), which entryTable.clone keeps
// by cloning a copy of each tree header, so that not even the header of
// a published tree is written. The clones of a tree share its node free
// list, which is locked; a node goes back to it only from the tree whose
// copy-on-write context created it, a clone not yet stored, which no
// reader has seen (TestEntryTableReadersKeepTheirVersion, under -race).
//
// Per entry this costs the *sigilv1.Entry (decoded once from the log or a
// snapshot, owned by the table), one pointer in each of three trees (about
// 20 bytes each with the nodes' headers and free room), and nothing for
// strings that other entries share: parent IDs and selectors are interned
// (intern.go), so a million entries under one parent hold one copy of its
// ID.

const (
	// tableEntrySet holds the one *entryTable row, keyed entrySetKey.
	tableEntrySet = "entry_set"
	entrySetKey   = "entries"

	// entryTreeDegree is the degree of the entry B-trees: nodes of up to
	// 63 items, each a pointer.
	entryTreeDegree = 32
)

// entryTable is one version of the registration entries. A table read
// from memdb is immutable and safe for concurrent readers; only a table
// returned by clone (or newEntryTable), not yet stored, may be written, by
// one goroutine.
type entryTable struct {
	// Key is the memdb row key (entrySetKey).
	Key string

	byID     *btree.BTreeG[*sigilv1.Entry]
	bySPIFFE *btree.BTreeG[*sigilv1.Entry] // (spiffe_id, id)
	byParent *btree.BTreeG[*sigilv1.Entry] // (parent_id, id)
	byAlias  *btree.BTreeG[aliasItem]      // node aliases: ("type:value", id)

	serversID string
	// names interns the parent IDs and selectors of the entries of this
	// table and of the tables cloned from it. Only the writer uses it.
	names *interner
}

// aliasItem is one selector of one node alias (an entry parented to the
// servers ID), in the alias tree.
type aliasItem struct {
	sel string // registration.FormatSelector form
	id  string
	e   *sigilv1.Entry
}

func lessByID(a, b *sigilv1.Entry) bool { return a.Id < b.Id }

func lessBySPIFFEID(a, b *sigilv1.Entry) bool {
	if c := strings.Compare(a.SpiffeId, b.SpiffeId); c != 0 {
		return c < 0
	}
	return a.Id < b.Id
}

func lessByParentID(a, b *sigilv1.Entry) bool {
	if c := strings.Compare(a.ParentId, b.ParentId); c != 0 {
		return c < 0
	}
	return a.Id < b.Id
}

func lessAlias(a, b aliasItem) bool {
	if c := strings.Compare(a.sel, b.sel); c != 0 {
		return c < 0
	}
	return a.id < b.id
}

// newEntryTable returns an empty, writable table.
func newEntryTable(serversID string) *entryTable {
	return &entryTable{
		Key:       entrySetKey,
		byID:      btree.NewG(entryTreeDegree, lessByID),
		bySPIFFE:  btree.NewG(entryTreeDegree, lessBySPIFFEID),
		byParent:  btree.NewG(entryTreeDegree, lessByParentID),
		byAlias:   btree.NewG(entryTreeDegree, lessAlias),
		serversID: serversID,
		names:     newInterner(),
	}
}

// cloneTree is a writable clone of t that leaves t itself untouched
// (btree's Clone gives t a new copy-on-write context: done on a copy of
// its header, a published tree is not written at all).
func cloneTree[T any](t *btree.BTreeG[T]) *btree.BTreeG[T] {
	hdr := *t
	return hdr.Clone()
}

// clone returns a writable copy of t, which stays as it is.
func (t *entryTable) clone() *entryTable {
	return &entryTable{
		Key:       entrySetKey,
		byID:      cloneTree(t.byID),
		bySPIFFE:  cloneTree(t.bySPIFFE),
		byParent:  cloneTree(t.byParent),
		byAlias:   cloneTree(t.byAlias),
		serversID: t.serversID,
		names:     t.names,
	}
}

// loadEntryTable returns the entry table of txn. The row always exists
// (newMemDB and snapshot restores store one); ws, if not nil, gets its
// watch channel.
func loadEntryTable(txn *memdb.Txn, ws memdb.WatchSet) *entryTable {
	ch, raw, err := txn.FirstWatch(tableEntrySet, indexID, entrySetKey)
	if err != nil || raw == nil {
		// A database not made by newMemDB: a programming error.
		panic(fmt.Sprintf("raftstore: the entry table row is missing (%v)", err))
	}
	if ws != nil {
		ws.Add(ch)
	}
	return raw.(*entryTable)
}

// pivots holds scratch entries used as search keys, so that a lookup
// allocates nothing. A pivot is in use for the whole of one walk: a
// callback may start another lookup, which takes another pivot.
var pivots = sync.Pool{New: func() any { return new(sigilv1.Entry) }}

func getPivot(id, spiffeID, parentID string) *sigilv1.Entry {
	p := pivots.Get().(*sigilv1.Entry)
	p.Id, p.SpiffeId, p.ParentId = id, spiffeID, parentID
	return p
}

func putPivot(p *sigilv1.Entry) {
	p.Id, p.SpiffeId, p.ParentId = "", "", ""
	pivots.Put(p)
}

// len is the number of entries.
func (t *entryTable) len() int { return t.byID.Len() }

// get returns the entry with this id.
func (t *entryTable) get(id string) (*sigilv1.Entry, bool) {
	p := getPivot(id, "", "")
	defer putPivot(p)
	return t.byID.Get(p)
}

// eachBySPIFFEID calls fn with the entries whose spiffe_id is id, in id
// order, until fn returns false.
func (t *entryTable) eachBySPIFFEID(id string, fn func(*sigilv1.Entry) bool) {
	p := getPivot("", id, "")
	defer putPivot(p)
	t.bySPIFFE.AscendGreaterOrEqual(p, func(e *sigilv1.Entry) bool {
		return e.SpiffeId == id && fn(e)
	})
}

// eachByParentID calls fn with the entries whose parent_id is id, in id
// order, until fn returns false.
func (t *entryTable) eachByParentID(id string, fn func(*sigilv1.Entry) bool) {
	p := getPivot("", "", id)
	defer putPivot(p)
	t.byParent.AscendGreaterOrEqual(p, func(e *sigilv1.Entry) bool {
		return e.ParentId == id && fn(e)
	})
}

// eachBySPIFFEIDFrom is eachBySPIFFEID from the entries with an id after
// after (all of them if after is "").
func (t *entryTable) eachBySPIFFEIDFrom(id, after string, fn func(*sigilv1.Entry) bool) {
	p := getPivot(after, id, "")
	defer putPivot(p)
	t.bySPIFFE.AscendGreaterOrEqual(p, func(e *sigilv1.Entry) bool {
		if e.SpiffeId != id {
			return false
		}
		return (after != "" && e.Id == after) || fn(e)
	})
}

// eachByParentIDFrom is eachByParentID from the entries with an id after
// after (all of them if after is "").
func (t *entryTable) eachByParentIDFrom(id, after string, fn func(*sigilv1.Entry) bool) {
	p := getPivot(after, "", id)
	defer putPivot(p)
	t.byParent.AscendGreaterOrEqual(p, func(e *sigilv1.Entry) bool {
		if e.ParentId != id {
			return false
		}
		return (after != "" && e.Id == after) || fn(e)
	})
}

// eachAlias calls fn with the node aliases having the selector sel
// (registration.FormatSelector form), in id order, until fn returns false.
func (t *entryTable) eachAlias(sel string, fn func(*sigilv1.Entry) bool) {
	t.byAlias.AscendGreaterOrEqual(aliasItem{sel: sel}, func(it aliasItem) bool {
		return it.sel == sel && fn(it.e)
	})
}

// eachAfter calls fn with every entry whose id is after after (every
// entry if after is ""), in id order, until fn returns false.
func (t *entryTable) eachAfter(after string, fn func(*sigilv1.Entry) bool) {
	if after == "" {
		t.byID.Ascend(fn)
		return
	}
	p := getPivot(after, "", "")
	defer putPivot(p)
	t.byID.AscendGreaterOrEqual(p, func(e *sigilv1.Entry) bool {
		return e.Id == after || fn(e)
	})
}

// isAlias reports whether e is a node alias candidate: an entry parented
// to the servers ID.
func (t *entryTable) isAlias(e *sigilv1.Entry) bool {
	return t.serversID != "" && e.ParentId == t.serversID
}

// put stores e (a writable table only), replacing the entry with its id,
// which it returns. The table owns e from then on: its parent ID and
// selectors are replaced by their interned copies.
func (t *entryTable) put(e *sigilv1.Entry) (old *sigilv1.Entry) {
	t.names.internEntry(e)
	old, replaced := t.byID.ReplaceOrInsert(e)
	if replaced {
		t.unindex(old)
		t.names.releaseEntry(old)
	}
	t.bySPIFFE.ReplaceOrInsert(e)
	t.byParent.ReplaceOrInsert(e)
	if t.isAlias(e) {
		for _, s := range e.Selectors {
			t.byAlias.ReplaceOrInsert(aliasItem{sel: registration.FormatSelector(s), id: e.Id, e: e})
		}
	}
	return old
}

// remove deletes the entry with this id (a writable table only) and
// returns it.
func (t *entryTable) remove(id string) (old *sigilv1.Entry) {
	p := getPivot(id, "", "")
	old, ok := t.byID.Delete(p)
	putPivot(p)
	if !ok {
		return nil
	}
	t.unindex(old)
	t.names.releaseEntry(old)
	return old
}

// unindex removes old from the secondary trees.
func (t *entryTable) unindex(old *sigilv1.Entry) {
	t.bySPIFFE.Delete(old)
	t.byParent.Delete(old)
	if t.isAlias(old) {
		for _, s := range old.Selectors {
			t.byAlias.Delete(aliasItem{sel: registration.FormatSelector(s), id: old.Id})
		}
	}
}

// duplicate returns an entry of t, other than the one with e's id, with
// e's spiffe_id, parent_id and selectors (the same set: the selectors of
// a valid entry are distinct), or nil. Any such entry is both among the
// entries of e's spiffe_id and among those of e's parent_id, so the two
// ranges are walked in turn, in growing steps, and the search ends with
// the shorter one (the parent_id range is not even looked up when the
// spiffe_id is new, as it mostly is).
func (t *entryTable) duplicate(e *sigilv1.Entry) *sigilv1.Entry {
	var found *sigilv1.Entry
	check := func(x *sigilv1.Entry) bool {
		if x.Id != e.Id && sameEntryKey(x, e) {
			found = x
			return false
		}
		return true
	}
	spiffeAfter, parentAfter := "", ""
	for n := 4; ; n *= 2 {
		done, last := walkN(t.eachBySPIFFEIDFrom, e.SpiffeId, spiffeAfter, n, check)
		if found != nil || done {
			return found
		}
		spiffeAfter = last
		done, last = walkN(t.eachByParentIDFrom, e.ParentId, parentAfter, n, check)
		if found != nil || done {
			return found
		}
		parentAfter = last
	}
}

// walkN calls check with up to n entries of one range (each) after the
// id after, until check returns false. done reports that the range ended
// or check stopped it; last is the id of the last entry checked.
func walkN(each func(key, after string, fn func(*sigilv1.Entry) bool), key, after string, n int, check func(*sigilv1.Entry) bool) (done bool, last string) {
	done = true
	k := 0
	each(key, after, func(x *sigilv1.Entry) bool {
		if !check(x) {
			return false
		}
		last = x.Id
		if k++; k == n {
			done = false
			return false
		}
		return true
	})
	return done, last
}

// eachStoredEntry calls fn with every entry of txn, in id order (the
// entries of a snapshot).
func eachStoredEntry(txn *memdb.Txn, fn func(*sigilv1.Entry)) {
	loadEntryTable(txn, nil).byID.Ascend(func(e *sigilv1.Entry) bool {
		fn(e)
		return true
	})
}

// entryRestore builds the entry table of a snapshot being loaded, one
// entry at a time (each already validated), then stores it.
type entryRestore struct {
	t     *entryTable
	dupID string // the first id seen twice
}

func newEntryRestore(serversID string) *entryRestore {
	return &entryRestore{t: newEntryTable(serversID)}
}

// add adds e, which the table owns from then on.
func (r *entryRestore) add(e *sigilv1.Entry) {
	if old := r.t.put(e); old != nil && r.dupID == "" {
		r.dupID = e.Id
	}
}

// finish refuses a snapshot with an id twice or two entries with the same
// spiffe_id, parent_id and selectors, and stores the table in txn.
func (r *entryRestore) finish(txn *memdb.Txn) error {
	if r.dupID != "" {
		return errorf("snapshot: duplicate entry id %q", r.dupID)
	}
	var err error
	r.t.byID.Ascend(func(e *sigilv1.Entry) bool {
		if other := r.t.duplicate(e); other != nil {
			err = errorf("snapshot: entries %q and %q are duplicates", other.Id, e.Id)
		}
		return err == nil
	})
	if err != nil {
		return err
	}
	if err := txn.Insert(tableEntrySet, r.t); err != nil {
		return errorf("snapshot: storing the entries: %v", err)
	}
	return nil
}
