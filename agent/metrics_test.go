package agent

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	spiffewl "github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/internal/eventually"
)

// metricsFixture is a cache on a fake clock with the agent's registry
// around it, as New builds it (no agent running).
type metricsFixture struct {
	*cacheFixture
	a *Agent
}

func newMetricsFixture(t *testing.T) *metricsFixture {
	f := newCacheFixture(t)
	a := &Agent{clk: f.clk, cache: f.c}
	m, err := newAgentMetrics(a)
	if err != nil {
		t.Fatal(err)
	}
	a.metrics = m
	return &metricsFixture{cacheFixture: f, a: a}
}

// expect compares the scraped series of the named metrics with want (the
// Prometheus text format, without HELP and TYPE lines: they are added
// from the scrape).
func (f *metricsFixture) expect(want string, names ...string) {
	f.t.Helper()
	if err := testutil.GatherAndCompare(f.a.metrics.reg, strings.NewReader(withMeta(f.t, f.a.metrics.reg, want)), names...); err != nil {
		f.t.Fatal(err)
	}
}

// withMeta adds the HELP and TYPE lines of the gathered metrics to the
// samples in want, so that tests state only the samples. A sample of a
// metric that is not gathered at all (a vector without series yet) is
// kept as it is, untyped, so that the comparison fails on it rather than
// leaving it out.
func withMeta(t *testing.T, g prometheus.Gatherer, want string) string {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	used := make(map[string]bool)
	var b strings.Builder
	for _, mf := range mfs {
		var lines []string
		for _, l := range strings.Split(want, "\n") {
			if l = strings.TrimSpace(l); l != "" && (strings.HasPrefix(l, mf.GetName()+" ") || strings.HasPrefix(l, mf.GetName()+"{")) {
				lines = append(lines, l)
				used[l] = true
			}
		}
		if len(lines) == 0 {
			continue
		}
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n", mf.GetName(), mf.GetHelp(), mf.GetName(), strings.ToLower(mf.GetType().String()))
		for _, l := range lines {
			b.WriteString(l + "\n")
		}
	}
	for _, l := range strings.Split(want, "\n") {
		if l = strings.TrimSpace(l); l != "" && !used[l] {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// TestWithMetaKeepsAbsentMetrics: a wanted sample of a metric the
// registry does not gather yet (a vector without series) makes the
// comparison fail instead of dropping out of it.
func TestWithMetaKeepsAbsentMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	calls := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "x_calls_total", Help: "calls"}, []string{"code"})
	up := prometheus.NewGauge(prometheus.GaugeOpts{Name: "x_up", Help: "up"})
	reg.MustRegister(calls, up)
	want := "x_calls_total{code=\"OK\"} 1\nx_up 0\n"
	if err := testutil.GatherAndCompare(reg, strings.NewReader(withMeta(t, reg, want)), "x_calls_total", "x_up"); err == nil {
		t.Fatal("comparison passed while x_calls_total has no series")
	}
	calls.WithLabelValues("OK").Inc()
	if err := testutil.GatherAndCompare(reg, strings.NewReader(withMeta(t, reg, want)), "x_calls_total", "x_up"); err != nil {
		t.Fatal(err)
	}
}

func failuresWant(counts map[string]int) string {
	var b strings.Builder
	for _, r := range mintFailureReasons {
		fmt.Fprintf(&b, "sigil_agent_svid_mint_failures_total{reason=%q} %d\n", r, counts[r])
	}
	return b.String()
}

// TestMetricsSVIDGaugesFollowTheClock: minted SVIDs are counted and
// cached; the earliest expiry and the late renewals follow the fake
// clock; expired SVIDs leave the gauges.
func TestMetricsSVIDGaugesFollowTheClock(t *testing.T) {
	f := newMetricsFixture(t)
	gauges := []string{"sigil_agent_svids_cached", "sigil_agent_svid_earliest_expiry_seconds",
		"sigil_agent_renewals_late", "sigil_agent_svids_minted_total"}
	f.c.SetBundle(f.bundle(f.ca))
	f.c.ReplaceEntries([]*sigilv1.Entry{entry("e1", "a", 1, "uid:1"), entry("e2", "b", 1, "uid:2")})
	// No SVID: no earliest expiry at all.
	f.expect(`
sigil_agent_svids_cached 0
sigil_agent_renewals_late 0
sigil_agent_svids_minted_total 0
`, gauges...)

	// mintAll issues SVIDs from a minute ago for an hour: 59m left.
	if n := f.mintAll(f.ca); n != 2 {
		t.Fatalf("cached %d SVIDs, want 2", n)
	}
	f.expect(`
sigil_agent_svids_cached 2
sigil_agent_svid_earliest_expiry_seconds 3540
sigil_agent_renewals_late 0
sigil_agent_svids_minted_total 2
`, gauges...)

	// Renewal is due at 50 to 60 % of the lifetime (29 to 35 minutes
	// in); at 45 minutes both are late.
	f.clk.Add(45 * time.Minute)
	f.expect(`
sigil_agent_svids_cached 2
sigil_agent_svid_earliest_expiry_seconds 840
sigil_agent_renewals_late 2
sigil_agent_svids_minted_total 2
`, gauges...)

	// One is renewed (an hour from now): one late, the earliest is the
	// other's.
	jobs := f.c.takeDue(f.clk.Now(), 1)
	if len(jobs) != 1 {
		t.Fatalf("%d jobs, want 1", len(jobs))
	}
	if !f.c.finish(jobs[0], f.signJob(jobs[0], f.ca)) {
		t.Fatal("renewed SVID not cached")
	}
	f.expect(`
sigil_agent_svids_cached 2
sigil_agent_svid_earliest_expiry_seconds 840
sigil_agent_renewals_late 1
sigil_agent_svids_minted_total 3
`, gauges...)

	// Past the other's expiry it is no longer held or late.
	f.clk.Add(15 * time.Minute)
	f.expect(`
sigil_agent_svids_cached 1
sigil_agent_svid_earliest_expiry_seconds 2640
sigil_agent_renewals_late 0
sigil_agent_svids_minted_total 3
`, gauges...)
	if got := f.a.SVIDsMinted(); got != 3 {
		t.Fatalf("SVIDsMinted() = %d, want 3 (the counter's value)", got)
	}
}

// TestMetricsMintFailuresByReason: each kind of failed mint is counted
// under its reason, once per entry; every reason is exported at zero
// before it happens.
func TestMetricsMintFailuresByReason(t *testing.T) {
	f := newMetricsFixture(t)
	f.c.SetBundle(f.bundle(f.ca))
	f.expect(failuresWant(nil), "sigil_agent_svid_mint_failures_total")
	var entries []*sigilv1.Entry
	for i := range 8 {
		entries = append(entries, entry("e"+strconv.Itoa(i), "w"+strconv.Itoa(i), 1, "uid:1"))
	}
	f.c.ReplaceEntries(entries)
	jobs := f.c.takeDue(f.clk.Now(), 100)
	if len(jobs) != 8 {
		t.Fatalf("%d jobs, want 8", len(jobs))
	}
	outs := make([]mintOutcome, len(jobs))
	for i, j := range jobs {
		switch j.id {
		case "e0":
			outs[i] = mintOutcome{err: status.Error(codes.Unavailable, "connection refused")}
		case "e1":
			outs[i] = mintOutcome{err: status.Error(codes.DeadlineExceeded, "timeout")}
		case "e2":
			outs[i] = mintOutcome{err: status.Error(codes.PermissionDenied, "not authorized for entry"), denied: true}
		case "e3":
			outs[i] = mintOutcome{err: status.Error(codes.PermissionDenied, "agent is banned")}
		case "e4":
			outs[i] = mintOutcome{err: errors.New("server returned no result for the entry"), badResponse: true}
		case "e5":
			// A chain for another key: refused by checkSVID.
			outs[i] = f.signJob(&mintJob{id: j.id, fp: j.fp}, f.ca)
			key, _, err := newKeyAndCSR()
			if err != nil {
				t.Fatal(err)
			}
			j.key = key
		case "e6":
			outs[i] = mintOutcome{err: status.Error(codes.Internal, "signing failed")}
		case "e7":
			outs[i] = mintOutcome{err: errors.New("generating key: out of entropy")}
		}
	}
	if n := f.c.finishBatch(jobs, outs); n != 0 {
		t.Fatalf("%d SVIDs cached, want 0", n)
	}
	f.expect(failuresWant(map[string]int{
		mintServerUnavailable: 2, mintDenied: 1, mintAgentRefused: 1, mintBadResponse: 2, mintServerError: 1, mintOther: 1,
	}), "sigil_agent_svid_mint_failures_total")

	// A minted SVID whose CA never reaches the bundle is given up after
	// pendingWait: unverified.
	f.c.resetRetries()
	jobs = f.c.takeDue(f.clk.Now(), 100)
	if len(jobs) != 7 { // all but the denied entry
		t.Fatalf("%d jobs, want 7", len(jobs))
	}
	stranger := newTestCA(t, t0)
	outs = make([]mintOutcome, len(jobs))
	for i, j := range jobs {
		if j.id == "e0" {
			outs[i] = f.signJob(j, stranger)
		} else {
			outs[i] = mintOutcome{err: status.Error(codes.Unavailable, "connection refused")}
		}
	}
	f.c.finishBatch(jobs, outs)
	f.clk.Add(pendingWait)
	f.c.takeDue(f.clk.Now(), 0)
	f.expect(failuresWant(map[string]int{
		mintServerUnavailable: 8, mintDenied: 1, mintAgentRefused: 1, mintBadResponse: 2, mintServerError: 1, mintOther: 1,
		mintUnverified: 1,
	}), "sigil_agent_svid_mint_failures_total")
	f.expect("sigil_agent_svids_minted_total 0\nsigil_agent_svids_cached 0\n",
		"sigil_agent_svids_minted_total", "sigil_agent_svids_cached")
}

func TestMintFailureReason(t *testing.T) {
	for _, tc := range []struct {
		out  mintOutcome
		want string
	}{
		{mintOutcome{err: status.Error(codes.Unavailable, "")}, mintServerUnavailable},
		{mintOutcome{err: status.Error(codes.ResourceExhausted, "")}, mintServerUnavailable},
		{mintOutcome{err: status.Error(codes.Aborted, "")}, mintServerUnavailable},
		{mintOutcome{err: status.Error(codes.Canceled, "")}, mintServerUnavailable},
		{mintOutcome{err: status.Error(codes.Unauthenticated, "")}, mintAgentRefused},
		{mintOutcome{err: status.Error(codes.InvalidArgument, "")}, mintServerError},
		{mintOutcome{err: fmt.Errorf("x: %w", status.Error(codes.Unavailable, ""))}, mintServerUnavailable},
		{mintOutcome{err: status.Error(codes.Unavailable, ""), badResponse: true}, mintBadResponse},
		{mintOutcome{err: errors.New("local")}, mintOther},
	} {
		if got := mintFailureReason(tc.out); got != tc.want {
			t.Errorf("mintFailureReason(%v, bad=%v) = %q, want %q", tc.out.err, tc.out.badResponse, got, tc.want)
		}
	}
	// An unknown reason is counted as other, never as a new series.
	m := newMintMetrics()
	m.failed("no-such-reason")
	if got := testutil.ToFloat64(m.byReason[mintOther]); got != 1 {
		t.Fatalf("other = %v, want 1", got)
	}
	if n := testutil.CollectAndCount(m.failures); n != len(mintFailureReasons) {
		t.Fatalf("%d failure series, want %d", n, len(mintFailureReasons))
	}
}

// TestAgentMetricsEndToEnd runs an agent against the fake server on a
// fake clock and scrapes its /metrics handler: its own SVID's expiry, the
// server connection, minting, and Workload API calls and connections
// from a go-spiffe client on the real socket.
func TestAgentMetricsEndToEnd(t *testing.T) {
	srv := newFakeServer(t)
	// As agentClockInPast, on a whole second: certificates keep whole
	// seconds, and the expiry gauges are compared exactly.
	clk := clock.NewFake(time.Now().Add(-30 * time.Minute).Truncate(time.Second))
	srv.now = clk.Now
	srv.agentTTL = agentRenewalTTL
	srv.upsert(entry("me", "me", 1, "uid:"+strconv.Itoa(os.Getuid())))
	cfg := srv.config(t, t.TempDir())
	cfg.Clock = clk
	r := startAgent(t, cfg)
	f := &metricsFixture{cacheFixture: &cacheFixture{t: t}, a: r.Agent}

	// The fake server signs from a minute before its (fake) now, for an
	// hour; the agent's SVID from now for agentRenewalTTL. The fake clock
	// does not move.
	eventually.NoError(t, 10*time.Second, func() error {
		if n := testutil.ToFloat64(r.cache.met.minted); n != 1 {
			return fmt.Errorf("%v SVIDs minted, want 1", n)
		}
		return nil
	})
	f.expect(fmt.Sprintf(`
sigil_agent_svids_cached 1
sigil_agent_svids_minted_total 1
sigil_agent_svid_earliest_expiry_seconds 3540
sigil_agent_renewals_late 0
sigil_agent_svid_expiry_seconds %d
sigil_agent_server_connected 1
sigil_agent_workloads_connected 0
`, int(agentRenewalTTL.Seconds())),
		"sigil_agent_svids_cached", "sigil_agent_svids_minted_total", "sigil_agent_svid_earliest_expiry_seconds",
		"sigil_agent_renewals_late", "sigil_agent_svid_expiry_seconds", "sigil_agent_server_connected",
		"sigil_agent_workloads_connected")

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := spiffewl.New(ctx, spiffewl.WithAddr("unix://"+cfg.SocketPath))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	svid, err := c.FetchX509SVID(ctx)
	if err != nil {
		t.Fatalf("FetchX509SVID: %v", err)
	}
	if svid.ID != spiffeid.RequireFromString("spiffe://example.org/me") {
		t.Fatalf("got SVID for %s", svid.ID)
	}
	// The one-shot fetch ends when the client cancels it, after its
	// first response; the client stays connected.
	eventually.NoError(t, 10*time.Second, func() error {
		return testutil.GatherAndCompare(r.metrics.reg, strings.NewReader(withMeta(t, r.metrics.reg, `
sigil_agent_workload_api_calls_total{code="Canceled",method="FetchX509SVID"} 1
sigil_agent_workloads_connected 1
`)), "sigil_agent_workload_api_calls_total", "sigil_agent_workloads_connected")
	})

	// The /metrics handler serves the same registry.
	rec := httptest.NewRecorder()
	r.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body := rec.Body.String()
	for _, want := range []string{
		`sigil_agent_workload_api_seconds_count{method="FetchX509SVID"} 1`,
		"sigil_agent_server_connected 1",
		`sigil_agent_svid_mint_failures_total{reason="server_unavailable"} 0`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q:\n%s", want, body)
		}
	}
	for _, bad := range []string{"spiffe://", `entry_id`, `pid`} {
		if strings.Contains(body, bad) {
			t.Errorf("/metrics carries %q: an unbounded label", bad)
		}
	}

	// The server bans the agent and cuts its stream: disconnected.
	srv.mu.Lock()
	srv.banned = true
	srv.mu.Unlock()
	srv.cutStreams()
	eventually.NoError(t, 10*time.Second, func() error {
		return testutil.GatherAndCompare(r.metrics.reg, strings.NewReader(withMeta(t, r.metrics.reg, "sigil_agent_server_connected 0\n")),
			"sigil_agent_server_connected")
	})
	r.stop(t)
}

// TestAgentDisableMetrics: with DisableMetrics the Workload API has no
// meter: a fetch still works and /metrics carries no
// sigil_agent_workload_api_* series, while the other gauges remain.
func TestAgentDisableMetrics(t *testing.T) {
	srv := newFakeServer(t)
	srv.upsert(entry("me", "me", 1, "uid:"+strconv.Itoa(os.Getuid())))
	cfg := srv.config(t, t.TempDir())
	cfg.DisableMetrics = true
	r := startAgent(t, cfg)
	if r.workloadMeter() != nil {
		t.Fatal("the Workload API got a meter with DisableMetrics set")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := spiffewl.New(ctx, spiffewl.WithAddr("unix://"+cfg.SocketPath))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.FetchX509SVID(ctx); err != nil {
		t.Fatalf("FetchX509SVID: %v", err)
	}
	rec := httptest.NewRecorder()
	r.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body := rec.Body.String()
	if strings.Contains(body, "sigil_agent_workload_api_") {
		t.Errorf("/metrics has Workload API series with DisableMetrics set:\n%s", body)
	}
	if !strings.Contains(body, "sigil_agent_server_connected") {
		t.Errorf("/metrics lacks the agent's gauges:\n%s", body)
	}
}
