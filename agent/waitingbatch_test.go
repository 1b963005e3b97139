package agent

import (
	"crypto/x509"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/workloadapi"
)

// TestWaitingWorkloadNotBehindBatches: a workload that waits for an SVID
// the agent has not minted gets it in a batch of its own, in the minting
// slot that batches of others leave free, even while every other slot is
// taken by large batches that the server has not answered.
func TestWaitingWorkloadNotBehindBatches(t *testing.T) {
	srv := newFakeServer(t)
	// Enough for every slot but one to hold a full batch, and more.
	const bulk = (maxBatchesInFlight-1)*500 + 100
	for i := range bulk {
		e := entry(fmt.Sprintf("b%05d", i), fmt.Sprintf("bulk/%d", i), 1, "uid:bulk")
		srv.entries[e.Id] = e
	}
	// Its ID sorts last: batches of others do not take it first.
	waited := entry("zzz", "waited", 1, "uid:waited")
	srv.entries[waited.Id] = waited

	g := holdBatches(t, srv)
	defer g.release()

	cfg := srv.config(t, t.TempDir())
	cfg.SyncBatchSize = 500
	cfg.SVIDCache.MaxSVIDs = bulk + 1
	r := startAgent(t, cfg)

	// Every slot but one holds a batch the server sits on.
	pollUntil(t, func() bool {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		return g.big == maxBatchesInFlight-1
	}, "the batches of others to reach the server")

	sub := r.Cache().SubscribeX509([]*sigilv1.Selector{sel("uid:waited")})
	defer sub.Close()
	s := waitSnapshot(t, sub, func(s *workloadapi.X509Snapshot) bool { return len(s.Identities) == 1 })
	if s.Identities[0].EntryID != "zzz" {
		t.Fatalf("got an SVID for %s, want zzz", s.Identities[0].EntryID)
	}
	srv.mu.Lock()
	big, small := g.big, g.small
	srv.mu.Unlock()
	if big != maxBatchesInFlight-1 || small != 1 {
		t.Fatalf("%d large and %d single-entry calls while the large ones were held, want %d and 1", big, small, maxBatchesInFlight-1)
	}

	// Then the rest are minted (a minute: under -race on a loaded
	// host, 1,600 signatures each side took over 20 s).
	g.release()
	pollUntilWithin(t, time.Minute, func() bool {
		_, svids := r.cache.stats()
		return svids == bulk+1
	}, "every entry to be minted")
}

// pollUntil polls cond for up to 20 s.
func pollUntil(t *testing.T, cond func() bool, what string) {
	t.Helper()
	pollUntilWithin(t, 20*time.Second, cond, what)
}

// pollUntilWithin polls cond for up to d.
func pollUntilWithin(t *testing.T, d time.Duration, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// mintResults mints jobs with ca at now as the server would (a fresh key
// per job) and checks them against the state's bundle.
func mintResults(t *testing.T, st *x509State, ca *testCA, jobs []*mintJob, now time.Time) []mintResult {
	t.Helper()
	results := make([]mintResult, len(jobs))
	for i, j := range jobs {
		key, _, err := newMintKeyAndCSR()
		if err != nil {
			t.Fatal(err)
		}
		j.key = key
		chain := ca.sign(t, spiffeid.RequireFromString(j.fp.spiffeID), key.Public(), now, time.Hour)
		results[i] = checkMint(j, mintOutcome{chain: chain}, st.bundle, now)
	}
	return results
}

// eventsOf counts the events of kind for entry id.
func eventsOf(ch changes, kind eventKind, id string) int {
	n := 0
	for _, e := range ch.events {
		if e.kind == kind && e.entryID == id {
			n++
		}
	}
	return n
}

// TestWaitingEntryInFlightTakenAgainAlone: an entry a waiting workload
// needs that is in flight in a large batch is taken again alone; whichever
// result comes back first, the SVID installed is the one minted alone,
// and the batch's result for the entry is dropped. An entry in flight in a
// small batch, or already taken again, is not taken again.
func TestWaitingEntryInFlightTakenAgainAlone(t *testing.T) {
	now := time.Now()
	ca := newTestCA(t, now)
	for _, soloFirst := range []bool{true, false} {
		st := newX509State(func() float64 { return 0.5 })
		st.SetBundle(x509bundle.FromX509Authorities(testTD, []*x509.Certificate{ca.cert}), now)
		var entries []*sigilv1.Entry
		for i := range 100 {
			entries = append(entries, entry(fmt.Sprintf("e%03d", i), fmt.Sprintf("w/%d", i), 1, fmt.Sprintf("uid:%d", i)))
		}
		st.ReplaceEntries(entries)
		bulk, _ := st.StartMints(now, 50, nil)
		if len(bulk) != 50 {
			t.Fatalf("took %d, want 50", len(bulk))
		}
		var waited *entryState
		for _, j := range bulk {
			if j.id == "e010" {
				waited = st.entries[j.id]
			}
		}
		if waited == nil {
			t.Fatal("e010 is not in the first batch")
		}
		waiting := func() map[*entryState]bool { return map[*entryState]bool{waited: true} }
		solo := st.StartWaiting(now, 50, waiting)
		if len(solo) != 1 || solo[0].id != "e010" {
			t.Fatalf("StartWaiting took %d jobs, want e010 alone", len(solo))
		}
		if again := st.StartWaiting(now, 50, waiting); len(again) != 0 {
			t.Fatalf("taken again while minted alone: %d jobs", len(again))
		}
		bulkResults, soloResults := mintResults(t, &st, ca, bulk, now), mintResults(t, &st, ca, solo, now)
		var soloSerial []byte
		for _, r := range soloResults {
			soloSerial = r.s.serial
		}
		order := [][]mintResult{soloResults, bulkResults}
		if !soloFirst {
			order = [][]mintResult{bulkResults, soloResults}
		}
		n1, ch1 := st.MintFinished(order[0], now)
		n2, ch2 := st.MintFinished(order[1], now)
		if n1+n2 != 50 {
			t.Fatalf("solo first %v: installed %d + %d, want 50", soloFirst, n1, n2)
		}
		if m, s := eventsOf(ch1, evMinted, "e010")+eventsOf(ch2, evMinted, "e010"), eventsOf(ch1, evStale, "e010")+eventsOf(ch2, evStale, "e010"); m != 1 || s != 1 {
			t.Fatalf("solo first %v: e010 minted %d times, dropped %d times; want 1 and 1", soloFirst, m, s)
		}
		if got := waited.servable(); got == nil || string(got.serial) != string(soloSerial) {
			t.Fatalf("solo first %v: e010 does not hold the SVID minted alone", soloFirst)
		}
		if st.inflightNew != 0 {
			t.Fatalf("solo first %v: %d mints counted in flight after all came back", soloFirst, st.inflightNew)
		}

		// A small batch in flight is waited for.
		small, _ := st.StartMints(now, quickBatch, nil)
		if len(small) != quickBatch {
			t.Fatalf("took %d, want %d", len(small), quickBatch)
		}
		waited = st.entries[small[0].id]
		if again := st.StartWaiting(now, 50, waiting); len(again) != 0 {
			t.Fatalf("entry of a batch of %d taken again", quickBatch)
		}

		// More than quickBatch waited-for entries in flight in a large
		// batch are waited for: taking them again would sign each twice.
		large, _ := st.StartMints(now, 34, nil)
		if len(large) != 34 {
			t.Fatalf("took %d, want 34", len(large))
		}
		many := make(map[*entryState]bool)
		for _, j := range large[:quickBatch+1] {
			many[st.entries[j.id]] = true
		}
		manyWaiting := func() map[*entryState]bool { return many }
		if again := st.StartWaiting(now, 50, manyWaiting); len(again) != 0 {
			t.Fatalf("%d in-flight entries taken again, want none of %d", len(again), quickBatch+1)
		}
		delete(many, st.entries[large[0].id])
		if again := st.StartWaiting(now, 50, manyWaiting); len(again) != quickBatch {
			t.Fatalf("%d in-flight entries taken again, want all %d", len(again), quickBatch)
		}
	}
}

// TestWaitingWorkloadEntryInFlightMintedAlone: at an agent's start, a
// workload that asks for its SVID after its entry was sent in a large
// batch gets it from a single-entry call while the server still holds the
// batch; when the batch comes back, the workload's SVID is not replaced.
func TestWaitingWorkloadEntryInFlightMintedAlone(t *testing.T) {
	srv := newFakeServer(t)
	const bulk = 1499 // with it, three batches of 500
	// Its ID sorts first: the first batch takes it.
	waited := entry("a000", "waited", 1, "uid:waited")
	srv.entries[waited.Id] = waited
	for i := range bulk {
		e := entry(fmt.Sprintf("b%05d", i), fmt.Sprintf("bulk/%d", i), 1, "uid:bulk")
		srv.entries[e.Id] = e
	}
	g := holdBatches(t, srv)
	defer g.release()
	cfg := srv.config(t, t.TempDir())
	cfg.SyncBatchSize = 500
	cfg.SVIDCache.MaxSVIDs = bulk + 1
	r := startAgent(t, cfg)
	// Every entry is in flight in a batch the server sits on.
	pollUntil(t, func() bool {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		return g.big == 3
	}, "the batches to reach the server")

	sub := r.Cache().SubscribeX509([]*sigilv1.Selector{sel("uid:waited")})
	defer sub.Close()
	s := waitSnapshot(t, sub, func(s *workloadapi.X509Snapshot) bool { return len(s.Identities) == 1 })
	if s.Identities[0].EntryID != "a000" {
		t.Fatalf("got an SVID for %s, want a000", s.Identities[0].EntryID)
	}
	serial := leafOf(t, s.Identities[0]).SerialNumber
	srv.mu.Lock()
	big, small := g.big, g.small
	srv.mu.Unlock()
	if big != 3 || small != 1 {
		t.Fatalf("%d large and %d single-entry calls while the large ones were held, want 3 and 1", big, small)
	}

	g.release()
	pollUntil(t, func() bool {
		_, svids := r.cache.stats()
		return svids == bulk+1
	}, "every entry to be minted")
	// The batch's SVID for a000 was dropped: the workload keeps its own.
	select {
	case s := <-sub.Updates():
		if got := leafOf(t, s.Identities[0]).SerialNumber; got.Cmp(serial) != 0 {
			t.Fatalf("the workload's SVID was replaced by the batch's (serial %v, then %v)", serial, got)
		}
	case <-time.After(200 * time.Millisecond):
	}
}

// batchGate holds the fake server's signing calls of more than one
// entry until release, and counts the calls; its counts are guarded by
// the server's mutex.
type batchGate struct {
	big, small int
	release    func()
}

// holdBatches makes srv hold every signing call of more than one entry
// until the gate's release, which the test defers so that it runs before
// the agent and the server stop (and again, harmlessly, at cleanup).
func holdBatches(t *testing.T, srv *fakeServer) *batchGate {
	t.Helper()
	ch := make(chan struct{})
	var once sync.Once
	g := &batchGate{release: func() { once.Do(func() { close(ch) }) }}
	t.Cleanup(g.release)
	srv.mu.Lock()
	srv.gate = func(n int) {
		srv.mu.Lock()
		if n > 1 {
			g.big++
		} else {
			g.small++
		}
		srv.mu.Unlock()
		if n > 1 {
			<-ch
		}
	}
	srv.mu.Unlock()
	return g
}
