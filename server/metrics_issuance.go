package server

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/ca"
)

// This file holds the server metrics of issue 13 (docs/metrics.md):
// SVID issuance, sync streams and Raft apply time, counted where the work
// happens, and the state gauges (agents, authorities) that a collector
// computes from the store and the key slots on each scrape.
//
// No label carries a SPIFFE ID, an agent ID, an entry ID or a process ID:
// every label value comes from the fixed sets below.

// SVID types (the type label of the issuance metrics).
const (
	svidX509 = "x509"
	svidJWT  = "jwt"
)

// Issuance outcomes (the outcome label of sigil_server_svids_signed_total):
// ok (signed), denied (the agent is not authorized for the entry, or is
// banned or unknown), error (anything else: bad CSR, signing failure).
const (
	outcomeOK     = "ok"
	outcomeError  = "error"
	outcomeDenied = "denied"
)

// issuanceMetrics are the SVID, sync and Raft apply metrics. The children
// of the labelled vectors are resolved once here so that the signing path
// pays for an atomic add, not a label lookup. A nil *issuanceMetrics
// (Config.DisableMetrics) records nothing.
type issuanceMetrics struct {
	signed    map[string]map[string]prometheus.Counter // type → outcome
	signTime  map[string]prometheus.Observer           // type
	streams   prometheus.Gauge
	pushed    prometheus.Counter
	applyTime *prometheus.HistogramVec
}

func newIssuanceMetrics(reg prometheus.Registerer) *issuanceMetrics {
	signed := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sigil_server_svids_signed_total",
		Help: "SVIDs this server was asked to sign for workloads through the node API, by type (x509, jwt) and outcome (ok, error, denied).",
	}, []string{"type", "outcome"})
	signTime := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "sigil_server_svid_sign_seconds",
		Help:    "Time to sign one workload SVID (CSR check and signature for X.509, signature for JWT), by type.",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1},
	}, []string{"type"})
	m := &issuanceMetrics{
		signed:   map[string]map[string]prometheus.Counter{},
		signTime: map[string]prometheus.Observer{},
		streams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sigil_server_sync_streams", Help: "Agent sync streams open on this server.",
		}),
		pushed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sigil_server_sync_entries_pushed_total",
			Help: "Registration entries (new or changed) this server sent to agents on sync streams, full sets included.",
		}),
		applyTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "sigil_server_raft_apply_seconds",
			Help:    "Time from proposing a write (locally or forwarded to the leader) to its commit and apply, by result (ok, error).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"result"}),
	}
	for _, typ := range []string{svidX509, svidJWT} {
		m.signed[typ] = map[string]prometheus.Counter{}
		for _, o := range []string{outcomeOK, outcomeError, outcomeDenied} {
			m.signed[typ][o] = signed.WithLabelValues(typ, o)
		}
		m.signTime[typ] = signTime.WithLabelValues(typ)
	}
	m.applyTime.WithLabelValues("ok")
	m.applyTime.WithLabelValues("error")
	reg.MustRegister(signed, signTime, m.streams, m.pushed, m.applyTime)
	return m
}

// observeSign records the time of one signature begun at start (wall
// time: a duration, not a point in the server's clock).
func (m *issuanceMetrics) observeSign(typ string, start time.Time) {
	if m == nil {
		return
	}
	m.signTime[typ].Observe(time.Since(start).Seconds())
}

// countX509Results counts the outcome of every request of a batch from
// its result status.
func (m *issuanceMetrics) countX509Results(results []*sigilv1.X509SVIDResult) {
	if m == nil {
		return
	}
	c := m.signed[svidX509]
	for _, r := range results {
		c[outcomeOf(codes.Code(r.GetStatus().GetCode()))].Inc()
	}
}

// countRefused counts n requests of type typ refused as a whole with err
// (a gRPC status error); it returns err.
func (m *issuanceMetrics) countRefused(typ string, n int, err error) error {
	if m == nil {
		return err
	}
	m.signed[typ][outcomeOf(status.Code(err))].Add(float64(n))
	return err
}

// countJWT counts one JWT-SVID request ended with *errp (nil: signed).
func (m *issuanceMetrics) countJWT(errp *error) {
	if m == nil {
		return
	}
	m.signed[svidJWT][outcomeOf(status.Code(*errp))].Inc()
}

// countX509Results counts a batch's outcomes: the failures always (the
// health evaluation's counter), the metrics when enabled.
func (m *metrics) countX509Results(results []*sigilv1.X509SVIDResult) {
	for _, r := range results {
		if outcomeOf(codes.Code(r.GetStatus().GetCode())) == outcomeError {
			m.signFailures.Add(1)
		}
	}
	m.iss.countX509Results(results)
}

// countRefused counts n requests of type typ refused as a whole with err:
// the failures always, the metrics when enabled; it returns err.
func (m *metrics) countRefused(typ string, n int, err error) error {
	if outcomeOf(status.Code(err)) == outcomeError {
		m.signFailures.Add(uint64(n))
	}
	return m.iss.countRefused(typ, n, err)
}

// countJWT counts one JWT-SVID request ended with *errp: the failures
// always, the metrics when enabled.
func (m *metrics) countJWT(errp *error) {
	if outcomeOf(status.Code(*errp)) == outcomeError {
		m.signFailures.Add(1)
	}
	m.iss.countJWT(errp)
}

// outcomeOf maps a gRPC code to an outcome label value.
func outcomeOf(c codes.Code) string {
	switch c {
	case codes.OK:
		return outcomeOK
	case codes.PermissionDenied:
		return outcomeDenied
	default:
		return outcomeError
	}
}

// syncOpened counts an open sync stream; the returned function, deferred,
// counts it closed.
func (m *issuanceMetrics) syncOpened() func() {
	if m == nil {
		return func() {}
	}
	m.streams.Inc()
	return m.streams.Dec
}

// countPushed counts n entries sent on a sync stream.
func (m *issuanceMetrics) countPushed(n int) {
	if m == nil {
		return
	}
	m.pushed.Add(float64(n))
}

// observeApply records one write's time to commit and apply, by result.
func (m *issuanceMetrics) observeApply(result string, d time.Duration) {
	if m == nil {
		return
	}
	m.applyTime.WithLabelValues(result).Observe(d.Seconds())
}

// Agent states (the state label of sigil_server_agents).
const (
	agentActive  = "active"
	agentExpired = "expired"
	agentBanned  = "banned"
)

// lastSeenBuckets are the upper bounds, in seconds, of the agent last-seen
// age histogram: a minute to a week.
var lastSeenBuckets = []float64{60, 300, 900, 1800, 3600, 2 * 3600, 6 * 3600, 12 * 3600, 24 * 3600, 3 * 24 * 3600, 7 * 24 * 3600}

// stateCollector computes the gauges that need a look at the store or the
// key slots, on each scrape: the agents by state, their last-seen ages,
// and this server's authorities. It reads a memdb snapshot (no Raft round,
// no lock held against writers) and walks the nodes table once, paged, so
// a scrape of a server with 10,000 agents costs one pass over 10,000 rows
// in memory (BenchmarkStateCollector10kAgents) and no write. Computing on
// scrape rather than in a periodic loop keeps the values exact at the
// scrape's time (ages, seconds to expiry) and costs nothing when nobody
// scrapes. Until the server is ready it reports nothing.
type stateCollector struct {
	s           *Server
	agents      *prometheus.Desc
	lastSeenAge *prometheus.Desc
	expiry      *prometheus.Desc
	authorities *prometheus.Desc
}

// registerStateCollector adds the state collector of s to its registry.
func (m *metrics) registerStateCollector(s *Server) {
	m.reg.MustRegister(&stateCollector{
		s: s,
		agents: prometheus.NewDesc("sigil_server_agents",
			"Attested agents in the store by state: active (SVID not expired), expired (SVID expired), banned.",
			[]string{"state"}, nil),
		lastSeenAge: prometheus.NewDesc("sigil_server_agent_last_seen_age_seconds",
			"Distribution of the time since active agents last attested or renewed their SVID (agents with no record are left out).",
			nil, nil),
		expiry: prometheus.NewDesc("sigil_server_authority_expiry_seconds",
			"Seconds until this server's active or prepared key expires (the soonest if several), by kind (x509, jwt).",
			[]string{"kind", "state"}, nil),
		authorities: prometheus.NewDesc("sigil_server_authorities",
			"This server's keys published in the bundle, by kind (x509, jwt) and state (active, prepared, retired, or tainted whatever the state).",
			[]string{"kind", "state"}, nil),
	})
}

// Describe implements prometheus.Collector.
func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.agents
	ch <- c.lastSeenAge
	ch <- c.expiry
	ch <- c.authorities
}

// Collect implements prometheus.Collector.
func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	select {
	case <-c.s.ready: // store and key slots are set
	default:
		return
	}
	now := c.s.cfg.Clock.Now()
	c.collectAgents(ch, now)
	for _, mgr := range []*ca.Manager{c.s.auth.x509, c.s.auth.jwt} {
		c.collectSlots(ch, string(mgr.Kind()), mgr.Slots(), now)
	}
}

// agentCounts are the results of one pass over the nodes table.
type agentCounts struct {
	byState map[string]float64
	ages    map[float64]uint64 // histogram bucket upper bound → count (cumulative once finished)
	ageN    uint64
	ageSum  float64
}

// add classifies nodes at now and adds them to ac.
func (ac *agentCounts) add(nodes []*sigilv1.AttestedNode, now time.Time) {
	nowUnix := now.Unix()
	for _, n := range nodes {
		switch {
		case n.Banned:
			ac.byState[agentBanned]++
			continue
		case n.CertNotAfter <= nowUnix:
			ac.byState[agentExpired]++
			continue
		}
		ac.byState[agentActive]++
		if n.LastSeen == 0 {
			continue
		}
		age := float64(max(nowUnix-n.LastSeen, 0))
		ac.ageN++
		ac.ageSum += age
		for _, b := range lastSeenBuckets {
			if age <= b {
				ac.ages[b]++
				break
			}
		}
	}
}

func (c *stateCollector) collectAgents(ch chan<- prometheus.Metric, now time.Time) {
	ac := agentCounts{byState: map[string]float64{agentActive: 0, agentExpired: 0, agentBanned: 0}, ages: map[float64]uint64{}}
	r := c.s.store.Read()
	token := ""
	for {
		nodes, next, err := r.ListNodes(token, 0)
		if err != nil {
			ch <- prometheus.NewInvalidMetric(c.agents, err)
			return
		}
		ac.add(nodes, now)
		if next == "" {
			break
		}
		token = next
	}
	for _, st := range []string{agentActive, agentExpired, agentBanned} {
		ch <- prometheus.MustNewConstMetric(c.agents, prometheus.GaugeValue, ac.byState[st], st)
	}
	var cum uint64
	for _, b := range lastSeenBuckets {
		cum += ac.ages[b]
		ac.ages[b] = cum
	}
	ch <- prometheus.MustNewConstHistogram(c.lastSeenAge, ac.ageN, ac.ageSum, ac.ages)
}

func (c *stateCollector) collectSlots(ch chan<- prometheus.Metric, kind string, slots []ca.Slot, now time.Time) {
	counts := map[string]float64{"active": 0, "prepared": 0, "retired": 0, "tainted": 0}
	soonest := map[ca.SlotState]time.Time{}
	for _, sl := range slots {
		if sl.Tainted {
			counts["tainted"]++
		} else {
			counts[string(sl.State)]++
		}
		if sl.State == ca.StateActive || sl.State == ca.StatePrepared {
			if t, ok := soonest[sl.State]; !ok || sl.NotAfter.Before(t) {
				soonest[sl.State] = sl.NotAfter
			}
		}
	}
	for _, st := range []string{"active", "prepared", "retired", "tainted"} {
		ch <- prometheus.MustNewConstMetric(c.authorities, prometheus.GaugeValue, counts[st], kind, st)
	}
	for _, st := range []ca.SlotState{ca.StateActive, ca.StatePrepared} {
		if t, ok := soonest[st]; ok {
			ch <- prometheus.MustNewConstMetric(c.expiry, prometheus.GaugeValue, t.Sub(now).Seconds(), kind, string(st))
		}
	}
}
