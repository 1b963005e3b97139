package server

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// fsyncRate measures how many 4 KiB write+fsync rounds per second the disk
// under dir sustains, over at least n rounds and 200 ms: the limit of any
// write that must be on disk before it is acknowledged.
func fsyncRate(tb testing.TB, dir string, n int) float64 {
	tb.Helper()
	f, err := os.CreateTemp(dir, "fsync-*")
	if err != nil {
		tb.Fatal(err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	buf := make([]byte, 4096)
	start := time.Now()
	i := 0
	for ; i < n || time.Since(start) < 200*time.Millisecond; i++ {
		if _, err := f.WriteAt(buf, int64(i%64)*4096); err != nil {
			tb.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			tb.Fatal(err)
		}
	}
	return float64(i) / time.Since(start).Seconds()
}

// BenchmarkRawFsync4KiB is the disk's raw write+fsync rate, the limit that
// every acknowledged Raft write pays at least once.
func BenchmarkRawFsync4KiB(b *testing.B) {
	f, err := os.CreateTemp(b.TempDir(), "fsync-*")
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := f.WriteAt(buf, int64(i%64)*4096); err != nil {
			b.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "fsync/s")
}

// processCPU is the CPU time (user and system) this process has used.
func processCPU(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkAdminBatchCreateEntry creates entries through the admin API
// (unix socket, gRPC) of a real single-node server with Raft on disk, in
// batches of 1,000 and of MaxAdminBatch. It reports entries/s, the
// process's CPU time per entry, the raw
// fsync rate of the same disk measured in the same run, and
// batch-commits/fsync: the batches committed per second over the fsyncs
// per second, 1.0 being one batch per fsync.
func BenchmarkAdminBatchCreateEntry(b *testing.B) {
	for _, size := range []int{1000, MaxAdminBatch} {
		b.Run("batch="+strconv.Itoa(size), func(b *testing.B) {
			h := startServer(b)
			a := h.attest()
			ctx := context.Background()
			fs := fsyncRate(b, filepath.Join(h.dir, "data"), 100)
			batch := func(round int) []*sigilv1.Entry {
				entries := make([]*sigilv1.Entry, size)
				prefix := "spiffe://example.org/bench/" + strconv.Itoa(round) + "/"
				for i := range entries {
					entries[i] = &sigilv1.Entry{
						SpiffeId: prefix + strconv.Itoa(i), ParentId: a.id,
						Selectors: []*sigilv1.Selector{{Type: "unix", Value: "uid:" + strconv.Itoa(i)}},
					}
				}
				return entries
			}
			b.ReportAllocs()
			cpu0 := processCPU(b)
			b.ResetTimer()
			var busy time.Duration
			for n := 0; n < b.N; n++ {
				b.StopTimer()
				req := &sigilv1.BatchCreateEntryRequest{Entries: batch(n)}
				b.StartTimer()
				start := time.Now()
				resp, err := h.admin.BatchCreateEntry(ctx, req)
				busy += time.Since(start)
				if err != nil {
					b.Fatal(err)
				}
				if len(resp.Results) != size {
					b.Fatalf("%d results for %d entries", len(resp.Results), size)
				}
				for _, r := range resp.Results {
					if r.Status.GetCode() != 0 {
						b.Fatalf("entry refused: %s", r.Status.GetMessage())
					}
				}
			}
			b.StopTimer()
			// CPU of the whole process (client and server) per entry, which
			// other load on the machine changes less than entries/s.
			b.ReportMetric(float64((processCPU(b)-cpu0).Microseconds())/float64(b.N*size), "cpu-µs/entry")
			perSec := float64(b.N*size) / busy.Seconds()
			b.ReportMetric(perSec, "entries/s")
			b.ReportMetric(fs, "fsync/s")
			b.ReportMetric(perSec/float64(size)/fs, "batch-commits/fsync")
			b.ReportMetric(0, "ns/op")
		})
	}
}
