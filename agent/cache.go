package agent

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/registration"
	"github.com/sigil-id/sigil/workloadapi"
)

// cache is the agent's store of entries, SVIDs and bundles, as the
// Workload API and the agent's loops see it. It is a thin wrapper: one
// mutex around the X.509 state (x509state.go) and the subscriptions
// (subscriptions.go), which it turns into log lines, snapshots for
// subscribers and wake-ups of the minting loop; and the JWT cache
// (jwt.go), which has its own lock.
//
// Lock order: cache.mu, then jwtCache.mu; the JWT cache never calls back
// into the cache while holding its own lock.
type cache struct {
	log *zap.Logger
	clk clock.Clock
	td  spiffeid.TrustDomain

	mu   sync.Mutex
	st   x509State
	subs subscriptions
	// bundle is st.bundle, for verifying minted SVIDs without the lock.
	bundle atomic.Pointer[x509bundle.Bundle]
	// verifier verifies minted SVIDs against bundle (leafcheck.go).
	verifier *leafVerifier

	// kick wakes the minting loop; buffered 1.
	kick chan struct{}
	// agentTaint is signalled when the agent's own SVID's signer is
	// tainted; buffered 1.
	agentTaint chan struct{}
	// reportKick wakes the rotation report loop (report.go) when the
	// state of an SVID may have changed; buffered 1.
	reportKick chan struct{}

	jwt *jwtCache

	// met counts minted SVIDs and failed mints (metrics.go).
	met *mintMetrics
	// overLogged is the over-capacity count last logged (guarded by mu).
	overLogged int
}

var (
	_ workloadapi.Cache    = (*cache)(nil)
	_ workloadapi.JWTCache = (*cache)(nil)
)

// newCache returns an empty cache that mints every entry (setPolicy
// bounds it).
func newCache(td spiffeid.TrustDomain, log *zap.Logger, clk clock.Clock) *cache {
	c := &cache{
		log:        log,
		clk:        clk,
		td:         td,
		st:         newX509State(rand.Float64),
		subs:       newSubscriptions(),
		kick:       make(chan struct{}, 1),
		agentTaint: make(chan struct{}, 1),
		reportKick: make(chan struct{}, 1),
		met:        newMintMetrics(),
		verifier:   newLeafVerifier(leafVerifyInterval),
	}
	c.jwt = newJWTCache(td, log, clk, c.jwtTargets)
	return c
}

// setPolicy bounds the cache (svidcache.go).
func (c *cache) setPolicy(p cachePolicy) {
	c.mu.Lock()
	ch := c.st.SetPolicy(p)
	c.settle(ch)
	c.mu.Unlock()
	c.log.Debug("SVID cache bounded", zap.Stringer("policy", p))
	c.report(ch)
}

func (c *cache) wake() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// settle acts on what a transition changed while c.mu is held: the JWT
// cache forgets changed and deleted entries, subscribers get snapshots.
func (c *cache) settle(ch changes) {
	if len(ch.jwtDrop) > 0 {
		gens := make(map[string]uint64, len(ch.jwtDrop))
		for _, id := range ch.jwtDrop {
			gens[id] = c.st.genOf(id) // 0: deleted
		}
		c.jwt.entriesChanged(gens, c.st.genSeq)
	}
	if ch.notify {
		c.subs.notify(&c.st)
	}
	if len(c.st.released) > 0 {
		c.st.Release(c.clk.Now())
	}
	if ch.jwtBundles {
		c.jwt.bundlesChanged()
	}
	// Logged when the excess grows, not on every transition.
	if over := c.st.overCapacity(); over != c.overLogged {
		if over > c.overLogged {
			c.log.Warn("SVIDs of active and eager entries exceed the SVID cache's max_svids; they are kept",
				zap.Int("over", over), zap.Int("max_svids", c.st.policy.max))
		}
		c.overLogged = over
	}
}

// report logs and counts what a transition did and wakes the minting
// loop if it needs to look; c.mu is not held.
func (c *cache) report(ch changes) {
	tainted := 0
	for _, e := range ch.events {
		if e.reason != "" {
			c.met.failed(e.reason)
		}
		id := zap.String("entry_id", e.entryID)
		switch e.kind {
		case evMinted:
			c.met.minted.Inc()
			if ce := c.log.Check(zap.DebugLevel, "SVID received"); ce != nil {
				ce.Write(id,
					zap.String("spiffe_id", e.svid.spiffeID.String()),
					zap.String("serial", e.svid.serialText()),
					zap.Time("expires_at", e.svid.notAfter))
			}
		case evStale:
			c.log.Debug("dropping an SVID minted for an entry that changed or was deleted since", id)
		case evAbandoned:
			c.log.Debug("entry changed or was deleted while its SVID was being minted; the result will be dropped", id)
		case evHeld:
			c.log.Info("minted SVID does not verify against the agent's bundle yet; holding it until a bundle update",
				id, zap.Error(e.err))
		case evFailed:
			c.log.Warn("minting SVID failed", id, zap.Int("failures", e.failures),
				zap.Time("retry_at", e.at), zap.Error(e.err))
		case evDenied:
			c.log.Warn("server refused to mint an SVID for the entry; waiting for the entry to change",
				id, zap.Error(e.err))
		case evExpired:
			c.log.Warn("SVID expired before it could be renewed",
				id, zap.String("spiffe_id", e.svid.spiffeID.String()), zap.Time("expired_at", e.svid.notAfter))
		case evPendingExpired:
			c.log.Warn("minted SVID never verified against the agent's bundle; minting again", id)
		case evTainted:
			tainted++
		case evEvicted:
			c.met.evicted.Inc()
			c.log.Debug("SVID evicted: the SVID cache is full and no workload asked for the entry lately",
				id, zap.String("spiffe_id", e.svid.spiffeID.String()))
		}
	}
	if tainted > 0 {
		c.log.Info("SVIDs signed by a tainted authority are being replaced", zap.Int("svids", tainted))
	}
	if len(ch.events) > 0 || ch.notify {
		c.kickReport()
	}
	if ch.wake {
		c.wake()
	}
}

// GetX509BundleForTrustDomain implements x509bundle.Source with the
// agent's current bundle.
func (c *cache) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.st.bundle == nil {
		return nil, errors.New("agent: no trust bundle yet")
	}
	if td != c.td {
		return nil, fmt.Errorf("agent: no bundle for trust domain %q", td)
	}
	return c.st.bundle, nil
}

// Bundle returns the current bundle (nil before the first one). The
// returned bundle must not be modified.
func (c *cache) Bundle() *x509bundle.Bundle {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st.bundle
}

// Synced reports whether the first full set of entries has arrived.
func (c *cache) Synced() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st.synced
}

// SetBundle replaces the trust bundle. It reports whether it changed.
// SVIDs that were waiting for their CA are checked again.
func (c *cache) SetBundle(b *x509bundle.Bundle) bool {
	c.mu.Lock()
	changed, ch := c.st.SetBundle(b, c.clk.Now())
	c.bundle.Store(c.st.bundle)
	c.settle(ch)
	c.mu.Unlock()
	c.report(ch)
	return changed
}

// SetFederated takes the federated bundles of a sync message: with
// full, bundles are the whole set (the trust domains not among them are
// dropped); otherwise they are upserted and the trust domains removed are
// dropped. A bad bundle (or one for the agent's own trust domain) is
// logged and ignored, keeping the one held before; so is any bundle
// beyond maxFederatedBundles.
func (c *cache) SetFederated(full bool, bundles []*sigilv1.Bundle, removed []string) {
	if !full && len(bundles) == 0 && len(removed) == 0 {
		return
	}
	parsed := make([]*fedBundle, 0, len(bundles))
	var bad []spiffeid.TrustDomain
	for _, pb := range bundles {
		b, err := parseFederated(c.td, pb)
		if err != nil {
			c.log.Error("ignoring bad federated bundle from server; keeping the previous one", zap.Error(err))
			if td, terr := spiffeid.TrustDomainFromString(pb.GetTrustDomain()); terr == nil && td != c.td {
				bad = append(bad, td)
			}
			continue
		}
		parsed = append(parsed, b)
	}
	// In order, so that which bundles are beyond the bound is stable.
	slices.SortFunc(parsed, func(a, b *fedBundle) int { return strings.Compare(a.td.Name(), b.td.Name()) })
	var gone []spiffeid.TrustDomain
	for _, name := range removed {
		if td, err := spiffeid.TrustDomainFromString(name); err == nil {
			gone = append(gone, td)
		}
	}
	c.mu.Lock()
	evs, ch := c.st.SetFederated(full, parsed, bad, gone)
	c.settle(ch)
	n := len(c.st.federated)
	c.mu.Unlock()
	for _, e := range evs {
		td := zap.String("federated_trust_domain", e.td.Name())
		switch e.kind {
		case "ignored":
			c.log.Warn("ignoring federated bundle", td, zap.Error(e.err))
		case "removed":
			c.log.Info("federated bundle removed", td)
		default:
			var nx, nj int
			if e.bundle.x509 != nil {
				nx = len(e.bundle.x509.X509Authorities())
			}
			if e.bundle.jwt != nil {
				nj = len(e.bundle.jwt.JWTAuthorities())
			}
			c.log.Info("federated bundle "+e.kind, td, zap.Uint64("sequence_number", e.bundle.seq),
				zap.Int("x509_authorities", nx), zap.Int("jwt_authorities", nj), zap.Int("federated_bundles", n))
		}
	}
	c.report(ch)
}

// federatedBundles returns the federated bundles held, by trust domain.
func (c *cache) federatedBundles() map[spiffeid.TrustDomain]*fedBundle {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[spiffeid.TrustDomain]*fedBundle, len(c.st.federated))
	for td, b := range c.st.federated {
		out[td] = b
	}
	return out
}

// ReplaceEntries makes entries the agent's full entry set: entries not
// among them are deleted, with their SVIDs and keys. It marks the cache
// synced.
func (c *cache) ReplaceEntries(entries []*sigilv1.Entry) {
	c.replacePacked(packEntries(entries))
}

// replacePacked is ReplaceEntries with packed entries (the sync loop
// packs them as they arrive).
func (c *cache) replacePacked(entries []packedEntry) {
	c.replace(func() changes { return c.st.ReplacePacked(entries) })
}

// replaceStaged is ReplaceEntries with the entries of stage (the sync
// loop stages a full set as it arrives), which it drains.
func (c *cache) replaceStaged(stage *entryStage) {
	c.replace(func() changes { return c.st.ReplaceStaged(stage) })
}

// replace replaces the entry set with replaceSet, which runs under c.mu.
func (c *cache) replace(replaceSet func() changes) {
	c.mu.Lock()
	first := !c.st.synced
	ch := replaceSet()
	c.settle(ch)
	n, _ := c.st.Stats()
	removed := 0
	for _, id := range ch.jwtDrop {
		if !c.st.has(id) {
			removed++
		}
	}
	c.mu.Unlock()
	c.log.Debug("entry set replaced", zap.Int("entries", n), zap.Int("removed", removed), zap.Bool("first", first))
	c.report(ch)
}

// ApplyDelta upserts and deletes entries.
func (c *cache) ApplyDelta(upserted []*sigilv1.Entry, deleted []string) {
	if len(upserted) == 0 && len(deleted) == 0 {
		return
	}
	c.mu.Lock()
	ch := c.st.ApplyDelta(upserted, deleted)
	c.settle(ch)
	c.mu.Unlock()
	c.report(ch)
}

// takeBatch applies the passing of time and marks up to max entries due
// at now as minting (x509State.StartMints). next is the earliest
// time-driven change when every due entry was taken, zero otherwise.
func (c *cache) takeBatch(now time.Time, max int) (jobs []*mintJob, next time.Time) {
	c.mu.Lock()
	ch := c.st.Tick(now)
	jobs, next = c.st.StartMints(now, max, func() map[*entryState]bool { return c.subs.waiting(&c.st) })
	c.settle(ch)
	c.mu.Unlock()
	ch.wake = false // the caller is the minting loop
	c.report(ch)
	return jobs, next
}

// takeNext is what the minting loop takes next: the entries waiting
// workloads need, alone (x509State.StartWaiting; waiting is true), and
// otherwise, when bulk is true, a batch of up to max due entries
// (StartMints, whose next it returns). With bulk false and no waiting
// workload it takes nothing.
func (c *cache) takeNext(now time.Time, max int, bulk bool) (jobs []*mintJob, next time.Time, waiting bool) {
	c.mu.Lock()
	ch := c.st.Tick(now)
	w := func() map[*entryState]bool { return c.subs.waiting(&c.st) }
	if jobs = c.st.StartWaiting(now, max, w); len(jobs) > 0 {
		waiting = true
	} else if bulk {
		// No waiting workload needs a due entry (nothing changed
		// since, under the lock): StartMints need not ask again.
		jobs, next = c.st.StartMints(now, max, nil)
	}
	c.settle(ch)
	c.mu.Unlock()
	ch.wake = false // the caller is the minting loop
	c.report(ch)
	return jobs, next, waiting
}

// takeDue is takeBatch without the next event.
func (c *cache) takeDue(now time.Time, max int) []*mintJob {
	jobs, _ := c.takeBatch(now, max)
	return jobs
}

// nextEvent is the earliest time-driven change among all entries; zero
// when there is none.
func (c *cache) nextEvent() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st.NextEvent()
}

// finish records the outcome of a job. It reports whether an SVID was
// cached.
func (c *cache) finish(job *mintJob, out mintOutcome) bool {
	return c.finishBatch([]*mintJob{job}, []mintOutcome{out}) == 1
}

// finishBatch records the outcomes of jobs (outs[i] belongs to jobs[i]),
// notifies subscribers once, and reports how many SVIDs were cached. The
// SVIDs are checked and verified (checkMints) before the lock is taken.
func (c *cache) finishBatch(jobs []*mintJob, outs []mintOutcome) int {
	now := c.clk.Now()
	bundle := c.bundle.Load()
	results, sampleFailed := checkMints(jobs, outs, c.verifier, bundle, now)
	if sampleFailed {
		c.log.Error("a returned X.509-SVID failed verification although it named a verified issuer; verifying every SVID from now on")
	}
	c.mu.Lock()
	installed, ch := c.st.MintFinished(results, now)
	c.settle(ch)
	c.mu.Unlock()
	c.report(ch)
	return installed
}

// SubscribeX509 implements workloadapi.Cache.
func (c *cache) SubscribeX509(selectors []*sigilv1.Selector) workloadapi.X509Subscription {
	sub := &subscription{
		c:         c,
		selectors: selectors,
		ch:        make(chan *workloadapi.X509Snapshot, 1),
	}
	c.mu.Lock()
	delivered := c.subs.add(sub, &c.st)
	if len(c.st.released) > 0 {
		c.st.Release(c.clk.Now())
	}
	c.mu.Unlock()
	// A workload waiting for SVIDs that are not minted yet: mint them
	// first. A workload served from the cache wakes nothing.
	if !delivered {
		c.wake()
	}
	return sub
}

// stats reports counts for logs and health.
func (c *cache) stats() (entries, svids int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st.Stats()
}

// resetRetries clears the minting backoff of every entry, so that entries
// that failed while no server was reachable are minted again at once.
func (c *cache) resetRetries() {
	c.mu.Lock()
	ch := c.st.ResetRetries()
	c.mu.Unlock()
	c.report(ch)
}

// setAuthorities takes the JWT authorities and the tainted flags of a
// bundle from the server. X.509-SVIDs signed by a newly tainted key
// become due at once; cached JWT-SVIDs of a tainted or removed key are
// dropped. It reports whether the agent's own SVID, signed by authority
// key ID agentAKI, is now signed by a tainted key.
func (c *cache) setAuthorities(pb *sigilv1.Bundle, agentAKI []byte) (agentTainted bool, err error) {
	a, err := parseAuthorities(c.td, pb)
	c.jwt.setAuthorities(a.jwt, a.taintedJWT)
	c.mu.Lock()
	ch := c.st.Tainted(a.taintedX509)
	c.settle(ch)
	c.mu.Unlock()
	c.report(ch)
	return len(agentAKI) > 0 && a.taintedX509[string(agentAKI)], err
}

// jwtTargets returns the entries that selectors match (only those with
// SPIFFE ID spiffeID, when it is not empty), in the order the Workload
// API hands them out.
func (c *cache) jwtTargets(sels registration.SelectorSet, spiffeID string) []jwtTarget {
	c.mu.Lock()
	defer c.mu.Unlock()
	var targets []jwtTarget
	for _, st := range c.st.matchEntries(sels) {
		e, id := &st.entry, st.entry.id
		if spiffeID != "" && e.GetSpiffeId() != spiffeID {
			continue
		}
		sid, err := spiffeid.FromString(e.GetSpiffeId())
		if err != nil {
			continue
		}
		targets = append(targets, jwtTarget{entryID: id, gen: st.gen, spiffeID: sid, hint: e.GetHint(), createdAt: e.GetCreatedAt()})
	}
	return targets
}
