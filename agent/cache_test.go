package agent

import (
	"errors"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/workloadapi"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

type cacheFixture struct {
	t   *testing.T
	clk *clock.Fake
	ca  *testCA
	c   *cache
}

func newCacheFixture(t *testing.T) *cacheFixture {
	clk := clock.NewFake(t0)
	f := &cacheFixture{t: t, clk: clk, ca: newTestCA(t, t0), c: newCache(testTD, zaptest.NewLogger(t), clk)}
	return f
}

func (f *cacheFixture) bundle(cas ...*testCA) *x509bundle.Bundle {
	b := x509bundle.New(testTD)
	for _, ca := range cas {
		b.AddX509Authority(ca.cert)
	}
	return b
}

func sel(v string) *sigilv1.Selector { return &sigilv1.Selector{Type: "unix", Value: v} }

func entry(id, path string, createdAt int64, sels ...string) *sigilv1.Entry {
	e := &sigilv1.Entry{
		Id:        id,
		SpiffeId:  "spiffe://example.org/" + path,
		ParentId:  "spiffe://example.org/sigil/agent/join_token/x",
		CreatedAt: createdAt,
		Revision:  1,
	}
	for _, s := range sels {
		e.Selectors = append(e.Selectors, sel(s))
	}
	return e
}

// mintAll takes every due entry and mints it with ca; it returns how many
// SVIDs were cached.
func (f *cacheFixture) mintAll(ca *testCA) int {
	f.t.Helper()
	jobs := f.c.takeDue(f.clk.Now(), 1000)
	cached := 0
	for _, j := range jobs {
		key, _, err := newKeyAndCSR()
		if err != nil {
			f.t.Fatal(err)
		}
		j.key = key
		chain := ca.sign(f.t, spiffeid.RequireFromString(j.fp.spiffeID), key.Public(), f.clk.Now().Add(-time.Minute), time.Hour)
		if f.c.finish(j, mintOutcome{chain: chain}) {
			cached++
		}
	}
	return cached
}

func recv(t *testing.T, sub workloadapi.X509Subscription) *workloadapi.X509Snapshot {
	t.Helper()
	select {
	case s := <-sub.Updates():
		return s
	case <-time.After(5 * time.Second):
		t.Fatal("no snapshot")
		return nil
	}
}

func noRecv(t *testing.T, sub workloadapi.X509Subscription) {
	t.Helper()
	select {
	case s := <-sub.Updates():
		t.Fatalf("unexpected snapshot with %d identities", len(s.Identities))
	default:
	}
}

func ids(s *workloadapi.X509Snapshot) []string {
	var out []string
	for _, id := range s.Identities {
		out = append(out, id.EntryID)
	}
	return out
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestCacheSubscribeBeforeEntries(t *testing.T) {
	f := newCacheFixture(t)
	sub := f.c.SubscribeX509([]*sigilv1.Selector{sel("uid:1"), sel("gid:2")})
	defer sub.Close()
	noRecv(t, sub) // no bundle, no sync yet

	f.c.SetBundle(f.bundle(f.ca))
	noRecv(t, sub)
	f.c.ReplaceEntries([]*sigilv1.Entry{
		entry("b", "web", 10, "uid:1"),
		entry("a", "web2", 10, "uid:1", "gid:2"),
		entry("c", "early", 5, "gid:2"),
		entry("d", "other", 1, "uid:9"),
		entry("e", "partial", 1, "uid:1", "uid:9"),
	})
	// Matching entries have no SVID yet: the first snapshot waits.
	noRecv(t, sub)
	if n := f.mintAll(f.ca); n != 5 {
		t.Fatalf("minted %d, want 5", n)
	}
	s := recv(t, sub)
	if got, want := ids(s), []string{"c", "a", "b"}; !equalStrings(got, want) {
		t.Fatalf("identities %v, want %v (created_at, then id)", got, want)
	}
	for _, id := range s.Identities {
		if !publicKeyEqual(leafOf(t, id).PublicKey, keyOf(t, id).Public()) {
			t.Fatalf("identity %s: key does not match its certificate", id.EntryID)
		}
	}
	if s.Bundle == nil || !s.Bundle.HasX509Authority(f.ca.cert) {
		t.Fatal("snapshot lacks the bundle")
	}
	noRecv(t, sub)
}

func TestCacheSubscribeAfterSVIDs(t *testing.T) {
	f := newCacheFixture(t)
	f.c.SetBundle(f.bundle(f.ca))
	f.c.ReplaceEntries([]*sigilv1.Entry{entry("a", "web", 1, "uid:1")})
	f.mintAll(f.ca)

	sub := f.c.SubscribeX509([]*sigilv1.Selector{sel("uid:1")})
	defer sub.Close()
	if got := ids(recv(t, sub)); !equalStrings(got, []string{"a"}) {
		t.Fatalf("identities %v", got)
	}

	// Nothing matches: an empty snapshot at once, since the agent is synced.
	none := f.c.SubscribeX509([]*sigilv1.Selector{sel("uid:2")})
	defer none.Close()
	if s := recv(t, none); len(s.Identities) != 0 {
		t.Fatalf("want no identities, got %v", ids(s))
	}
}

func TestCacheEmptySubscriptionWaitsForFirstSync(t *testing.T) {
	f := newCacheFixture(t)
	f.c.SetBundle(f.bundle(f.ca))
	sub := f.c.SubscribeX509([]*sigilv1.Selector{sel("uid:2")})
	defer sub.Close()
	noRecv(t, sub)
	f.c.ReplaceEntries(nil)
	if s := recv(t, sub); len(s.Identities) != 0 {
		t.Fatalf("want no identities, got %v", ids(s))
	}
}

func TestCacheDeletionWithdrawsAndFrees(t *testing.T) {
	f := newCacheFixture(t)
	f.c.SetBundle(f.bundle(f.ca))
	f.c.ReplaceEntries([]*sigilv1.Entry{entry("a", "web", 1, "uid:1"), entry("b", "db", 2, "uid:1")})
	f.mintAll(f.ca)
	sub := f.c.SubscribeX509([]*sigilv1.Selector{sel("uid:1")})
	defer sub.Close()
	if got := ids(recv(t, sub)); !equalStrings(got, []string{"a", "b"}) {
		t.Fatalf("identities %v", got)
	}

	f.c.ApplyDelta(nil, []string{"a"})
	if got := ids(recv(t, sub)); !equalStrings(got, []string{"b"}) {
		t.Fatalf("after delete: identities %v", got)
	}
	f.c.mu.Lock()
	_, present := f.c.st.entries["a"]
	f.c.mu.Unlock()
	if present {
		t.Fatal("deleted entry still cached")
	}

	// A full set without b drops b as well.
	f.c.ReplaceEntries([]*sigilv1.Entry{entry("c", "other", 3, "uid:7")})
	if s := recv(t, sub); len(s.Identities) != 0 {
		t.Fatalf("after reset: identities %v", ids(s))
	}
	if n, svids := f.c.stats(); n != 1 || svids != 0 {
		t.Fatalf("stats = %d entries, %d svids", n, svids)
	}
}

func TestCacheEntryAddedAfterFirstSnapshot(t *testing.T) {
	f := newCacheFixture(t)
	f.c.SetBundle(f.bundle(f.ca))
	f.c.ReplaceEntries([]*sigilv1.Entry{entry("a", "web", 1, "uid:1")})
	f.mintAll(f.ca)
	sub := f.c.SubscribeX509([]*sigilv1.Selector{sel("uid:1")})
	defer sub.Close()
	recv(t, sub)

	f.c.ApplyDelta([]*sigilv1.Entry{entry("b", "db", 2, "uid:1")}, nil)
	noRecv(t, sub) // nothing new to hand out until b has an SVID
	f.mintAll(f.ca)
	if got := ids(recv(t, sub)); !equalStrings(got, []string{"a", "b"}) {
		t.Fatalf("identities %v", got)
	}
	// An entry that does not concern the subscriber sends nothing.
	f.c.ApplyDelta([]*sigilv1.Entry{entry("z", "zz", 2, "uid:5")}, nil)
	f.mintAll(f.ca)
	noRecv(t, sub)
}

func TestCacheBundleChangePushes(t *testing.T) {
	f := newCacheFixture(t)
	f.c.SetBundle(f.bundle(f.ca))
	f.c.ReplaceEntries([]*sigilv1.Entry{entry("a", "web", 1, "uid:1")})
	f.mintAll(f.ca)
	sub := f.c.SubscribeX509([]*sigilv1.Selector{sel("uid:1")})
	defer sub.Close()
	recv(t, sub)

	if f.c.SetBundle(f.bundle(f.ca)) {
		t.Fatal("an identical bundle counted as a change")
	}
	noRecv(t, sub)
	ca2 := newTestCA(t, t0)
	if !f.c.SetBundle(f.bundle(f.ca, ca2)) {
		t.Fatal("bundle change not detected")
	}
	s := recv(t, sub)
	if !s.Bundle.HasX509Authority(ca2.cert) {
		t.Fatal("snapshot does not carry the new bundle")
	}
	if got := ids(s); !equalStrings(got, []string{"a"}) {
		t.Fatalf("identities %v", got)
	}
}

func TestCacheLatestWins(t *testing.T) {
	f := newCacheFixture(t)
	f.c.SetBundle(f.bundle(f.ca))
	f.c.ReplaceEntries([]*sigilv1.Entry{entry("a", "web", 1, "uid:1")})
	f.mintAll(f.ca)
	sub := f.c.SubscribeX509([]*sigilv1.Selector{sel("uid:1")})
	defer sub.Close()
	// Do not read: three more changes arrive.
	f.c.ApplyDelta([]*sigilv1.Entry{entry("b", "b", 2, "uid:1")}, nil)
	f.mintAll(f.ca)
	f.c.ApplyDelta([]*sigilv1.Entry{entry("c", "c", 3, "uid:1")}, nil)
	f.mintAll(f.ca)
	f.c.ApplyDelta(nil, []string{"a"})
	if got := ids(recv(t, sub)); !equalStrings(got, []string{"b", "c"}) {
		t.Fatalf("identities %v, want the latest [b c]", got)
	}
	noRecv(t, sub)
}

func TestCacheCloseUnsubscribes(t *testing.T) {
	f := newCacheFixture(t)
	sub := f.c.SubscribeX509([]*sigilv1.Selector{sel("uid:1")})
	sub.Close()
	f.c.mu.Lock()
	n := f.c.subs.len()
	f.c.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d subscriptions after Close", n)
	}
	f.c.SetBundle(f.bundle(f.ca))
	f.c.ReplaceEntries(nil)
	noRecv(t, sub)
}

func TestCacheSVIDHeldUntilItsCAIsInTheBundle(t *testing.T) {
	f := newCacheFixture(t)
	f.c.SetBundle(f.bundle(f.ca))
	f.c.ReplaceEntries([]*sigilv1.Entry{entry("a", "web", 1, "uid:1")})
	sub := f.c.SubscribeX509([]*sigilv1.Selector{sel("uid:1")})
	defer sub.Close()

	ca2 := newTestCA(t, t0) // a new server CA, not yet in the bundle
	if n := f.mintAll(ca2); n != 0 {
		t.Fatalf("cached %d SVIDs signed by an unknown CA", n)
	}
	noRecv(t, sub)
	// While pending, the entry is not minted again.
	if jobs := f.c.takeDue(f.clk.Now(), 10); len(jobs) != 0 {
		t.Fatalf("pending entry taken again: %d jobs", len(jobs))
	}
	f.c.SetBundle(f.bundle(f.ca, ca2))
	s := recv(t, sub)
	if got := ids(s); !equalStrings(got, []string{"a"}) {
		t.Fatalf("identities %v", got)
	}
	if leafOf(t, s.Identities[0]).Issuer.String() != ca2.cert.Subject.String() ||
		leafOf(t, s.Identities[0]).CheckSignatureFrom(ca2.cert) != nil {
		t.Fatal("identity not signed by the new CA")
	}
}

func TestCachePendingTimesOut(t *testing.T) {
	f := newCacheFixture(t)
	f.c.SetBundle(f.bundle(f.ca))
	f.c.ReplaceEntries([]*sigilv1.Entry{entry("a", "web", 1, "uid:1")})
	f.mintAll(newTestCA(t, t0))
	f.clk.Add(pendingWait)
	f.c.takeDue(f.clk.Now(), 10) // expires the pending SVID, schedules a retry
	next := f.c.nextEvent()
	if next.IsZero() || !next.After(f.clk.Now()) {
		t.Fatalf("next event %v, want a retry after now", next)
	}
	f.clk.Set(next)
	if n := f.mintAll(f.ca); n != 1 {
		t.Fatalf("minted %d after the pending timeout, want 1", n)
	}
}

func TestCacheRenewalAndExpiry(t *testing.T) {
	f := newCacheFixture(t)
	f.c.SetBundle(f.bundle(f.ca))
	f.c.ReplaceEntries([]*sigilv1.Entry{entry("a", "web", 1, "uid:1")})
	f.mintAll(f.ca)
	sub := f.c.SubscribeX509([]*sigilv1.Selector{sel("uid:1")})
	defer sub.Close()
	first := recv(t, sub).Identities[0]

	if jobs := f.c.takeDue(f.clk.Now(), 10); len(jobs) != 0 {
		t.Fatal("fresh SVID due for renewal")
	}
	// Minted at now-1m for 1h: renewal due between 29m and 35m from now.
	next := f.c.nextEvent()
	if d := next.Sub(f.clk.Now()); d < 29*time.Minute || d >= 35*time.Minute {
		t.Fatalf("renewal in %v, want in [29m, 35m)", d)
	}
	f.clk.Set(next)
	if n := f.mintAll(f.ca); n != 1 {
		t.Fatalf("renewed %d", n)
	}
	second := recv(t, sub).Identities[0]
	if leafOf(t, second).SerialNumber.Cmp(leafOf(t, first).SerialNumber) == 0 {
		t.Fatal("rotation delivered the same SVID")
	}

	// An SVID that cannot be renewed is withdrawn when it expires.
	jobs := f.c.takeDue(f.clk.Now().Add(time.Hour), 10)
	for _, j := range jobs {
		f.c.finish(j, mintOutcome{err: errors.New("server down")})
	}
	f.clk.Add(2 * time.Hour)
	f.c.takeDue(f.clk.Now(), 10)
	if s := recv(t, sub); len(s.Identities) != 0 {
		t.Fatalf("expired SVID still handed out: %v", ids(s))
	}
}

func TestCacheEntryChangeReminted(t *testing.T) {
	f := newCacheFixture(t)
	f.c.SetBundle(f.bundle(f.ca))
	e := entry("a", "web", 1, "uid:1")
	f.c.ReplaceEntries([]*sigilv1.Entry{e})
	f.mintAll(f.ca)
	e2 := entry("a", "web", 1, "uid:1")
	e2.Revision = 2
	e2.DnsNames = []string{"web.example.org"}
	f.c.ApplyDelta([]*sigilv1.Entry{e2}, nil)
	if n := f.mintAll(f.ca); n != 1 {
		t.Fatalf("changed entry minted %d times, want 1", n)
	}
	// Same entry again: nothing to do.
	f.c.ApplyDelta([]*sigilv1.Entry{e2}, nil)
	if jobs := f.c.takeDue(f.clk.Now(), 10); len(jobs) != 0 {
		t.Fatal("unchanged entry minted again")
	}
}

func TestCachePermissionDeniedUntilEntryChanges(t *testing.T) {
	f := newCacheFixture(t)
	f.c.SetBundle(f.bundle(f.ca))
	f.c.ReplaceEntries([]*sigilv1.Entry{entry("a", "web", 1, "uid:1")})
	jobs := f.c.takeDue(f.clk.Now(), 10)
	if len(jobs) != 1 {
		t.Fatalf("%d jobs", len(jobs))
	}
	f.c.finish(jobs[0], mintOutcome{err: status.Error(codes.PermissionDenied, "no"), denied: true})
	f.clk.Add(time.Hour)
	if jobs := f.c.takeDue(f.clk.Now(), 10); len(jobs) != 0 {
		t.Fatal("denied entry retried before it changed")
	}
	e := entry("a", "web", 1, "uid:1")
	e.Revision = 2
	f.c.ApplyDelta([]*sigilv1.Entry{e}, nil)
	if jobs := f.c.takeDue(f.clk.Now(), 10); len(jobs) != 1 {
		t.Fatal("changed entry not retried")
	}
}

func TestCacheErrorsBackOff(t *testing.T) {
	f := newCacheFixture(t)
	f.c.SetBundle(f.bundle(f.ca))
	f.c.ReplaceEntries([]*sigilv1.Entry{entry("a", "web", 1, "uid:1")})
	jobs := f.c.takeDue(f.clk.Now(), 10)
	f.c.finish(jobs[0], mintOutcome{err: status.Error(codes.Internal, "boom")})
	if jobs := f.c.takeDue(f.clk.Now(), 10); len(jobs) != 0 {
		t.Fatal("failed entry retried at once")
	}
	next := f.c.nextEvent()
	if d := next.Sub(f.clk.Now()); d <= 0 || d > mintRetryBase {
		t.Fatalf("retry in %v, want in (0, %v]", d, mintRetryBase)
	}
	f.clk.Set(next)
	if n := f.mintAll(f.ca); n != 1 {
		t.Fatal("entry not retried after backoff")
	}
}

func TestCacheWaitingWorkloadFirst(t *testing.T) {
	f := newCacheFixture(t)
	f.c.SetBundle(f.bundle(f.ca))
	var entries []*sigilv1.Entry
	for i := 0; i < 50; i++ {
		entries = append(entries, entry(string(rune('A'+i)), "e"+string(rune('A'+i)), 1, "uid:other"))
	}
	entries = append(entries, entry("zzz-waiting", "waiting", 1, "uid:1"))
	f.c.ReplaceEntries(entries)
	sub := f.c.SubscribeX509([]*sigilv1.Selector{sel("uid:1")})
	defer sub.Close()
	jobs := f.c.takeDue(f.clk.Now(), 5)
	if len(jobs) != 5 || jobs[0].id != "zzz-waiting" {
		t.Fatalf("first job %q of %d, want the waited-for entry first", jobs[0].id, len(jobs))
	}
}

func TestCacheRejectsWrongKeyOrID(t *testing.T) {
	f := newCacheFixture(t)
	f.c.SetBundle(f.bundle(f.ca))
	f.c.ReplaceEntries([]*sigilv1.Entry{entry("a", "web", 1, "uid:1")})
	jobs := f.c.takeDue(f.clk.Now(), 10)
	key, _, _ := newKeyAndCSR()
	other, _, _ := newKeyAndCSR()
	jobs[0].key = key
	chain := f.ca.sign(t, spiffeid.RequireFromString("spiffe://example.org/web"), other.Public(), t0, time.Hour)
	if f.c.finish(jobs[0], mintOutcome{chain: chain}) {
		t.Fatal("SVID over a foreign key cached")
	}
	f.clk.Add(time.Minute)
	jobs = f.c.takeDue(f.clk.Now(), 10)
	jobs[0].key = key
	chain = f.ca.sign(t, spiffeid.RequireFromString("spiffe://example.org/evil"), key.Public(), t0, time.Hour)
	if f.c.finish(jobs[0], mintOutcome{chain: chain}) {
		t.Fatal("SVID with a foreign ID cached")
	}
}

// signJob gives job a key and an SVID for its entry signed by ca.
func (f *cacheFixture) signJob(j *mintJob, ca *testCA) mintOutcome {
	f.t.Helper()
	key, _, err := newKeyAndCSR()
	if err != nil {
		f.t.Fatal(err)
	}
	j.key = key
	return mintOutcome{chain: ca.sign(f.t, spiffeid.RequireFromString(j.fp.spiffeID), key.Public(), f.clk.Now().Add(-time.Minute), time.Hour)}
}

// An SVID minted for an entry as it was before it changed never reaches a
// workload, even when it comes back after the SVID for the new version.
func TestCacheEntryUpdatedMidMintNotServed(t *testing.T) {
	f := newCacheFixture(t)
	f.c.SetBundle(f.bundle(f.ca))
	f.c.ReplaceEntries([]*sigilv1.Entry{entry("a", "web", 1, "uid:1")})
	sub := f.c.SubscribeX509([]*sigilv1.Selector{sel("uid:1")})
	defer sub.Close()
	old := f.c.takeDue(f.clk.Now(), 10)
	if len(old) != 1 {
		t.Fatalf("%d jobs", len(old))
	}
	changed := entry("a", "web2", 1, "uid:1")
	changed.Revision = 2
	f.c.ApplyDelta([]*sigilv1.Entry{changed}, nil)
	// The changed entry is minted again at once, without waiting for the
	// abandoned mint.
	fresh := f.c.takeDue(f.clk.Now(), 10)
	if len(fresh) != 1 || fresh[0].fp.spiffeID != "spiffe://example.org/web2" {
		t.Fatalf("jobs after the change: %d", len(fresh))
	}
	if f.c.finishBatch(fresh, []mintOutcome{f.signJob(fresh[0], f.ca)}) != 1 {
		t.Fatal("SVID for the new version not cached")
	}
	s := recv(t, sub)
	if len(s.Identities) != 1 || s.Identities[0].SPIFFEID.String() != "spiffe://example.org/web2" {
		t.Fatalf("identities %v", ids(s))
	}
	if f.c.finishBatch(old, []mintOutcome{f.signJob(old[0], f.ca)}) != 0 {
		t.Fatal("SVID for the old version cached")
	}
	noRecv(t, sub)
	if jobs := f.c.takeDue(f.clk.Now(), 10); len(jobs) != 0 {
		t.Fatalf("%d jobs after both results", len(jobs))
	}
}

// A result for an entry deleted and added again under the same ID while
// its mint was in flight is dropped; the new entry is minted on its own.
func TestCacheEntryReAddedMidMintNotServed(t *testing.T) {
	f := newCacheFixture(t)
	f.c.SetBundle(f.bundle(f.ca))
	f.c.ReplaceEntries([]*sigilv1.Entry{entry("a", "web", 1, "uid:1")})
	old := f.c.takeDue(f.clk.Now(), 10)
	f.c.ApplyDelta(nil, []string{"a"})
	f.c.ApplyDelta([]*sigilv1.Entry{entry("a", "web", 1, "uid:1")}, nil)
	if f.c.finishBatch(old, []mintOutcome{f.signJob(old[0], f.ca)}) != 0 {
		t.Fatal("SVID minted before the deletion cached for the re-added entry")
	}
	if n := f.mintAll(f.ca); n != 1 {
		t.Fatalf("re-added entry minted %d times, want 1", n)
	}
}
