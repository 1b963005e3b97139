package raftstore

import (
	"bytes"
	"io"
	"os"
	"runtime"
	"runtime/metrics"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// discardSink is a raft.SnapshotSink that keeps only the number of bytes
// written, so that what a measurement sees is the writer's own memory.
type discardSink struct{ n int64 }

func (s *discardSink) Write(p []byte) (int, error) { s.n += int64(len(p)); return len(p), nil }
func (s *discardSink) ID() string                  { return "discard" }
func (s *discardSink) Close() error                { return nil }
func (s *discardSink) Cancel() error               { return nil }

// heapPeak samples the heap occupied by objects (live and not yet swept)
// while it runs, and reports its highest value.
type heapPeak struct {
	stop chan struct{}
	done sync.WaitGroup
	peak uint64
}

func startHeapPeak() *heapPeak {
	p := &heapPeak{stop: make(chan struct{})}
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	read := func() {
		metrics.Read(sample)
		if v := sample[0].Value.Uint64(); v > p.peak {
			p.peak = v
		}
	}
	read()
	p.done.Add(1)
	go func() {
		defer p.done.Done()
		t := time.NewTicker(200 * time.Microsecond)
		defer t.Stop()
		for {
			select {
			case <-p.stop:
				read()
				return
			case <-t.C:
				read()
			}
		}
	}()
	return p
}

func (p *heapPeak) end() uint64 {
	close(p.stop)
	p.done.Wait()
	return p.peak
}

// measureSnapshotOp runs op once with a collected heap and reports the
// bytes it allocated and the peak heap above the live heap before it.
// The time op took is added to b's "op-ms" total.
func measureSnapshotOp(b *testing.B, op func()) (alloc, peak float64) {
	var m0, m1 runtime.MemStats
	base := liveHeap()
	runtime.ReadMemStats(&m0)
	p := startHeapPeak()
	start, cpu0 := time.Now(), processCPU()
	op()
	opTime += time.Since(start)
	opCPU += processCPU() - cpu0
	top := p.end()
	runtime.ReadMemStats(&m1)
	return float64(m1.TotalAlloc - m0.TotalAlloc), float64(int64(top) - int64(base))
}

// opTime is the time spent in measured operations, and opCPU the CPU
// time the process used meanwhile (garbage collection included).
var opTime, opCPU time.Duration

// processCPU is the user and system CPU time the process used so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		panic(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// snapshotBenchEntries is the number of entries of the snapshot
// benchmarks: 100,000, or SIGIL_SNAPSHOT_BENCH_ENTRIES.
func snapshotBenchEntries(b *testing.B) int {
	v := os.Getenv("SIGIL_SNAPSHOT_BENCH_ENTRIES")
	if v == "" {
		return 100000
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		b.Fatalf("SIGIL_SNAPSHOT_BENCH_ENTRIES=%q is not a positive number", v)
	}
	return n
}

// BenchmarkSnapshotPersist writes a snapshot of 100,000 realistic entries
// (see snapshotBenchEntries) to a sink that keeps nothing, and reports the
// bytes allocated and the peak heap above the live state while writing
// (MiB), and the time.
func BenchmarkSnapshotPersist(b *testing.B) {
	tf := newTestFSM(b)
	createRealistic(b, tf, 0, snapshotBenchEntries(b))
	var alloc, peak float64
	var size int64
	opTime, opCPU = 0, 0
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		a, p := measureSnapshotOp(b, func() {
			snap, err := tf.f.Snapshot()
			if err != nil {
				b.Fatal(err)
			}
			var sink discardSink
			if err := snap.Persist(&sink); err != nil {
				b.Fatal(err)
			}
			snap.Release()
			size = sink.n
		})
		alloc, peak = alloc+a, max(peak, p)
	}
	b.ReportMetric(alloc/float64(b.N)/(1<<20), "alloc-MiB/op")
	b.ReportMetric(peak/(1<<20), "peak-MiB")
	b.ReportMetric(float64(size)/(1<<20), "snapshot-MiB")
	b.ReportMetric(float64(opTime.Milliseconds())/float64(b.N), "op-ms")
	b.ReportMetric(float64(opCPU.Milliseconds())/float64(b.N), "op-cpu-ms")
}

// BenchmarkSnapshotRestore restores a snapshot of 100,000 realistic
// entries (see snapshotBenchEntries) held in memory, and reports the bytes allocated and the peak
// heap above the live heap before it (the input included in that base),
// in MiB, and the time. The restored state itself is part of both; it is
// reported alone as state-MiB.
func BenchmarkSnapshotRestore(b *testing.B) {
	tf := newTestFSM(b)
	createRealistic(b, tf, 0, snapshotBenchEntries(b))
	data := persistBytes(b, tf.f)
	tf = nil
	var alloc, peak, kept float64
	opTime, opCPU = 0, 0
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		dst := newFSM(td, nil)
		a, p := measureSnapshotOp(b, func() {
			if err := dst.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
				b.Fatal(err)
			}
		})
		alloc, peak = alloc+a, max(peak, p)
		kept = float64(liveHeap())
		runtime.KeepAlive(dst)
		dst = nil
		kept -= float64(liveHeap())
	}
	b.ReportMetric(alloc/float64(b.N)/(1<<20), "alloc-MiB/op")
	b.ReportMetric(peak/(1<<20), "peak-MiB")
	b.ReportMetric(kept/(1<<20), "state-MiB")
	b.ReportMetric(float64(opTime.Milliseconds())/float64(b.N), "op-ms")
	b.ReportMetric(float64(opCPU.Milliseconds())/float64(b.N), "op-cpu-ms")
}
