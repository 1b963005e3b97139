package workloadapi

import (
	"maps"
	"slices"
	"sync"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// MemoryCache is an in-memory Cache for tests and examples: identities are
// set by hand, with the selectors their entry requires. It is safe for
// concurrent use.
type MemoryCache struct {
	mu        sync.Mutex
	bundle    *x509bundle.Bundle
	federated map[spiffeid.TrustDomain]*x509bundle.Bundle
	entries   map[string]memEntry
	subs      map[*memSub]struct{}
}

type memEntry struct {
	selectors []*sigilv1.Selector
	id        X509Identity
}

var _ Cache = (*MemoryCache)(nil)

// NewMemoryCache returns an empty MemoryCache.
func NewMemoryCache() *MemoryCache {
	return &MemoryCache{
		federated: make(map[spiffeid.TrustDomain]*x509bundle.Bundle),
		entries:   make(map[string]memEntry),
		subs:      make(map[*memSub]struct{}),
	}
}

// SetBundle sets the agent's own trust domain bundle.
func (c *MemoryCache) SetBundle(b *x509bundle.Bundle) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.bundle = b
	c.notifyLocked()
}

// SetFederatedBundle sets (or, with nil, removes) the bundle of a federated
// trust domain.
func (c *MemoryCache) SetFederatedBundle(td spiffeid.TrustDomain, b *x509bundle.Bundle) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if b == nil {
		delete(c.federated, td)
	} else {
		c.federated[td] = b
	}
	c.notifyLocked()
}

// SetIdentity adds or replaces (by id.EntryID) the identity of an entry
// that requires the given selectors.
func (c *MemoryCache) SetIdentity(selectors []*sigilv1.Selector, id X509Identity) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.entries[id.EntryID] = memEntry{selectors: slices.Clone(selectors), id: id}
	c.notifyLocked()
}

// RemoveIdentity deletes the identity of entry entryID.
func (c *MemoryCache) RemoveIdentity(entryID string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.entries, entryID)
	c.notifyLocked()
}

// SubscribeX509 implements Cache. The first snapshot is ready at once.
func (c *MemoryCache) SubscribeX509(selectors []*sigilv1.Selector) X509Subscription {
	set := make(map[selectorKey]struct{}, len(selectors))
	for _, s := range selectors {
		set[selectorKey{s.GetType(), s.GetValue()}] = struct{}{}
	}
	sub := &memSub{cache: c, selectors: set, ch: make(chan *X509Snapshot, 1)}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.subs[sub] = struct{}{}
	sub.ch <- c.snapshotLocked(sub.selectors)
	return sub
}

type selectorKey struct{ typ, value string }

func (c *MemoryCache) notifyLocked() {
	for sub := range c.subs {
		snap := c.snapshotLocked(sub.selectors)
		// Replace an undelivered snapshot: only the latest matters.
		select {
		case <-sub.ch:
		default:
		}
		sub.ch <- snap
	}
}

func (c *MemoryCache) snapshotLocked(have map[selectorKey]struct{}) *X509Snapshot {
	snap := &X509Snapshot{Bundle: c.bundle}
	if len(c.federated) > 0 {
		snap.Federated = maps.Clone(c.federated)
	}
	for _, id := range slices.Sorted(maps.Keys(c.entries)) {
		e := c.entries[id]
		if matches(e.selectors, have) {
			snap.Identities = append(snap.Identities, e.id)
		}
	}
	return snap
}

// matches reports whether every selector of an entry is among have. An
// entry without selectors matches nothing.
func matches(entry []*sigilv1.Selector, have map[selectorKey]struct{}) bool {
	if len(entry) == 0 {
		return false
	}
	for _, s := range entry {
		if _, ok := have[selectorKey{s.GetType(), s.GetValue()}]; !ok {
			return false
		}
	}
	return true
}

type memSub struct {
	cache     *MemoryCache
	selectors map[selectorKey]struct{}
	ch        chan *X509Snapshot
	once      sync.Once
}

func (s *memSub) Updates() <-chan *X509Snapshot { return s.ch }

func (s *memSub) Close() {
	s.once.Do(func() {
		s.cache.mu.Lock()
		delete(s.cache.subs, s)
		s.cache.mu.Unlock()
	})
}
