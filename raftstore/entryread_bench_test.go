package raftstore

import (
	"fmt"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The read paths of the entry store at 100,000 realistic entries (about
// 900 per agent over 100 agents, a tenth of them node aliases): what a
// signing call (AuthorizedFor), a sync stream's full set
// (AuthorizedEntries) and its deltas (SyncEntryUnwatched,
// HasEntryParentedTo, EachSyncEntryParentedTo) cost. Only the public Reader
// API is used, so the same file measures any version of the store that
// has it (SyncEntry since 2026-12-02).

var (
	readBenchOnce sync.Once
	readBenchFSM  *testFSM
)

// cpuTime is the CPU time the process has used (user and system, every
// thread): on a loaded machine, a steadier measure than wall time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// measureCPU runs the benchmark's loop body b.N times and reports the
// process CPU time per op beside ns/op.
func measureCPU(b *testing.B, body func(i int)) {
	b.ReportAllocs()
	b.ResetTimer()
	start := cpuTime()
	for i := range b.N {
		body(i)
	}
	b.ReportMetric(float64(cpuTime()-start)/float64(b.N), "cpu-ns/op")
}

// readBenchStore is an FSM with 100,000 realistic entries and the agent
// of node 1 attested, built once for all the read benchmarks.
func readBenchStore(b *testing.B) (*testFSM, string) {
	agentID := realisticEntry(1).ParentId
	readBenchOnce.Do(func() {
		tf := newTestFSM(b)
		createRealistic(b, tf, 0, 100000)
		if c := tf.single(attestNode(agentID, "", sel("unix", "group:ns-1"))); c != 0 {
			b.Fatalf("attest: %v", c)
		}
		readBenchFSM = tf
	})
	return readBenchFSM, agentID
}

// BenchmarkAuthorizedEntries lists every entry one agent is authorized
// for (about 900), as a sync stream's full set does.
func BenchmarkAuthorizedEntries(b *testing.B) {
	tf, agentID := readBenchStore(b)
	n := 0
	measureCPU(b, func(int) {
		es, err := tf.f.reader().AuthorizedEntries(agentID)
		if err != nil {
			b.Fatal(err)
		}
		n = len(es)
	})
	if n < 500 {
		b.Fatalf("%d entries authorized", n)
	}
}

// BenchmarkAuthorizedFor checks one signing call of 100 entries of the
// agent plus one of another agent.
func BenchmarkAuthorizedFor(b *testing.B) {
	tf, agentID := readBenchStore(b)
	var ask []string
	for i := 1; len(ask) < 100; i += 100 {
		if i%10 != 0 {
			ask = append(ask, entryIDFor(i))
		}
	}
	ask = append(ask, entryIDFor(2))
	measureCPU(b, func(int) {
		got, err := tf.f.reader().AuthorizedFor(agentID, ask)
		if err != nil {
			b.Fatal(err)
		}
		if len(got) != 100 {
			b.Fatalf("%d of 101 authorized, want 100", len(got))
		}
	})
}

// BenchmarkEntryReads is one sync delta's lookups for one changed entry,
// as syncState.applyChanges makes them: the entry by id, whether entries
// are parented to its SPIFFE ID, and those entries.
func BenchmarkEntryReads(b *testing.B) {
	tf, _ := readBenchStore(b)
	measureCPU(b, func(i int) {
		r := tf.f.reader()
		e, ok := r.SyncEntryUnwatched(entryIDFor(i % 100000))
		if !ok {
			b.Fatal("entry not found")
		}
		if r.HasEntryParentedTo(e.SPIFFEID()) {
			r.EachSyncEntryParentedTo(e.SPIFFEID(), func(SyncEntry) bool { return true })
		}
	})
}

// BenchmarkListEntriesPage lists one page of 500 entries of one parent.
func BenchmarkListEntriesPage(b *testing.B) {
	tf, agentID := readBenchStore(b)
	measureCPU(b, func(int) {
		page, _, err := tf.f.reader().ListEntries(EntryFilter{ParentID: agentID}, "", 500)
		if err != nil || len(page) != 500 {
			b.Fatal(fmt.Sprint(len(page), err))
		}
	})
}

// BenchmarkEntryStoreHeapSizes is BenchmarkEntryStoreHeap at 100,000 and
// 1,000,000 entries: the live heap per stored entry in the FSM.
func BenchmarkEntryStoreHeapSizes(b *testing.B) {
	for _, n := range []int{100000, 1000000} {
		b.Run(fmt.Sprintf("entries=%d", n), func(b *testing.B) {
			for range b.N {
				b.ReportMetric(storeHeapPerEntry(b, n), "heap-B/entry")
			}
			b.ReportMetric(0, "ns/op")
		})
	}
}
