package raftstore

import (
	"fmt"
	"runtime"
	"runtime/metrics"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/internal/gcfloor"
	"github.com/sigil-id/sigil/internal/storepb"
)

// realisticEntry is entry i of a store shaped like a Kubernetes
// deployment: a 32-hex-digit id as the admin API makes, one SPIFFE ID per
// service account, entries parented to one of 100 agents or to the servers
// (node aliases), and group + user selectors standing for namespace and service account, the group
// one shared by many entries.
func realisticEntry(i int) *sigilv1.Entry {
	ns := fmt.Sprintf("ns-%d", i%50)
	sa := fmt.Sprintf("sa-%d", i)
	parent := fmt.Sprintf("spiffe://example.org/sigil/agent/k8s_psat/prod/node-%d", i%100)
	if i%10 == 0 {
		parent = alias
	}
	return &sigilv1.Entry{
		Id:        entryIDFor(i),
		SpiffeId:  "spiffe://example.org/ns/" + ns + "/sa/" + sa,
		ParentId:  parent,
		Selectors: []*sigilv1.Selector{sel("unix", "group:"+ns), sel("unix", "user:"+sa)},
		CreatedAt: t0.Unix(),
	}
}

// createRealistic creates entries [lo, hi) in commands of 1,000 and fails
// the test unless every one was created.
func createRealistic(tb testing.TB, tf *testFSM, lo, hi int) {
	tb.Helper()
	for i := lo; i < hi; i += 1000 {
		es := make([]*sigilv1.Entry, 0, 1000)
		for j := i; j < min(i+1000, hi); j++ {
			es = append(es, realisticEntry(j))
		}
		for k, c := range tf.batch(createEntries(es...)) {
			if c != 0 {
				tb.Fatalf("entry %d refused: %v", i+k, c)
			}
		}
	}
}

// liveHeap is the live heap after a full collection.
func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// storeHeapPerEntry creates n realistic entries in a fresh FSM and returns
// the live heap they added, per entry.
func storeHeapPerEntry(tb testing.TB, n int) float64 {
	before := liveHeap()
	tf := newTestFSM(tb)
	createRealistic(tb, tf, 0, n)
	after := liveHeap()
	runtime.KeepAlive(tf)
	return float64(int64(after)-int64(before)) / float64(n)
}

// BenchmarkEntryStoreHeap reports the live heap per stored entry with
// 100,000 realistic entries in the FSM (memdb rows, indexes and the
// entries themselves), the server's memory per entry apart from Raft.
func BenchmarkEntryStoreHeap(b *testing.B) {
	for i := 0; i < b.N; i++ {
		per := storeHeapPerEntry(b, 100000)
		b.ReportMetric(per, "heap-B/entry")
	}
	b.ReportMetric(0, "ns/op")
}

// BenchmarkEntryStorePeakHeap creates 100,000 realistic entries in an
// FSM, in batches of 5,000, and reports the largest heap goal the
// runtime set meanwhile (read after each batch): with the runtime's own
// pacing, and with the server's (gcfloor.ScanConfig: headroom for the
// bytes a collection scans; records hold no pointers).
func BenchmarkEntryStorePeakHeap(b *testing.B) {
	const n = 100000
	goal := []metrics.Sample{{Name: "/gc/heap/goal:bytes"}}
	for _, scan := range []bool{false, true} {
		b.Run(fmt.Sprintf("scan-headroom=%v", scan), func(b *testing.B) {
			for range b.N {
				stop := func() {}
				if scan {
					var err error
					if stop, err = gcfloor.Start(gcfloor.ScanConfig()); err != nil {
						b.Fatal(err)
					}
				}
				runtime.GC()
				tf := newTestFSM(b)
				// The feed's trim goroutine holds the FSM until it runs:
				// on a clock of the benchmark's, run once the store is
				// built, so that no run's entries stay live into the next.
				clk := clock.NewFake(t0)
				tf.f.feed.trim.clock = clk
				var peak uint64
				for i := 0; i < n; i += 5000 {
					createRealistic(b, tf, i, i+5000)
					metrics.Read(goal)
					peak = max(peak, goal[0].Value.Uint64())
				}
				stop()
				for deadline := time.Now().Add(10 * time.Second); ; {
					clk.Add(time.Hour)
					tf.f.feed.mu.Lock()
					done := !tf.f.feed.trim.scheduled
					tf.f.feed.mu.Unlock()
					if done {
						break
					}
					if time.Now().After(deadline) {
						b.Fatal("the entry feed was not trimmed")
					}
					time.Sleep(time.Millisecond)
				}
				b.ReportMetric(float64(peak)/(1<<20), "peak-goal-MiB")
			}
			b.ReportMetric(0, "ns/op")
		})
	}
}

// BenchmarkApplyCreateEntries applies commands of 1,000 new realistic
// entries to an FSM that already holds 100,000, the FSM's share of an
// admin batch, and reports entries applied per second.
func BenchmarkApplyCreateEntries(b *testing.B) {
	tf := newTestFSM(b)
	createRealistic(b, tf, 0, 100000)
	cmds := make([][]byte, b.N)
	for n := range cmds {
		es := make([]*sigilv1.Entry, 1000)
		for j := range es {
			es[j] = realisticEntry(100000 + n*1000 + j)
		}
		cmds[n] = marshalCommand(b, createEntries(es...), tf.now.UnixNano())
	}
	b.ReportAllocs()
	b.ResetTimer()
	for n := 0; n < b.N; n++ {
		if _, ok := tf.applyRaw(cmds[n]).(*storepb.CommandResult); !ok {
			b.Fatal("command refused")
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N*1000)/b.Elapsed().Seconds(), "entries/s")
}

func marshalCommand(tb testing.TB, cmd *storepb.Command, ts int64) []byte {
	tb.Helper()
	cmd.Timestamp = ts
	data, err := proto.Marshal(cmd)
	if err != nil {
		tb.Fatal(err)
	}
	return data
}

// entryIDFor is the id of realistic entry i: 32 hex digits spread as the
// admin API's random ids are.
func entryIDFor(i int) string {
	return fmt.Sprintf("%032x", uint64(i)*0x9e3779b97f4a7c15)
}

// TestEntryMemoryReturnedAfterDelete: deleting half of the entries returns
// their share of the live heap (memdb keeps no old versions of its trees
// once no reader holds them), and deleting the rest returns nearly all of
// it. Bounded in size, not timed.
func TestEntryMemoryReturnedAfterDelete(t *testing.T) {
	const n = 20000
	base := liveHeap()
	tf := newTestFSM(t)
	// The entry change feed keeps the last changes (a bounded cost, about
	// 0.4 KiB per record, whatever the number of entries): keep it
	// small so that what is measured is the entries' own memory.
	tf.f.feed.resize(64)
	createRealistic(t, tf, 0, n)
	full := float64(int64(liveHeap()) - int64(base))
	if full < n*150 {
		t.Fatalf("%d entries hold %.0f bytes: the measurement is wrong", n, full)
	}
	var ids []string
	for i := 0; i < n; i += 2 {
		ids = append(ids, entryIDFor(i))
	}
	deleteAll := func(ids []string) {
		for lo := 0; lo < len(ids); lo += 1000 {
			for k, c := range tf.batch(deleteEntries(ids[lo:min(lo+1000, len(ids))]...)) {
				if c != codes.OK {
					t.Fatalf("delete %s: %v", ids[lo+k], c)
				}
			}
		}
	}
	deleteAll(ids)
	half := float64(int64(liveHeap()) - int64(base))
	t.Logf("%d entries: %.0f B each; after deleting half: %.0f B per created entry", n, full/n, half/n)
	if half > 0.6*full {
		t.Fatalf("after deleting half of %d entries the heap holds %.0f of %.0f bytes", n, half, full)
	}
	ids = ids[:0]
	for i := 1; i < n; i += 2 {
		ids = append(ids, entryIDFor(i))
	}
	deleteAll(ids)
	if none := float64(int64(liveHeap()) - int64(base)); none > 0.1*full {
		t.Fatalf("after deleting every entry the heap holds %.0f of %.0f bytes", none, full)
	}
	runtime.KeepAlive(tf)
}
