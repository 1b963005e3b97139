package agent

import (
	"slices"
	"strconv"
	"strings"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-id/sigil/registration"
	"github.com/sigil-id/sigil/workloadapi"
)

// subscriptions are the workloads watching their X.509 material. They
// read the X.509 state and are guarded by the same lock (the cache's);
// they have none of their own.
type subscriptions struct {
	subs map[*subscription]struct{}
}

func newSubscriptions() subscriptions {
	return subscriptions{subs: make(map[*subscription]struct{})}
}

// subscription is one workload's watch. Its fields below ch are guarded
// by the cache's lock.
type subscription struct {
	c    *cache
	sels registration.SelectorSet
	ch   chan *workloadapi.X509Snapshot

	matchVersion uint64
	matchValid   bool
	matched      []*entryState
	delivered    bool
	last         string
}

func (s *subscription) Updates() <-chan *workloadapi.X509Snapshot { return s.ch }

func (s *subscription) Close() {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	s.c.subs.remove(s)
}

// add registers sub and sends it its first snapshot if it is ready. It
// reports whether the snapshot was sent.
func (ss *subscriptions) add(sub *subscription, st *x509State) bool {
	ss.subs[sub] = struct{}{}
	ss.update(sub, st)
	return sub.delivered
}

func (ss *subscriptions) remove(sub *subscription) {
	delete(ss.subs, sub)
	sub.matched = nil
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

// match brings the subscription's matched entries up to date.
func (ss *subscriptions) match(sub *subscription, st *x509State) {
	if sub.matchValid && sub.matchVersion == st.version {
		return
	}
	sub.matched = sub.matched[:0]
	for _, e := range st.entries {
		if sub.sels.Contains(e.entry.GetSelectors()) {
			sub.matched = append(sub.matched, e)
		}
	}
	slices.SortFunc(sub.matched, func(a, b *entryState) int {
		if a.entry.GetCreatedAt() != b.entry.GetCreatedAt() {
			if a.entry.GetCreatedAt() < b.entry.GetCreatedAt() {
				return -1
			}
			return 1
		}
		return strings.Compare(a.entry.GetId(), b.entry.GetId())
	})
	sub.matchVersion = st.version
	sub.matchValid = true
}

// notify brings every subscription up to date with st.
func (ss *subscriptions) notify(st *x509State) {
	for sub := range ss.subs {
		ss.update(sub, st)
	}
}

// update sends the subscription a snapshot if it is ready and differs
// from the last one sent.
func (ss *subscriptions) update(sub *subscription, st *x509State) {
	ss.match(sub, st)
	if st.bundle == nil || !st.synced {
		return
	}
	ids := make([]workloadapi.X509Identity, 0, len(sub.matched))
	var fp strings.Builder
	fp.WriteString(strconv.FormatUint(st.bundleVersion, 10))
	complete := true
	for _, e := range sub.matched {
		s := e.servable()
		if s == nil {
			complete = false
			continue
		}
		ids = append(ids, workloadapi.X509Identity{
			EntryID:    e.entry.GetId(),
			SPIFFEID:   s.spiffeID,
			Chain:      s.chain,
			PrivateKey: s.key,
			ChainDER:   s.chainDER,
			KeyDER:     s.keyDER,
			Hint:       e.entry.GetHint(),
		})
		fp.WriteByte('|')
		fp.WriteString(e.entry.GetId())
		fp.WriteByte(':')
		fp.WriteString(strconv.FormatUint(s.seq, 10))
		fp.WriteByte(':')
		fp.WriteString(e.entry.GetHint())
	}
	// The federated bundles the matched entries name, by version: a
	// change of one of them is a change of the snapshot, a change of any
	// other is not. Nothing is allocated when no entry names one.
	var federated map[spiffeid.TrustDomain]*x509bundle.Bundle
	st.federatedOf(sub.matched, func(b *fedBundle) {
		if b.x509 == nil {
			return
		}
		if federated == nil {
			federated = make(map[spiffeid.TrustDomain]*x509bundle.Bundle)
		}
		federated[b.td] = b.x509
		fp.WriteString("|f:")
		fp.WriteString(b.td.Name())
		fp.WriteByte(':')
		fp.WriteString(strconv.FormatUint(b.x509Version, 10))
	})
	if !sub.delivered && !complete {
		return
	}
	if sub.delivered && fp.String() == sub.last {
		return
	}
	snap := &workloadapi.X509Snapshot{Identities: ids, Bundle: st.bundle, Federated: federated}
	// Latest wins: replace a snapshot the workload has not taken yet.
	select {
	case <-sub.ch:
	default:
	}
	sub.ch <- snap
	sub.delivered = true
	sub.last = fp.String()
}
