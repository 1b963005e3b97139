package raftstore

import (
	"fmt"
	"sort"
	"strings"
	"sync"

	"github.com/hashicorp/go-memdb"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/registration"
)

// DefaultEntryFeedSize is how many entry changes the entry change feed
// keeps by default: more than one 10,000-entry admin batch.
const DefaultEntryFeedSize = 1 << 14

// EntryChange is one change of one registration entry, as recorded by the
// entry change feed: the entry's state before and after the command at
// Index. Before.Exists is false for a creation, After.Exists false for a
// deletion. Several commands may change the same entry; a command's own
// repeated changes of one entry are collapsed into one.
type EntryChange struct {
	Index  uint64
	ID     string
	Before EntryRef
	After  EntryRef
}

// EntryRef is what the change feed keeps of one version of an entry: what
// deciding which agents it reaches needs, not the entry itself (read it
// from a Reader).
type EntryRef struct {
	Exists   bool
	ParentID string
	SPIFFEID string
	// Selectors are the entry's selectors ("type:value"), kept only when
	// the entry is parented to the servers ID (a node alias candidate).
	Selectors []string
	// FederatesWith is the entry's federates_with.
	FederatesWith []string
}

// FeedGen identifies one generation of the state: a snapshot restore
// starts a new one, and the change feed does not span generations.
type FeedGen struct{ st *dbState }

// entryFeed is a bounded, in-order record of entry changes (the entry
// change feed). The FSM appends to it inside Apply, before the command's
// transaction commits, so every change a Reader can see is already in the
// feed (or was dropped from it, which raises base).
type entryFeed struct {
	mu   sync.RWMutex
	gen  *dbState
	size int            // capacity; 0 means DefaultEntryFeedSize
	base uint64         // every change with an index above base is in recs
	recs []*EntryChange // records are never modified once pushed
	head int            // index in recs of the oldest record once recs is full

	// notify is closed (and replaced) when a command records entry
	// changes; last is that command's index.
	notify chan struct{}
	last   uint64

	trim feedTrim // dropping the records once quiet (feedtrim.go)
}

// recordEntryChanges appends the entry changes of the command at index
// (applier.entryChanges) to the feed. It is called by Apply for every
// command that commits, just before the commit.
func (f *fsm) recordEntryChanges(st *dbState, index uint64, changes []entryChange) {
	f.feed.record(st, index, f.lastIndex.Load(), f.serversID, changes)
}

func (q *entryFeed) record(st *dbState, index, prevIndex uint64, serversID string, changes []entryChange) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.gen != st {
		// First command of this state generation: nothing changed between
		// the last applied index and this one.
		q.gen, q.base, q.recs, q.head, q.last = st, prevIndex, nil, 0, 0
	}
	pushed := false
	for _, c := range changes {
		if c.id == "" {
			continue // written again later in the command
		}
		q.push(&EntryChange{Index: index, ID: c.id, Before: entryRefOf(c.before, serversID), After: entryRefOf(c.after, serversID)})
		pushed = true
	}
	if pushed {
		q.last = index
		q.pushed()
		if q.notify != nil {
			close(q.notify)
			q.notify = nil
		}
	}
}

// entryRefOf is the reference of the entry of row. Its strings share
// row's memory, which the feed keeps only as long as its records.
func entryRefOf(row entryRec, serversID string) EntryRef {
	if row == "" {
		return EntryRef{}
	}
	ref := EntryRef{Exists: true, ParentID: row.parentID(), SPIFFEID: row.spiffeID(), FederatesWith: row.federatesWith()}
	if ref.ParentID == serversID {
		row.eachSelector(func(typ, value string) bool {
			ref.Selectors = append(ref.Selectors, typ+":"+value)
			return true
		})
	}
	return ref
}

func (q *entryFeed) capacity() int {
	if q.size <= 0 {
		return DefaultEntryFeedSize
	}
	return q.size
}

// push appends ch, dropping the oldest record when full.
func (q *entryFeed) push(ch *EntryChange) {
	if len(q.recs) < q.capacity() {
		q.recs = append(q.recs, ch)
		return
	}
	old := q.recs[q.head]
	if old.Index > q.base {
		q.base = old.Index // the changes at old.Index are no longer all here
	}
	q.recs[q.head] = ch
	q.head = (q.head + 1) % len(q.recs)
}

// at returns the i-th oldest record.
func (q *entryFeed) at(i int) *EntryChange {
	return q.recs[(q.head+i)%len(q.recs)]
}

// since returns the changes with after < Index <= upto in gen, oldest
// first, or false when the feed no longer has them all.
func (q *entryFeed) since(gen *dbState, after, upto uint64) ([]*EntryChange, bool) {
	if upto <= after {
		return nil, upto == after
	}
	q.mu.RLock()
	defer q.mu.RUnlock()
	if q.gen != gen || after < q.base {
		return nil, false
	}
	n := len(q.recs)
	first := sort.Search(n, func(i int) bool { return q.at(i).Index > after })
	var out []*EntryChange
	for i := first; i < n; i++ {
		c := q.at(i)
		if c.Index > upto {
			break
		}
		out = append(out, c)
	}
	return out, true
}

// resize sets the capacity, dropping what no longer fits (oldest first).
func (q *entryFeed) resize(n int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	old := make([]*EntryChange, 0, len(q.recs))
	for i := range q.recs {
		old = append(old, q.at(i))
	}
	q.size, q.recs, q.head = n, nil, 0
	for _, c := range old {
		q.push(c)
	}
}

// SetEntryFeedSize sets how many entry changes the change feed keeps
// (n <= 0 means DefaultEntryFeedSize). A reader that falls further behind
// than that gets false from EntryChangesSince and must recompute.
func (s *Store) SetEntryFeedSize(n int) { s.fsm.feed.resize(n) }

// ReadGen is Read plus the generation the Reader's state belongs to, for
// EntryChangesSince.
func (s *Store) ReadGen() (*Reader, FeedGen) {
	st := s.fsm.state.Load()
	ws := memdb.NewWatchSet()
	ws.Add(st.abandon)
	return &Reader{txn: st.db.Txn(false), ws: ws, td: s.fsm.td}, FeedGen{st}
}

// EntryChangesSince returns the entry changes with after < Index <= upto
// of generation gen, oldest first. The changes are shared: the caller
// must not modify them. upto must be the Index of a Reader of
// gen (from ReadGen): the feed then holds every change up to it. It
// returns false when it cannot give them all: the feed dropped some
// (more than its size happened since after, or the feed, quiet for
// feedQuiet, dropped its records: feedtrim.go), or the state was replaced
// by a snapshot. The caller must then recompute from a Reader.
func (s *Store) EntryChangesSince(gen FeedGen, after, upto uint64) ([]*EntryChange, bool) {
	return s.fsm.feed.since(gen.st, after, upto)
}

// watch returns a channel closed when entry changes are next recorded,
// and whether changes of gen above index are already recorded.
func (q *entryFeed) watch(gen *dbState, index uint64) (<-chan struct{}, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.notify == nil {
		q.notify = make(chan struct{})
	}
	return q.notify, q.gen == gen && q.last > index
}

// SyncWatch returns a WatchSet that fires when what a sync stream of
// agentID computed from r (of generation gen) may have changed: an entry
// change is recorded in the change feed, the agent's node changes, the
// bundle of r's trust domain or of one of federated changes (or
// appears), or the state is replaced by a snapshot. pending is true when
// entry changes after r's index are already recorded but r does not see
// them: the caller must not wait on the WatchSet (those changes do not
// fire it) but read again once they are committed (Changed).
func (s *Store) SyncWatch(r *Reader, gen FeedGen, agentID string, federated []string) (ws memdb.WatchSet, pending bool) {
	ws = memdb.NewWatchSet()
	ws.Add(gen.st.abandon)
	feedCh, pending := s.fsm.feed.watch(gen.st, r.Index())
	ws.Add(feedCh)
	add := func(table, id string) {
		if ch, _, err := r.txn.FirstWatch(table, indexID, id); err == nil {
			ws.Add(ch)
		}
	}
	add(tableNodes, agentID)
	add(tableBundles, r.td.Name())
	for _, td := range federated {
		add(tableBundles, td)
	}
	return ws, pending
}

// AuthorizationRoots returns the IDs whose entries the agent agentID is
// authorized for directly (see AuthorizedEntries): the agent's own ID and
// the SPIFFE IDs of its node aliases, and the agent's node. It fails like
// AuthorizedEntries for an unknown or banned agent. Nothing is watched.
func (r *Reader) AuthorizationRoots(agentID string) ([]string, *sigilv1.AttestedNode, error) {
	node, err := r.Node(agentID)
	if err != nil {
		return nil, nil, err
	}
	if node.Banned {
		return nil, node, fmt.Errorf("agent %q: %w", agentID, ErrBanned)
	}
	serversID := registration.ServersID(r.td).String()
	roots := []string{agentID}
	seen := map[string]bool{agentID: true}
	nodeSels := registration.NewSelectorSet(node.Selectors)
	ents := r.entriesUnwatched()
	for _, s := range node.Selectors {
		ents.eachAlias(registration.FormatSelector(s), func(row entryRec) bool {
			id := row.spiffeID()
			if row.parentID() != serversID || seen[id] {
				return true
			}
			if row.selectorsIn(nodeSels) {
				id = strings.Clone(id)
				seen[id] = true
				roots = append(roots, id)
			}
			return true
		})
	}
	return roots, node, nil
}

// EachEntryParentedTo calls fn with every entry parented to id, in id
// order, until fn returns false. Nothing is watched.
func (r *Reader) EachEntryParentedTo(id string, fn func(*sigilv1.Entry) bool) {
	r.entriesUnwatched().eachByParentID(id, func(rec entryRec) bool { return fn(rec.entry()) })
}

// SyncEntry is a stored entry as a sync stream reads it: the store's
// record of the entry, with its fields read in place. The strings it
// returns share the record's memory, so keeping one keeps the record
// (a deleted entry's included) until it is dropped. The zero value is no
// entry.
type SyncEntry struct{ rec entryRec }

// NewSyncEntry returns the SyncEntry of e as the store would hold it (for
// tests of sync streams).
func NewSyncEntry(e *sigilv1.Entry) (SyncEntry, error) {
	rec, err := encodeEntry(e)
	return SyncEntry{rec}, err
}

// ID is the entry's id.
func (e SyncEntry) ID() string { return e.rec.id() }

// SPIFFEID is the entry's spiffe_id.
func (e SyncEntry) SPIFFEID() string { return e.rec.spiffeID() }

// ModifyIndex is the entry's modify_index.
func (e SyncEntry) ModifyIndex() uint64 { return e.rec.modifyIndex() }

// FederatesWith returns a copy of the entry's federates_with (nil for
// none).
func (e SyncEntry) FederatesWith() []string { return e.rec.federatesWith() }

// Wire is the entry's protobuf encoding, which the caller must not
// modify.
func (e SyncEntry) Wire() []byte { return e.rec.bytes() }

// Entry decodes the entry into a copy the caller owns.
func (e SyncEntry) Entry() *sigilv1.Entry { return e.rec.entry() }

// SyncEntryUnwatched is EntryUnwatched as a SyncEntry.
func (r *Reader) SyncEntryUnwatched(id string) (SyncEntry, bool) {
	rec, ok := r.entriesUnwatched().get(id)
	return SyncEntry{rec}, ok
}

// EachSyncEntryParentedTo is EachEntryParentedTo with SyncEntry values.
func (r *Reader) EachSyncEntryParentedTo(id string, fn func(SyncEntry) bool) {
	r.entriesUnwatched().eachByParentID(id, func(rec entryRec) bool { return fn(SyncEntry{rec}) })
}

// HasEntryParentedTo reports whether any entry is parented to id.
// Nothing is watched.
func (r *Reader) HasEntryParentedTo(id string) bool {
	found := false
	r.entriesUnwatched().eachByParentID(id, func(entryRec) bool {
		found = true
		return false
	})
	return found
}

// EachEntryWithSPIFFEID calls fn with every entry whose spiffe_id is id,
// in id order, until fn returns false. Nothing is watched.
func (r *Reader) EachEntryWithSPIFFEID(id string, fn func(*sigilv1.Entry) bool) {
	r.entriesUnwatched().eachBySPIFFEID(id, func(rec entryRec) bool { return fn(rec.entry()) })
}

// EntryUnwatched is Entry without adding to the WatchSet.
func (r *Reader) EntryUnwatched(id string) (*sigilv1.Entry, bool) {
	rec, ok := r.entriesUnwatched().get(id)
	if !ok {
		return nil, false
	}
	return rec.entry(), true
}
