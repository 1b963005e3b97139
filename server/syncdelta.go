package server

import (
	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/raftstore"
	"github.com/sigil-id/sigil/registration"
)

// syncState is what one sync stream knows of what it sent, and computes
// what to send next. After the full set, a step costs the stream
// O(entry changes since its last step), read from the store's entry change
// feed, plus a few index lookups per changed entry; it recomputes the
// whole authorized set (and diffs it with what it sent) only when that
// is needed to stay exact:
//   - the feed no longer holds every change since the last step
//     (truncated), or the state was replaced by a snapshot;
//   - the agent's node selectors changed;
//   - a node alias of the agent's node (an entry parented to the servers
//     ID whose selectors are all among the node's) was created, changed
//     or deleted, or an entry became or stopped being one;
//   - an entry the agent was sent changed or went away while other
//     entries are parented to its SPIFFE ID (nested entries: the change
//     may take them away).
//
// Invariant after every step: sent holds exactly the ids (and modify
// indexes) of r.AuthorizedEntries(agentID) at index, for the Reader r the
// step was given.
type syncState struct {
	agentID   string
	serversID string

	started  bool
	gen      raftstore.FeedGen
	index    uint64
	node     *sigilv1.AttestedNode
	nodeSels registration.SelectorSet
	roots    map[string]bool // agent ID and node alias SPIFFE IDs

	// The keys of sent and held may share the memory of the store's
	// records of the entries (raftstore.SyncEntry): a key is replaced
	// or deleted as its entry changes, so they keep at most one old
	// record per key.
	sent      map[string]uint64 // entry id -> modify index sent
	held      map[string]int    // SPIFFE ID -> sent entries with it
	fedCount  map[string]int    // trust domain -> sent entries federating with it
	fed       federatedSent
	bundleSeq uint64

	// Counters for tests: steps that recomputed everything, and steps
	// that applied changes from the feed.
	fullRecomputes, fromFeed int
}

// syncDelta is one step's result: what to send.
type syncDelta struct {
	full     bool // the first set (Reset ... Synced)
	upserted []raftstore.SyncEntry
	deleted  []string
	bundle   *sigilv1.Bundle
	fedUp    []*sigilv1.Bundle
	fedRm    []string
	index    uint64
}

func (d *syncDelta) empty() bool {
	return !d.full && len(d.upserted) == 0 && len(d.deleted) == 0 && d.bundle == nil && len(d.fedUp) == 0 && len(d.fedRm) == 0
}

func newSyncState(agentID, serversID string) *syncState {
	return &syncState{agentID: agentID, serversID: serversID, sent: make(map[string]uint64), held: make(map[string]int)}
}

// step brings the state to r (of generation gen, from store.ReadGen) and
// returns what to send. An error (unknown or banned agent, unreadable
// bundle) ends the stream; the state is then unusable.
func (st *syncState) step(store *raftstore.Store, r *raftstore.Reader, gen raftstore.FeedGen, bundleTD string) (*syncDelta, error) {
	index := r.Index()
	node, err := r.Node(st.agentID)
	if err != nil {
		return nil, err
	}
	d := &syncDelta{index: index, full: !st.started}
	recompute := !st.started || gen != st.gen
	if node != st.node {
		if node.Banned {
			_, _, err := r.AuthorizationRoots(st.agentID)
			return nil, err
		}
		if !recompute && !sameSelectors(st.nodeSels, node.Selectors) {
			recompute = true
		}
	}
	if !recompute && index != st.index {
		changes, ok := store.EntryChangesSince(gen, st.index, index)
		if !ok || !st.applyChanges(r, changes, d) {
			recompute = true
			d.upserted, d.deleted = nil, nil
		} else {
			st.fromFeed++
		}
	}
	if recompute {
		if err := st.recompute(r, d); err != nil {
			return nil, err
		}
	} else {
		st.updateFederated(r, d)
	}

	bundle, err := r.Bundle(bundleTD)
	if err != nil {
		return nil, err
	}
	if d.full || bundle.SequenceNumber != st.bundleSeq {
		d.bundle = bundle
	}
	st.bundleSeq = bundle.SequenceNumber
	st.started, st.gen, st.index, st.node = true, gen, index, node
	return d, nil
}

func sameSelectors(set registration.SelectorSet, sels []*sigilv1.Selector) bool {
	if len(set) != len(sels) {
		// Sets have no duplicates; a node's selectors may, so compare
		// as sets below when the lengths differ.
		other := registration.NewSelectorSet(sels)
		if len(other) != len(set) {
			return false
		}
	}
	for _, s := range sels {
		if _, ok := set[registration.FormatSelector(s)]; !ok {
			return false
		}
	}
	return true
}

// recompute reads the whole authorized set and diffs it with sent (or
// sends it all, for the first set).
func (st *syncState) recompute(r *raftstore.Reader, d *syncDelta) error {
	st.fullRecomputes++
	entries, err := r.AuthorizedSyncEntries(st.agentID)
	if err != nil {
		return err
	}
	roots, node, err := r.AuthorizationRoots(st.agentID)
	if err != nil {
		return err
	}
	st.roots = make(map[string]bool, len(roots))
	for _, id := range roots {
		st.roots[id] = true
	}
	st.nodeSels = registration.NewSelectorSet(node.Selectors)

	current := make(map[string]uint64, len(entries))
	st.held = make(map[string]int)
	st.fedCount = nil
	for _, e := range entries {
		id, mi := e.ID(), e.ModifyIndex()
		current[id] = mi
		st.held[e.SPIFFEID()]++
		if d.full || st.sent[id] != mi {
			d.upserted = append(d.upserted, e)
		}
		st.countFederates(e.FederatesWith(), 1)
	}
	if !d.full {
		for id := range st.sent {
			if _, ok := current[id]; !ok {
				d.deleted = append(d.deleted, id)
			}
		}
	}
	st.sent = current
	d.fedUp, d.fedRm = st.fed.update(r, entries, d.full)
	return nil
}

// federatedWatched returns the trust domains whose bundles the stream
// sent or needs.
func (st *syncState) federatedWatched() []string {
	if len(st.fed) == 0 && len(st.fedCount) == 0 {
		return nil
	}
	out := make([]string, 0, len(st.fed)+len(st.fedCount))
	for td := range st.fed {
		out = append(out, td)
	}
	for td := range st.fedCount {
		if _, ok := st.fed[td]; !ok {
			out = append(out, td)
		}
	}
	return out
}

func (st *syncState) countFederates(tds []string, by int) {
	for _, td := range tds {
		if st.fedCount == nil {
			st.fedCount = make(map[string]int)
		}
		st.fedCount[td] += by
		if st.fedCount[td] <= 0 {
			delete(st.fedCount, td)
		}
	}
}

// updateFederated sends the federated bundles the sent entries need that
// are new or changed, and removes those no longer needed.
func (st *syncState) updateFederated(r *raftstore.Reader, d *syncDelta) {
	if len(st.fedCount) == 0 && len(st.fed) == 0 {
		return
	}
	need := make(map[string]struct{}, len(st.fedCount))
	for td := range st.fedCount {
		need[td] = struct{}{}
	}
	d.fedUp, d.fedRm = st.fed.updateNeed(r, need, false)
}

// changed is the net change of one entry over a step: its state before
// the first change and after the last.
type changed struct {
	id            string
	before, after raftstore.EntryRef
}

// applyChanges turns the feed's changes into the delta, updating sent.
// It returns false, having changed nothing, when the changes need a full
// recompute (see syncState).
func (st *syncState) applyChanges(r *raftstore.Reader, changes []*raftstore.EntryChange, d *syncDelta) bool {
	if len(changes) == 0 {
		return true
	}
	// Net change per entry, in order of first change.
	byID := make(map[string]int, len(changes))
	ds := make([]changed, 0, len(changes))
	for _, c := range changes {
		if j, ok := byID[c.ID]; ok {
			ds[j].after = c.After
			continue
		}
		byID[c.ID] = len(ds)
		ds = append(ds, changed{id: c.ID, before: c.Before, after: c.After})
	}
	inD := func(id string) bool { _, ok := byID[id]; return ok }

	for i := range ds {
		c := &ds[i]
		if st.isAlias(c.before) || st.isAlias(c.after) {
			return false
		}
		if _, wasSent := st.sent[c.id]; wasSent && c.before.Exists && !st.roots[c.before.SPIFFEID] && r != nil {
			if hasChild(r, c.before.SPIFFEID) {
				return false // nested entries may lose their parent
			}
		}
	}

	// changedHeld counts, by SPIFFE ID, the sent entries that this
	// step changes (the SPIFFE ID they were sent with).
	changedHeld := make(map[string]int)
	for i := range ds {
		if _, wasSent := st.sent[ds[i].id]; wasSent && ds[i].before.Exists {
			changedHeld[ds[i].before.SPIFFEID]++
		}
	}
	// inBase: P is in the closure whatever this step's changes do: a
	// root, or the SPIFFE ID of a sent entry this step does not change.
	// O(1): a SPIFFE ID that many agents' entries share (a group every
	// agent is linked to) costs no walk over all of them.
	inBase := func(p string) bool {
		return st.roots[p] || st.held[p]-changedHeld[p] > 0
	}
	auth := make(map[string]raftstore.SyncEntry)
	added := make(map[string]bool)
	var queue []string
	mark := func(e raftstore.SyncEntry) {
		id := e.ID()
		if _, ok := auth[id]; ok {
			return
		}
		auth[id] = e
		if s := e.SPIFFEID(); !st.roots[s] && !added[s] {
			added[s] = true
			queue = append(queue, s)
		}
	}
	for i := range ds {
		c := &ds[i]
		if !c.after.Exists {
			continue
		}
		p := c.after.ParentID
		if added[p] || inBase(p) {
			if e, ok := r.SyncEntryUnwatched(c.id); ok {
				mark(e)
			}
		}
	}
	for len(queue) > 0 {
		s := queue[0]
		queue = queue[1:]
		if !hasChild(r, s) || inBase(s) {
			// No children, or they are already sent (or changed, and
			// judged above).
			continue
		}
		r.EachSyncEntryParentedTo(s, func(e raftstore.SyncEntry) bool {
			mark(e)
			return true
		})
	}

	for i := range ds {
		c := &ds[i]
		mi, wasSent := st.sent[c.id]
		if wasSent {
			st.countFederates(c.before.FederatesWith, -1)
			st.unhold(c.before.SPIFFEID)
		}
		if e, ok := auth[c.id]; ok {
			emi := e.ModifyIndex()
			if !wasSent || mi != emi {
				d.upserted = append(d.upserted, e)
			}
			st.sent[c.id] = emi
			st.held[e.SPIFFEID()]++
			st.countFederates(e.FederatesWith(), 1)
		} else if wasSent {
			d.deleted = append(d.deleted, c.id)
			delete(st.sent, c.id)
		}
	}
	for id, e := range auth {
		if inD(id) {
			continue
		}
		mi, ok := st.sent[id]
		emi := e.ModifyIndex()
		if ok && mi == emi {
			continue
		}
		if !ok {
			st.held[e.SPIFFEID()]++
		}
		d.upserted = append(d.upserted, e)
		st.sent[id] = emi
		st.countFederates(e.FederatesWith(), 1)
	}
	return true
}

// isAlias reports whether ref is a node alias of the agent's node.
func (st *syncState) isAlias(ref raftstore.EntryRef) bool {
	if !ref.Exists || ref.ParentID != st.serversID || len(ref.Selectors) == 0 {
		return false
	}
	for _, s := range ref.Selectors {
		if _, ok := st.nodeSels[s]; !ok {
			return false
		}
	}
	return true
}

// unhold forgets one sent entry with SPIFFE ID id.
func (st *syncState) unhold(id string) {
	if st.held[id] <= 1 {
		delete(st.held, id)
		return
	}
	st.held[id]--
}

func hasChild(r *raftstore.Reader, id string) bool { return r.HasEntryParentedTo(id) }
