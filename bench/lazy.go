package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/sigil-id/sigil/agent"
	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/attestor/node/jointoken"
	"github.com/sigil-id/sigil/attestor/workload"
	"github.com/sigil-id/sigil/server"
)

// Sizes of the lazy-minting measurement.
const (
	lazyEntries  = 10000
	lazyMaxSVIDs = 100
	lazyFetches  = 200
)

// benchLazy measures the first FetchX509SVID of an identity the agent
// holds no SVID for: an agent with a cache of lazyMaxSVIDs SVIDs and
// lazyEntries entries (each with its own selector) mints lazyMaxSVIDs of
// them ahead of any request; then lazyFetches workload calls, each for
// an entry never minted, are timed from the call to the SVID in the
// workload's hands. The caller is this process on the real Workload API
// socket (go-spiffe client, one connection); a workload attestor of the
// bench's own names, for each call, the entry the caller is (a fake of
// the platform only: the agent, its cache, the node API and the server's
// signing are the real ones). Each call is one signing round trip: the
// agent generates a key and CSR, the server signs, the agent verifies the
// chain and hands it out.
func benchLazy(ctx context.Context, srv *server.Server, admin sigilv1.AdminClient, dir string) error {
	tok, err := admin.CreateJoinToken(ctx, &sigilv1.CreateJoinTokenRequest{})
	if err != nil {
		return err
	}
	entries := make([]*sigilv1.Entry, lazyEntries)
	for i := range entries {
		entries[i] = &sigilv1.Entry{
			SpiffeId: fmt.Sprintf("spiffe://%s/bench/lazy/%d", td.Name(), i), ParentId: tok.AgentId,
			Selectors: []*sigilv1.Selector{{Type: "bench", Value: fmt.Sprintf("lazy-%d", i)}},
		}
	}
	var ids []string
	byID := make(map[string]*sigilv1.Entry, lazyEntries)
	for i := 0; i < len(entries); i += 5000 {
		created, err := admin.BatchCreateEntry(ctx, &sigilv1.BatchCreateEntryRequest{Entries: entries[i:min(i+5000, len(entries))]})
		if err != nil {
			return err
		}
		for _, r := range created.Results {
			if r.Status.Code != 0 {
				return fmt.Errorf("create: %s", r.Status.Message)
			}
			ids = append(ids, r.Entry.Id)
			byID[r.Entry.Id] = r.Entry
		}
	}
	defer func() {
		for i := 0; i < len(ids); i += 5000 {
			_, _ = admin.BatchDeleteEntry(ctx, &sigilv1.BatchDeleteEntryRequest{Ids: ids[i:min(i+5000, len(ids))]})
		}
		_, _ = admin.EvictAgent(ctx, &sigilv1.EvictAgentRequest{SpiffeId: tok.AgentId})
	}()

	pick := &pickAttestor{}
	acfg := agent.DefaultConfig()
	acfg.TrustDomain = td
	acfg.ServerAddress = srv.NodeAddr().String()
	acfg.DataDir = filepath.Join(dir, "agent-lazy")
	acfg.SocketPath = filepath.Join(dir, "lazy", "api.sock")
	acfg.NodeAttestor = jointoken.NewAttestor(tok.Token)
	acfg.WorkloadAttestors = []workload.Attestor{pick}
	acfg.TrustBundle = srv.Bundle()
	acfg.SVIDCache = agent.SVIDCacheConfig{MaxSVIDs: lazyMaxSVIDs}
	ag, err := agent.New(acfg)
	if err != nil {
		return err
	}
	actx, stop := context.WithCancel(ctx)
	aerr := make(chan error, 1)
	go func() { aerr <- ag.Run(actx) }()
	defer func() { stop(); <-aerr }()
	select {
	case <-ag.Ready():
	case err := <-aerr:
		aerr <- err
		return fmt.Errorf("agent stopped: %v", err)
	case <-time.After(30 * time.Second):
		return fmt.Errorf("agent not ready within 30 s")
	}
	// The cache fills ahead of any request (the first lazyMaxSVIDs
	// entries by ID); wait for that to end (bounded).
	for i := 0; ; i++ {
		if n := agentGauge(ag, "sigil_agent_svids_cached"); n >= lazyMaxSVIDs {
			break
		}
		if i == 1500 {
			return fmt.Errorf("the agent's cache did not fill with %d SVIDs within 30 s", lazyMaxSVIDs)
		}
		time.Sleep(20 * time.Millisecond)
	}

	client, err := workloadapi.New(ctx, workloadapi.WithAddr("unix://"+acfg.SocketPath))
	if err != nil {
		return err
	}
	defer client.Close()
	// Entries past the first lazyMaxSVIDs by ID were never minted; take
	// them spread over the rest.
	slices.Sort(ids)
	rest := ids[lazyMaxSVIDs:]
	lat := make([]time.Duration, 0, lazyFetches)
	for i := 0; i < lazyFetches; i++ {
		e := byID[rest[i*len(rest)/lazyFetches]]
		pick.set(e.Selectors)
		fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		start := time.Now()
		s, err := client.FetchX509SVID(fctx)
		d := time.Since(start)
		cancel()
		if err != nil {
			return fmt.Errorf("first fetch of %s: %w", e.SpiffeId, err)
		}
		if s.ID.String() != e.SpiffeId {
			return fmt.Errorf("first fetch of %s returned %s", e.SpiffeId, s.ID)
		}
		lat = append(lat, d)
	}
	p50, p99 := percentiles(lat)
	over := agentGauge(ag, "sigil_agent_svid_cache_over_capacity")
	evicted := agentGauge(ag, "sigil_agent_svids_evicted_total")
	fmt.Printf("lazy   first fetch, identity not minted:   p50 %8.2f ms  p99 %8.2f ms  (%d fetches; %d entries, max_svids %d; %.0f evicted, %.0f over capacity)\n",
		ms(p50), ms(p99), len(lat), lazyEntries, lazyMaxSVIDs, evicted, over)
	record(newFigure("first fetch of a not-yet-minted identity p99", ms(p99), "ms", 0,
		&Goal{Text: "≤ 20 ms", Kind: GoalMaxValue, Bound: 20}, ""))
	return nil
}

// pickAttestor is the lazy bench's workload attestor: every caller gets
// the selectors last set.
type pickAttestor struct {
	sels atomic.Pointer[[]*sigilv1.Selector]
}

func (p *pickAttestor) Name() string { return "bench" }

func (p *pickAttestor) set(sels []*sigilv1.Selector) { p.sels.Store(&sels) }

func (p *pickAttestor) Attest(context.Context, workload.Caller) ([]*sigilv1.Selector, error) {
	if s := p.sels.Load(); s != nil {
		return *s, nil
	}
	return nil, nil
}

// agentGauge reads one unlabelled series from the agent's metrics; -1
// when absent.
func agentGauge(ag *agent.Agent, name string) float64 {
	rec := httptest.NewRecorder()
	ag.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	sc := bufio.NewScanner(rec.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err == nil {
				return f
			}
		}
	}
	return -1
}

// benchLazyOnly runs benchLazy alone against a server of its own
// (go run ./bench -lazy-only), then times a fresh agent's start to the
// first SVID of a waiting workload with 9,999 other entries registered
// for it (only max_svids of which it mints ahead of requests), and
// prints the summary.
func benchLazyOnly() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir, err := os.MkdirTemp("", "sigil-bench-lazy-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	srv, admin, stop, err := benchServer(ctx, dir, "lazy")
	if err != nil {
		return err
	}
	defer stop()
	if err := benchLazy(ctx, srv, admin, dir); err != nil {
		return err
	}
	d, err := benchAgentStart(ctx, srv.NodeAddr().String(), srv.Bundle(), admin, dir, 9999)
	if err != nil {
		return fmt.Errorf("agent start, 10,000 entries: %w", err)
	}
	fmt.Printf("start  agent start -> SVID in workload:     %9.3f s   (9,999 other entries; workload waiting on the socket)\n", d.Seconds())
	record(newFigure("agent start -> first SVID, 10,000 entries", d.Seconds(), "s", 0,
		&Goal{Text: "≤ 1 s", Kind: GoalMaxValue, Bound: 1}, "15.3 s at 5,000"))
	return summarize("")
}
