package agent

import (
	"bytes"
	"fmt"
	"os"
	"runtime"
	"runtime/metrics"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/internal/offheap"
)

// heapPeak samples the bytes of heap objects (live or not yet
// collected: what the process must hold) and of the cold stores outside
// the heap (internal/offheap) every millisecond until stop
// is called, which returns the largest sample.
func heapPeak() (stop func() uint64) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	var peak uint64
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for {
			metrics.Read(sample)
			peak = max(peak, sample[0].Value.Uint64()+uint64(offheap.InUse()))
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	return func() uint64 {
		close(done)
		wg.Wait()
		return peak
	}
}

// BenchmarkAgentFullSync measures a first full sync of n entries as the
// sync loop takes it: messages of 1,000 decoded entries, each packed and
// dropped, collected until the set ends, then handed to the cache
// (bounded to 1,000 SVIDs, nothing minted). It reports the peak of the
// heap and of the memory outside it during the sync (what sets the
// agent's RSS) and the live memory after it, per entry (go test -run '^$' -bench AgentFullSync
// -benchtime 1x ./agent/).
func BenchmarkAgentFullSync(b *testing.B) {
	for _, n := range []int{100_000, 1_000_000} {
		for _, how := range []string{"map", "stage"} {
			b.Run(fmt.Sprintf("entries=%d/collect=%s", n, how), func(b *testing.B) {
				for range b.N {
					fullSyncPeak(b, n, how)
				}
			})
		}
	}
}

func fullSyncPeak(b *testing.B, n int, how string) {
	base := liveHeap()
	c := newCache(testTD, zap.NewNop(), clock.NewFake(t0))
	c.setPolicy(newCachePolicy(SVIDCacheConfig{MaxSVIDs: 1000}))
	stop := heapPeak()
	start := time.Now()
	switch how {
	case "map": // as the sync loop collected a full set before the cold tier
		full := make(map[string]packedEntry)
		for i := 0; i < n; i += 1000 {
			for j := i; j < min(i+1000, n); j++ {
				e := benchEntry(j)
				full[e.GetId()] = packEntry(e, noIntern)
			}
		}
		entries := make([]packedEntry, 0, len(full))
		for _, e := range full {
			entries = append(entries, e)
		}
		full = nil
		c.replacePacked(entries)
	case "stage":
		full := newEntryStage()
		for i := 0; i < n; i += 1000 {
			for j := i; j < min(i+1000, n); j++ {
				full.put(benchEntry(j))
			}
		}
		c.replaceStaged(full)
	}
	took := time.Since(start)
	peak := stop()
	live := liveHeap()
	if e, _ := c.stats(); e != n {
		b.Fatalf("%d entries held, want %d", e, n)
	}
	b.ReportMetric(float64(peak-min(peak, uint64(base)))/(1<<20), "peakHeapMiB")
	b.ReportMetric(float64(live-base)/float64(n), "heapB/entry")
	b.Logf("%d entries collected by %s: peak heap %.1f MiB, live %.1f MiB after, in %v; process %s",
		n, how, float64(peak-min(peak, uint64(base)))/(1<<20), float64(live-base)/(1<<20), took, procMem())
	runtime.KeepAlive(c)
}

// procRSS is the process's resident set in bytes (VmRSS), 0 when it
// cannot be read.
func procRSS() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range bytes.Split(b, []byte("\n")) {
		if v, ok := bytes.CutPrefix(line, []byte("VmRSS:")); ok {
			var kb int64
			fmt.Sscan(string(v), &kb)
			return kb << 10
		}
	}
	return 0
}

// procMem is the process's peak and current RSS (VmHWM, VmRSS), as
// /proc/self/status says ("" where it cannot be read).
func procMem() string {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return ""
	}
	var out []string
	for _, line := range bytes.Split(b, []byte("\n")) {
		if bytes.HasPrefix(line, []byte("VmHWM:")) || bytes.HasPrefix(line, []byte("VmRSS:")) {
			out = append(out, string(bytes.Join(bytes.Fields(line), []byte(" "))))
		}
	}
	return fmt.Sprint(out)
}
