package agent

import (
	"fmt"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/internal/offheap"
	"github.com/sigil-id/sigil/workloadapi"
)

func TestSVIDCacheConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		c    SVIDCacheConfig
		want string
	}{
		{SVIDCacheConfig{}, ""},
		{SVIDCacheConfig{MaxSVIDs: 1, EagerSelectors: []string{"unix:uid:0", "k8s:ns:a:b"}, IdleAfter: time.Second}, ""},
		{SVIDCacheConfig{MaxSVIDs: -1}, "agent: svid cache max_svids -1 is negative"},
		{SVIDCacheConfig{IdleAfter: -time.Second}, "agent: svid cache idle_after -1s is outside 1s..720h0m0s"},
		{SVIDCacheConfig{IdleAfter: time.Millisecond}, "agent: svid cache idle_after 1ms is outside 1s..720h0m0s"},
		{SVIDCacheConfig{IdleAfter: 31 * 24 * time.Hour}, "agent: svid cache idle_after 744h0m0s is outside 1s..720h0m0s"},
		{SVIDCacheConfig{EagerSelectors: []string{"uid0"}}, `agent: svid cache eager selector "uid0": registration: selector "uid0": want type:value`},
		{SVIDCacheConfig{EagerSelectors: []string{":x"}}, `agent: svid cache eager selector ":x": registration:`},
	} {
		err := tc.c.validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%+v: %v", tc.c, err)
		case tc.want != "" && (err == nil || !strings.HasPrefix(err.Error(), tc.want)):
			t.Errorf("%+v: error %v, want %q", tc.c, err, tc.want)
		}
	}
	// Config.Validate checks the block; the defaults fill zero fields.
	cfg := DefaultConfig()
	if cfg.SVIDCache.MaxSVIDs != DefaultMaxSVIDs || cfg.SVIDCache.IdleAfter != DefaultIdleAfter {
		t.Fatalf("DefaultConfig().SVIDCache = %+v", cfg.SVIDCache)
	}
	if c := (Config{}).withDefaults(); c.SVIDCache.MaxSVIDs != DefaultMaxSVIDs || c.SVIDCache.IdleAfter != DefaultIdleAfter {
		t.Fatalf("withDefaults: %+v", c.SVIDCache)
	}
}

// boundedFixture is a real cache with a fake clock, bounded to max SVIDs
// and holding n entries e00000... with selectors uid:N (one each).
func boundedFixture(t *testing.T, max, n int, eager ...string) *cacheFixture {
	t.Helper()
	f := newCacheFixture(t)
	f.c.setPolicy(newCachePolicy(SVIDCacheConfig{MaxSVIDs: max, EagerSelectors: eager, IdleAfter: time.Minute}))
	f.c.SetBundle(f.bundle(f.ca))
	entries := make([]*sigilv1.Entry, n)
	for i := range entries {
		id := fmt.Sprintf("e%05d", i)
		entries[i] = entry(id, "w/"+id, int64(i), fmt.Sprintf("uid:%d", i))
	}
	f.c.ReplaceEntries(entries)
	return f
}

// mintJobs mints jobs with f's CA and reports the IDs minted.
func (f *cacheFixture) mintJobs(jobs []*mintJob) []string {
	f.t.Helper()
	outs := make([]mintOutcome, len(jobs))
	var ids []string
	for i, j := range jobs {
		key, _, err := newKeyAndCSR()
		if err != nil {
			f.t.Fatal(err)
		}
		j.key = key
		outs[i] = mintOutcome{chain: f.ca.sign(f.t, spiffeid.RequireFromString(j.fp.spiffeID), key.Public(), f.clk.Now().Add(-time.Minute), time.Hour)}
		ids = append(ids, j.id)
	}
	f.c.finishBatch(jobs, outs)
	return ids
}

// A workload asking for an entry the full cache holds no SVID for gets it
// in the next batch, ahead of everything else, and its snapshot then;
// when it leaves, the entry stays for idle_after and is evicted after
// that when another entry needs the room.
func TestBoundedCacheFirstFetchAndIdle(t *testing.T) {
	f := boundedFixture(t, 10, 1000)
	// Only max_svids entries are minted ahead of any request, by ID.
	jobs, _ := f.c.takeBatch(f.clk.Now(), 500)
	if len(jobs) != 10 || jobs[0].id != "e00000" || jobs[9].id != "e00009" {
		t.Fatalf("first batch: %d jobs from %s", len(jobs), jobs[0].id)
	}
	f.mintJobs(jobs)
	if jobs, _ := f.c.takeBatch(f.clk.Now(), 500); len(jobs) != 0 {
		t.Fatalf("full cache took %d more", len(jobs))
	}
	sub := f.c.SubscribeX509([]*sigilv1.Selector{sel("uid:777")})
	noRecv(t, sub)
	select {
	case <-f.c.kick:
	default:
		t.Fatal("a waiting workload did not wake the minting loop")
	}
	jobs, _ = f.c.takeBatch(f.clk.Now(), 500)
	if len(jobs) != 1 || jobs[0].id != "e00777" {
		t.Fatalf("waiting workload's batch: %v", jobIDs(jobs))
	}
	f.mintJobs(jobs)
	if got := ids(recv(t, sub)); !equalStrings(got, []string{"e00777"}) {
		t.Fatalf("snapshot %v", got)
	}
	// Over the size by one: e00000, never asked for, went.
	if e, s := f.c.stats(); e != 1000 || s != 10 {
		t.Fatalf("stats %d entries %d svids", e, s)
	}
	f.c.mu.Lock()
	evicted := f.c.st.peek("e00000").svid == nil
	f.c.mu.Unlock()
	if !evicted {
		t.Fatal("e00000 kept its SVID")
	}
	if m := testutil.ToFloat64(f.c.met.evicted); m != 1 {
		t.Fatalf("evicted counter %v", m)
	}
	sub.Close()
	// Within idle_after, e00777 stays; a new workload for e00500 evicts
	// e00001 instead.
	f.clk.Add(59 * time.Second)
	sub2 := f.c.SubscribeX509([]*sigilv1.Selector{sel("uid:500")})
	defer sub2.Close()
	f.mintJobs(f.c.takeDue(f.clk.Now(), 500))
	recv(t, sub2)
	f.c.mu.Lock()
	kept, gone := f.c.st.peek("e00777").svid != nil, f.c.st.peek("e00001").svid == nil
	f.c.mu.Unlock()
	if !kept || !gone {
		t.Fatalf("within idle_after: e00777 kept %v, e00001 evicted %v", kept, gone)
	}
	// After idle_after e00777 is the least recently requested of the
	// entries asked for, but still after those never asked for.
	f.clk.Add(time.Second)
	f.c.takeBatch(f.clk.Now(), 500)
	f.c.mu.Lock()
	active := f.c.st.peek("e00777").active
	f.c.mu.Unlock()
	if active {
		t.Fatal("e00777 still active after idle_after")
	}
	f.c.setPolicy(newCachePolicy(SVIDCacheConfig{MaxSVIDs: 2, IdleAfter: time.Minute}))
	f.c.mu.Lock()
	var held []string
	for _, id := range f.c.st.sortedIDs() {
		if f.c.st.peek(id).svid != nil {
			held = append(held, id)
		}
	}
	f.c.mu.Unlock()
	if !equalStrings(held, []string{"e00500", "e00777"}) {
		t.Fatalf("after shrinking to 2: %v", held)
	}
}

func jobIDs(jobs []*mintJob) []string {
	var out []string
	for _, j := range jobs {
		out = append(out, j.id)
	}
	return out
}

// Deleting entries takes them out of every index and heap: nothing of
// them stays reachable from the state, and their SVIDs no longer count.
func TestBoundedCacheDeletedEntriesLeave(t *testing.T) {
	f := boundedFixture(t, 5, 20, "unix:uid:3")
	f.mintJobs(f.c.takeDue(f.clk.Now(), 500))
	sub := f.c.SubscribeX509([]*sigilv1.Selector{sel("uid:12")})
	f.mintJobs(f.c.takeDue(f.clk.Now(), 500))
	recv(t, sub)
	sub.Close()
	var del []string
	for i := 0; i < 20; i += 2 {
		del = append(del, fmt.Sprintf("e%05d", i))
	}
	f.c.ApplyDelta(nil, del)
	f.c.mu.Lock()
	defer f.c.mu.Unlock()
	s := &f.c.st
	reachable := map[*entryState]bool{}
	for _, h := range []*entryHeap{&s.sched, &s.due, &s.spare, &s.expiry, &s.evict, &s.idle} {
		for _, st := range h.items {
			reachable[st] = true
		}
	}
	for _, m := range s.bySel {
		for _, st := range m {
			reachable[st] = true
		}
	}
	for st := range reachable {
		if st.gone || s.entries[st.entry.id] != st {
			t.Fatalf("deleted entry %s still reachable", st.entry.id)
		}
	}
	n := 0
	for _, st := range s.entries {
		if st.svid != nil {
			n++
		}
	}
	if n != s.svids {
		t.Fatalf("svids count %d, held %d", s.svids, n)
	}
	// The selector indexes of both tiers (coldtier.go) and the strings
	// they hold.
	indexed := map[string]bool{}
	for k := range s.bySel {
		indexed[k] = true
	}
	held := map[string]bool{}
	for k := range s.strs {
		held[k] = true
	}
	for _, p := range s.cold.parents.list {
		if p.refs > 0 {
			held[p.id] = true
		}
	}
	s.cold.each(func(i uint32) {
		r := s.cold.rec(i)
		if id := string(s.cold.id(i)); s.entries[id] != nil || slices.Contains(del, id) {
			t.Fatalf("cold entry %s is warm too, or deleted", id)
		}
		indexed[string(r.sel(int(r.filed)))] = true
		r.eachSel(func(_ int, sel []byte) bool { held[string(sel)] = true; return true })
	})
	if len(indexed) != 10 || len(s.bySel)+s.cold.nsels != 10 {
		t.Fatalf("selector indexes hold %d selectors (%d warm, %d cold), want 10", len(indexed), len(s.bySel), s.cold.nsels)
	}
	// 10 selectors and the parent ID the entries share.
	if len(held) != 11 {
		t.Fatalf("intern tables hold %d strings, want 11", len(held))
	}
	if e, _ := s.Stats(); e != 10 {
		t.Fatalf("%d entries held, want 10", e)
	}
}

// liveHeap is the live Go heap plus the memory the cold stores hold
// outside it (internal/offheap): what the agent's entries cost.
func liveHeap() int64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc) + offheap.InUse()
}

// A real agent (its sync, minting and renewal loops against the fake
// server) with a cache of 3 SVIDs and 20 entries mints 3 ahead of any
// request, the first by ID; a workload asking for another gets it minted
// at once, and the cache stays at its size by evicting an entry no
// workload asked for.
func TestAgentBoundedCacheMintsOnRequest(t *testing.T) {
	srv := newFakeServer(t)
	for i := 0; i < 20; i++ {
		srv.upsert(entry(fmt.Sprintf("e%02d", i), fmt.Sprintf("w%d", i), int64(i), fmt.Sprintf("uid:%d", i)))
	}
	cfg := srv.config(t, t.TempDir())
	cfg.SVIDCache = SVIDCacheConfig{MaxSVIDs: 3}
	r := startAgent(t, cfg)
	issued := func() []string {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		var out []string
		for id := range srv.issuedKeys {
			out = append(out, id)
		}
		slices.Sort(out)
		return out
	}
	for i := 0; ; i++ {
		if _, svids := r.cache.stats(); svids == 3 {
			break
		}
		if i == 2000 {
			t.Fatal("the agent did not fill its cache of 3")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := issued(); !equalStrings(got, []string{"e00", "e01", "e02"}) {
		t.Fatalf("minted ahead of requests: %v", got)
	}
	sub := r.Cache().SubscribeX509([]*sigilv1.Selector{sel("uid:15")})
	defer sub.Close()
	s := waitSnapshot(t, sub, func(s *workloadapi.X509Snapshot) bool { return len(s.Identities) == 1 })
	if s.Identities[0].EntryID != "e15" {
		t.Fatalf("workload got %s", s.Identities[0].EntryID)
	}
	if got := issued(); !equalStrings(got, []string{"e00", "e01", "e02", "e15"}) {
		t.Fatalf("minted: %v", got)
	}
	if entries, svids := r.cache.stats(); entries != 20 || svids != 3 {
		t.Fatalf("%d entries, %d SVIDs held; want 20, 3", entries, svids)
	}
	r.cache.mu.Lock()
	evicted := r.cache.st.peek("e00").svid == nil
	r.cache.mu.Unlock()
	if !evicted {
		t.Fatal("e00 (first by ID, never asked for) kept its SVID")
	}
	r.stop(t)
}
