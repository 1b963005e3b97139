package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	spiffewl "github.com/spiffe/go-spiffe/v2/workloadapi"
	"go.uber.org/zap"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/attestor/workload"
	"github.com/sigil-id/sigil/attestor/workload/unix"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/workloadapi"
)

// BenchmarkFetchX509SVIDAgentCache measures a one-shot FetchX509SVID by
// go-spiffe's client, already connected, served from the agent's own
// cache (as deployed, not the Workload API's MemoryCache) holding 1,000
// entries with SVIDs, one of which the caller matches (by uid).
func BenchmarkFetchX509SVIDAgentCache(b *testing.B) {
	const n = 1000
	ca := newTestCA(b, time.Now())
	c := newCache(testTD, zap.NewNop(), clock.New())
	bundle := x509bundle.New(testTD)
	bundle.AddX509Authority(ca.cert)
	c.SetBundle(bundle)
	me := "uid:" + strconv.Itoa(os.Geteuid())
	entries := make([]*sigilv1.Entry, n)
	for i := range entries {
		id := fmt.Sprintf("e%05d", i)
		s := fmt.Sprintf("uid:%d", 100000+i)
		if i == n/2 {
			s = me
		}
		entries[i] = entry(id, "w/"+id, int64(i), s)
	}
	c.ReplaceEntries(entries)
	mintAll(b, c, ca)

	client := serveCache(b, c, unix.New())
	ctx := context.Background()
	svid, err := client.FetchX509SVID(ctx) // connect, warm the hash cache
	if err != nil {
		b.Fatal(err)
	}
	if want := "spiffe://example.org/w/" + entries[n/2].Id; svid.ID.String() != want {
		b.Fatalf("got %s, want %s", svid.ID, want)
	}
	durations := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		start := time.Now()
		if _, err := client.FetchX509SVID(ctx); err != nil {
			b.Fatal(err)
		}
		durations = append(durations, time.Since(start))
	}
	b.StopTimer()
	slices.Sort(durations)
	pct := func(p float64) float64 {
		return float64(durations[int(p*float64(len(durations)-1))].Microseconds())
	}
	b.ReportMetric(pct(0.50), "p50-µs")
	b.ReportMetric(pct(0.99), "p99-µs")
}

// serveCache serves c's Workload API with attestors on a socket of its
// own until the test ends, and returns a go-spiffe client connected to
// it.
func serveCache(t testing.TB, c *cache, attestors ...workload.Attestor) *spiffewl.Client {
	t.Helper()
	// Keep the path short: unix socket paths are limited to 108 bytes.
	dir, err := os.MkdirTemp("", "agwl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "public", "api.sock")
	l, err := workloadapi.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := workloadapi.New(workloadapi.Config{Cache: c, Attestors: attestors})
	if err != nil {
		l.Close()
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	client, err := spiffewl.New(ctx, spiffewl.WithAddr("unix://"+sock))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	return client
}

// mintAll mints an SVID signed by ca for every entry of c that is due.
func mintAll(t testing.TB, c *cache, ca *testCA) {
	t.Helper()
	now := c.clk.Now()
	for {
		jobs := c.takeDue(now, 500)
		if len(jobs) == 0 {
			return
		}
		outs := make([]mintOutcome, len(jobs))
		for i, j := range jobs {
			key, _, err := newKeyAndCSR()
			if err != nil {
				t.Fatal(err)
			}
			j.key = key
			outs[i] = mintOutcome{chain: ca.sign(t, spiffeid.RequireFromString(j.fp.spiffeID), key.Public(), now.Add(-time.Minute), time.Hour)}
		}
		if got := c.finishBatch(jobs, outs); got != len(jobs) {
			t.Fatalf("cached %d of %d SVIDs", got, len(jobs))
		}
	}
}
