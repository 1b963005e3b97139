package agent

import (
	"bytes"
	"encoding/binary"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/registration"
	"github.com/sigil-id/sigil/workloadapi"
)

// subscriptions are the workloads watching their X.509 material. They
// read the X.509 state and are guarded by the same lock (the cache's);
// they have none of their own.
//
// Two memos spare a workload's fetch the work that does not depend on
// it: views holds, by selector set, the entries that set matches (valid
// for one version of the entry set), so that a new subscription does not
// scan every entry; shared holds, by content key (contentKey), the
// snapshots handed out, so that callers entitled to the same SVIDs get
// the same snapshot, whose encoding the Workload API server builds once.
type subscriptions struct {
	subs map[*subscription]struct{}

	views        map[string][]*entryState
	viewsVersion uint64
	shared       map[string]sharedSnapshot
	// sets holds, by selectorKey, the selector sets of subscriptions, so
	// that a workload subscribing again (a one-shot fetch, every call)
	// reuses its set and key instead of building them. The sets are
	// never modified.
	sets map[string]selectorSetMemo
}

// maxMemo bounds each memo of subscriptions; a full memo is emptied.
const maxMemo = 1024

func newSubscriptions() subscriptions {
	return subscriptions{
		subs:   make(map[*subscription]struct{}),
		views:  make(map[string][]*entryState),
		shared: make(map[string]sharedSnapshot),
		sets:   make(map[string]selectorSetMemo),
	}
}

// subscription is one workload's watch. Its fields below ch are guarded
// by the cache's lock.
type subscription struct {
	c *cache
	// selectors are the workload's, as attested; add turns them into
	// sels and selKey.
	selectors []*sigilv1.Selector
	sels      registration.SelectorSet
	// selKey is sels in canonical form (selectorKey), the key of its
	// view; set by add.
	selKey string
	ch     chan *workloadapi.X509Snapshot

	matchVersion uint64
	matchValid   bool
	// matched may be shared with other subscriptions (views): it is
	// replaced, never modified.
	matched []*entryState
	// counted: the entries of matched count this subscription in their
	// refs (x509State.ref).
	counted   bool
	delivered bool
	// last is the content key of the last snapshot sent.
	last string
}

// selectorKey is a canonical, unambiguous encoding of a selector set:
// its members sorted, each preceded by its length. Two sets have the same
// key exactly when they hold the same selectors.
func selectorKey(sels registration.SelectorSet) string {
	members := make([]string, 0, len(sels))
	n := 0
	for s := range sels {
		members = append(members, s)
		n += len(s) + binary.MaxVarintLen64
	}
	slices.Sort(members)
	b := make([]byte, 0, n)
	for _, s := range members {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	return string(b)
}

// appendSelectorKey appends to b selectorKey(registration.NewSelectorSet(sels))
// without building the set: each selector as "type:value", sorted, each
// once, each preceded by its length. members is scratch space for the
// members' bounds in b.
func appendSelectorKey(b []byte, members [][2]int, sels []*sigilv1.Selector) ([]byte, [][2]int) {
	flat := len(b)
	for _, sel := range sels {
		start := len(b)
		b = append(b, sel.GetType()...)
		b = append(b, ':')
		b = append(b, sel.GetValue()...)
		members = append(members, [2]int{start, len(b)})
	}
	member := func(m [2]int) []byte { return b[m[0]:m[1]] }
	slices.SortFunc(members, func(x, y [2]int) int { return bytes.Compare(member(x), member(y)) })
	members = slices.CompactFunc(members, func(x, y [2]int) bool { return bytes.Equal(member(x), member(y)) })
	keyStart := len(b)
	for _, m := range members {
		b = binary.AppendUvarint(b, uint64(m[1]-m[0]))
		b = append(b, b[m[0]:m[1]]...)
	}
	// The members, written first, are dropped: the key alone remains.
	return append(b[:flat], b[keyStart:]...), members
}

// selectorSet returns the set of sels and its key (selectorKey), from
// the memo when a subscription had the same set before.
func (ss *subscriptions) selectorSet(sels []*sigilv1.Selector) (registration.SelectorSet, string) {
	var buf [512]byte
	var members [16][2]int
	key, _ := appendSelectorKey(buf[:0], members[:0], sels)
	if m, ok := ss.sets[string(key)]; ok {
		return m.set, m.key
	}
	m := selectorSetMemo{key: string(key), set: registration.NewSelectorSet(sels)}
	if len(ss.sets) >= maxMemo {
		clear(ss.sets)
	}
	ss.sets[m.key] = m
	return m.set, m.key
}

// selectorSetMemo is a memoized selector set with its key.
type selectorSetMemo struct {
	key string
	set registration.SelectorSet
}

func (s *subscription) Updates() <-chan *workloadapi.X509Snapshot { return s.ch }

func (s *subscription) Close() {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	s.c.subs.remove(s, &s.c.st)
	s.c.st.Release(s.c.clk.Now())
}

// add registers sub and sends it its first snapshot if it is ready. It
// reports whether the snapshot was sent.
func (ss *subscriptions) add(sub *subscription, st *x509State) bool {
	if sub.sels == nil {
		sub.sels, sub.selKey = ss.selectorSet(sub.selectors)
		sub.selectors = nil
	} else {
		sub.selKey = selectorKey(sub.sels)
	}
	ss.subs[sub] = struct{}{}
	ss.update(sub, st)
	return sub.delivered
}

// remove unregisters sub; the entries it matched start their idle period
// at the next x509State.Release.
func (ss *subscriptions) remove(sub *subscription, st *x509State) {
	delete(ss.subs, sub)
	if sub.counted {
		for _, e := range sub.matched {
			st.unref(e)
		}
	}
	sub.matched = nil
	sub.counted = false
}

func (ss *subscriptions) len() int { return len(ss.subs) }

// waiting returns the entries that a subscriber waits for: matched, with
// no SVID to hand out.
func (ss *subscriptions) waiting(st *x509State) map[*entryState]bool {
	w := make(map[*entryState]bool)
	for sub := range ss.subs {
		ss.match(sub, st)
		for _, e := range sub.matched {
			if e.servable() == nil {
				w[e] = true
			}
		}
	}
	return w
}

// match brings the subscription's matched entries up to date, from the
// view of its selector set when another subscription has computed it at
// this version of the entry set, else through the selector index. The
// entries matched are active (x509State.ref) while it holds them.
func (ss *subscriptions) match(sub *subscription, st *x509State) {
	if sub.matchValid && sub.matchVersion == st.version {
		return
	}
	if ss.viewsVersion != st.version || len(ss.views) >= maxMemo {
		clear(ss.views)
		ss.viewsVersion = st.version
	}
	matched, ok := ss.views[sub.selKey]
	if !ok {
		matched = st.matchEntries(sub.sels)
		slices.SortFunc(matched, func(a, b *entryState) int {
			if a.entry.GetCreatedAt() != b.entry.GetCreatedAt() {
				if a.entry.GetCreatedAt() < b.entry.GetCreatedAt() {
					return -1
				}
				return 1
			}
			return strings.Compare(a.entry.GetId(), b.entry.GetId())
		})
		ss.views[sub.selKey] = matched
	}
	for _, e := range matched {
		st.ref(e)
	}
	if sub.counted {
		for _, e := range sub.matched {
			st.unref(e)
		}
	}
	sub.counted = true
	sub.matched = matched
	sub.matchVersion = st.version
	sub.matchValid = true
}

// notify brings every subscription up to date with st. The snapshots
// shared so far, and the views of an older entry set, are dropped first
// (they may hold entries and SVIDs no longer served, which are then
// freed); the subscriptions share the new ones.
func (ss *subscriptions) notify(st *x509State) {
	clear(ss.shared)
	if ss.viewsVersion != st.version {
		clear(ss.views)
		ss.viewsVersion = st.version
	}
	for sub := range ss.subs {
		ss.update(sub, st)
	}
}

// contentKey appends to b a key of what a snapshot of entries (the
// servable SVIDs among them) holds at st: the bundle's version, then the
// generation of each entry served and the sequence number of its SVID,
// then the version of each federated bundle included. Generations,
// sequence numbers and versions are never reused and each names one
// entry version, one SVID, one bundle, so two snapshots with the same key
// hold the same SVIDs, keys, hints and bundles. It also reports whether
// every entry has an SVID to serve.
func contentKey(b []byte, st *x509State, entries []*entryState) (key []byte, complete bool) {
	b = append(b, 'b')
	b = binary.BigEndian.AppendUint64(b, st.bundleVersion)
	complete = true
	for _, e := range entries {
		s := e.servable()
		if s == nil {
			complete = false
			continue
		}
		b = append(b, 'e')
		b = binary.BigEndian.AppendUint64(b, e.gen)
		b = binary.BigEndian.AppendUint64(b, s.seq)
	}
	st.federatedOf(entries, func(f *fedBundle) {
		if f.x509 == nil {
			return
		}
		b = append(b, 'f')
		b = binary.BigEndian.AppendUint64(b, f.x509Version)
	})
	return b, complete
}

// update sends the subscription a snapshot if it is ready and differs
// from the last one sent. The snapshot is the one shared by every
// subscription with the same content key, built by the first of them.
func (ss *subscriptions) update(sub *subscription, st *x509State) {
	ss.match(sub, st)
	if st.bundle == nil || !st.synced {
		return
	}
	var buf [128]byte
	key, complete := contentKey(buf[:0], st, sub.matched)
	if !sub.delivered && !complete {
		return
	}
	if sub.delivered && string(key) == sub.last {
		return
	}
	shared, ok := ss.shared[string(key)]
	if !ok {
		shared = sharedSnapshot{key: string(key), snap: buildSnapshot(st, sub.matched)}
		if len(ss.shared) >= maxMemo {
			clear(ss.shared)
		}
		ss.shared[shared.key] = shared
	}
	snap := shared.snap
	// Latest wins: replace a snapshot the workload has not taken yet.
	select {
	case <-sub.ch:
	default:
	}
	sub.ch <- snap
	sub.delivered = true
	// The memo's copy of the key: a workload fetching again allocates
	// no key of its own.
	sub.last = shared.key
}

// sharedSnapshot is a snapshot handed out, with its content key.
type sharedSnapshot struct {
	key  string
	snap *workloadapi.X509Snapshot
}

// buildSnapshot returns the snapshot of entries at st: the servable SVID
// of each, the bundle, and the federated bundles they name.
func buildSnapshot(st *x509State, entries []*entryState) *workloadapi.X509Snapshot {
	ids := make([]workloadapi.X509Identity, 0, len(entries))
	for _, e := range entries {
		s := e.servable()
		if s == nil {
			continue
		}
		ids = append(ids, workloadapi.X509Identity{
			EntryID:  e.entry.GetId(),
			SPIFFEID: s.spiffeID,
			ChainDER: s.chainDER,
			KeyDER:   s.keyDER,
			Hint:     e.entry.GetHint(),
		})
	}
	// Nothing is allocated when no entry names a federated bundle.
	var federated map[spiffeid.TrustDomain]*x509bundle.Bundle
	st.federatedOf(entries, func(b *fedBundle) {
		if b.x509 == nil {
			return
		}
		if federated == nil {
			federated = make(map[spiffeid.TrustDomain]*x509bundle.Bundle)
		}
		federated[b.td] = b.x509
	})
	return &workloadapi.X509Snapshot{Identities: ids, Bundle: st.bundle, Federated: federated}
}
