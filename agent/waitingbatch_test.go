package agent

import (
	"fmt"
	"testing"
	"time"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/workloadapi"
)

// TestWaitingWorkloadNotBehindBatches: a workload that waits for an SVID
// the agent has not minted gets it in a batch of its own, in the minting
// slot that batches of others leave free, even while every other slot is
// taken by large batches that the server has not answered.
func TestWaitingWorkloadNotBehindBatches(t *testing.T) {
	srv := newFakeServer(t)
	const bulk = 3000
	for i := range bulk {
		e := entry(fmt.Sprintf("b%05d", i), fmt.Sprintf("bulk/%d", i), 1, "uid:bulk")
		srv.entries[e.Id] = e
	}
	// Its ID sorts last: batches of others do not take it first.
	waited := entry("zzz", "waited", 1, "uid:waited")
	srv.entries[waited.Id] = waited

	release := make(chan struct{})
	var bigCalls, smallCalls int
	srv.mu.Lock()
	srv.gate = func(n int) {
		srv.mu.Lock()
		if n > 1 {
			bigCalls++
		} else {
			smallCalls++
		}
		srv.mu.Unlock()
		if n > 1 {
			<-release
		}
	}
	srv.mu.Unlock()
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()

	cfg := srv.config(t, t.TempDir())
	cfg.SyncBatchSize = 500
	cfg.SVIDCache.MaxSVIDs = bulk + 1
	r := startAgent(t, cfg)

	// Every slot but one holds a batch the server sits on.
	pollUntil(t, func() bool {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		return bigCalls == maxBatchesInFlight-1
	}, "the batches of others to reach the server")

	sub := r.Cache().SubscribeX509([]*sigilv1.Selector{sel("uid:waited")})
	defer sub.Close()
	s := waitSnapshot(t, sub, func(s *workloadapi.X509Snapshot) bool { return len(s.Identities) == 1 })
	if s.Identities[0].EntryID != "zzz" {
		t.Fatalf("got an SVID for %s, want zzz", s.Identities[0].EntryID)
	}
	srv.mu.Lock()
	big, small := bigCalls, smallCalls
	srv.mu.Unlock()
	if big != maxBatchesInFlight-1 || small != 1 {
		t.Fatalf("%d large and %d single-entry calls while the large ones were held, want %d and 1", big, small, maxBatchesInFlight-1)
	}

	// Then the rest are minted.
	close(release)
	pollUntil(t, func() bool {
		_, svids := r.cache.stats()
		return svids == bulk+1
	}, "every entry to be minted")
}

// pollUntil polls cond for up to 20 s.
func pollUntil(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
