package workloadapi

import (
	"crypto/x509"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-id/sigil/internal/eventually"
)

// BenchmarkFetchX509SVIDCached measures a one-shot FetchX509SVID by
// go-spiffe's client, already connected, for a workload whose identity is
// cached: the latency a workload sees, including attestation with the unix
// attestor (hash cached) and the liveness re-check.
func BenchmarkFetchX509SVIDCached(b *testing.B) {
	benchFetchX509SVIDCached(b, nil)
}

// BenchmarkFetchX509SVIDCachedPrometheus is BenchmarkFetchX509SVIDCached
// with the agent's Prometheus meter in place of the tests' counting
// meter: the cost of the Workload API metrics on the hot path.
func BenchmarkFetchX509SVIDCachedPrometheus(b *testing.B) {
	m, reg := newTestPrometheusMeter(b)
	benchFetchX509SVIDCached(b, m)
	if n, _ := histogram(b, reg, "FetchX509SVID"); n < uint64(b.N) {
		b.Fatalf("%d FetchX509SVID latency samples, want at least %d", n, b.N)
	}
}

// BenchmarkFetchX509SVIDCachedNopMeter is BenchmarkFetchX509SVIDCached
// with no meter at all (NopMeter): the baseline of the metered variants.
func BenchmarkFetchX509SVIDCachedNopMeter(b *testing.B) {
	benchFetchX509SVIDCached(b, NopMeter{})
}

// benchFetchX509SVIDCached runs BenchmarkFetchX509SVIDCached with meter
// (nil: the fixture's counting meter).
func benchFetchX509SVIDCached(b *testing.B, meter Meter) {
	var setup func(*Server)
	if meter != nil {
		setup = func(s *Server) { s.meter = meter }
	}
	f := start(b, setup)
	f.cache.SetIdentity(uidSelector(os.Geteuid()), f.ca.identity(b, "e1", "/workload"))
	c := f.client(b)
	ctx := testCtx(b)
	if _, err := c.FetchX509SVID(ctx); err != nil { // connect, warm the hash cache
		b.Fatal(err)
	}
	durations := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		start := time.Now()
		if _, err := c.FetchX509SVID(ctx); err != nil {
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

// BenchmarkFetchX509SVIDCachedFederated is BenchmarkFetchX509SVIDCached
// for a workload whose entry federates with one trust domain: each
// response also carries that trust domain's bundle.
func BenchmarkFetchX509SVIDCachedFederated(b *testing.B) {
	f := start(b, nil)
	f.cache.SetIdentity(uidSelector(os.Geteuid()), f.ca.identity(b, "e1", "/workload"))
	fedTD := spiffeid.RequireTrustDomainFromString("partner.test")
	f.cache.SetFederatedBundle(fedTD, x509bundle.FromX509Authorities(fedTD, []*x509.Certificate{newCA(b).cert}))
	f.cache.SetFederatesWith("e1", fedTD)
	c := f.client(b)
	ctx := testCtx(b)
	svid, err := c.FetchX509Context(ctx) // connect, warm the hash cache
	if err != nil {
		b.Fatal(err)
	}
	if !svid.Bundles.Has(fedTD) {
		b.Fatal("no federated bundle")
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := c.FetchX509SVID(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

func countPidfds(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip(err)
	}
	n := 0
	for _, e := range ents {
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && strings.Contains(l, "pidfd") {
			n++
		}
	}
	return n
}

// TestPidfdClosedWithConnection: the pidfd opened at handshake is released
// when the connection closes.
func TestPidfdClosedWithConnection(t *testing.T) {
	f := start(t, nil)
	f.cache.SetIdentity(uidSelector(os.Geteuid()), f.ca.identity(t, "e1", "/workload"))
	before := countPidfds(t)
	c := f.client(t)
	if _, err := c.FetchX509SVID(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if n := countPidfds(t); n != before+1 {
		t.Fatalf("%d pidfds while connected, want %d", n, before+1)
	}
	c.Close()
	eventually.NoError(t, 5*time.Second, func() error {
		if n := countPidfds(t); n != before {
			return fmt.Errorf("%d pidfds after close, want %d", n, before)
		}
		return nil
	})
}
