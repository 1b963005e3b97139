package agent

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/sigil-id/sigil/registration"
)

// This file holds the bounded SVID cache: its configuration, the policy
// x509State applies (which entries always keep an SVID, which are minted
// only while there is room, which lose theirs first), and the indexes
// that keep every transition proportional to the entries it touches
// rather than to all the entries the agent holds:
//
//   - a selector index (selector → entries), through which subscriptions
//     and JWT requests find the entries a workload matches;
//   - heaps of the entries waiting for a time (renewal, retry, expiry,
//     the end of their active period), of the entries due for minting, of
//     the entries minted only while the cache has room, and of the SVIDs
//     that may be evicted.
//
// An entry is active while a workload subscription matches it (an X.509
// stream or fetch on the Workload API, an SDS stream, an svid_files
// block) and for IdleAfter after the last one ended. An entry is eager
// when one of its selectors is among EagerSelectors. Active and eager
// entries (wanted entries) always keep an SVID, even past MaxSVIDs (the
// excess is counted: sigil_agent_svid_cache_over_capacity). The other
// entries are minted, in order of their IDs, only while the cache holds
// fewer than MaxSVIDs SVIDs; when it holds more, their SVIDs are evicted,
// least recently requested first.

// Defaults of SVIDCacheConfig.
const (
	// DefaultMaxSVIDs is SPIRE's default cache size: with at most this
	// many entries the agent mints every one of them, as it always did.
	DefaultMaxSVIDs = 1000
	// DefaultIdleAfter is how long an entry stays active after the last
	// workload request that matched it.
	DefaultIdleAfter = 10 * time.Minute
	// MinIdleAfter and MaxIdleAfter bound SVIDCacheConfig.IdleAfter.
	MinIdleAfter = time.Second
	MaxIdleAfter = 30 * 24 * time.Hour
)

// SVIDCacheConfig bounds the workload X.509-SVIDs the agent holds (the
// svid_cache block of the agent's configuration). The zero value takes
// the defaults.
type SVIDCacheConfig struct {
	// MaxSVIDs is how many SVIDs the agent holds before it evicts those
	// of entries no workload asked for within IdleAfter; entries with no
	// SVID are minted ahead of any request only while it holds fewer.
	// DefaultMaxSVIDs when zero.
	MaxSVIDs int
	// EagerSelectors are selectors ("type:value", e.g. "unix:uid:0"): an
	// entry with any of them among its selectors is always minted and
	// never evicted, whether a workload asked for it or not.
	EagerSelectors []string
	// IdleAfter is how long an entry stays active (keeps its SVID and is
	// renewed) after the last workload request that matched it; between
	// MinIdleAfter and MaxIdleAfter, DefaultIdleAfter when zero.
	IdleAfter time.Duration
}

// withDefaults fills the zero fields.
func (c SVIDCacheConfig) withDefaults() SVIDCacheConfig {
	if c.MaxSVIDs == 0 {
		c.MaxSVIDs = DefaultMaxSVIDs
	}
	if c.IdleAfter == 0 {
		c.IdleAfter = DefaultIdleAfter
	}
	return c
}

// validate reports the first problem with c.
func (c SVIDCacheConfig) validate() error {
	if c.MaxSVIDs < 0 {
		return fmt.Errorf("agent: svid cache max_svids %d is negative", c.MaxSVIDs)
	}
	if c.IdleAfter != 0 && (c.IdleAfter < MinIdleAfter || c.IdleAfter > MaxIdleAfter) {
		return fmt.Errorf("agent: svid cache idle_after %v is outside %v..%v", c.IdleAfter, MinIdleAfter, MaxIdleAfter)
	}
	for _, s := range c.EagerSelectors {
		if _, err := registration.ParseSelector(s); err != nil {
			return fmt.Errorf("agent: svid cache eager selector %q: %w", s, err)
		}
	}
	return nil
}

// cachePolicy is a validated SVIDCacheConfig as x509State applies it.
type cachePolicy struct {
	// max is the cache's size; 0 is unbounded (newX509State's default,
	// for tests of the state that do not bound it).
	max       int
	eager     map[string]bool
	idleAfter time.Duration
}

func newCachePolicy(c SVIDCacheConfig) cachePolicy {
	c = c.withDefaults()
	p := cachePolicy{max: c.MaxSVIDs, idleAfter: c.IdleAfter}
	for _, s := range c.EagerSelectors {
		if sel, err := registration.ParseSelector(s); err == nil {
			if p.eager == nil {
				p.eager = make(map[string]bool)
			}
			p.eager[registration.FormatSelector(sel)] = true
		}
	}
	return p
}

// unboundedPolicy mints every entry.
func unboundedPolicy() cachePolicy {
	return cachePolicy{idleAfter: DefaultIdleAfter}
}

// queue names the minting queue an entry is in.
type queue uint8

const (
	qNone queue = iota
	// qSched: waiting for its due time (renewal, retry, held SVID).
	qSched
	// qDue: due now, ordered by rank.
	qDue
	// qSpare: not wanted, without an SVID: minted while there is room.
	qSpare
)

// entryHeap is a binary min-heap of entries that records each entry's
// position in the entry itself (1-based; 0 when absent), so that an entry
// is removed or moved in O(log n).
type entryHeap struct {
	items []*entryState
	less  func(a, b *entryState) bool
	pos   func(*entryState) *int32
}

func (h *entryHeap) len() int { return len(h.items) }

func (h *entryHeap) has(st *entryState) bool { return *h.pos(st) != 0 }

func (h *entryHeap) top() *entryState { return h.items[0] }

func (h *entryHeap) swap(i, j int) {
	h.items[i], h.items[j] = h.items[j], h.items[i]
	*h.pos(h.items[i]) = int32(i + 1)
	*h.pos(h.items[j]) = int32(j + 1)
}

func (h *entryHeap) up(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if !h.less(h.items[i], h.items[p]) {
			return
		}
		h.swap(i, p)
		i = p
	}
}

func (h *entryHeap) down(i int) bool {
	moved := false
	n := len(h.items)
	for {
		l := 2*i + 1
		if l >= n {
			return moved
		}
		m := l
		if r := l + 1; r < n && h.less(h.items[r], h.items[l]) {
			m = r
		}
		if !h.less(h.items[m], h.items[i]) {
			return moved
		}
		h.swap(i, m)
		i = m
		moved = true
	}
}

// put inserts st, or restores the order after its key changed.
func (h *entryHeap) put(st *entryState) {
	if p := *h.pos(st); p != 0 {
		if !h.down(int(p - 1)) {
			h.up(int(p - 1))
		}
		return
	}
	h.items = append(h.items, st)
	*h.pos(st) = int32(len(h.items))
	h.up(len(h.items) - 1)
}

// remove takes st out if it is in.
func (h *entryHeap) remove(st *entryState) {
	p := *h.pos(st)
	if p == 0 {
		return
	}
	i, last := int(p-1), len(h.items)-1
	if i != last {
		h.swap(i, last)
	}
	h.items[last] = nil
	h.items = h.items[:last]
	*h.pos(st) = 0
	if i != last {
		if !h.down(i) {
			h.up(i)
		}
	}
	h.shrink()
}

// pop removes and returns the least entry.
func (h *entryHeap) pop() *entryState {
	st := h.items[0]
	h.remove(st)
	return st
}

// shrink returns the memory of a heap that emptied out.
func (h *entryHeap) shrink() {
	if c := cap(h.items); c > 1024 && len(h.items) < c/4 {
		h.items = slices.Clip(slices.Clone(h.items))
	}
}

// nanos is t in unix nanoseconds, 0 for the zero time: the heaps' keys
// (8 bytes per entry instead of 24). unnanos is its inverse, in UTC.
func nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func unnanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

// expiryTime is when st's SVID or held SVID expires, the earlier; zero
// when it has neither (or is deleted).
func (st *entryState) expiryTime() time.Time {
	var exp time.Time
	if st.gone {
		return exp
	}
	if st.svid != nil {
		exp = st.svid.notAfter
	}
	if st.pending != nil {
		if t := st.pendingSince.Add(pendingWait); exp.IsZero() || t.Before(exp) {
			exp = t
		}
	}
	return exp
}

func newHeaps(s *x509State) {
	s.sched = entryHeap{
		less: func(a, b *entryState) bool {
			if a.dueAt != b.dueAt {
				return a.dueAt < b.dueAt
			}
			return a.entry.id < b.entry.id
		},
		pos: func(st *entryState) *int32 { return &st.qPos },
	}
	s.due = entryHeap{
		less: func(a, b *entryState) bool {
			if a.rank != b.rank {
				return a.rank < b.rank
			}
			if a.rank == rankRenew {
				if r := a.svid.renewAt.Compare(b.svid.renewAt); r != 0 {
					return r < 0
				}
			}
			return a.entry.id < b.entry.id
		},
		pos: func(st *entryState) *int32 { return &st.qPos },
	}
	s.spare = entryHeap{
		less: func(a, b *entryState) bool { return a.entry.id < b.entry.id },
		pos:  func(st *entryState) *int32 { return &st.qPos },
	}
	s.expiry = entryHeap{
		less: func(a, b *entryState) bool {
			if a.expAt != b.expAt {
				return a.expAt < b.expAt
			}
			return a.entry.id < b.entry.id
		},
		pos: func(st *entryState) *int32 { return &st.exPos },
	}
	s.evict = entryHeap{
		less: func(a, b *entryState) bool {
			if a.lastReq != b.lastReq {
				return a.lastReq < b.lastReq
			}
			return a.entry.id < b.entry.id
		},
		pos: func(st *entryState) *int32 { return &st.evPos },
	}
	s.idle = entryHeap{
		less: func(a, b *entryState) bool {
			if a.activeUntil != b.activeUntil {
				return a.activeUntil < b.activeUntil
			}
			return a.entry.id < b.entry.id
		},
		pos: func(st *entryState) *int32 { return &st.idlePos },
	}
}

// Ranks of the due queue: what a waiting workload needs comes first
// (StartMints takes those out of order), then entries with no SVID to
// hand out, then renewals in order of their renewal time.
const (
	rankNoSVID uint8 = 1
	rankRenew  uint8 = 2
)

// wanted reports whether st must keep an SVID whatever the cache's size.
func (st *entryState) wanted() bool { return st.eager || st.active }

// dueTime is when st becomes due for minting, given that it is neither in
// flight nor denied: zero when it is due at once.
func (st *entryState) dueTime() time.Time {
	later := func(a, b time.Time) time.Time {
		if b.After(a) {
			return b
		}
		return a
	}
	d := st.retryAt
	if st.svid != nil && st.svid.mintedFor == st.fp && !st.svid.tainted {
		d = later(d, st.svid.renewAt)
	}
	if st.pending != nil && st.pending.mintedFor == st.fp {
		d = later(d, st.pendingSince.Add(pendingWait))
	}
	return d
}

// resched puts st in the queues and heaps its state calls for. Every
// transition that changes an entry's state calls it.
func (s *x509State) resched(st *entryState) {
	// Expiry of the SVID or of the held SVID.
	if exp := st.expiryTime(); exp.IsZero() {
		s.expiry.remove(st)
	} else {
		st.expAt = nanos(exp)
		s.expiry.put(st)
	}

	// Minting queue.
	q := qNone
	switch {
	case st.gone || st.inflight || st.denied:
	case !st.wanted() && st.svid == nil && st.pending == nil && st.retryAt.IsZero():
		q = qSpare
	default:
		st.dueAt = nanos(st.dueTime())
		if st.dueAt == 0 {
			q = qDue
			st.rank = rankNoSVID
			if st.servable() != nil {
				st.rank = rankRenew
			}
		} else {
			q = qSched
		}
	}
	if st.q != q {
		if h := s.queue(st.q); h != nil {
			h.remove(st)
		}
		st.q = q
	}
	if h := s.queue(q); h != nil {
		h.put(st)
	}

	// Eviction candidates.
	if !st.gone && !st.wanted() && st.svid != nil {
		s.evict.put(st)
	} else {
		s.evict.remove(st)
	}
	if st.gone {
		s.idle.remove(st)
	}
	if q == qSpare {
		s.queueCooling(st)
	}
}

func (s *x509State) queue(q queue) *entryHeap {
	switch q {
	case qSched:
		return &s.sched
	case qDue:
		return &s.due
	case qSpare:
		return &s.spare
	}
	return nil
}

// setSVID installs sv (nil: none) as st's SVID, keeping the count.
func (s *x509State) setSVID(st *entryState, sv *svid) {
	if st.svid == nil && sv != nil {
		s.svids++
	} else if st.svid != nil && sv == nil {
		s.svids--
	}
	if sv != nil {
		s.maxLead = max(s.maxLead, sv.notAfter.Sub(sv.renewAt))
	}
	st.svid = sv
}

// setInflight marks st in flight or not, keeping the count of mints in
// flight for entries that had no SVID (they take room in the cache).
func (s *x509State) setInflight(st *entryState, on bool) {
	st.inflight = on
	if on && st.svid == nil && !st.roomTaken {
		st.roomTaken = true
		s.inflightNew++
	}
	if !on && st.roomTaken {
		st.roomTaken = false
		s.inflightNew--
	}
}

// room is how many more entries without an SVID may be minted ahead of
// any request; -1 when unbounded.
func (s *x509State) room() int {
	if s.policy.max == 0 {
		return -1
	}
	return max(s.policy.max-s.svids-s.inflightNew, 0)
}

// evictOver drops SVIDs of entries that are not wanted, least recently
// requested first, while the cache holds more than its size.
func (s *x509State) evictOver(ch *changes) {
	for s.policy.max > 0 && s.svids > s.policy.max && s.evict.len() > 0 {
		st := s.evict.top()
		sv := st.svid
		s.setSVID(st, nil)
		s.resched(st)
		ch.notify = true
		ch.add(event{kind: evEvicted, entryID: st.entry.id, svid: sv})
	}
	if over := s.overCapacity(); over > 0 {
		ch.overCapacity = over
	}
}

// overCapacity is how many SVIDs beyond the cache's size wanted entries
// hold.
func (s *x509State) overCapacity() int {
	if s.policy.max == 0 {
		return 0
	}
	return max(s.svids-s.policy.max, 0)
}

// ref records that a subscription matches st: it is active from now on.
func (s *x509State) ref(st *entryState) {
	st.refs++
	st.refd = true
	if st.refs != 1 || st.gone {
		return
	}
	s.idle.remove(st)
	if !st.active {
		st.active = true
		s.resched(st)
	}
}

// unref records that a subscription no longer matches st. When none
// does, st's idle period starts at the next Release.
func (s *x509State) unref(st *entryState) {
	st.refs--
	if st.refs == 0 && !st.gone && !st.released {
		st.released = true
		s.released = append(s.released, st)
	}
}

// Release starts at now the idle period of the entries that no
// subscription matches any more: they stay active until now + IdleAfter.
func (s *x509State) Release(now time.Time) {
	for _, st := range s.released {
		st.released = false
		if st.gone || st.refs > 0 {
			continue
		}
		st.lastReq = nanos(now)
		st.activeUntil = nanos(now.Add(s.policy.idleAfter))
		s.idle.put(st)
	}
	clear(s.released)
	s.released = s.released[:0]
}

// SetPolicy applies the cache policy p to every entry held (eagerness is
// computed again); SVIDs beyond the new size are evicted.
func (s *x509State) SetPolicy(p cachePolicy) changes {
	var ch changes
	s.policy = p
	// Cold entries that are now eager, or all of them when the cache is
	// no longer bounded, are warmed.
	switch {
	case s.cold.len() == 0:
	case p.max == 0:
		s.warmWhere(func(*coldRec) bool { return true })
	case len(p.eager) > 0:
		s.warmWhere(func(r *coldRec) bool {
			eager := false
			r.eachSel(func(_ int, sel []byte) bool {
				eager = p.eager[string(sel)]
				return !eager
			})
			return eager
		})
	}
	for _, st := range s.entries {
		st.eager = s.isEager(st.entry.sels)
		s.resched(st)
	}
	s.evictOver(&ch)
	s.coolDown()
	ch.wake = true
	return ch
}

// isEager reports whether one of sels is an eager selector.
func (s *x509State) isEager(sels []string) bool {
	for _, sel := range sels {
		if s.policy.eager[sel] {
			return true
		}
	}
	return false
}

// index files st under the one of its selectors that currently has the
// fewest entries: a workload can only match st if it has every one of
// st's selectors, so looking up each of the workload's selectors finds
// st exactly once.
func (s *x509State) index(st *entryState) {
	sels := st.entry.sels
	if len(sels) == 0 {
		return
	}
	k := 0
	for i, sel := range sels[1:] {
		if len(s.bySel[sel]) < len(s.bySel[sels[k]]) {
			k = i + 1
		}
	}
	key := sels[k]
	list := append(s.bySel[key], st)
	s.bySel[key] = list
	st.idxPos = int32(len(list) - 1)
	st.idxSel = int32(k + 1)
}

// unindex takes st out of the selector index; sels are the selectors it
// was filed with.
func (s *x509State) unindex(st *entryState, sels []string) {
	if st.idxSel == 0 {
		return
	}
	key := sels[st.idxSel-1]
	list := s.bySel[key]
	last := len(list) - 1
	if i := int(st.idxPos); i != last {
		list[i] = list[last]
		list[i].idxPos = int32(i)
	}
	list[last] = nil
	list = list[:last]
	switch {
	case len(list) == 0:
		delete(s.bySel, key)
	case cap(list) > 8 && len(list) < cap(list)/4:
		s.bySel[key] = slices.Clip(slices.Clone(list))
	default:
		s.bySel[key] = list
	}
	st.idxSel, st.idxPos = 0, 0
}

// setSelectors files st under its selectors, which were old.
func (s *x509State) setSelectors(st *entryState, old []string) {
	if slices.Equal(st.entry.sels, old) && (st.idxSel != 0 || len(old) == 0) {
		return
	}
	s.unindex(st, old)
	st.eager = s.isEager(st.entry.sels)
	s.index(st)
}

// matchEntries returns the entries a workload with selectors sels
// matches, in no order: every selector of each is in sels. It costs the
// entries filed under sels' selectors, not all the entries. Cold entries
// it matches are warmed (coldtier.go).
func (s *x509State) matchEntries(sels registration.SelectorSet) []*entryState {
	var out []*entryState
	for sel := range sels {
		for _, st := range s.bySel[sel] {
			if st.matchedBy(sels) {
				out = append(out, st)
			}
		}
	}
	return append(out, s.matchCold(sels)...)
}

// matchedBy reports whether a workload with selectors sels matches st.
func (st *entryState) matchedBy(sels registration.SelectorSet) bool {
	if len(st.entry.sels) == 0 {
		return false
	}
	for _, v := range st.entry.sels {
		if _, ok := sels[v]; !ok {
			return false
		}
	}
	return true
}

// internTable shares the strings many entries hold (parent IDs,
// selectors), counting their holders so that a string no entry holds is
// forgotten.
type internTable map[string]interned

type interned struct {
	s string
	n int64
}

func (t internTable) intern(v string) string {
	if i, ok := t[v]; ok {
		i.n++
		t[v] = i
		return i.s
	}
	t[v] = interned{s: v, n: 1}
	return v
}

func (t internTable) release(v string) {
	if i, ok := t[v]; ok {
		if i.n--; i.n <= 0 {
			delete(t, v)
		} else {
			t[v] = i
		}
	}
}

// cacheSizes are the counts the agent logs and exports about its cache.
type cacheSizes struct {
	entries, svids, max, over int
}

// Sizes reports the cache's counts.
func (s *x509State) Sizes() cacheSizes {
	return cacheSizes{entries: len(s.entries) + s.cold.len(), svids: s.svids, max: s.policy.max, over: s.overCapacity()}
}

// String describes the policy for logs.
func (p cachePolicy) String() string {
	eager := make([]string, 0, len(p.eager))
	for s := range p.eager {
		eager = append(eager, s)
	}
	slices.Sort(eager)
	return fmt.Sprintf("max_svids=%d eager_selectors=[%s] idle_after=%v", p.max, strings.Join(eager, " "), p.idleAfter)
}
