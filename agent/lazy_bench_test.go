package agent

import (
	"crypto/x509"
	"fmt"
	"runtime"
	"runtime/debug"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/internal/offheap"
)

// benchEntry is the i-th of n entries shaped like those a Kubernetes
// agent holds: a UUID-like ID, a SPIFFE ID, the agent as parent, three
// selectors of which two are shared by many entries.
func benchEntry(i int) *sigilv1.Entry {
	return &sigilv1.Entry{
		Id:        fmt.Sprintf("%08x-1a2b-4c3d-8e9f-%012x", i, i*7919),
		SpiffeId:  fmt.Sprintf("spiffe://example.org/ns/team-%d/sa/workload-%d", i%200, i),
		ParentId:  "spiffe://example.org/sigil/agent/k8s_psat/cluster-1/0b1f8e2c-5d9a-4f5e-9c3b-7a6d5e4f3a2b",
		CreatedAt: int64(1_700_000_000 + i),
		Revision:  1,
		Selectors: []*sigilv1.Selector{
			{Type: "k8s", Value: fmt.Sprintf("ns:team-%d", i%200)},
			{Type: "k8s", Value: fmt.Sprintf("sa:workload-%d", i)},
			{Type: "k8s", Value: "container-name:app"},
		},
	}
}

// letteredName writes i in base 26 with the letters a–z: a name unique
// per entry that does not end in a decimal number, as a service
// account's or a pod's name usually does not. benchEntryLettered uses it
// so that the cold store's numbered-name encoding gains nothing.
func letteredName(i int) string {
	var b [16]byte
	n := len(b)
	for {
		n--
		b[n] = byte('a' + i%26)
		i /= 26
		if i == 0 {
			break
		}
	}
	return string(b[n:])
}

// benchEntryLettered is benchEntry with the team and workload names
// written in letters (letteredName) instead of decimal numbers.
func benchEntryLettered(i int) *sigilv1.Entry {
	e := benchEntry(i)
	team, wl := "team-"+letteredName(i%200), "workload-"+letteredName(i)
	e.SpiffeId = "spiffe://example.org/ns/" + team + "/sa/" + wl
	e.Selectors[0].Value = "ns:" + team
	e.Selectors[1].Value = "sa:" + wl
	return e
}

// BenchmarkAgentHeapPerEntry measures the agent cache's live heap
// (with the cold store's memory outside the Go heap, liveHeap) per entry
// with 100,000 and 1,000,000 entries parented to it and none minted,
// then per active workload with 1,000 workloads subscribed, each to one
// entry whose SVID is minted, and the process's RSS once the garbage of
// the test's input is returned (go test -run '^$' -bench
// AgentHeapPerEntry -benchtime 1x ./agent/).
func BenchmarkAgentHeapPerEntry(b *testing.B) {
	for _, n := range []int{100_000, 1_000_000} {
		b.Run(fmt.Sprintf("entries=%d", n), func(b *testing.B) {
			for range b.N {
				heapPerEntry(b, n, 1000, benchEntry)
			}
		})
	}
	// The same with names that do not end in numbers (its own name, so
	// that -bench AgentHeapPerEntry/entries=1000000 runs without it).
	b.Run("names=letters,n=1000000", func(b *testing.B) {
		for range b.N {
			heapPerEntry(b, 1_000_000, 1000, benchEntryLettered)
		}
	})
}

func heapPerEntry(b *testing.B, n, active int, entry func(int) *sigilv1.Entry) {
	ca := newTestCA(b, t0)
	clk := clock.NewFake(t0)
	base := liveHeap()
	c := newCache(testTD, zap.NewNop(), clk)
	c.setPolicy(newCachePolicy(SVIDCacheConfig{MaxSVIDs: active}))
	c.SetBundle(x509bundle.FromX509Authorities(testTD, []*x509.Certificate{ca.cert}))
	// The entries arrive decoded, as from the sync stream, and only the
	// cache keeps them.
	es := make([]*sigilv1.Entry, n)
	for i := range es {
		es[i] = entry(i)
	}
	c.ReplaceEntries(es)
	es = nil
	withEntries := liveHeap()
	perEntry := float64(withEntries-base) / float64(n)

	subs := make([]interface{ Close() }, 0, active)
	for i := 0; i < active; i++ {
		sub := c.SubscribeX509(entry(i).GetSelectors())
		subs = append(subs, sub)
	}
	start := time.Now()
	for {
		jobs := c.takeDue(clk.Now(), 500)
		if len(jobs) == 0 {
			break
		}
		outs := make([]mintOutcome, len(jobs))
		for i, j := range jobs {
			key, _, err := newKeyAndCSR()
			if err != nil {
				b.Fatal(err)
			}
			j.key = key
			outs[i] = mintOutcome{chain: ca.sign(b, spiffeid.RequireFromString(j.fp.spiffeID), key.Public(), clk.Now().Add(-time.Minute), time.Hour)}
		}
		c.finishBatch(jobs, outs)
	}
	mint := time.Since(start)
	entries, svids := c.stats()
	if entries != n || svids != active {
		b.Fatalf("%d entries, %d SVIDs; want %d, %d", entries, svids, n, active)
	}
	withActive := liveHeap()
	perActive := float64(withActive-withEntries) / float64(active)
	// What the process holds once the garbage of the test's own input
	// is returned to the kernel: its RSS as an agent's settles (with the
	// test binary's pages), and of the memory above, how much is outside
	// the Go heap (the cold store: no collector headroom on it).
	debug.FreeOSMemory()
	rss := procRSS()
	off := offheap.InUse()
	b.ReportMetric(perEntry, "heapB/entry")
	b.ReportMetric(perActive, "heapB/active")
	b.ReportMetric(float64(withActive-base)/(1<<20), "heapMiB")
	b.ReportMetric(float64(off)/(1<<20), "offheapMiB")
	b.ReportMetric(float64(rss)/(1<<20), "rssMiB")
	b.Logf("%d entries: %.0f B/entry; %d active workloads with SVIDs: %.0f B each (minted in %v); total %.1f MiB (%.1f MiB outside the Go heap); process RSS %.1f MiB",
		n, perEntry, active, perActive, mint, float64(withActive-base)/(1<<20), float64(off)/(1<<20), float64(rss)/(1<<20))
	for _, s := range subs {
		s.Close()
	}
	runtime.KeepAlive(c)
}

// The memory of deleted entries is returned: the live heap after
// deleting every entry is back near where it was before they came.
func TestBoundedCacheDeletedEntriesFreeMemory(t *testing.T) {
	const n = 10000
	clk := clock.NewFake(t0)
	c := newCache(testTD, zaptest.NewLogger(t), clk)
	c.setPolicy(newCachePolicy(SVIDCacheConfig{MaxSVIDs: 100}))
	// Measured before the entries are built: they are garbage once the
	// cache holds them. The cold store's memory is outside the Go heap:
	// it counts too.
	liveHeap := func() int64 { return liveHeap() + offheap.InUse() }
	before := liveHeap()
	entries := make([]*sigilv1.Entry, n)
	for i := range entries {
		id := fmt.Sprintf("e%06d", i)
		entries[i] = entry(id, "w/"+id, int64(i), fmt.Sprintf("uid:%d", i))
	}
	c.ReplaceEntries(entries)
	entries = nil
	full := liveHeap()
	var ids []string
	for i := 0; i < n; i++ {
		ids = append(ids, fmt.Sprintf("e%06d", i))
	}
	c.ApplyDelta(nil, ids)
	ids = nil
	after := liveHeap()
	used := full - before
	if used < n*100 {
		t.Fatalf("%d entries took %d bytes: the measure is broken", n, used)
	}
	if left := after - before; left > used/10 {
		t.Fatalf("after deleting every entry %d of %d bytes are still held", left, used)
	}
	runtime.KeepAlive(c)
}
