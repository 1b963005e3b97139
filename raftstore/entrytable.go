package raftstore

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"unsafe"

	"github.com/google/btree"
	"github.com/hashicorp/go-memdb"
	"google.golang.org/protobuf/encoding/protowire"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
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
// Each entry is held once, as its record (entryRec: the entry's protobuf
// encoding in one allocation without pointers), and each tree item is
// that record's string header: 16 bytes per tree, plus the nodes' own
// headers and free room. The trees compare the keys in the records.
// Readers decode the entries they return, each into a copy of their own.

const (
	// tableEntrySet holds the one *entryTable row, keyed entrySetKey.
	tableEntrySet = "entry_set"
	entrySetKey   = "entries"

	// entryTreeDegree is the degree of the entry B-trees: nodes of up to
	// 63 items.
	entryTreeDegree = 32
)

// entryTable is one version of the registration entries. A table read
// from memdb is immutable and safe for concurrent readers; only a table
// returned by clone (or newEntryTable), not yet stored, may be written, by
// one goroutine.
type entryTable struct {
	// Key is the memdb row key (entrySetKey).
	Key string

	byID     *btree.BTreeG[entryRec]
	bySPIFFE *btree.BTreeG[entryRec]  // (spiffe_id, id)
	byParent *btree.BTreeG[entryRec]  // (parent_id, id)
	byAlias  *btree.BTreeG[aliasItem] // node aliases: ("type:value", id)

	serversID string
}

// aliasItem is one selector of one node alias (an entry parented to the
// servers ID), in the alias tree.
type aliasItem struct {
	sel string // registration.FormatSelector form
	id  string
	e   entryRec
}

func lessByID(a, b entryRec) bool { return a.id() < b.id() }

func lessBySPIFFEID(a, b entryRec) bool {
	if c := strings.Compare(a.spiffeID(), b.spiffeID()); c != 0 {
		return c < 0
	}
	return a.id() < b.id()
}

func lessByParentID(a, b entryRec) bool {
	if c := strings.Compare(a.parentID(), b.parentID()); c != 0 {
		return c < 0
	}
	return a.id() < b.id()
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

// pivots holds scratch buffers for the search keys, records of only
// the key fields, so that a lookup allocates nothing. A pivot is in use
// for the whole of one walk: a callback may start another lookup, which
// takes another pivot.
var pivots = sync.Pool{New: func() any { return new(pivot) }}

type pivot struct{ b []byte }

func getPivot(id, spiffeID, parentID string) (*pivot, entryRec) {
	p := pivots.Get().(*pivot)
	b := p.b[:0]
	for _, f := range [...]struct {
		n protowire.Number
		v string
	}{{entryFieldID, id}, {entryFieldSPIFFEID, spiffeID}, {entryFieldParentID, parentID}} {
		b = protowire.AppendTag(b, f.n, protowire.BytesType)
		b = protowire.AppendString(b, f.v)
	}
	p.b = b
	return p, entryRec(unsafe.String(unsafe.SliceData(b), len(b)))
}

func putPivot(p *pivot) {
	if cap(p.b) <= 4096 {
		pivots.Put(p)
	}
}

// len is the number of entries.
func (t *entryTable) len() int { return t.byID.Len() }

// get returns the record of the entry with this id.
func (t *entryTable) get(id string) (entryRec, bool) {
	p, k := getPivot(id, "", "")
	defer putPivot(p)
	return t.byID.Get(k)
}

// eachBySPIFFEID calls fn with the entries whose spiffe_id is id, in id
// order, until fn returns false.
func (t *entryTable) eachBySPIFFEID(id string, fn func(entryRec) bool) {
	t.eachBySPIFFEIDFrom(id, "", fn)
}

// eachByParentID calls fn with the entries whose parent_id is id, in id
// order, until fn returns false.
func (t *entryTable) eachByParentID(id string, fn func(entryRec) bool) {
	t.eachByParentIDFrom(id, "", fn)
}

// eachBySPIFFEIDFrom is eachBySPIFFEID from the entries with an id after
// after (all of them if after is "").
func (t *entryTable) eachBySPIFFEIDFrom(id, after string, fn func(entryRec) bool) {
	p, k := getPivot(after, id, "")
	defer putPivot(p)
	t.bySPIFFE.AscendGreaterOrEqual(k, func(e entryRec) bool {
		if e.spiffeID() != id {
			return false
		}
		return (after != "" && e.id() == after) || fn(e)
	})
}

// eachByParentIDFrom is eachByParentID from the entries with an id after
// after (all of them if after is "").
func (t *entryTable) eachByParentIDFrom(id, after string, fn func(entryRec) bool) {
	p, k := getPivot(after, "", id)
	defer putPivot(p)
	t.byParent.AscendGreaterOrEqual(k, func(e entryRec) bool {
		if e.parentID() != id {
			return false
		}
		return (after != "" && e.id() == after) || fn(e)
	})
}

// eachAlias calls fn with the node aliases having the selector sel
// (registration.FormatSelector form), in id order, until fn returns false.
func (t *entryTable) eachAlias(sel string, fn func(entryRec) bool) {
	t.byAlias.AscendGreaterOrEqual(aliasItem{sel: sel}, func(it aliasItem) bool {
		return it.sel == sel && fn(it.e)
	})
}

// eachAfter calls fn with every entry whose id is after after (every
// entry if after is ""), in id order, until fn returns false.
func (t *entryTable) eachAfter(after string, fn func(entryRec) bool) {
	if after == "" {
		t.byID.Ascend(fn)
		return
	}
	p, k := getPivot(after, "", "")
	defer putPivot(p)
	t.byID.AscendGreaterOrEqual(k, func(e entryRec) bool {
		return e.id() == after || fn(e)
	})
}

// isAlias reports whether an entry with this parent ID is a node alias
// candidate: an entry parented to the servers ID.
func (t *entryTable) isAlias(parentID string) bool {
	return t.serversID != "" && parentID == t.serversID
}

// put stores the entry e (a writable table only), replacing the entry
// with its id, whose record it returns ("" if there was none), and
// returns the record stored.
func (t *entryTable) put(e *sigilv1.Entry) (rec, old entryRec, err error) {
	if rec, err = encodeEntry(e); err != nil {
		return "", "", err
	}
	return rec, t.putRec(rec), nil
}

// putRec stores rec (see put) and returns the record it replaced.
func (t *entryTable) putRec(rec entryRec) (old entryRec) {
	old, replaced := t.byID.ReplaceOrInsert(rec)
	if replaced {
		t.unindex(old)
	}
	t.bySPIFFE.ReplaceOrInsert(rec)
	t.byParent.ReplaceOrInsert(rec)
	if t.isAlias(rec.parentID()) {
		id := rec.id()
		rec.eachSelector(func(typ, value string) bool {
			t.byAlias.ReplaceOrInsert(aliasItem{sel: typ + ":" + value, id: id, e: rec})
			return true
		})
	}
	return old
}

// remove deletes the entry with this id (a writable table only) and
// returns its record ("" if there was none).
func (t *entryTable) remove(id string) (old entryRec) {
	p, k := getPivot(id, "", "")
	old, ok := t.byID.Delete(k)
	putPivot(p)
	if !ok {
		return ""
	}
	t.unindex(old)
	return old
}

// unindex removes old from the secondary trees.
func (t *entryTable) unindex(old entryRec) {
	t.bySPIFFE.Delete(old)
	t.byParent.Delete(old)
	if t.isAlias(old.parentID()) {
		id := old.id()
		old.eachSelector(func(typ, value string) bool {
			t.byAlias.Delete(aliasItem{sel: typ + ":" + value, id: id})
			return true
		})
	}
}

// duplicate returns the id of an entry of t, other than the one with e's
// id, with e's spiffe_id, parent_id and selectors (the same set: the
// selectors of a valid entry are distinct), or "".
func (t *entryTable) duplicate(e *sigilv1.Entry) string {
	return t.duplicateOf(e.Id, e.SpiffeId, e.ParentId, func(x entryRec) bool { return sameRecKey(x, e) })
}

// duplicateOf returns the id of an entry other than id with spiffeID and
// parentID for which same is true, or "". Any such entry is both among
// the entries of spiffeID and among those of parentID, so the two ranges
// are walked in turn, in growing steps, and the search ends with the
// shorter one (the parent_id range is not even looked up when the
// spiffe_id is new, as it mostly is).
func (t *entryTable) duplicateOf(id, spiffeID, parentID string, same func(entryRec) bool) string {
	var found string
	check := func(x entryRec) bool {
		if x.id() != id && same(x) {
			found = x.id()
			return false
		}
		return true
	}
	spiffeAfter, parentAfter := "", ""
	for n := 4; ; n *= 2 {
		done, last := walkN(t.eachBySPIFFEIDFrom, spiffeID, spiffeAfter, n, check)
		if found != "" || done {
			return found
		}
		spiffeAfter = last
		done, last = walkN(t.eachByParentIDFrom, parentID, parentAfter, n, check)
		if found != "" || done {
			return found
		}
		parentAfter = last
	}
}

// sameRecKey is sameEntryKey for a stored entry x, read in place.
func sameRecKey(x entryRec, e *sigilv1.Entry) bool {
	if x.spiffeID() != e.SpiffeId || x.parentID() != e.ParentId {
		return false
	}
	n, all := 0, true
	x.eachSelector(func(typ, value string) bool {
		n++
		for _, y := range e.Selectors {
			if y.GetType() == typ && y.GetValue() == value {
				return true
			}
		}
		all = false
		return false
	})
	return all && n == len(e.Selectors)
}

// walkN calls check with up to n entries of one range (each) after the
// id after, until check returns false. done reports that the range ended
// or check stopped it; last is the id of the last entry checked.
func walkN(each func(key, after string, fn func(entryRec) bool), key, after string, n int, check func(entryRec) bool) (done bool, last string) {
	done = true
	k := 0
	each(key, after, func(x entryRec) bool {
		if !check(x) {
			return false
		}
		last = x.id()
		if k++; k == n {
			done = false
			return false
		}
		return true
	})
	return done, last
}

// duplicateInRun returns the ids of two entries of run, records with one
// spiffe_id, that have the same parent_id and the same selectors, or two
// empty strings. It sorts run by parent_id. The selectors are compared as
// sets, as sameEntryKey does; the entries were validated, so none repeats
// a selector. It costs O(k log k) for k entries, however many share a
// parent_id.
func duplicateInRun(run []entryRec) (string, string) {
	slices.SortFunc(run, func(a, b entryRec) int { return strings.Compare(a.parentID(), b.parentID()) })
	var seen map[string]string
	for i := 0; i < len(run); {
		j := i + 1
		for j < len(run) && run[j].parentID() == run[i].parentID() {
			j++
		}
		if j-i > 1 {
			clear(seen)
			if seen == nil {
				seen = make(map[string]string, j-i)
			}
			for _, x := range run[i:j] {
				k := selectorSetKey(x)
				if other, ok := seen[k]; ok {
					return other, x.id()
				}
				seen[k] = x.id()
			}
		}
		i = j
	}
	return "", ""
}

// selectorSetKey is a key equal for two records exactly when they have
// the same set of selectors: each selector's type and value, length
// prefixed, in sorted order.
func selectorSetKey(r entryRec) string {
	type sel struct{ typ, value string }
	var sels []sel
	r.eachSelector(func(typ, value string) bool { sels = append(sels, sel{typ, value}); return true })
	slices.SortFunc(sels, func(a, b sel) int {
		if c := strings.Compare(a.typ, b.typ); c != 0 {
			return c
		}
		return strings.Compare(a.value, b.value)
	})
	var b []byte
	for _, x := range sels {
		b = protowire.AppendString(b, x.typ)
		b = protowire.AppendString(b, x.value)
	}
	return string(b)
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

// add adds e.
func (r *entryRestore) add(e *sigilv1.Entry) error {
	_, old, err := r.t.put(e)
	if err != nil {
		return err
	}
	if old != "" && r.dupID == "" {
		r.dupID = e.Id
	}
	return nil
}

// finish refuses a snapshot with an id twice or two entries with the same
// spiffe_id, parent_id and selectors, and stores the table in txn.
//
// One walk of the spiffe_id tree finds such entries: those of one
// spiffe_id are adjacent in it, and each run of more than one is checked
// by duplicateInRun. (Looking each entry's duplicates up in the trees,
// as a write does, was about 40 % of a restore's CPU.)
func (r *entryRestore) finish(txn *memdb.Txn) error {
	if r.dupID != "" {
		return errorf("snapshot: duplicate entry id %q", r.dupID)
	}
	var (
		run []entryRec
		err error
	)
	checkRun := func() {
		if len(run) > 1 {
			if a, b := duplicateInRun(run); a != "" {
				err = errorf("snapshot: entries %q and %q are duplicates", a, b)
			}
		}
		clear(run)
		run = run[:0]
	}
	r.t.bySPIFFE.Ascend(func(rec entryRec) bool {
		if len(run) > 0 && run[0].spiffeID() != rec.spiffeID() {
			if checkRun(); err != nil {
				return false
			}
		}
		run = append(run, rec)
		return true
	})
	if err == nil {
		checkRun()
	}
	if err != nil {
		return err
	}
	if err := txn.Insert(tableEntrySet, r.t); err != nil {
		return errorf("snapshot: storing the entries: %v", err)
	}
	return nil
}
