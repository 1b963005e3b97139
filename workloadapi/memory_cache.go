package workloadapi

import (
	"encoding/binary"
	"maps"
	"slices"
	"strings"
	"sync"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// MemoryCache is an in-memory Cache for tests and examples: identities are
// set by hand, with the selectors their entry requires, and so are the
// trust domains each entry federates with. Like the agent's cache, it
// hands a workload the federated bundles (X.509 and JWT) of the trust
// domains its matching entries federate with, and no others. It also
// serves JWT bundles (JWTBundles); a test that needs JWT-SVIDs embeds it
// in a type that adds FetchJWTSVIDs. It is safe for concurrent use.
type MemoryCache struct {
	mu        sync.Mutex
	bundle    *x509bundle.Bundle
	federated map[spiffeid.TrustDomain]*x509bundle.Bundle
	jwtBundle *jwtbundle.Bundle
	fedJWT    map[spiffeid.TrustDomain]*jwtbundle.Bundle
	entries   map[string]memEntry
	// federatesWith are the trust domains each entry federates with, by
	// entry ID; kept apart from entries so that either may be set first.
	federatesWith map[string][]spiffeid.TrustDomain
	subs          map[*memSub]struct{}
	// snaps are the snapshots handed out since the last change, by
	// canonical selector set (memSelectorKey), shared by every workload
	// with that set as the agent's cache shares them; emptied on every
	// change.
	snaps map[string]*X509Snapshot
	// jwtChanged is closed and replaced on every change.
	jwtChanged chan struct{}
}

type memEntry struct {
	selectors []*sigilv1.Selector
	id        X509Identity
}

var _ Cache = (*MemoryCache)(nil)

// NewMemoryCache returns an empty MemoryCache.
func NewMemoryCache() *MemoryCache {
	return &MemoryCache{
		federated:     make(map[spiffeid.TrustDomain]*x509bundle.Bundle),
		fedJWT:        make(map[spiffeid.TrustDomain]*jwtbundle.Bundle),
		entries:       make(map[string]memEntry),
		federatesWith: make(map[string][]spiffeid.TrustDomain),
		subs:          make(map[*memSub]struct{}),
		snaps:         make(map[string]*X509Snapshot),
		jwtChanged:    make(chan struct{}),
	}
}

// SetJWTBundle sets the agent's own trust domain JWT bundle.
func (c *MemoryCache) SetJWTBundle(b *jwtbundle.Bundle) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.jwtBundle = b
	c.notifyLocked()
}

// SetFederatedJWTBundle sets (or, with nil, removes) the JWT bundle of a
// federated trust domain.
func (c *MemoryCache) SetFederatedJWTBundle(td spiffeid.TrustDomain, b *jwtbundle.Bundle) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if b == nil {
		delete(c.fedJWT, td)
	} else {
		c.fedJWT[td] = b
	}
	c.notifyLocked()
}

// SetFederatesWith sets the trust domains that entry entryID federates
// with (none: it federates with no one); the workloads it matches get
// those trust domains' federated bundles.
func (c *MemoryCache) SetFederatesWith(entryID string, tds ...spiffeid.TrustDomain) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(tds) == 0 {
		delete(c.federatesWith, entryID)
	} else {
		c.federatesWith[entryID] = slices.Clone(tds)
	}
	c.notifyLocked()
}

// JWTBundles returns the own JWT bundle and the federated JWT bundles of
// the trust domains that the entries the selectors match federate with,
// and a channel closed on the cache's next change. It is
// JWTCache.JWTBundles.
func (c *MemoryCache) JWTBundles(selectors []*sigilv1.Selector) (map[spiffeid.TrustDomain]*jwtbundle.Bundle, <-chan struct{}) {
	have := selectorSet(selectors)
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[spiffeid.TrustDomain]*jwtbundle.Bundle)
	if c.jwtBundle != nil {
		out[c.jwtBundle.TrustDomain()] = c.jwtBundle
	}
	for _, td := range c.federatesWithLocked(have) {
		if b := c.fedJWT[td]; b != nil {
			out[td] = b
		}
	}
	return out, c.jwtChanged
}

// federatesWithLocked returns the trust domains that the entries matching
// have federate with.
func (c *MemoryCache) federatesWithLocked(have map[selectorKey]struct{}) []spiffeid.TrustDomain {
	var tds []spiffeid.TrustDomain
	for id, e := range c.entries {
		if fw := c.federatesWith[id]; len(fw) > 0 && matches(e.selectors, have) {
			tds = append(tds, fw...)
		}
	}
	return tds
}

// SetBundle sets the agent's own trust domain bundle.
func (c *MemoryCache) SetBundle(b *x509bundle.Bundle) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.bundle = b
	c.notifyLocked()
}

// SetFederatedBundle sets (or, with nil, removes) the X.509 bundle of a
// federated trust domain; the workloads whose entries federate with it
// (SetFederatesWith) get it.
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
	set := selectorSet(selectors)
	sub := &memSub{cache: c, selectors: set, key: memSelectorKey(set), ch: make(chan *X509Snapshot, 1)}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.subs[sub] = struct{}{}
	sub.ch <- c.sharedSnapshotLocked(sub)
	return sub
}

// sharedSnapshotLocked returns the snapshot for sub's selectors, the one
// already handed out since the last change if there is one.
func (c *MemoryCache) sharedSnapshotLocked(sub *memSub) *X509Snapshot {
	if snap := c.snaps[sub.key]; snap != nil {
		return snap
	}
	snap := c.snapshotLocked(sub.selectors)
	if len(c.snaps) >= 1024 {
		clear(c.snaps)
	}
	c.snaps[sub.key] = snap
	return snap
}

// memSelectorKey is a canonical, unambiguous encoding of a selector set:
// each selector's type and value, length-prefixed, in sorted order.
func memSelectorKey(set map[selectorKey]struct{}) string {
	keys := slices.SortedFunc(maps.Keys(set), func(a, b selectorKey) int {
		if c := strings.Compare(a.typ, b.typ); c != 0 {
			return c
		}
		return strings.Compare(a.value, b.value)
	})
	var b []byte
	for _, k := range keys {
		b = binary.AppendUvarint(b, uint64(len(k.typ)))
		b = append(b, k.typ...)
		b = binary.AppendUvarint(b, uint64(len(k.value)))
		b = append(b, k.value...)
	}
	return string(b)
}

type selectorKey struct{ typ, value string }

func selectorSet(selectors []*sigilv1.Selector) map[selectorKey]struct{} {
	set := make(map[selectorKey]struct{}, len(selectors))
	for _, s := range selectors {
		set[selectorKey{s.GetType(), s.GetValue()}] = struct{}{}
	}
	return set
}

func (c *MemoryCache) notifyLocked() {
	close(c.jwtChanged)
	c.jwtChanged = make(chan struct{})
	clear(c.snaps)
	for sub := range c.subs {
		snap := c.sharedSnapshotLocked(sub)
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
	for _, td := range c.federatesWithLocked(have) {
		if b := c.federated[td]; b != nil {
			if snap.Federated == nil {
				snap.Federated = make(map[spiffeid.TrustDomain]*x509bundle.Bundle)
			}
			snap.Federated[td] = b
		}
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
	key       string // memSelectorKey(selectors)
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
