package agent

import (
	"errors"
	"fmt"
	"testing"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// With more entries than a report carries, entries that hold no SVID and
// never failed (never minted, cold) are counted, not listed: they never
// crowd the SVIDs held, or the failing entries, out of the report, and
// building the report costs the warm entries, not all of them. With
// fewer, every entry is listed, as before.
func TestReportNeverCrowdsOutMintedSVIDs(t *testing.T) {
	const n, minted = MaxReportSVIDs + 5000, 50
	f := boundedFixture(t, minted, n)
	f.mintJobs(f.c.takeDue(f.clk.Now(), 500))
	// A workload asks for an entry the server fails to mint.
	sub := f.c.SubscribeX509([]*sigilv1.Selector{sel("uid:24000")})
	defer sub.Close()
	jobs := f.c.takeDue(f.clk.Now(), 500)
	if len(jobs) != 1 || jobs[0].id != "e24000" {
		t.Fatalf("waiting workload's jobs: %v", jobIDs(jobs))
	}
	f.c.finishBatch(jobs, []mintOutcome{{err: errors.New("signing failed")}})

	f.c.mu.Lock()
	serials := map[string]string{}
	for id, st := range f.c.st.entries {
		if st.svid != nil {
			serials[id] = st.svid.serialText()
		}
	}
	warm := len(f.c.st.entries)
	f.c.mu.Unlock()
	if len(serials) != minted || warm > 2*minted {
		t.Fatalf("%d SVIDs held, %d warm entries; want %d SVIDs and few warm entries", len(serials), warm, minted)
	}

	view, held, truncated := f.c.rotationReport(MaxReportSVIDs)
	if held != n || !truncated {
		t.Fatalf("held %d truncated %v; want %d, true", held, truncated, n)
	}
	if len(view) != minted+1 {
		t.Fatalf("report lists %d entries, want the %d SVIDs and the failing entry", len(view), minted)
	}
	got := map[string]string{}
	for _, r := range view {
		got[r.entryID] = r.serial
	}
	for id, serial := range serials {
		if got[id] != serial {
			t.Fatalf("SVID of %s (serial %s) reported as %q", id, serial, got[id])
		}
	}
	if r := view[0]; r.entryID != "e24000" || r.failures != 1 || r.lastError == "" || r.serial != "" {
		t.Fatalf("failing entry reported as %+v", r)
	}

	// Everything fits: every entry is listed, with the same SVIDs.
	view, held, truncated = f.c.rotationReport(n)
	if held != n || truncated || len(view) != n {
		t.Fatalf("report of up to %d: %d listed, held %d, truncated %v", n, len(view), held, truncated)
	}
	listed := map[string]bool{}
	for _, r := range view {
		listed[r.entryID] = true
		if r.serial != serials[r.entryID] {
			t.Fatalf("%s reported with serial %q, want %q", r.entryID, r.serial, serials[r.entryID])
		}
		if want := fmt.Sprintf("spiffe://example.org/w/%s", r.entryID); r.spiffeID != want {
			t.Fatalf("%s reported with SPIFFE ID %q", r.entryID, r.spiffeID)
		}
	}
	if len(listed) != n {
		t.Fatalf("%d distinct entries listed, want %d", len(listed), n)
	}
}
