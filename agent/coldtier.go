package agent

import (
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/sigil-id/sigil/registration"
)

// This file moves entries between x509State's two tiers. With a bounded
// SVID cache (policy.max > 0), an entry is cold when no workload asked
// for it, it is not eager, it holds no SVID (nor one waiting for its
// CA), no mint is in flight for it and it has no failure, backoff or
// denial to remember: it is then only a record in the cold store
// (coldstore.go), and has no entryState. Everything else about it is
// what a warm entry in the spare queue would be: phase no-svid, minted
// ahead of requests in order of its ID while the cache has room.
//
//   - New entries that are not eager arrive cold, unless the spare
//     queue has fewer entries than the cache has room to mint: those
//     stay warm (spareOverRoom), as they would be warmed at once to be
//     minted.
//   - An entry is warmed (given an entryState, in the warm selector
//     index and the spare queue) when a workload's selectors match it,
//     when it is taken for minting, and when a policy change makes it
//     eager.
//   - A warm entry whose state becomes that of a cold one is queued
//     (resched) and goes cold at the end of the transition (coolDown):
//     an SVID evicted or expired, an entry idle past IdleAfter, an
//     entry that a JWT request matched.
//
// An entry that a subscription matched goes cold with a new version of
// the entry set, so that the subscriptions' memo of matched entries
// (which may hold its entryState) is dropped.
// With an unbounded cache (every entry is minted) nothing goes cold.

// upsertAny installs pe, a new or changed entry, in its tier. It reports
// the entry's state when it is warm, else its cold slot.
func (s *x509State) upsertAny(pe *packedEntry, ch *changes) (st *entryState, slot uint32, cold bool) {
	if st = s.entries[pe.id]; st != nil {
		// The map's key is a substring of the old encoding: key the
		// entry by the new one, so that the old is freed.
		delete(s.entries, pe.id)
		s.upsert(st, pe, ch)
		s.entries[st.entry.id] = st
		return st, 0, false
	}
	// A changed entry keeps what it remembers of its state (as upsert).
	var m coldMeta
	if slot, ok := s.cold.get(pe.id); ok {
		if s.cold.equal(slot, pe) {
			return nil, slot, true
		}
		// Changed: new JWT-SVIDs and a new generation, as upsert.
		if s.cold.fed(slot) {
			ch.jwtBundles = true
		}
		ch.jwtDrop = append(ch.jwtDrop, pe.id)
		m = s.cold.meta(slot)
		s.cold.remove(slot)
	}
	if s.policy.max > 0 && !s.coldOff && !s.cold.full() && !s.isEager(pe.sels) && s.spare.len() >= s.room() {
		if pe.fed {
			ch.jwtBundles = true
		}
		s.genSeq++
		m.gen = s.genSeq
		return nil, s.cold.insert(pe, m), true
	}
	st = &entryState{lastReq: m.lastReq, lastAttempt: unnanos(m.lastAttempt)}
	s.upsert(st, pe, ch)
	s.entries[st.entry.id] = st
	return st, 0, false
}

// coldDeleted forgets the cold entry in slot i, as deleted does a warm
// one.
func (s *x509State) coldDeleted(i uint32, ch *changes) {
	ch.jwtDrop = append(ch.jwtDrop, string(s.cold.id(i)))
	if s.cold.fed(i) {
		ch.jwtBundles = true
	}
	s.cold.remove(i)
}

// warm moves the cold entry in slot i to the warm tier and returns its
// state, in the spare queue. The entry keeps its generation.
func (s *x509State) warm(i uint32) *entryState {
	pe := s.cold.packed(i)
	m := s.cold.meta(i)
	st := &entryState{gen: m.gen, lastReq: m.lastReq, lastAttempt: unnanos(m.lastAttempt)}
	s.cold.remove(i)
	st.entry = s.internEntry(pe)
	st.fp = fingerprintOf(&st.entry)
	s.entries[st.entry.id] = st
	s.setSelectors(st, nil)
	s.resched(st)
	return st
}

// coldOK reports whether st's state is that of a cold entry, and the
// spare queue (which holds st) has more entries than the cache has room
// to mint ahead of requests (spareOverRoom).
func (s *x509State) coldOK(st *entryState) bool {
	return s.policy.max > 0 && !s.coldOff && !s.cold.full() && !st.gone && st.q == qSpare && st.refs == 0 && !st.active && !st.released &&
		!st.eager && st.svid == nil && st.pending == nil && !st.inflight && !st.denied &&
		st.failures == 0 && st.retryAt.IsZero() && st.lastError == "" && st.failStreak == 0 &&
		st.idlePos == 0 && st.evPos == 0 && st.exPos == 0 && s.spareOverRoom()
}

// spareOverRoom reports whether the warm spare queue holds more entries
// than the cache has room to mint ahead of requests. Spare entries
// within the room stay warm: the minting loop takes them at its next
// turn (in order of ID with the cold ones, as before), and sending them
// cold would only decode them again when they are warmed to be minted,
// a cost on every entry of a sync that the cache has room for. At most
// the room's worth of spare entries (max_svids) is held warm that way.
func (s *x509State) spareOverRoom() bool { return s.spare.len() > s.room() }

// queueCooling queues st for coolDown if its state is that of a cold
// entry (resched calls it).
func (s *x509State) queueCooling(st *entryState) {
	if !st.cooling && s.coldOK(st) {
		st.cooling = true
		s.cooling = append(s.cooling, st)
	}
}

// coolDown moves the queued entries whose state is still that of a cold
// entry to the cold tier. It runs at the end of transitions, when no
// caller holds an entryState.
func (s *x509State) coolDown() {
	if len(s.cooling) == 0 {
		return
	}
	cooled := false
	for _, st := range s.cooling {
		st.cooling = false
		if !s.coldOK(st) || s.entries[st.entry.id] != st {
			continue
		}
		s.spare.remove(st)
		st.q = qNone
		s.unindex(st, st.entry.sels)
		delete(s.entries, st.entry.id)
		s.cold.insert(&st.entry, coldMeta{gen: st.gen, lastReq: st.lastReq, lastAttempt: nanos(st.lastAttempt)})
		s.releaseEntry(&st.entry)
		st.gone = true
		cooled = cooled || st.refd
	}
	clear(s.cooling)
	s.cooling = s.cooling[:0]
	if cap(s.cooling) > 1024 {
		s.cooling = nil
	}
	if cooled {
		s.version++
	}
}

// nextSpare returns the entry with the least ID among those minted only
// while the cache has room, warm or cold (warmed), or nil.
func (s *x509State) nextSpare() *entryState {
	slot, ok := s.cold.top()
	if !ok {
		if s.spare.len() == 0 {
			return nil
		}
		return s.spare.top()
	}
	if s.spare.len() > 0 && s.spare.top().entry.id < string(s.cold.id(slot)) {
		return s.spare.top()
	}
	return s.warm(slot)
}

// matchCold warms and returns the cold entries a workload with
// selectors sels matches.
func (s *x509State) matchCold(sels registration.SelectorSet) []*entryState {
	if s.cold.len() == 0 {
		return nil
	}
	var slots []uint32
	for sel := range sels {
		s.cold.match(sel, sels, func(i uint32) { slots = append(slots, i) })
	}
	if len(slots) == 0 {
		return nil
	}
	out := make([]*entryState, len(slots))
	s.cold.hold = true
	for k, i := range slots {
		out[k] = s.warm(i)
	}
	s.cold.release()
	return out
}

// warmWhere warms the cold entries for which keep is true.
func (s *x509State) warmWhere(keep func(r *coldRec) bool) {
	var slots []uint32
	s.cold.each(func(i uint32) {
		r := s.cold.rec(i)
		if keep(&r) {
			slots = append(slots, i)
		}
	})
	s.cold.hold = true
	for _, i := range slots {
		s.warm(i)
	}
	s.cold.release()
}

// peek returns the state of the entry with ID id, warm or cold, or nil:
// for a cold entry, a state of its own that no index holds (reading it
// changes nothing).
func (s *x509State) peek(id string) *entryState {
	if st := s.entries[id]; st != nil {
		return st
	}
	slot, ok := s.cold.get(id)
	if !ok {
		return nil
	}
	m := s.cold.meta(slot)
	st := &entryState{entry: s.cold.packed(slot), gen: m.gen, lastReq: m.lastReq, lastAttempt: unnanos(m.lastAttempt), q: qSpare}
	st.fp = fingerprintOf(&st.entry)
	return st
}

// genOf is the generation of the entry with ID id; 0 when it is not held.
func (s *x509State) genOf(id string) uint64 {
	if st := s.entries[id]; st != nil {
		return st.gen
	}
	if slot, ok := s.cold.get(id); ok {
		return s.cold.meta(slot).gen
	}
	return 0
}

// has reports whether the entry with ID id is held.
func (s *x509State) has(id string) bool {
	if _, ok := s.entries[id]; ok {
		return true
	}
	_, ok := s.cold.get(id)
	return ok
}

// fed reports whether slot i's entry federates with a trust domain.
func (c *coldStore) fed(i uint32) bool {
	r := c.rec(i)
	for rest := r.raw; len(rest) > 0; {
		num, typ, l := protowire.ConsumeTag(rest)
		if l < 0 {
			return false
		}
		if num == fieldFederatesWith {
			return true
		}
		m := protowire.ConsumeFieldValue(num, typ, rest[l:])
		if m < 0 {
			return false
		}
		rest = rest[l+m:]
	}
	return false
}
