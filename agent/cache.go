package agent

import (
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/registration"
	"github.com/sigil-id/sigil/workloadapi"
)

// pendingWait is how long a returned SVID whose CA is not yet in the
// agent's bundle is kept waiting for a bundle update before the agent
// gives up on it and mints again.
const pendingWait = 30 * time.Second

// Backoff of per-entry minting errors.
const (
	mintRetryBase = time.Second
	mintRetryMax  = time.Minute
)

// entryFingerprint is what an SVID depends on: when any of it changes the
// SVID is minted again.
type entryFingerprint struct {
	revision int64
	spiffeID string
	ttl      int32
	dnsNames string
}

func fingerprintOf(e *sigilv1.Entry) entryFingerprint {
	return entryFingerprint{
		revision: e.GetRevision(),
		spiffeID: e.GetSpiffeId(),
		ttl:      e.GetX509SvidTtl(),
		dnsNames: strings.Join(e.GetDnsNames(), "\x00"),
	}
}

// svid is one X.509-SVID with its private key, which never leaves the
// agent's memory.
type svid struct {
	seq       uint64
	spiffeID  spiffeid.ID
	chain     []*x509.Certificate
	key       crypto.Signer
	chainDER  []byte // concatenated DER of chain
	keyDER    []byte // PKCS#8 DER of key
	mintedFor entryFingerprint
	renewAt   time.Time
	notAfter  time.Time
	// tainted is set when the key that signed the SVID is tainted in the
	// bundle: it is replaced at once.
	tainted bool
}

// entryState is one registration entry and the minting state of its SVID.
type entryState struct {
	entry *sigilv1.Entry
	fp    entryFingerprint
	svid  *svid
	// pending is a minted SVID whose chain did not verify against the
	// bundle the agent had when it arrived; it waits for a bundle update.
	pending      *svid
	pendingSince time.Time
	// denied is set when the server refused the entry with
	// PermissionDenied; it stays until the entry changes.
	denied   bool
	failures int
	retryAt  time.Time
	inflight bool
}

// servable returns the SVID the agent may hand out for the entry, or nil.
func (st *entryState) servable() *svid {
	if st.svid == nil || st.svid.spiffeID.String() != st.entry.GetSpiffeId() {
		return nil
	}
	return st.svid
}

// due reports whether the entry needs a new SVID now and may be sent.
func (st *entryState) due(now time.Time) bool {
	if st.inflight || st.denied {
		return false
	}
	if now.Before(st.retryAt) {
		return false
	}
	if st.pending != nil && st.pending.mintedFor == st.fp && now.Before(st.pendingSince.Add(pendingWait)) {
		return false
	}
	if st.svid == nil || st.svid.mintedFor != st.fp || st.svid.tainted {
		return true
	}
	return !now.Before(st.svid.renewAt)
}

// nextEvent is the earliest time at which the entry's state changes by
// the passing of time alone (expiry, pending timeout, becoming due for
// minting); zero when there is none. A zero due time (due at once) is left
// out: takeDue has already taken such entries when minting capacity was
// free.
func (st *entryState) nextEvent() time.Time {
	var t time.Time
	min := func(c time.Time) {
		if !c.IsZero() && (t.IsZero() || c.Before(t)) {
			t = c
		}
	}
	later := func(a, b time.Time) time.Time {
		if b.After(a) {
			return b
		}
		return a
	}
	if st.svid != nil {
		min(st.svid.notAfter)
	}
	if st.pending != nil {
		min(st.pendingSince.Add(pendingWait))
	}
	if st.inflight || st.denied {
		return t
	}
	d := st.retryAt
	if st.svid != nil && st.svid.mintedFor == st.fp && !st.svid.tainted {
		d = later(d, st.svid.renewAt)
	}
	if st.pending != nil && st.pending.mintedFor == st.fp {
		d = later(d, st.pendingSince.Add(pendingWait))
	}
	min(d)
	return t
}

// cache holds the agent's entries, their SVIDs and the trust bundle, and
// implements workloadapi.Cache for the Workload API server.
type cache struct {
	log *zap.Logger
	clk clock.Clock
	td  spiffeid.TrustDomain

	mu             sync.Mutex
	entries        map[string]*entryState
	peakEntries    int
	entriesVersion uint64
	synced         bool
	bundle         *x509bundle.Bundle
	bundleVersion  uint64
	svidSeq        uint64
	subs           map[*subscription]struct{}

	// kick wakes the minting loop; buffered 1.
	kick chan struct{}

	// JWT part (jwt.go), guarded by mu.
	jwt jwtState
}

var _ workloadapi.Cache = (*cache)(nil)

// newCache returns an empty cache.
func newCache(td spiffeid.TrustDomain, log *zap.Logger, clk clock.Clock) *cache {
	return &cache{
		log:     log,
		clk:     clk,
		td:      td,
		entries: make(map[string]*entryState),
		subs:    make(map[*subscription]struct{}),
		kick:    make(chan struct{}, 1),
		jwt:     newJWTState(),
	}
}

func (c *cache) wake() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// GetX509BundleForTrustDomain implements x509bundle.Source with the
// agent's current bundle.
func (c *cache) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.bundle == nil {
		return nil, errors.New("agent: no trust bundle yet")
	}
	if td != c.td {
		return nil, fmt.Errorf("agent: no bundle for trust domain %q", td)
	}
	return c.bundle, nil
}

// Bundle returns the current bundle (nil before the first one). The
// returned bundle must not be modified.
func (c *cache) Bundle() *x509bundle.Bundle {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bundle
}

// Synced reports whether the first full set of entries has arrived.
func (c *cache) Synced() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.synced
}

// SetBundle replaces the trust bundle. It reports whether it changed.
// SVIDs that were waiting for their CA are checked again.
func (c *cache) SetBundle(b *x509bundle.Bundle) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.bundle != nil && c.bundle.Equal(b) {
		return false
	}
	c.bundle = b.Clone()
	c.bundleVersion++
	now := c.clk.Now()
	for id, st := range c.entries {
		if st.pending == nil {
			continue
		}
		if st.pending.mintedFor != st.fp {
			st.pending = nil
			continue
		}
		if _, _, err := x509svid.Verify(st.pending.chain, c.bundle, x509svid.WithTime(now)); err != nil {
			c.log.Debug("SVID still does not verify against the new bundle", zap.String("entry_id", id), zap.Error(err))
			continue
		}
		c.promoteLocked(id, st, st.pending)
		st.pending = nil
	}
	c.notifyLocked()
	c.wake()
	return true
}

// ReplaceEntries makes entries the agent's full entry set: entries not
// among them are deleted, with their SVIDs and keys. It marks the cache
// synced.
func (c *cache) ReplaceEntries(entries []*sigilv1.Entry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	next := make(map[string]*entryState, len(entries))
	for _, e := range entries {
		if e.GetId() == "" {
			continue
		}
		st := c.entries[e.GetId()]
		if st == nil {
			st = &entryState{}
		}
		c.updateEntryLocked(st, e)
		next[e.GetId()] = st
	}
	removed := 0
	for id := range c.entries {
		if _, ok := next[id]; !ok {
			removed++
			c.dropJWTLocked(id)
		}
	}
	c.entries = next
	c.peakEntries = len(next)
	c.entriesVersion++
	first := !c.synced
	c.synced = true
	c.log.Debug("entry set replaced", zap.Int("entries", len(next)), zap.Int("removed", removed), zap.Bool("first", first))
	c.notifyLocked()
	c.wake()
}

// ApplyDelta upserts and deletes entries.
func (c *cache) ApplyDelta(upserted []*sigilv1.Entry, deleted []string) {
	if len(upserted) == 0 && len(deleted) == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range upserted {
		if e.GetId() == "" {
			continue
		}
		st := c.entries[e.GetId()]
		if st == nil {
			st = &entryState{}
			c.entries[e.GetId()] = st
		}
		c.updateEntryLocked(st, e)
	}
	for _, id := range deleted {
		delete(c.entries, id)
		c.dropJWTLocked(id)
	}
	if len(c.entries) > c.peakEntries {
		c.peakEntries = len(c.entries)
	}
	// Go maps never shrink: rebuild after large deletions so that the
	// memory of deleted entries is returned.
	if c.peakEntries > 1024 && len(c.entries) < c.peakEntries/2 {
		c.entries = cloneEntries(c.entries)
		c.peakEntries = len(c.entries)
	}
	c.entriesVersion++
	c.notifyLocked()
	c.wake()
}

func cloneEntries(m map[string]*entryState) map[string]*entryState {
	n := make(map[string]*entryState, len(m))
	for k, v := range m {
		n[k] = v
	}
	return n
}

func (c *cache) updateEntryLocked(st *entryState, e *sigilv1.Entry) {
	if st.entry != nil && proto.Equal(st.entry, e) {
		return
	}
	if st.entry != nil {
		// A changed entry (SPIFFE ID, JWT TTL) gets new JWT-SVIDs.
		c.dropJWTLocked(e.GetId())
	}
	st.entry = e
	st.fp = fingerprintOf(e)
	st.denied = false
	st.failures = 0
	st.retryAt = time.Time{}
	if st.pending != nil && st.pending.mintedFor != st.fp {
		st.pending = nil
	}
}

// promoteLocked caches a verified SVID for an entry.
func (c *cache) promoteLocked(id string, st *entryState, s *svid) {
	c.svidSeq++
	s.seq = c.svidSeq
	st.svid = s
	st.failures = 0
	st.retryAt = time.Time{}
	leaf := s.chain[0]
	c.log.Debug("SVID received",
		zap.String("entry_id", id),
		zap.String("spiffe_id", s.spiffeID.String()),
		zap.String("serial", leaf.SerialNumber.Text(16)),
		zap.Time("expires_at", leaf.NotAfter))
}

// expireLocked drops SVIDs that have expired: they are no longer handed
// out, and the entry is minted again.
func (c *cache) expireLocked(now time.Time) {
	changed := false
	for id, st := range c.entries {
		if st.svid != nil && !now.Before(st.svid.notAfter) {
			c.log.Warn("SVID expired before it could be renewed",
				zap.String("entry_id", id), zap.String("spiffe_id", st.svid.spiffeID.String()),
				zap.Time("expired_at", st.svid.notAfter))
			st.svid = nil
			changed = true
		}
		if st.pending != nil && !now.Before(st.pendingSince.Add(pendingWait)) {
			c.log.Warn("minted SVID never verified against the agent's bundle; minting again",
				zap.String("entry_id", id))
			st.pending = nil
			st.failures++
			st.retryAt = now.Add(backoff(mintRetryBase, mintRetryMax, st.failures-1))
		}
	}
	if changed {
		c.notifyLocked()
	}
}

// mintJob is one entry sent for minting.
type mintJob struct {
	id  string
	st  *entryState
	fp  entryFingerprint
	key crypto.Signer
}

// takeDue marks up to max due entries in flight and returns them, entries
// that a waiting workload needs first, then entries with no SVID, then
// renewals in order of their renewal time.
func (c *cache) takeDue(now time.Time, max int) []*mintJob {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.expireLocked(now)
	type cand struct {
		id      string
		st      *entryState
		rank    int
		renewAt time.Time
	}
	var due []cand
	for id, st := range c.entries {
		if st.due(now) {
			due = append(due, cand{id: id, st: st, rank: 2})
		}
	}
	if len(due) == 0 {
		return nil
	}
	waiting := make(map[*entryState]bool)
	for sub := range c.subs {
		c.matchLocked(sub)
		for _, st := range sub.matched {
			if st.servable() == nil {
				waiting[st] = true
			}
		}
	}
	for i := range due {
		d := &due[i]
		switch {
		case waiting[d.st]:
			d.rank = 0
		case d.st.servable() == nil:
			d.rank = 1
		default:
			d.renewAt = d.st.svid.renewAt
		}
	}
	slices.SortFunc(due, func(a, b cand) int {
		if a.rank != b.rank {
			return a.rank - b.rank
		}
		if r := a.renewAt.Compare(b.renewAt); r != 0 {
			return r
		}
		return strings.Compare(a.id, b.id)
	})
	if len(due) > max {
		due = due[:max]
	}
	jobs := make([]*mintJob, len(due))
	for i, d := range due {
		d.st.inflight = true
		jobs[i] = &mintJob{id: d.id, st: d.st, fp: d.st.fp}
	}
	return jobs
}

// nextEvent is the earliest time-driven change among all entries; zero
// when there is none.
func (c *cache) nextEvent() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	var t time.Time
	for _, st := range c.entries {
		if n := st.nextEvent(); !n.IsZero() && (t.IsZero() || n.Before(t)) {
			t = n
		}
	}
	return t
}

// mintOutcome is the result of minting one job.
type mintOutcome struct {
	chain  []*x509.Certificate
	err    error
	denied bool
}

// finish records the outcome of a job. It reports whether an SVID was
// cached.
func (c *cache) finish(job *mintJob, out mintOutcome) bool {
	return c.finishBatch([]*mintJob{job}, []mintOutcome{out}) == 1
}

// verified is a minted SVID checked against a job and a bundle outside the
// cache lock: chain verification is the agent's most expensive step and
// must not serialize every other cache user.
type verified struct {
	s      *svid
	err    error // from checkSVID
	bundle *x509bundle.Bundle
	verErr error // from verifying against bundle
}

// finishBatch records the outcomes of jobs (outs[i] belongs to jobs[i]),
// notifies subscribers once, and reports how many SVIDs were cached.
func (c *cache) finishBatch(jobs []*mintJob, outs []mintOutcome) int {
	c.mu.Lock()
	bundle := c.bundle
	now := c.clk.Now()
	c.mu.Unlock()

	pre := make([]verified, len(jobs))
	for i, job := range jobs {
		if outs[i].err != nil || outs[i].denied {
			continue
		}
		pre[i].s, pre[i].err = c.checkSVID(job, outs[i].chain)
		if pre[i].err == nil && bundle != nil {
			pre[i].bundle = bundle
			_, _, pre[i].verErr = x509svid.Verify(pre[i].s.chain, bundle, x509svid.WithTime(now))
		}
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	defer c.wake()
	cached := 0
	for i, job := range jobs {
		if c.finishLocked(job, outs[i], pre[i]) {
			cached++
		}
	}
	if cached > 0 {
		c.notifyLocked()
	}
	return cached
}

func (c *cache) finishLocked(job *mintJob, out mintOutcome, pre verified) bool {
	st := job.st
	st.inflight = false
	if c.entries[job.id] != st {
		return false // deleted meanwhile; drop the key with the job
	}
	now := c.clk.Now()
	if out.denied {
		if st.fp == job.fp {
			st.denied = true
			c.log.Warn("server refused to mint an SVID for the entry; waiting for the entry to change",
				zap.String("entry_id", job.id), zap.Error(out.err))
		}
		return false
	}
	fail := func(err error) bool {
		st.failures++
		st.retryAt = now.Add(backoff(mintRetryBase, mintRetryMax, st.failures-1))
		c.log.Warn("minting SVID failed", zap.String("entry_id", job.id), zap.Int("failures", st.failures),
			zap.Time("retry_at", st.retryAt), zap.Error(err))
		return false
	}
	if out.err != nil {
		return fail(out.err)
	}
	if pre.err != nil {
		return fail(pre.err)
	}
	s := pre.s
	if c.bundle == nil {
		st.pending, st.pendingSince = s, now
		return false
	}
	verErr := pre.verErr
	if pre.bundle != c.bundle {
		// The bundle changed while we verified: check against the new one.
		_, _, verErr = x509svid.Verify(s.chain, c.bundle, x509svid.WithTime(now))
	}
	if verErr != nil {
		c.log.Info("minted SVID does not verify against the agent's bundle yet; holding it until a bundle update",
			zap.String("entry_id", job.id), zap.Error(verErr))
		st.pending, st.pendingSince = s, now
		return false
	}
	st.pending = nil
	c.promoteLocked(job.id, st, s)
	return true
}

// checkSVID checks a returned chain against the job: its leaf carries the
// job's public key and the entry's SPIFFE ID.
func (c *cache) checkSVID(job *mintJob, chain []*x509.Certificate) (*svid, error) {
	if len(chain) == 0 {
		return nil, errors.New("server returned an empty chain")
	}
	leaf := chain[0]
	id, err := x509svid.IDFromCert(leaf)
	if err != nil {
		return nil, fmt.Errorf("returned SVID: %w", err)
	}
	if id.String() != job.fp.spiffeID {
		return nil, fmt.Errorf("returned SVID has ID %q, want %q", id, job.fp.spiffeID)
	}
	if !publicKeyEqual(leaf.PublicKey, job.key.Public()) {
		return nil, errors.New("returned SVID does not carry the agent's public key")
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(job.key)
	if err != nil {
		return nil, fmt.Errorf("encoding the SVID key: %w", err)
	}
	var chainDER []byte
	for _, c := range chain {
		chainDER = append(chainDER, c.Raw...)
	}
	return &svid{
		spiffeID:  id,
		chain:     chain,
		key:       job.key,
		chainDER:  chainDER,
		keyDER:    keyDER,
		mintedFor: job.fp,
		renewAt:   renewAt(leaf.NotBefore, leaf.NotAfter),
		notAfter:  leaf.NotAfter,
	}, nil
}

func publicKeyEqual(a, b crypto.PublicKey) bool {
	ea, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ea.Equal(b)
}

// SubscribeX509 implements workloadapi.Cache.
func (c *cache) SubscribeX509(selectors []*sigilv1.Selector) workloadapi.X509Subscription {
	sub := &subscription{
		c:    c,
		sels: registration.NewSelectorSet(selectors),
		ch:   make(chan *workloadapi.X509Snapshot, 1),
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.subs[sub] = struct{}{}
	c.updateSubLocked(sub)
	// A workload waiting for SVIDs that are not minted yet: mint them
	// first. A workload served from the cache wakes nothing.
	if !sub.delivered {
		c.wake()
	}
	return sub
}

type subscription struct {
	c    *cache
	sels registration.SelectorSet
	ch   chan *workloadapi.X509Snapshot

	// Guarded by c.mu.
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
	delete(s.c.subs, s)
	s.matched = nil
}

// matchLocked brings the subscription's matched entries up to date.
func (c *cache) matchLocked(sub *subscription) {
	if sub.matchValid && sub.matchVersion == c.entriesVersion {
		return
	}
	sub.matched = sub.matched[:0]
	for _, st := range c.entries {
		if sub.sels.Contains(st.entry.GetSelectors()) {
			sub.matched = append(sub.matched, st)
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
	sub.matchVersion = c.entriesVersion
	sub.matchValid = true
}

func (c *cache) notifyLocked() {
	for sub := range c.subs {
		c.updateSubLocked(sub)
	}
}

// updateSubLocked sends the subscription a snapshot if it is ready and
// differs from the last one sent.
func (c *cache) updateSubLocked(sub *subscription) {
	c.matchLocked(sub)
	if c.bundle == nil || !c.synced {
		return
	}
	ids := make([]workloadapi.X509Identity, 0, len(sub.matched))
	var fp strings.Builder
	fp.WriteString(strconv.FormatUint(c.bundleVersion, 10))
	complete := true
	for _, st := range sub.matched {
		s := st.servable()
		if s == nil {
			complete = false
			continue
		}
		ids = append(ids, workloadapi.X509Identity{
			EntryID:    st.entry.GetId(),
			SPIFFEID:   s.spiffeID,
			Chain:      s.chain,
			PrivateKey: s.key,
			ChainDER:   s.chainDER,
			KeyDER:     s.keyDER,
			Hint:       st.entry.GetHint(),
		})
		fp.WriteByte('|')
		fp.WriteString(st.entry.GetId())
		fp.WriteByte(':')
		fp.WriteString(strconv.FormatUint(s.seq, 10))
		fp.WriteByte(':')
		fp.WriteString(st.entry.GetHint())
	}
	if !sub.delivered && !complete {
		return
	}
	if sub.delivered && fp.String() == sub.last {
		return
	}
	snap := &workloadapi.X509Snapshot{Identities: ids, Bundle: c.bundle}
	// Latest wins: replace a snapshot the workload has not taken yet.
	select {
	case <-sub.ch:
	default:
	}
	sub.ch <- snap
	sub.delivered = true
	sub.last = fp.String()
}

// stats reports counts for logs and health.
func (c *cache) stats() (entries, svids int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, st := range c.entries {
		if st.svid != nil {
			svids++
		}
	}
	return len(c.entries), svids
}

// resetRetries clears the minting backoff of every entry, so that entries
// that failed while no server was reachable are minted again at once.
func (c *cache) resetRetries() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, st := range c.entries {
		st.failures = 0
		st.retryAt = time.Time{}
	}
	c.wake()
}
