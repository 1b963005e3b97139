package agent

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/protobuf/encoding/protowire"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// This file holds the agent's X.509 minting state: the registration
// entries, the SVID of each and the trust bundle. x509State is a plain
// value: no lock, no I/O, no goroutines, and the time is an argument of
// every transition that depends on it. The cache (cache.go) wraps it in
// one mutex; the scenario tests (scenario_test.go) drive it directly.
//
// Each entry is in one phase (see phase). The transitions are the methods
// of x509State; each reports what changed in a changes value, which the
// cache turns into log lines, subscriber updates and wake-ups of the
// minting loop.

// pendingWait is how long a returned SVID whose CA is not yet in the
// agent's bundle is kept waiting for a bundle update before the agent
// gives up on it and mints again.
const pendingWait = 30 * time.Second

// Backoff of per-entry minting errors.
const (
	mintRetryBase = time.Second
	mintRetryMax  = time.Minute
)

// phase is where one entry's X.509-SVID stands. Its transitions:
//
//	no-svid, due, tainted --StartMints--> minting (an older SVID is still served)
//	minting --MintFinished ok--> valid
//	minting --MintFinished error, denial, or SVID held for its CA--> the phase it left
//	minting (in a large batch) --StartWaiting for a waiting workload--> minting alone; the batch's result is dropped
//	held SVID --SetBundle with its CA--> valid
//	valid --now passes renewAt--> due
//	valid, due --Tainted(its signer)--> tainted
//	valid, due, tainted --now passes notAfter--> no-svid (Tick drops the SVID)
//	any --entry changed--> due (same SPIFFE ID) or no-svid; a mint in flight is abandoned
//	any --entry deleted--> gone; a mint in flight is abandoned
//
// An abandoned or superseded mint's result is dropped when it comes back:
// jobs carry the entry's generation (entryState.gen) and take
// (entryState.take). Backoff after errors, a denial and
// a held SVID are attributes that keep a no-svid or due entry from being
// minted until they clear.
type phase uint8

const (
	// phaseNoSVID: nothing to hand out. The entry is minted unless it backs
	// off after an error, was denied by the server or holds a minted SVID
	// that waits for its CA to reach the bundle.
	phaseNoSVID phase = iota
	// phaseMinting: a mint is in flight. An older SVID, if any, is still
	// handed out.
	phaseMinting
	// phaseValid: the SVID is handed out and not due for renewal.
	phaseValid
	// phaseDue: the SVID is handed out but is past its renewal time or
	// was minted for an older version of the entry; it is minted again
	// unless it backs off or holds an SVID waiting for its CA.
	phaseDue
	// phaseTainted: the SVID is handed out but was signed by a tainted
	// authority; it is replaced at once.
	phaseTainted
)

func (p phase) String() string {
	switch p {
	case phaseNoSVID:
		return "no-svid"
	case phaseMinting:
		return "minting"
	case phaseValid:
		return "valid"
	case phaseDue:
		return "due"
	case phaseTainted:
		return "tainted"
	}
	return fmt.Sprintf("phase(%d)", uint8(p))
}

// entryFingerprint is what an SVID depends on: when any of it changes the
// SVID is minted again.
type entryFingerprint struct {
	revision int64
	spiffeID string
	ttl      int32
	dnsNames string
}

func fingerprintOf(e *packedEntry) entryFingerprint {
	fp := entryFingerprint{spiffeID: e.spiffeID}
	var dns []string
	e.fields(func(n protowire.Number, v string, x uint64) bool {
		switch n {
		case fieldRevision:
			fp.revision = int64(x)
		case fieldX509SVIDTTL:
			fp.ttl = int32(x)
		case fieldDNSNames:
			dns = append(dns, v)
		}
		return true
	})
	if len(dns) > 0 {
		fp.dnsNames = strings.Join(dns, "\x00")
	}
	return fp
}

// svid is one X.509-SVID with its private key, which never leaves the
// agent's memory. An installed SVID keeps only the DER of its chain and
// key and the few fields the agent reads (about 0.8 KiB for a P-256 SVID,
// against about 4.5 KiB with the parsed certificate and key): the
// Workload API serves the DER as it is, and the rare users of the parsed
// forms (SDS, svid_files) parse them from the DER
// (workloadapi.X509Identity.Certificates and Signer).
type svid struct {
	seq      uint64
	spiffeID spiffeid.ID
	chainDER []byte // concatenated DER of the chain, leaf first
	keyDER   []byte // PKCS#8 DER of the key
	// serial is the leaf's serial number (big-endian) and aki its
	// AuthorityKeyId (a slice of chainDER).
	serial    []byte
	aki       []byte
	notBefore time.Time
	mintedFor entryFingerprint
	renewAt   time.Time
	notAfter  time.Time
	// verifyChain is the parsed chain while the SVID is checked and,
	// for an SVID held for its CA (entryState.pending), until it
	// verifies; nil once installed.
	verifyChain []*x509.Certificate
	// tainted is set when the key that signed the SVID is tainted in the
	// bundle: it is replaced at once.
	tainted bool
}

// serialText is the leaf's serial number in hex, as logs and reports
// show it.
func (s *svid) serialText() string {
	return new(big.Int).SetBytes(s.serial).Text(16)
}

// entryState is one registration entry and the minting state of its SVID.
type entryState struct {
	entry packedEntry
	fp    entryFingerprint
	// gen identifies this version of the entry: it is new (from
	// x509State.genSeq, so never reused) whenever the entry is added or
	// changes. A mint started for an older generation is stale.
	gen  uint64
	svid *svid
	// pending is a minted SVID whose chain did not verify against the
	// bundle the agent had when it arrived; it waits for a bundle update.
	pending      *svid
	pendingSince time.Time
	failures     int
	retryAt      time.Time
	// lastAttempt is when a mint for the entry last started; lastError
	// is why the last attempt failed ("" when it succeeded or none
	// failed) and failStreak counts the attempts that failed in a row.
	// Unlike failures (which drives the backoff and is cleared when the
	// agent reconnects) they are cleared only by a successful mint. The
	// agent's rotation reports carry them (report.go).
	lastAttempt time.Time
	lastError   string
	failStreak  int

	// The bounded cache (svidcache.go), its fields ordered to leave no
	// padding: this struct is the bulk of an entry's memory. refs counts
	// the subscriptions that match the entry; it is active while any
	// does and until activeUntil after the last one ended (lastReq).
	activeUntil int64 // unix nanoseconds (nanos); 0 when none
	lastReq     int64
	dueAt       int64 // nanos(dueTime())
	expAt       int64 // nanos(expiryTime())
	refs        int32
	// idxSel is 1 + the index in entry.sels of the selector the entry is
	// filed under in the selector index (0: not filed), idxPos its
	// position there.
	idxSel int32
	idxPos int32
	// Positions in the heaps (1-based, 0 when absent).
	qPos    int32
	exPos   int32
	evPos   int32
	idlePos int32
	q       queue
	rank    uint8
	// take numbers the mints started for the entry (it wraps): a job
	// whose take is not the entry's was superseded (StartWaiting).
	take uint8
	// denied is set when the server refused the entry with
	// PermissionDenied; it stays until the entry changes. inflight: a
	// mint is in flight; quick: in a batch of at most quickBatch entries
	// (or alone for a waiting workload, StartWaiting), which a waiting
	// workload waits for rather than taking the entry again.
	denied   bool
	inflight bool
	quick    bool
	// eager: one of its selectors is an eager selector.
	eager     bool
	active    bool
	released  bool // in x509State.released
	gone      bool // deleted, or gone to the cold tier
	roomTaken bool // counted in x509State.inflightNew
	cooling   bool // in x509State.cooling
	// refd: a subscription matched the entry at some point (the
	// subscriptions' memo may hold it).
	refd bool
}

// attemptFailed records a failed attempt for the rotation reports.
func (st *entryState) attemptFailed(err error) {
	st.failStreak++
	if err != nil {
		st.lastError = err.Error()
	} else {
		st.lastError = "unknown error"
	}
}

// servable returns the SVID the agent may hand out for the entry, or nil.
func (st *entryState) servable() *svid {
	if st.svid == nil || st.svid.spiffeID.String() != st.entry.GetSpiffeId() {
		return nil
	}
	return st.svid
}

// phase is the entry's phase at now.
func (st *entryState) phase(now time.Time) phase {
	if st.inflight {
		return phaseMinting
	}
	s := st.servable()
	switch {
	case s == nil || !now.Before(s.notAfter):
		return phaseNoSVID
	case s.tainted:
		return phaseTainted
	case s.mintedFor != st.fp || !now.Before(s.renewAt):
		return phaseDue
	}
	return phaseValid
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
// out: StartMints has already taken such entries when minting capacity
// was free.
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

// eventKind names what happened to an entry in a transition.
type eventKind uint8

const (
	evMinted         eventKind = iota // an SVID was installed
	evStale                           // a mint result for a changed or deleted entry, or for one minted again alone since, was dropped
	evHeld                            // a minted SVID waits for its CA to reach the bundle
	evFailed                          // minting failed; the entry backs off
	evDenied                          // the server refused the entry until it changes
	evExpired                         // the SVID expired before it could be renewed
	evPendingExpired                  // a held SVID never verified; the entry backs off
	evTainted                         // the SVID's signer was tainted
	evAbandoned                       // the entry changed or was deleted while its mint was in flight
	evEvicted                         // the SVID of an entry no workload asked for lately was dropped: the cache is full
)

func (k eventKind) String() string {
	return [...]string{"minted", "stale", "held", "failed", "denied", "expired", "pending-expired", "tainted", "abandoned", "evicted"}[k]
}

// event is one thing that happened to an entry in a transition.
type event struct {
	kind    eventKind
	entryID string
	svid    *svid // evMinted, evExpired
	err     error // evStale, evHeld, evFailed, evDenied
	// at is the time of the next attempt and failures the count of
	// failures in a row (evFailed, evPendingExpired).
	at       time.Time
	failures int
	// reason is why minting failed, one of the mintFailure constants
	// (evFailed, evDenied, evPendingExpired).
	reason string
}

// changes is what a transition changed, for the state's owner to act on.
type changes struct {
	// notify: entries, SVIDs or the bundle changed; subscribers must be
	// brought up to date.
	notify bool
	// wake: entries may have become due; the minting loop must look.
	wake bool
	// jwtDrop are entries that changed or were deleted: their JWT-SVIDs
	// no longer hold.
	jwtDrop []string
	// jwtBundles: the federated bundles, or the federates_with of an
	// entry, changed: the JWT bundle sets of workloads may differ.
	jwtBundles bool
	// events are what happened to single entries, in order.
	events []event
	// overCapacity is how many SVIDs beyond the cache's size active and
	// eager entries hold after the transition (0: within the size).
	overCapacity int
}

func (c *changes) add(e event) { c.events = append(c.events, e) }

// x509State is the agent's entries, their X.509-SVIDs and the trust
// bundle. It is not safe for concurrent use; the cache guards it.
type x509State struct {
	// entries are the warm entries; cold holds the others (coldtier.go).
	entries     map[string]*entryState
	cold        coldStore
	peakEntries int
	// version counts changes of the entry set (for subscriptions'
	// matching).
	version       uint64
	synced        bool
	bundle        *x509bundle.Bundle
	bundleVersion uint64
	// federated are the federated bundles by trust domain (federated.go);
	// fedSeq numbers their versions.
	federated map[spiffeid.TrustDomain]*fedBundle
	fedSeq    uint64
	svidSeq   uint64
	genSeq    uint64
	// jitter draws the jitter of renewal times and retry backoffs, in
	// [0, 1).
	jitter func() float64

	// The bounded cache and the indexes (svidcache.go).
	policy cachePolicy
	// svids counts the entries with an SVID (st.svid != nil);
	// inflightNew the mints in flight for entries that had none.
	svids       int
	inflightNew int
	bySel       map[string][]*entryState
	strs        internTable
	sched       entryHeap
	due         entryHeap
	spare       entryHeap
	expiry      entryHeap
	evict       entryHeap
	idle        entryHeap
	// released are entries whose last subscription ended, for Release.
	released []*entryState
	// cooling are entries that may go to the cold tier (coolDown);
	// coldOff keeps every entry warm (tests compare the two).
	cooling []*entryState
	coldOff bool
	// maxLead is the longest time between an SVID's renewal time and
	// its NotAfter among every SVID installed so far (it never
	// shrinks): the scrape's bound on the SVIDs that may be late
	// (cache.svidStats).
	maxLead time.Duration
}

// newX509State returns an empty state that draws its jitter from jitter
// and mints every entry (no bound; see SetPolicy).
func newX509State(jitter func() float64) x509State {
	s := x509State{
		entries: make(map[string]*entryState),
		cold:    newColdStore(),
		jitter:  jitter,
		policy:  unboundedPolicy(),
		bySel:   make(map[string][]*entryState),
		strs:    make(internTable),
	}
	newHeaps(&s)
	return s
}

// ReplaceEntries makes entries the full entry set: entries not among them
// are deleted, with their SVIDs and keys. The state is synced from then
// on.
func (s *x509State) ReplaceEntries(entries []*sigilv1.Entry) changes {
	return s.ReplacePacked(packEntries(entries))
}

// packEntries packs entries (those without an ID are left out), for the
// state to intern what they share.
func packEntries(entries []*sigilv1.Entry) []packedEntry {
	out := make([]packedEntry, 0, len(entries))
	for _, e := range entries {
		if e.GetId() != "" {
			out = append(out, packEntry(e, noIntern))
		}
	}
	return out
}

func noIntern(s string) string { return s }

// ReplacePacked is ReplaceEntries with packed entries. Entries that
// arrive cold (coldtier.go) stay in the cold tier.
func (s *x509State) ReplacePacked(entries []packedEntry) changes {
	return s.replace(func(f func(*packedEntry)) {
		for i := range entries {
			f(&entries[i])
		}
	})
}

// ReplaceStaged is ReplaceEntries with the entries of stage, which it
// drains.
func (s *x509State) ReplaceStaged(stage *entryStage) changes {
	return s.replace(stage.drain)
}

// replace makes the entries that each yields the full entry set.
func (s *x509State) replace(each func(func(*packedEntry))) changes {
	var ch changes
	before := len(s.entries)
	seen := make(map[*entryState]struct{}, before)
	// The cold slots held by the new set; slot numbers stay valid while
	// the store is held.
	var marks []uint64
	mark := func(i uint32) {
		for int(i/64) >= len(marks) {
			marks = append(marks, 0)
		}
		marks[i/64] |= 1 << (i % 64)
	}
	s.cold.hold = true
	each(func(pe *packedEntry) {
		if pe.id == "" {
			return
		}
		st, slot, cold := s.upsertAny(pe, &ch)
		if cold {
			mark(slot)
		} else {
			seen[st] = struct{}{}
		}
	})
	for id, st := range s.entries {
		if _, ok := seen[st]; !ok {
			delete(s.entries, id)
			s.deleted(id, st, &ch)
		}
	}
	var gone []uint32
	s.cold.each(func(i uint32) {
		if int(i/64) >= len(marks) || marks[i/64]&(1<<(i%64)) == 0 {
			gone = append(gone, i)
		}
	})
	for _, i := range gone {
		s.coldDeleted(i, &ch)
	}
	s.cold.release()
	if n := len(s.entries); n < before/2 && before > 1024 {
		// Go maps never shrink.
		m := make(map[string]*entryState, n)
		for k, v := range s.entries {
			m[k] = v
		}
		s.entries = m
	}
	s.peakEntries = len(s.entries)
	s.version++
	s.synced = true
	s.evictOver(&ch)
	s.coolDown()
	ch.notify, ch.wake = true, true
	return ch
}

// ApplyDelta upserts and deletes entries.
func (s *x509State) ApplyDelta(upserted []*sigilv1.Entry, deleted []string) changes {
	return s.ApplyPacked(packEntries(upserted), deleted)
}

// ApplyPacked is ApplyDelta with packed entries.
func (s *x509State) ApplyPacked(upserted []packedEntry, deleted []string) changes {
	var ch changes
	if len(upserted) == 0 && len(deleted) == 0 {
		return ch
	}
	for i := range upserted {
		if pe := &upserted[i]; pe.id != "" {
			s.upsertAny(pe, &ch)
		}
	}
	for _, id := range deleted {
		if st, ok := s.entries[id]; ok {
			delete(s.entries, id)
			s.deleted(id, st, &ch)
		} else if slot, ok := s.cold.get(id); ok {
			s.coldDeleted(slot, &ch)
		} else {
			ch.jwtDrop = append(ch.jwtDrop, id)
		}
	}
	if len(s.entries) > s.peakEntries {
		s.peakEntries = len(s.entries)
	}
	// Go maps never shrink: rebuild after large deletions so that the
	// memory of deleted entries is returned.
	if s.peakEntries > 1024 && len(s.entries) < s.peakEntries/2 {
		n := make(map[string]*entryState, len(s.entries))
		for k, v := range s.entries {
			n[k] = v
		}
		s.entries = n
		s.peakEntries = len(n)
	}
	s.version++
	s.evictOver(&ch)
	s.coolDown()
	ch.notify, ch.wake = true, true
	return ch
}

// upsert installs pe as st's entry. A changed entry gets a new generation:
// its mint in flight, if any, is abandoned, and it is minted again.
func (s *x509State) upsert(st *entryState, pe *packedEntry, ch *changes) {
	known := st.gen != 0
	if known && st.entry.equal(pe) {
		return
	}
	if pe.fed || st.entry.fed {
		ch.jwtBundles = true
	}
	if known {
		// A changed entry (SPIFFE ID, JWT TTL) gets new JWT-SVIDs.
		ch.jwtDrop = append(ch.jwtDrop, pe.id)
		if st.inflight {
			ch.add(event{kind: evAbandoned, entryID: pe.id})
		}
	}
	s.genSeq++
	st.gen = s.genSeq
	old := st.entry
	st.entry = s.internEntry(*pe)
	s.releaseEntry(&old)
	st.fp = fingerprintOf(&st.entry)
	s.setInflight(st, false)
	st.denied = false
	st.failures = 0
	st.retryAt = time.Time{}
	if st.pending != nil && st.pending.mintedFor != st.fp {
		st.pending = nil
	}
	s.setSelectors(st, old.sels)
	s.resched(st)
}

// internEntry interns the strings pe shares with other entries (its
// parent and selectors), counting the holders; releaseEntry undoes it.
func (s *x509State) internEntry(pe packedEntry) packedEntry {
	if pe.parent != "" {
		pe.parent = s.strs.intern(pe.parent)
	}
	sels := make([]string, len(pe.sels))
	for i, v := range pe.sels {
		sels[i] = s.strs.intern(v)
	}
	pe.sels = sels
	return pe
}

func (s *x509State) releaseEntry(pe *packedEntry) {
	if pe.parent != "" {
		s.strs.release(pe.parent)
	}
	for _, v := range pe.sels {
		s.strs.release(v)
	}
}

// deleted forgets a deleted entry: it leaves the indexes and the counts.
// Its SVID and key are freed once no snapshot holds them.
func (s *x509State) deleted(id string, st *entryState, ch *changes) {
	ch.jwtDrop = append(ch.jwtDrop, id)
	if st.entry.fed {
		ch.jwtBundles = true
	}
	if st.inflight {
		ch.add(event{kind: evAbandoned, entryID: id})
	}
	s.setInflight(st, false)
	st.gone = true
	s.unindex(st, st.entry.sels)
	s.releaseEntry(&st.entry)
	if st.svid != nil {
		s.svids--
	}
	s.resched(st)
}

// SetBundle replaces the trust bundle at now and reports whether it
// changed. Held SVIDs whose CA is now in the bundle are installed.
func (s *x509State) SetBundle(b *x509bundle.Bundle, now time.Time) (bool, changes) {
	var ch changes
	if s.bundle != nil && s.bundle.Equal(b) {
		return false, ch
	}
	s.bundle = b.Clone()
	s.bundleVersion++
	for _, st := range s.timed(func(st *entryState) bool { return st.pending != nil }) {
		if st.pending.mintedFor != st.fp {
			st.pending = nil
			s.resched(st)
			continue
		}
		if _, _, err := x509svid.Verify(st.pending.verifyChain, s.bundle, x509svid.WithTime(now)); err != nil {
			continue
		}
		sv := st.pending
		st.pending = nil
		s.promote(st.entry.id, st, sv, &ch)
	}
	s.evictOver(&ch)
	s.coolDown()
	ch.notify, ch.wake = true, true
	return true, ch
}

// timed returns the entries with an SVID or a held SVID (those of the
// expiry heap) for which keep is true, in order of their IDs.
func (s *x509State) timed(keep func(*entryState) bool) []*entryState {
	var out []*entryState
	for _, st := range s.expiry.items {
		if keep(st) {
			out = append(out, st)
		}
	}
	slices.SortFunc(out, func(a, b *entryState) int { return strings.Compare(a.entry.id, b.entry.id) })
	return out
}

// Tainted takes the tainted X.509 authorities (by SubjectKeyId): SVIDs
// they signed become due at once and are served until replaced.
func (s *x509State) Tainted(taintedX509 map[string]bool) changes {
	var ch changes
	if len(taintedX509) == 0 {
		return ch
	}
	for _, st := range s.timed(func(st *entryState) bool {
		return st.svid != nil && !st.svid.tainted && taintedX509[string(st.svid.aki)]
	}) {
		st.svid.tainted = true
		s.resched(st)
		ch.add(event{kind: evTainted, entryID: st.entry.id, svid: st.svid})
	}
	ch.wake = len(ch.events) > 0
	return ch
}

// Tick applies the passing of time up to now: expired SVIDs are no longer
// handed out, held SVIDs that never verified are given up, and entries
// idle for IdleAfter stop being active (their SVIDs may then be evicted).
// It costs the entries whose time has come.
func (s *x509State) Tick(now time.Time) changes {
	var ch changes
	for s.expiry.len() > 0 && s.expiry.top().expAt <= nanos(now) {
		st := s.expiry.top()
		id := st.entry.id
		if st.svid != nil && !now.Before(st.svid.notAfter) {
			ch.add(event{kind: evExpired, entryID: id, svid: st.svid})
			s.setSVID(st, nil)
			ch.notify = true
		}
		if st.pending != nil && !now.Before(st.pendingSince.Add(pendingWait)) {
			st.pending = nil
			st.failures++
			st.retryAt = now.Add(Backoff(mintRetryBase, mintRetryMax, st.failures-1, s.jitter()))
			st.attemptFailed(errors.New("minted SVID never verified against the agent's bundle"))
			ch.add(event{kind: evPendingExpired, entryID: id, at: st.retryAt, failures: st.failures, reason: mintUnverified})
		}
		s.resched(st)
	}
	for s.idle.len() > 0 && s.idle.top().activeUntil <= nanos(now) {
		st := s.idle.pop()
		st.active = false
		s.resched(st)
	}
	s.evictOver(&ch)
	s.coolDown()
	return ch
}

// quickBatch is the largest batch whose entries a waiting workload waits
// for rather than taking them again alone (StartWaiting): a few
// milliseconds of signing.
const quickBatch = 16

// mintJob is one entry sent for minting.
type mintJob struct {
	id  string
	gen uint64
	// take is the entry's take when the job started (entryState.take).
	take uint8
	fp   entryFingerprint
	// key is the SVID's private key, set by whoever builds the CSR.
	key crypto.Signer
	// spki is the DER SubjectPublicKeyInfo of key when the CSR's builder
	// sets it: a returned leaf that carries it byte for byte may be
	// parsed against a verified issuer's (leafparse.go).
	spki []byte
}

// StartMints marks up to max entries that are due at now as minting and
// returns their jobs: entries that a waiting workload needs first
// (waiting, called only when something is due, reports them), then
// wanted entries with no SVID, then entries no workload asked for (in
// order of their IDs) while the cache has room, then renewals in order of
// their renewal time. When it took every due entry, next is the earliest
// time-driven change after that (zero when there is none); otherwise next
// is zero and more is due at once. It costs the entries taken and those
// that came due, not all the entries.
func (s *x509State) StartMints(now time.Time, max int, waiting func() map[*entryState]bool) (jobs []*mintJob, next time.Time) {
	s.promoteDue(now)
	var take []*entryState
	room := s.room()
	takeOne := func(st *entryState) {
		if h := s.queue(st.q); h != nil {
			h.remove(st)
		}
		st.q = qNone
		if st.svid == nil && room > 0 {
			room--
		}
		take = append(take, st)
	}
	for _, st := range s.waitingDue(max, waiting, false) {
		takeOne(st)
	}
	for len(take) < max && s.due.len() > 0 && s.due.top().rank == rankNoSVID {
		takeOne(s.due.top())
	}
	for len(take) < max && room != 0 {
		st := s.nextSpare()
		if st == nil {
			break
		}
		takeOne(st)
	}
	for len(take) < max && s.due.len() > 0 {
		takeOne(s.due.top())
	}
	all := s.due.len() == 0 && (room == 0 || s.spare.len() == 0 && s.cold.len() == 0)
	jobs = make([]*mintJob, len(take))
	for i, st := range take {
		s.setInflight(st, true)
		st.quick = len(take) <= quickBatch
		jobs[i] = s.startJob(st, now)
	}
	if all {
		next = s.NextEvent()
	}
	return jobs, next
}

// promoteDue moves the entries whose scheduled time has come to the due
// queue.
func (s *x509State) promoteDue(now time.Time) {
	for s.sched.len() > 0 && s.sched.top().dueAt <= nanos(now) {
		st := s.sched.pop()
		st.q = qDue
		st.rank = rankNoSVID
		if st.servable() != nil {
			st.rank = rankRenew
		}
		s.due.put(st)
	}
}

// StartWaiting marks up to max due entries that a waiting workload needs
// (waiting reports them; it is called only when something is due or in
// flight) as minting and returns their jobs, and nothing else. The minting
// loop sends them as a batch of their own, in a slot that larger batches
// leave free, so that a workload waiting for its first SVID waits for one
// small signing round trip, not for a batch of hundreds of others (at an
// agent's start, or after an eviction). Entries waiting workloads need
// that are already in flight in batches of more than quickBatch entries
// (the workload asked after the batch was taken) are taken again, alone,
// when there are at most quickBatch of them: the batch's result for each
// is dropped as stale when it comes back (finish). It returns no job when
// no waiting workload needs a due entry or one it may take again.
func (s *x509State) StartWaiting(now time.Time, max int, waiting func() map[*entryState]bool) []*mintJob {
	s.promoteDue(now)
	first := s.waitingDue(max, waiting, true)
	if len(first) == 0 {
		return nil
	}
	jobs := make([]*mintJob, len(first))
	for i, st := range first {
		if !st.inflight {
			if h := s.queue(st.q); h != nil {
				h.remove(st)
			}
			st.q = qNone
			s.setInflight(st, true)
		}
		st.quick = true
		jobs[i] = s.startJob(st, now)
	}
	return jobs
}

// startJob is the job of a mint of st starting at now; it supersedes any
// job of st still in flight.
func (s *x509State) startJob(st *entryState, now time.Time) *mintJob {
	st.take++
	st.lastAttempt = now
	return &mintJob{id: st.entry.id, gen: st.gen, take: st.take, fp: st.fp}
}

// waitingDue returns up to max due entries that a waiting workload needs,
// in order of their IDs, and with inflight set, those in flight in a
// batch of more than quickBatch entries when there are at most quickBatch
// of them. waiting is called only when something is due or, with inflight
// set, in flight for an entry that had no SVID.
func (s *x509State) waitingDue(max int, waiting func() map[*entryState]bool, inflight bool) []*entryState {
	if waiting == nil || max <= 0 || (s.due.len() == 0 && !(inflight && s.inflightNew > 0)) {
		return nil
	}
	var first, again []*entryState
	for st := range waiting() {
		switch {
		case st.q == qDue:
			first = append(first, st)
		case inflight && st.inflight && !st.quick && !st.gone:
			again = append(again, st)
		}
	}
	// Each entry taken again costs a second signature: only a few are,
	// for workloads that wait for few entries. Workloads that wait for
	// more (one with thousands of identities, hundreds starting at once)
	// wait for the batches they are in.
	if len(again) <= quickBatch {
		first = append(first, again...)
	}
	slices.SortFunc(first, func(a, b *entryState) int { return strings.Compare(a.entry.id, b.entry.id) })
	return first[:min(len(first), max)]
}

// NextEvent is the earliest time-driven change among all entries; zero
// when there is none. It costs O(1) but for entries due and not taken
// (StartMints leaves none when it takes every due entry).
func (s *x509State) NextEvent() time.Time {
	var t time.Time
	min := func(c time.Time) {
		if !c.IsZero() && (t.IsZero() || c.Before(t)) {
			t = c
		}
	}
	if s.sched.len() > 0 {
		min(s.sched.top().dueTime())
	}
	if s.expiry.len() > 0 {
		min(s.expiry.top().expiryTime())
	}
	if s.idle.len() > 0 {
		min(unnanos(s.idle.top().activeUntil))
	}
	for _, st := range s.due.items {
		if st.dueAt != 0 {
			min(st.dueTime())
		}
	}
	return t
}

// mintOutcome is what the server answered for one job.
type mintOutcome struct {
	chain []*x509.Certificate
	// der is the chain as the server returned it, leaf first, while
	// chain is nil: it is parsed with the other SVIDs of the batch
	// (parseOutcome).
	der    [][]byte
	err    error
	denied bool
	// badResponse: the server's answer for the job was unusable (no
	// result, or a chain that does not parse).
	badResponse bool
}

// mintResult is a job's outcome with the returned SVID checked against
// the job and verified against a bundle (checkMint) before the state is
// locked: chain verification is the agent's most expensive step and must
// not serialize every other cache user.
type mintResult struct {
	job    *mintJob
	out    mintOutcome
	s      *svid
	err    error // from checkSVID
	bundle *x509bundle.Bundle
	verErr error // from verifying against bundle
}

// checkMint checks the outcome of job and verifies its SVID against
// bundle (nil: not verified) at now. It is a pure function.
func checkMint(job *mintJob, out mintOutcome, bundle *x509bundle.Bundle, now time.Time) mintResult {
	r := mintResult{job: job, out: out}
	parseOutcome(&r.out, nil, job, nil)
	if r.out.err != nil || r.out.denied {
		return r
	}
	r.s, r.err = checkSVID(job, r.out.chain)
	if r.err == nil && bundle != nil {
		r.bundle = bundle
		_, _, r.verErr = x509svid.Verify(r.s.verifyChain, bundle, x509svid.WithTime(now))
	}
	return r
}

// parseOutcome parses the chain the server returned for job (out.der),
// with v's issuers verified under bundle when v is not nil
// (leafVerifier.parseChain); a chain that does not parse makes the
// outcome a bad response.
func parseOutcome(out *mintOutcome, v *leafVerifier, job *mintJob, bundle *x509bundle.Bundle) {
	if out.chain != nil || out.err != nil || out.denied {
		return
	}
	if v != nil {
		out.chain, out.err = v.parseChain(out.der, job, bundle)
	} else {
		out.chain, out.err = parseDERChain(out.der)
	}
	out.badResponse = out.err != nil
	out.der = nil
}

// MintFinished records the results of jobs that StartMints returned. A
// result for an entry deleted or changed since its job started is
// dropped, with its key. It returns how many SVIDs were installed.
func (s *x509State) MintFinished(results []mintResult, now time.Time) (int, changes) {
	ch := changes{events: make([]event, 0, len(results))}
	installed := 0
	for _, r := range results {
		if s.finish(r, now, &ch) {
			installed++
		}
	}
	s.evictOver(&ch)
	s.coolDown()
	ch.wake = true
	ch.notify = ch.notify || installed > 0
	return installed, ch
}

func (s *x509State) finish(r mintResult, now time.Time, ch *changes) bool {
	job := r.job
	st := s.entries[job.id]
	if st == nil || st.gen != job.gen || st.take != job.take {
		// Deleted, changed, or minted again alone since (StartWaiting).
		ch.add(event{kind: evStale, entryID: job.id})
		return false
	}
	s.setInflight(st, false)
	defer s.resched(st)
	if r.out.denied {
		st.denied = true
		st.attemptFailed(r.out.err)
		ch.add(event{kind: evDenied, entryID: job.id, err: r.out.err, reason: mintDenied})
		return false
	}
	fail := func(err error, reason string) bool {
		st.failures++
		st.retryAt = now.Add(Backoff(mintRetryBase, mintRetryMax, st.failures-1, s.jitter()))
		st.attemptFailed(err)
		ch.add(event{kind: evFailed, entryID: job.id, err: err, at: st.retryAt, failures: st.failures, reason: reason})
		return false
	}
	if r.out.err != nil {
		return fail(r.out.err, mintFailureReason(r.out))
	}
	if r.err != nil {
		return fail(r.err, mintBadResponse)
	}
	if s.bundle == nil {
		st.pending, st.pendingSince = r.s, now
		ch.add(event{kind: evHeld, entryID: job.id, err: errors.New("no bundle yet")})
		return false
	}
	verErr := r.verErr
	if r.bundle != s.bundle {
		// The bundle changed since the result was verified: check
		// against the new one.
		_, _, verErr = x509svid.Verify(r.s.verifyChain, s.bundle, x509svid.WithTime(now))
	}
	if verErr != nil {
		st.pending, st.pendingSince = r.s, now
		ch.add(event{kind: evHeld, entryID: job.id, err: verErr})
		return false
	}
	st.pending = nil
	s.promote(job.id, st, r.s, ch)
	return true
}

// promote installs a verified SVID for an entry.
func (s *x509State) promote(id string, st *entryState, sv *svid, ch *changes) {
	s.svidSeq++
	sv.seq = s.svidSeq
	sv.renewAt = RenewAt(sv.notBefore, sv.notAfter, s.jitter())
	sv.verifyChain = nil // verified: keep only the DER
	s.setSVID(st, sv)
	st.failures = 0
	st.retryAt = time.Time{}
	st.lastError, st.failStreak = "", 0
	s.resched(st)
	ch.notify = true
	ch.add(event{kind: evMinted, entryID: id, svid: sv})
}

// ResetRetries clears the minting backoff of every entry, so that entries
// that failed while no server was reachable are minted again at once.
// It runs when the agent reconnects, over every entry.
func (s *x509State) ResetRetries() changes {
	for _, st := range s.entries {
		if st.failures == 0 && st.retryAt.IsZero() {
			continue
		}
		st.failures = 0
		st.retryAt = time.Time{}
		s.resched(st)
	}
	return changes{wake: true}
}

// Stats counts the entries and the entries with an SVID.
func (s *x509State) Stats() (entries, svids int) {
	return len(s.entries) + s.cold.len(), s.svids
}

// sortedIDs returns the entry IDs in order, so that transitions that
// report events for several entries report them in a stable order.
func (s *x509State) sortedIDs() []string {
	ids := make([]string, 0, len(s.entries)+s.cold.len())
	for id := range s.entries {
		ids = append(ids, id)
	}
	s.cold.each(func(i uint32) { ids = append(ids, string(s.cold.id(i))) })
	slices.Sort(ids)
	return ids
}

// checkSVID checks a returned chain against the job: its leaf carries the
// job's public key and the entry's SPIFFE ID. Its renewal time is drawn
// when it is installed (promote).
func checkSVID(job *mintJob, chain []*x509.Certificate) (*svid, error) {
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
	if !carriesJobKey(leaf, job) {
		return nil, errors.New("returned SVID does not carry the agent's public key")
	}
	keyDER, err := marshalPKCS8Known(job.key, job.spki)
	if err != nil {
		return nil, fmt.Errorf("encoding the SVID key: %w", err)
	}
	n := 0
	for _, c := range chain {
		n += len(c.Raw)
	}
	chainDER := make([]byte, 0, n)
	for _, c := range chain {
		chainDER = append(chainDER, c.Raw...)
	}
	// The leaf's AuthorityKeyId as a slice of chainDER, so that the
	// installed SVID references no memory of the parsed certificate.
	aki := leaf.AuthorityKeyId
	if i := bytes.Index(chainDER[:len(leaf.Raw)], aki); len(aki) > 0 && i >= 0 {
		aki = chainDER[i : i+len(aki) : i+len(aki)]
	} else {
		aki = bytes.Clone(aki)
	}
	return &svid{
		spiffeID:    id,
		chainDER:    chainDER,
		keyDER:      keyDER,
		serial:      leaf.SerialNumber.Bytes(),
		aki:         aki,
		notBefore:   leaf.NotBefore,
		notAfter:    leaf.NotAfter,
		mintedFor:   job.fp,
		verifyChain: chain,
	}, nil
}

// carriesJobKey reports whether leaf's public key is the job's. When the
// job has the DER SubjectPublicKeyInfo of its key (job.spki, which
// p256Request wrote from the key itself), a leaf whose
// SubjectPublicKeyInfo is those bytes carries that key: x509 parsed its
// PublicKey from them. Any other leaf is compared by value
// (publicKeyEqual), which converts both keys' coordinates to bytes: for
// the SVIDs the agent mints the byte comparison gives the same answer
// without those allocations.
func carriesJobKey(leaf *x509.Certificate, job *mintJob) bool {
	if len(job.spki) > 0 && bytes.Equal(leaf.RawSubjectPublicKeyInfo, job.spki) {
		return true
	}
	return publicKeyEqual(leaf.PublicKey, job.key.Public())
}

func publicKeyEqual(a, b crypto.PublicKey) bool {
	ea, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ea.Equal(b)
}
