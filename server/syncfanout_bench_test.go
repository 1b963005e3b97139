package server

import (
	"context"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/internal/storepb"
	"github.com/sigil-id/sigil/registration"
)

// fanoutWaiter is one new entry on its way to every stream.
type fanoutWaiter struct {
	start time.Time
	mu    sync.Mutex
	lat   []time.Duration
	left  int
	done  chan struct{}
}

// BenchmarkSyncFanout measures the propagation of one new entry to
// SIGIL_FANOUT_AGENTS (default 1,000) connected agents, each with its own
// attested identity, TLS connection and sync stream on a real in-process
// server. The agents' nodes share a selector, and the entry is parented
// to a node alias with it; every agent already holds
// SIGIL_FANOUT_ENTRIES (default 1,000) entries under the same alias. One
// op is one entry created through the admin API and received by every
// stream. Reported: ns/op (until the last stream has it), p50/p99 of the
// per-stream arrival, and the process CPU per change per stream (the
// clients' decoding included).
func BenchmarkSyncFanout(b *testing.B) {
	agents := envInt(b, "SIGIL_FANOUT_AGENTS", 1000)
	nEntries := envInt(b, "SIGIL_FANOUT_ENTRIES", 1000)
	// One source address opens every connection: lift the per-source
	// bounds on unauthenticated connections (attestation).
	h := startServerWith(b, nil, func(l *nodeLimits) {
		l.MaxUnauthConns, l.MaxUnauthConnsPerSource = 1<<20, 1<<20
		l.ConnRatePerSource, l.ConnBurstPerSource = 1e6, 1<<20
		l.AttestRatePerSource, l.AttestBurstPerSource = 1e6, 1<<20
		l.AttestRate, l.AttestBurst = 1e6, 1<<20
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	common := "join_token:" + "f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0"
	serversID := registration.ServersID(testTD).String()
	alias := &sigilv1.Entry{SpiffeId: "spiffe://example.org/fanout/alias", ParentId: serversID, Selectors: []*sigilv1.Selector{sel(common)}}
	resp, err := h.admin.BatchCreateEntry(ctx, &sigilv1.BatchCreateEntryRequest{Entries: []*sigilv1.Entry{alias}})
	if err != nil || resp.Results[0].Status.Code != 0 {
		b.Fatal(resp, err)
	}
	for i := 0; i < nEntries; i += 1000 {
		var es []*sigilv1.Entry
		for j := i; j < min(i+1000, nEntries); j++ {
			es = append(es, &sigilv1.Entry{SpiffeId: "spiffe://example.org/fanout/w" + strconv.Itoa(j), ParentId: alias.SpiffeId,
				Selectors: []*sigilv1.Selector{sel("unix:uid:" + strconv.Itoa(j))}})
		}
		if _, err := h.admin.BatchCreateEntry(ctx, &sigilv1.BatchCreateEntryRequest{Entries: es}); err != nil {
			b.Fatal(err)
		}
	}

	var waiters sync.Map // SPIFFE ID -> *fanoutWaiter
	var synced sync.WaitGroup
	for range agents {
		a := h.attest()
		node, err := h.srv.store.Read().Node(a.id)
		if err != nil {
			b.Fatal(err)
		}
		n := proto.Clone(node).(*sigilv1.AttestedNode)
		n.Selectors = append(n.Selectors, sel(common))
		if _, err := h.srv.store.Apply(ctx, &storepb.Command{Op: &storepb.Command_AttestNode{AttestNode: &storepb.AttestNode{Node: n}}}); err != nil {
			b.Fatal(err)
		}
		stream, err := a.node.Sync(ctx, &sigilv1.SyncRequest{})
		if err != nil {
			b.Fatal(err)
		}
		synced.Add(1)
		go func() {
			got, inFull := 0, true
			for {
				m, err := stream.Recv()
				if err != nil {
					return
				}
				now := time.Now()
				if inFull {
					got += len(m.Upserted)
					if m.Synced {
						inFull = false
						if got != nEntries {
							b.Errorf("full set of %d entries, want %d", got, nEntries)
						}
						synced.Done()
					}
					continue
				}
				for _, e := range m.Upserted {
					v, ok := waiters.Load(e.SpiffeId)
					if !ok {
						continue
					}
					w := v.(*fanoutWaiter)
					w.mu.Lock()
					w.lat = append(w.lat, now.Sub(w.start))
					w.left--
					if w.left == 0 {
						close(w.done)
					}
					w.mu.Unlock()
				}
			}
		}()
	}
	synced.Wait()

	var lat []time.Duration
	cpu0 := cpuTime()
	b.ResetTimer()
	for i := range b.N {
		e := &sigilv1.Entry{SpiffeId: "spiffe://example.org/fanout/new" + strconv.Itoa(i), ParentId: alias.SpiffeId,
			Selectors: []*sigilv1.Selector{sel("unix:uid:" + strconv.Itoa(100000+i))}}
		w := &fanoutWaiter{left: agents, done: make(chan struct{})}
		waiters.Store(e.SpiffeId, w) // the server picks the id

		w.start = time.Now()
		resp, err := h.admin.BatchCreateEntry(ctx, &sigilv1.BatchCreateEntryRequest{Entries: []*sigilv1.Entry{e}})
		if err != nil || resp.Results[0].Status.Code != 0 {
			b.Fatal(resp, err)
		}
		select {
		case <-w.done:
		case <-time.After(60 * time.Second):
			b.Fatalf("entry %d reached %d of %d streams", i, agents-w.left, agents)
		}
		w.mu.Lock()
		lat = append(lat, w.lat...)
		w.mu.Unlock()
	}
	b.StopTimer()
	cpu := cpuTime() - cpu0
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N*agents), "cpu-µs/stream-change")
}

// sel parses "type:value".
func sel(s string) *sigilv1.Selector {
	typ, val, _ := strings.Cut(s, ":")
	return &sigilv1.Selector{Type: typ, Value: val}
}

func envInt(tb testing.TB, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		tb.Fatalf("%s=%q: want a positive number", name, v)
	}
	return n
}

// cpuTime is the CPU time (user and system) this process used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
