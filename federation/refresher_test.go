package federation

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/internal/eventually"
	"github.com/sigil-id/sigil/mtls/mtlstest"
)

// memStore implements Store in memory, with the semantics the contract
// gives the replicated store's commands (SetFederatedBundle with
// refresh, PutFederationStatus): a relationship must exist, a sequence
// number must not go down, a status write keeps refresh_requested_at.
type memStore struct {
	mu          sync.Mutex
	index       uint64
	rels        map[string]*sigilv1.FederationRelationship
	bundles     map[string]*sigilv1.Bundle
	statuses    map[string]*sigilv1.FederationStatus
	changed     chan struct{}
	setBundles  map[string]int
	setStatuses map[string]int
}

func newMemStore() *memStore {
	return &memStore{
		rels:        make(map[string]*sigilv1.FederationRelationship),
		bundles:     make(map[string]*sigilv1.Bundle),
		statuses:    make(map[string]*sigilv1.FederationStatus),
		changed:     make(chan struct{}),
		setBundles:  make(map[string]int),
		setStatuses: make(map[string]int),
	}
}

// notify must be called with mu held.
func (s *memStore) notify() {
	s.index++
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *memStore) Federation() ([]*sigilv1.FederationRelationship, map[string]*sigilv1.Bundle, map[string]*sigilv1.FederationStatus, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var rels []*sigilv1.FederationRelationship
	for _, r := range s.rels {
		rels = append(rels, proto.Clone(r).(*sigilv1.FederationRelationship))
	}
	bundles := make(map[string]*sigilv1.Bundle)
	for td, b := range s.bundles {
		bundles[td] = proto.Clone(b).(*sigilv1.Bundle)
	}
	statuses := make(map[string]*sigilv1.FederationStatus)
	for td, st := range s.statuses {
		statuses[td] = proto.Clone(st).(*sigilv1.FederationStatus)
	}
	return rels, bundles, statuses, s.changed
}

func (s *memStore) putStatus(st *sigilv1.FederationStatus) {
	st = proto.Clone(st).(*sigilv1.FederationStatus)
	old := s.statuses[st.TrustDomain]
	st.RefreshRequestedAt = old.GetRefreshRequestedAt()
	// As the store does: requests are kept, answered ones never go down
	// nor above those made.
	st.RefreshRequests = old.GetRefreshRequests()
	st.RefreshesDone = max(old.GetRefreshesDone(), min(st.RefreshesDone, st.RefreshRequests))
	st.ModifyIndex = s.index + 1
	s.statuses[st.TrustDomain] = st
}

func (s *memStore) SetBundle(_ context.Context, b *sigilv1.Bundle, st *sigilv1.FederationStatus) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rels[b.TrustDomain] == nil {
		return fmt.Errorf("no relationship %q", b.TrustDomain)
	}
	if cur := s.bundles[b.TrustDomain]; cur != nil && b.SequenceNumber < cur.SequenceNumber {
		return fmt.Errorf("sequence goes down")
	}
	b = proto.Clone(b).(*sigilv1.Bundle)
	b.ModifyIndex = s.index + 1
	s.bundles[b.TrustDomain] = b
	if st != nil {
		s.putStatus(st)
	}
	s.setBundles[b.TrustDomain]++
	s.notify()
	return nil
}

func (s *memStore) SetStatus(_ context.Context, st *sigilv1.FederationStatus) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rels[st.TrustDomain] == nil {
		return fmt.Errorf("no relationship %q", st.TrustDomain)
	}
	s.putStatus(st)
	s.setStatuses[st.TrustDomain]++
	s.notify()
	return nil
}

// The admin side of the store.

func (s *memStore) putRel(rel *sigilv1.FederationRelationship, bootstrap *sigilv1.Bundle) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rel = proto.Clone(rel).(*sigilv1.FederationRelationship)
	rel.ModifyIndex = s.index + 1
	s.rels[rel.TrustDomain] = rel
	if bootstrap != nil && s.bundles[rel.TrustDomain] == nil {
		s.bundles[rel.TrustDomain] = proto.Clone(bootstrap).(*sigilv1.Bundle)
	}
	s.notify()
}

func (s *memStore) deleteRel(td string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.rels, td)
	delete(s.statuses, td)
	s.notify()
}

func (s *memStore) deleteBundle(td string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.bundles, td)
	s.notify()
}

func (s *memStore) requestRefresh(td string, at time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.statuses[td]
	if st == nil {
		st = &sigilv1.FederationStatus{TrustDomain: td}
		s.statuses[td] = st
	}
	st.RefreshRequestedAt = at.Unix()
	st.RefreshRequests++
	s.notify()
}

func (s *memStore) bundle(td string) *sigilv1.Bundle {
	s.mu.Lock()
	defer s.mu.Unlock()
	return proto.Clone(s.bundles[td]).(*sigilv1.Bundle)
}

func (s *memStore) status(td string) *sigilv1.FederationStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st := s.statuses[td]; st != nil {
		return proto.Clone(st).(*sigilv1.FederationStatus)
	}
	return nil
}

func (s *memStore) writes(td string) (bundles, statuses int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.setBundles[td], s.setStatuses[td]
}

// meter records refresh outcomes.
type meter struct {
	mu       sync.Mutex
	outcomes map[string][]string
	ages     map[string]time.Duration
}

func newMeter() *meter {
	return &meter{outcomes: make(map[string][]string), ages: make(map[string]time.Duration)}
}

func (m *meter) Refreshed(td, outcome string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.outcomes[td] = append(m.outcomes[td], outcome)
}

func (m *meter) BundleAge(td string, age time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.ages[td] = age
}

func (m *meter) get(td string) []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.outcomes[td]...)
}

func (m *meter) age(td string) time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.ages[td]
}

// waitOutcomes waits until td has had n refreshes and returns them.
func (m *meter) waitOutcomes(t *testing.T, td string, n int) []string {
	t.Helper()
	eventually.True(t, 10*time.Second, func() bool { return len(m.get(td)) >= n },
		"%s: want %d refreshes", td, n)
	got := m.get(td)
	if len(got) != n {
		t.Fatalf("%s: refreshes %v, want %d", td, got, n)
	}
	return got
}

// partner is a foreign trust domain's bundle endpoint (https_spiffe) on
// loopback.
type partner struct {
	ca       *mtlstest.CA
	src      *bundleSource
	url      string
	requests atomic.Int64
}

func newPartner(t *testing.T, td string, hint time.Duration) *partner {
	t.Helper()
	p := &partner{ca: mtlstest.NewCA(td)}
	p.src = &bundleSource{b: testBundle(t, p.ca, 1, 1)}
	svid := tlsCert(p.ca.SVID("spiffe://"+td+"/sigil/server", time.Hour))
	e, err := NewEndpoint(EndpointConfig{
		Profile:     ProfileHTTPSSPIFFE,
		Bundle:      p.src.get,
		RefreshHint: hint,
		SVID:        func() (*tls.Certificate, error) { return svid, nil },
		OnRequest:   func(bool) { p.requests.Add(1) },
	})
	if err != nil {
		t.Fatal(err)
	}
	p.url, _ = serve(t, e)
	return p
}

// waitRequests waits until the endpoint has counted n requests (it
// counts one once the answer is written, which may be after the client
// has read it) and returns the count.
func (p *partner) waitRequests(t *testing.T, n int64) int64 {
	t.Helper()
	eventually.True(t, 10*time.Second, func() bool { return p.requests.Load() >= n }, "want %d requests", n)
	return p.requests.Load()
}

func (p *partner) rel() *sigilv1.FederationRelationship {
	td := p.ca.TrustDomain().Name()
	return &sigilv1.FederationRelationship{
		TrustDomain: td, BundleEndpointUrl: p.url, Profile: ProfileHTTPSSPIFFE, EndpointSpiffeId: "spiffe://" + td + "/sigil/server",
	}
}

// bootstrap is the bundle an operator gives with the relationship.
func (p *partner) bootstrap(t *testing.T) *sigilv1.Bundle {
	return testBundle(t, p.ca, 0, 0)
}

// startRefresher runs a Refresher on store until the test ends.
func startRefresher(t *testing.T, cfg RefresherConfig) {
	t.Helper()
	r, err := NewRefresher(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

func TestRefresherWritesChangedBundlesOnly(t *testing.T) {
	p := newPartner(t, "b.example", 30*time.Second)
	store := newMemStore()
	store.putRel(p.rel(), p.bootstrap(t))
	clk := clock.NewFake(time.Now())
	m := newMeter()
	startRefresher(t, RefresherConfig{Store: store, Meter: m, Clock: clk})
	td := "b.example"

	// New relationship: fetched at once, the changed bundle written with
	// its status.
	m.waitOutcomes(t, td, 1)
	if b, st := store.writes(td); b != 1 || st != 0 {
		t.Fatalf("writes: %d bundles, %d statuses; want 1, 0", b, st)
	}
	want := proto.Clone(p.src.b).(*sigilv1.Bundle)
	want.RefreshHint = 30
	if got := store.bundle(td); !Equal(got, want) {
		t.Fatalf("stored %v, want %v", got, want)
	}
	st := store.status(td)
	if st.LastError != "" || st.LastSuccessAt != clk.Now().Unix() || st.NextRefreshAt != clk.Now().Add(30*time.Second).Unix() {
		t.Fatalf("status %v", st)
	}

	// Unchanged after 30s: neither bundle nor status written (the status
	// is less than a heartbeat old).
	clk.Add(30 * time.Second)
	if got := m.waitOutcomes(t, td, 2); got[1] != "unchanged" {
		t.Fatalf("outcomes %v", got)
	}
	if b, st := store.writes(td); b != 1 || st != 0 {
		t.Fatalf("writes after an unchanged refresh: %d bundles, %d statuses; want 1, 0", b, st)
	}
	if p.waitRequests(t, 2) != 2 {
		t.Fatalf("%d requests, want 2", p.requests.Load())
	}
	// Unchanged a minute after the last recorded success: the status
	// (heartbeat) only.
	clk.Add(30 * time.Second)
	m.waitOutcomes(t, td, 3)
	if b, st := store.writes(td); b != 1 || st != 1 {
		t.Fatalf("writes after a heartbeat: %d bundles, %d statuses; want 1, 1", b, st)
	}
	if got := store.status(td).LastSuccessAt; got != clk.Now().Unix() {
		t.Fatalf("heartbeat recorded success at %d, want %d", got, clk.Now().Unix())
	}

	// The partner's bundle changes: written once.
	next := testBundle(t, p.ca, 2, 2)
	p.src.set(next)
	clk.Add(30 * time.Second)
	if got := m.waitOutcomes(t, td, 4); got[3] != "changed" {
		t.Fatalf("outcomes %v", got)
	}
	if b, _ := store.writes(td); b != 2 {
		t.Fatalf("%d bundle writes, want 2", b)
	}
	next.RefreshHint = 30
	if got := store.bundle(td); !Equal(got, next) {
		t.Fatalf("stored %v, want %v", got, next)
	}
	if m.age(td) != 0 {
		t.Fatalf("bundle age %v after a success", m.age(td))
	}
}

func TestRefresherFailureKeepsBundle(t *testing.T) {
	p := newPartner(t, "b.example", 30*time.Second)
	store := newMemStore()
	store.putRel(p.rel(), p.bootstrap(t))
	clk := clock.NewFake(time.Now())
	m := newMeter()
	core, logs := observer.New(zap.InfoLevel)
	startRefresher(t, RefresherConfig{Store: store, Meter: m, Clock: clk, Logger: zap.New(core)})
	td := "b.example"
	m.waitOutcomes(t, td, 1)
	good := store.bundle(td)
	success := clk.Now()

	// The endpoint fails: 500 on every request.
	p.src.mu.Lock()
	p.src.err = errTest
	p.src.mu.Unlock()
	clk.Add(30 * time.Second)
	m.waitOutcomes(t, td, 2)
	st := store.status(td)
	if !strings.Contains(st.LastError, `fetch bundle of "b.example" from `+p.url) || !strings.Contains(st.LastError, "500") ||
		st.ConsecutiveFailures != 1 || st.LastSuccessAt != success.Unix() || st.LastErrorAt != clk.Now().Unix() ||
		st.NextRefreshAt != clk.Now().Add(DefaultMinRefresh).Unix() {
		t.Fatalf("status after a failure: %v", st)
	}
	if !proto.Equal(store.bundle(td), good) {
		t.Fatal("a failed fetch changed the bundle")
	}
	// The same error again, with backoff 1s, 2s, 4s: neither status nor
	// log line repeated.
	for i, d := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second} {
		clk.Add(d)
		m.waitOutcomes(t, td, 3+i)
	}
	if b, st := store.writes(td); b != 1 || st != 1 {
		t.Fatalf("writes: %d bundles, %d statuses; want 1, 1", b, st)
	}
	if n := logs.FilterMessageSnippet("refresh failed").Len(); n != 1 {
		t.Fatalf("failure logged %d times, want once", n)
	}
	if got := m.get(td); got[4] != "error" || m.age(td) != clk.Now().Sub(success) {
		t.Fatalf("outcomes %v, age %v", got, m.age(td))
	}
	if !proto.Equal(store.bundle(td), good) {
		t.Fatal("failed fetches changed the bundle")
	}

	// Recovery: the status is cleared (bundle unchanged, so status only).
	p.src.mu.Lock()
	p.src.err = nil
	p.src.mu.Unlock()
	clk.Add(8 * time.Second)
	if got := m.waitOutcomes(t, td, 6); got[5] != "unchanged" {
		t.Fatalf("outcomes %v", got)
	}
	st = store.status(td)
	if st.LastError != "" || st.ConsecutiveFailures != 0 || st.LastSuccessAt != clk.Now().Unix() {
		t.Fatalf("status after recovery: %v", st)
	}
	if b, s := store.writes(td); b != 1 || s != 2 {
		t.Fatalf("writes: %d bundles, %d statuses; want 1, 2", b, s)
	}
	if logs.FilterMessageSnippet("works again").Len() != 1 {
		t.Fatalf("recovery not logged: %v", logs.All())
	}
}

func TestRefresherHonoursRefreshRequest(t *testing.T) {
	p := newPartner(t, "b.example", time.Hour)
	store := newMemStore()
	store.putRel(p.rel(), p.bootstrap(t))
	clk := clock.NewFake(time.Now())
	m := newMeter()
	startRefresher(t, RefresherConfig{Store: store, Meter: m, Clock: clk})
	td := "b.example"
	m.waitOutcomes(t, td, 1)

	// `sigil federation refresh` a few seconds later: fetched at once,
	// though the next refresh is an hour away, and recorded even though
	// nothing changed.
	clk.Add(3 * time.Second)
	store.requestRefresh(td, clk.Now())
	m.waitOutcomes(t, td, 2)
	st := store.status(td)
	if st.LastAttemptAt < st.RefreshRequestedAt || st.LastError != "" || st.RefreshesDone != 1 {
		t.Fatalf("status after the request: %v", st)
	}
	if _, s := store.writes(td); s != 1 {
		t.Fatalf("%d status writes, want 1", s)
	}
	// Honoured once: later store changes do not fetch again, nor does a
	// rewrite of the relationship that changes nothing fetched (a new
	// leader writing the config file's relationships).
	rewritten := p.rel()
	rewritten.FromConfig = true
	store.putRel(rewritten, nil)
	store.putRel(&sigilv1.FederationRelationship{TrustDomain: "c.example", BundleEndpointUrl: "https://127.0.0.1:1/", Profile: ProfileHTTPSWeb}, nil)
	m.waitOutcomes(t, "c.example", 1)
	if got := len(m.get(td)); got != 2 {
		t.Fatalf("%d refreshes of %s, want 2", got, td)
	}
	// A second request in the same second as the attempt that answered
	// the first one is answered by a new attempt (the timestamps cannot
	// tell the two apart; the request count does).
	store.requestRefresh(td, clk.Now())
	m.waitOutcomes(t, td, 3)
	if st := store.status(td); st.RefreshRequests != 2 || st.RefreshesDone != 2 {
		t.Fatalf("status after the second request: %v", st)
	}
}

func TestRefresherFollowsRelationshipChanges(t *testing.T) {
	p1, p2 := newPartner(t, "b.example", time.Hour), newPartner(t, "b.example", time.Hour)
	store := newMemStore()
	store.putRel(p1.rel(), p1.bootstrap(t))
	clk := clock.NewFake(time.Now())
	m := newMeter()
	startRefresher(t, RefresherConfig{Store: store, Meter: m, Clock: clk})
	td := "b.example"
	m.waitOutcomes(t, td, 1)

	// The relationship moves to another endpoint (and CA, given by
	// sigil bundle set): fetched at once from there.
	store.mu.Lock()
	store.bundles[td] = p2.bootstrap(t)
	store.bundles[td].SequenceNumber = 1
	store.mu.Unlock()
	store.putRel(p2.rel(), nil)
	m.waitOutcomes(t, td, 2)
	if p2.waitRequests(t, 1) != 1 || p1.requests.Load() != 1 {
		t.Fatalf("requests: %d to the old endpoint, %d to the new; want 1, 1", p1.requests.Load(), p2.requests.Load())
	}
	if got := store.bundle(td); !Equal(got, withHint(p2.src.b, 3600)) {
		t.Fatalf("stored %v", got)
	}

	// The bundle is deleted: fetched again at once, which fails (an
	// https_spiffe endpoint cannot be authenticated without a bundle)...
	store.deleteBundle(td)
	if got := m.waitOutcomes(t, td, 3); got[2] != "error" {
		t.Fatalf("outcomes %v", got)
	}
	if st := store.status(td); !strings.Contains(st.LastError, `no X.509 authorities of "b.example"`) {
		t.Fatalf("status %v", st)
	}
	// ...until a bundle is set by hand: then retried at once, without
	// waiting for the backoff.
	store.mu.Lock()
	store.bundles[td] = p2.bootstrap(t)
	store.notify()
	store.mu.Unlock()
	if got := m.waitOutcomes(t, td, 4); got[3] != "changed" {
		t.Fatalf("outcomes %v", got)
	}
	if p2.waitRequests(t, 2) != 2 || store.status(td).LastError != "" {
		t.Fatalf("%d requests, status %v", p2.requests.Load(), store.status(td))
	}

	// Deleted relationship: never fetched again.
	store.deleteRel(td)
	clk.Add(2 * time.Hour)
	store.putRel(&sigilv1.FederationRelationship{TrustDomain: "c.example", BundleEndpointUrl: "https://127.0.0.1:1/", Profile: ProfileHTTPSWeb}, nil)
	m.waitOutcomes(t, "c.example", 1)
	clk.Add(2 * time.Hour)
	m.waitOutcomes(t, "c.example", 2)
	if got := len(m.get(td)); got != 4 || p2.requests.Load() != 2 {
		t.Fatalf("deleted relationship refreshed: %d refreshes, %d requests", got, p2.requests.Load())
	}
}

func withHint(b *sigilv1.Bundle, hint int64) *sigilv1.Bundle {
	c := proto.Clone(b).(*sigilv1.Bundle)
	c.RefreshHint = hint
	return c
}

func TestRefresherKeepsPreviousLeadersSchedule(t *testing.T) {
	p := newPartner(t, "b.example", time.Hour)
	store := newMemStore()
	store.putRel(p.rel(), p.bootstrap(t))
	clk := clock.NewFake(time.Now())
	td := "b.example"
	// A previous leader fetched and planned the next fetch 10 minutes on.
	if err := store.SetBundle(context.Background(), withHint(p.src.b, 3600), &sigilv1.FederationStatus{
		TrustDomain: td, LastSuccessAt: clk.Now().Unix(), LastAttemptAt: clk.Now().Unix(),
		NextRefreshAt: clk.Now().Add(10 * time.Minute).Unix(),
	}); err != nil {
		t.Fatal(err)
	}
	m := newMeter()
	startRefresher(t, RefresherConfig{Store: store, Meter: m, Clock: clk})
	// Another, new relationship is fetched at once; b.example is not.
	store.putRel(&sigilv1.FederationRelationship{TrustDomain: "c.example", BundleEndpointUrl: "https://127.0.0.1:1/", Profile: ProfileHTTPSWeb}, nil)
	m.waitOutcomes(t, "c.example", 1)
	if p.requests.Load() != 0 || len(m.get(td)) != 0 {
		t.Fatal("the new leader fetched before the planned time")
	}
	clk.Add(10 * time.Minute)
	if got := m.waitOutcomes(t, td, 1); got[0] != "unchanged" {
		t.Fatalf("outcomes %v", got)
	}
}

func TestRefresherBoundsConcurrentFetches(t *testing.T) {
	store := newMemStore()
	const n = 20
	for i := range n {
		store.putRel(&sigilv1.FederationRelationship{
			TrustDomain: fmt.Sprintf("td%d.example", i), BundleEndpointUrl: "https://127.0.0.1:1/", Profile: ProfileHTTPSWeb,
		}, nil)
	}
	var active, peak, started atomic.Int64
	release := make(chan struct{})
	fetch := func(ctx context.Context, rel *sigilv1.FederationRelationship, cur *sigilv1.Bundle) (*sigilv1.Bundle, error) {
		started.Add(1)
		a := active.Add(1)
		defer active.Add(-1)
		for {
			p := peak.Load()
			if a <= p || peak.CompareAndSwap(p, a) {
				break
			}
		}
		select {
		case <-release:
			return nil, errTest
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	m := newMeter()
	startRefresher(t, RefresherConfig{Store: store, Meter: m, Clock: clock.NewFake(time.Now()), Fetch: fetch})
	eventually.True(t, 10*time.Second, func() bool { return started.Load() == maxConcurrentFetches }, "fetches did not start")
	release <- struct{}{} // one ends, one more starts
	eventually.True(t, 10*time.Second, func() bool { return started.Load() == maxConcurrentFetches+1 }, "no fetch started after one ended")
	close(release)
	eventually.True(t, 10*time.Second, func() bool { return started.Load() == n }, "not every relationship was fetched")
	if p := peak.Load(); p != maxConcurrentFetches {
		t.Fatalf("peak of %d fetches at once, want %d", p, maxConcurrentFetches)
	}
}

func TestRefresherFetchTimeout(t *testing.T) {
	store := newMemStore()
	store.putRel(&sigilv1.FederationRelationship{TrustDomain: "b.example", BundleEndpointUrl: "https://127.0.0.1:1/", Profile: ProfileHTTPSWeb}, nil)
	// A Fetch that ignores everything but its context.
	fetch := func(ctx context.Context, rel *sigilv1.FederationRelationship, cur *sigilv1.Bundle) (*sigilv1.Bundle, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	m := newMeter()
	startRefresher(t, RefresherConfig{Store: store, Meter: m, Clock: clock.NewFake(time.Now()), Fetch: fetch,
		FetchConfig: FetchConfig{Timeout: 50 * time.Millisecond}})
	m.waitOutcomes(t, "b.example", 1)
	if st := store.status("b.example"); !strings.Contains(st.GetLastError(), "deadline exceeded") {
		t.Fatalf("status %v", st)
	}
}

func TestNewRefresherRefuses(t *testing.T) {
	for name, tc := range map[string]struct {
		cfg  RefresherConfig
		want string
	}{
		"no store": {RefresherConfig{}, "Store is required"},
		"min>max":  {RefresherConfig{Store: newMemStore(), MinRefresh: time.Hour, MaxRefresh: time.Minute}, "below min refresh"},
		"negative": {RefresherConfig{Store: newMemStore(), MinRefresh: -1}, "negative"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := NewRefresher(tc.cfg)
			wantErr(t, err, "federation: refresher: ", tc.want)
		})
	}
}

func TestErrorTextIgnoresLocalPort(t *testing.T) {
	opErr := func(port int) error {
		return fmt.Errorf("federation: fetch bundle of %q from %s: %w", "b.example", "https://10.0.0.2:8443",
			&net.OpError{Op: "read", Net: "tcp", Source: &net.TCPAddr{IP: net.IPv4(10, 0, 0, 1), Port: port},
				Addr: &net.TCPAddr{IP: net.IPv4(10, 0, 0, 2), Port: 8443}, Err: syscall.ECONNRESET})
	}
	a, b := errorText(opErr(50000)), errorText(opErr(50001))
	want := `federation: fetch bundle of "b.example" from https://10.0.0.2:8443: read tcp 10.0.0.2:8443: connection reset by peer`
	if a != want || b != want {
		t.Fatalf("errorText gave %q and %q, want %q", a, b, want)
	}
	if got := errorText(errTest); got != "test error" {
		t.Fatalf("errorText(%v) = %q", errTest, got)
	}
}

func TestErrorTextIsBounded(t *testing.T) {
	got := errorText(fmt.Errorf("federation: %s", strings.Repeat("é", 2000)))
	if len(got) > maxErrorText+len("…") || !strings.HasPrefix(got, "federation: éé") || !strings.HasSuffix(got, "…") || !utf8.ValidString(got) {
		t.Fatalf("errorText gave %d bytes: %q…", len(got), got[:40])
	}
}
