package agent

import (
	"fmt"
	"math"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sigil-id/sigil/workloadapi"
)

// This file holds the agent's Prometheus metrics (docs/metrics.md).
// No label carries a SPIFFE ID, an entry ID or a pid: every label value
// comes from a fixed set.
//
// Counters move when their event happens (cache.report). The gauges about
// the SVIDs held are computed when scraped, under the cache's lock
// (cache.svidStats): two of them (SVIDs past their renewal point, seconds
// to the earliest expiry) change with the passing of time alone, with no
// event to update them on. A scrape visits only the top of the expiry
// heap (the SVIDs expired or past their renewal time, and the earliest),
// not every SVID held, so that it does not hold up minting and fetches
// for a pass over thousands of SVIDs.

// Reasons a workload SVID could not be minted: the values of the reason
// label of sigil_agent_svid_mint_failures_total.
const (
	// mintServerUnavailable: no server answered in time (Unavailable,
	// DeadlineExceeded, ResourceExhausted, Aborted, Canceled).
	mintServerUnavailable = "server_unavailable"
	// mintDenied: the server refused the entry (PermissionDenied for it);
	// the agent waits for the entry to change.
	mintDenied = "denied"
	// mintAgentRefused: the server refused the agent itself (evicted,
	// banned, SVID no longer accepted).
	mintAgentRefused = "agent_refused"
	// mintBadResponse: the server's answer was unusable: no result, a
	// chain that does not parse, or an SVID with the wrong ID or key.
	mintBadResponse = "bad_response"
	// mintUnverified: a minted SVID never verified against the agent's
	// bundle within pendingWait.
	mintUnverified = "unverified"
	// mintServerError: any other error status from the server.
	mintServerError = "server_error"
	// mintOther: a local failure (generating the key or CSR).
	mintOther = "other"
)

// mintFailureReasons are every reason, exported at zero from the start so
// that rate() over them works before the first failure.
var mintFailureReasons = []string{
	mintServerUnavailable, mintDenied, mintAgentRefused, mintBadResponse,
	mintUnverified, mintServerError, mintOther,
}

// mintFailureReason classifies an error outcome of a mint.
func mintFailureReason(out mintOutcome) string {
	if out.badResponse {
		return mintBadResponse
	}
	st, ok := status.FromError(out.err)
	if !ok {
		return mintOther
	}
	switch st.Code() {
	case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted, codes.Aborted, codes.Canceled:
		return mintServerUnavailable
	case codes.PermissionDenied, codes.Unauthenticated:
		return mintAgentRefused
	}
	return mintServerError
}

// mintMetrics are the counters of the cache's minting. They exist (and
// count) whether or not a registry holds them.
type mintMetrics struct {
	minted   prometheus.Counter
	evicted  prometheus.Counter
	failures *prometheus.CounterVec
	// byReason are the failures' series, resolved once; read-only after
	// newMintMetrics.
	byReason map[string]prometheus.Counter
}

func newMintMetrics() *mintMetrics {
	m := &mintMetrics{
		minted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sigil_agent_svids_minted_total",
			Help: "Workload X.509-SVIDs the agent installed in its cache (new and renewed).",
		}),
		evicted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sigil_agent_svids_evicted_total",
			Help: "Workload X.509-SVIDs dropped from the agent's cache because it held more than max_svids and no workload had asked for their entries lately.",
		}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sigil_agent_svid_mint_failures_total",
			Help: "Workload X.509-SVID mints that failed, one per entry and attempt, by reason " +
				"(server_unavailable, denied, agent_refused, bad_response, unverified, server_error, other).",
		}, []string{"reason"}),
		byReason: make(map[string]prometheus.Counter, len(mintFailureReasons)),
	}
	for _, r := range mintFailureReasons {
		m.byReason[r] = m.failures.WithLabelValues(r)
	}
	return m
}

// failed counts one failure for reason (mintOther if unknown).
func (m *mintMetrics) failed(reason string) {
	c, ok := m.byReason[reason]
	if !ok {
		c = m.byReason[mintOther]
	}
	c.Inc()
}

// svidStats are the gauges about the workload SVIDs held at one time.
type svidStats struct {
	// cached counts the SVIDs held and not expired.
	cached int
	// late counts those past their renewal time.
	late int
	// earliest is the earliest NotAfter among them; zero when none.
	earliest time.Time
	// max is the SVID cache's size (0: unbounded); over the SVIDs held
	// beyond it for active and eager entries.
	max, over int
}

// svidStats computes the gauges about the SVIDs held at now, under the
// cache's lock, visiting only the top of the expiry heap. First every
// entry whose expiry (expAt, at most its SVID's NotAfter) is at most
// now+maxLead, a subtree at the heap's root: every SVID that has expired
// or is past its renewal time is among them (its NotAfter is at most
// now+maxLead). Then, below that subtree and in order of expiry, only
// while an entry may still hold an earlier NotAfter than the earliest
// found. In the steady state that is what changed since the SVIDs were
// minted, not every SVID held; at worst (every SVID within maxLead of
// its NotAfter) it is one pass, as a full walk. The count of SVIDs held
// is x509State.svids (the entries of the heap with an SVID; a deleted
// entry is in neither).
func (c *cache) svidStats(now time.Time) svidStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.st
	s := svidStats{max: st.policy.max, over: st.overCapacity()}
	items := st.expiry.items
	if len(items) == 0 {
		return s
	}
	nowN := nanos(now)
	bound := nowN + int64(st.maxLead)
	if bound < nowN { // overflow: every entry may be late
		bound = math.MaxInt64
	}
	expired := 0
	var earliest int64 // nanos of s.earliest; 0 while none
	visit := func(e *entryState) {
		v := e.svid
		if v == nil {
			return
		}
		if !now.Before(v.notAfter) {
			expired++
			return
		}
		if !now.Before(v.renewAt) {
			s.late++
		}
		if n := v.notAfter.UnixNano(); earliest == 0 || n < earliest {
			earliest = n
			s.earliest = v.notAfter
		}
	}
	// The subtree within the bound, depth first; below collects the
	// positions just under it.
	var below expFrontier
	stack := []int{0}
	for len(stack) > 0 {
		i := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if items[i].expAt > bound {
			below = append(below, i)
			continue
		}
		visit(items[i])
		for _, ch := range [2]int{2*i + 1, 2*i + 2} {
			if ch < len(items) {
				stack = append(stack, ch)
			}
		}
	}
	// Below it, no SVID is late or expired: only an earlier NotAfter
	// than the earliest found may be there, in an entry that expires
	// (expAt) before it.
	below.init(items)
	for len(below) > 0 {
		i := below[0]
		if earliest != 0 && items[i].expAt >= earliest {
			break
		}
		below.pop(items)
		visit(items[i])
		for _, ch := range [2]int{2*i + 1, 2*i + 2} {
			if ch < len(items) {
				below.push(items, ch)
			}
		}
	}
	s.cached = st.svids - expired
	return s
}

// expFrontier is a binary min-heap of positions in an expiry heap's
// items, ordered by their expAt (svidStats' walk in order of expiry).
type expFrontier []int

// init orders f.
func (f expFrontier) init(items []*entryState) {
	for i := len(f)/2 - 1; i >= 0; i-- {
		f.down(items, i)
	}
}

func (f *expFrontier) push(items []*entryState, i int) {
	*f = append(*f, i)
	h := *f
	for j := len(h) - 1; j > 0; {
		p := (j - 1) / 2
		if items[h[p]].expAt <= items[h[j]].expAt {
			break
		}
		h[p], h[j] = h[j], h[p]
		j = p
	}
}

func (f *expFrontier) pop(items []*entryState) int {
	h := *f
	top := h[0]
	last := len(h) - 1
	h[0] = h[last]
	h = h[:last]
	h.down(items, 0)
	*f = h
	return top
}

func (f expFrontier) down(items []*entryState, j int) {
	for {
		l := 2*j + 1
		if l >= len(f) {
			return
		}
		m := l
		if r := l + 1; r < len(f) && items[f[r]].expAt < items[f[l]].expAt {
			m = r
		}
		if items[f[j]].expAt <= items[f[m]].expAt {
			return
		}
		f[j], f[m] = f[m], f[j]
		j = m
	}
}

// agentMetrics is the agent's registry and what its scrape-time
// collector reads.
type agentMetrics struct {
	reg *prometheus.Registry
	// workload is the Workload API's meter, passed to its server; nil
	// when Config.DisableMetrics is set.
	workload *workloadapi.PrometheusMeter
	// wlServer is the Workload API server once Run has built it, for the
	// connections open.
	wlServer atomic.Pointer[workloadapi.Server]
}

// newAgentMetrics builds a's registry: the cache's counters, the
// Workload API meter and the gauges computed at scrape time.
func newAgentMetrics(a *Agent) (*agentMetrics, error) {
	m := &agentMetrics{reg: prometheus.NewRegistry()}
	if !a.cfg.DisableMetrics {
		var err error
		if m.workload, err = workloadapi.NewPrometheusMeter(m.reg); err != nil {
			return nil, fmt.Errorf("agent: %w", err)
		}
	}
	for _, c := range []prometheus.Collector{a.cache.met.minted, a.cache.met.evicted, a.cache.met.failures, newAgentCollector(a, m)} {
		if err := m.reg.Register(c); err != nil {
			return nil, fmt.Errorf("agent: registering metrics: %w", err)
		}
	}
	return m, nil
}

// workloadMeter is the meter the Workload API server gets: none when
// Config.DisableMetrics is set (a nil interface, not a nil pointer).
func (a *Agent) workloadMeter() workloadapi.Meter {
	if a.metrics.workload == nil {
		return nil
	}
	return a.metrics.workload
}

// agentCollector exports the agent's gauges, computed when scraped.
type agentCollector struct {
	a *Agent
	m *agentMetrics

	cached, earliest, late, workloads, ownExpiry, serverConnected *prometheus.Desc
	cacheMax, cacheOver                                           *prometheus.Desc
}

func newAgentCollector(a *Agent, m *agentMetrics) *agentCollector {
	return &agentCollector{
		a: a,
		m: m,
		cached: prometheus.NewDesc("sigil_agent_svids_cached",
			"Workload X.509-SVIDs the agent holds and that have not expired.", nil, nil),
		earliest: prometheus.NewDesc("sigil_agent_svid_earliest_expiry_seconds",
			"Seconds until the earliest NotAfter among the workload X.509-SVIDs held; absent when none is held.", nil, nil),
		late: prometheus.NewDesc("sigil_agent_renewals_late",
			"Workload X.509-SVIDs held past their renewal time and not yet replaced.", nil, nil),
		workloads: prometheus.NewDesc("sigil_agent_workloads_connected",
			"Connections open on the Workload API socket.", nil, nil),
		ownExpiry: prometheus.NewDesc("sigil_agent_svid_expiry_seconds",
			"Seconds until the agent's own SVID expires (negative once expired); absent before the agent has one.", nil, nil),
		serverConnected: prometheus.NewDesc("sigil_agent_server_connected",
			"1 while the agent's sync stream to a server is up, 0 otherwise.", nil, nil),
		cacheMax: prometheus.NewDesc("sigil_agent_svid_cache_max",
			"The SVID cache's size (svid_cache max_svids); 0 when unbounded.", nil, nil),
		cacheOver: prometheus.NewDesc("sigil_agent_svid_cache_over_capacity",
			"Workload X.509-SVIDs held beyond max_svids because their entries are active or eager (never evicted).", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *agentCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.cached, c.earliest, c.late, c.workloads, c.ownExpiry, c.serverConnected, c.cacheMax, c.cacheOver} {
		ch <- d
	}
}

// Collect implements prometheus.Collector. It takes the cache's lock and
// the agent's, one after the other.
func (c *agentCollector) Collect(ch chan<- prometheus.Metric) {
	now := c.a.clk.Now()
	s := c.a.cache.svidStats(now)
	gauge := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v)
	}
	gauge(c.cached, float64(s.cached))
	gauge(c.late, float64(s.late))
	gauge(c.cacheMax, float64(s.max))
	gauge(c.cacheOver, float64(s.over))
	if !s.earliest.IsZero() {
		gauge(c.earliest, s.earliest.Sub(now).Seconds())
	}
	workloads := 0
	if srv := c.m.wlServer.Load(); srv != nil {
		workloads = srv.Connections()
	}
	gauge(c.workloads, float64(workloads))
	c.a.mu.Lock()
	ident, up := c.a.ident, c.a.syncUp
	c.a.mu.Unlock()
	if ident != nil {
		gauge(c.ownExpiry, ident.notAfter.Sub(now).Seconds())
	}
	connected := 0.0
	if up {
		connected = 1
	}
	gauge(c.serverConnected, connected)
}

// SVIDsMinted is the value of sigil_agent_svids_minted_total: the
// workload X.509-SVIDs the agent installed in its cache since New (new
// and renewed). It reads that one counter, without the cache's lock, for
// a tool or test that waits for minting: a scrape of MetricsHandler
// gathers and formats every metric, hundreds of microseconds.
func (a *Agent) SVIDsMinted() uint64 {
	var m dto.Metric
	if err := a.cache.met.minted.Write(&m); err != nil {
		return 0
	}
	return uint64(m.GetCounter().GetValue())
}

// MetricsHandler serves the agent's metrics in the Prometheus format
// (docs/metrics.md).
func (a *Agent) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(a.metrics.reg, promhttp.HandlerOpts{})
}
