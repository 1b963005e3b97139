package server

import (
	"context"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sigil-id/sigil/cluster"
	"github.com/sigil-id/sigil/raftstore"
)

// metrics are the server's Prometheus metrics for Raft and the cluster.
type metrics struct {
	reg           *prometheus.Registry
	leaderChanges prometheus.Counter
	isLeader      prometheus.Gauge
	commit        *prometheus.HistogramVec
	applyLag      prometheus.Gauge
	commitIndex   prometheus.Gauge
	appliedIndex  prometheus.Gauge
	lastContact   prometheus.Gauge
	members       prometheus.Gauge
	memberHealthy *prometheus.GaugeVec
	memberLag     *prometheus.GaugeVec
	attestations  *prometheus.CounterVec
	fed           *fedMetrics // see federation.go
	iss           *issuanceMetrics
	// attestFailures counts refused attestations since the process
	// started (the health evaluation's failure counters, report.go).
	attestFailures atomic.Uint64
	// signFailures counts the SVID requests that ended with outcome
	// error since the process started (the health evaluation's failure
	// counters, report.go); refusals (denied) are not failures. Counted
	// whether or not the issuance metrics are enabled.
	signFailures atomic.Uint64
}

func newMetrics() *metrics { return newServerMetrics(true) }

// newServerMetrics returns the server's metrics; without issuance the
// instruments of metrics_issuance.go are left out (Config.DisableMetrics)
// and m.iss is nil, whose methods do nothing.
func newServerMetrics(issuance bool) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		leaderChanges: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sigil_raft_leader_changes_total", Help: "Leader changes this server observed.",
		}),
		isLeader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sigil_raft_is_leader", Help: "1 when this server is the Raft leader.",
		}),
		commit: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "sigil_raft_commit_duration_seconds",
			Help:    "Time from proposing a write (locally or forwarded to the leader) to its commit.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"result"}),
		applyLag: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sigil_raft_apply_lag_entries", Help: "Committed Raft entries not yet applied on this server.",
		}),
		commitIndex: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sigil_raft_commit_index", Help: "Raft commit index known to this server.",
		}),
		appliedIndex: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sigil_raft_applied_index", Help: "Raft index applied on this server.",
		}),
		lastContact: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sigil_raft_last_contact_seconds", Help: "Seconds since a follower last heard from the leader (0 on the leader).",
		}),
		members: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sigil_cluster_members", Help: "Servers in the Raft configuration.",
		}),
		memberHealthy: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "sigil_cluster_member_healthy", Help: "1 when the member answered its last status probe.",
		}, []string{"member"}),
		memberLag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "sigil_cluster_member_apply_lag_entries", Help: "How far the member's applied index trails this server's.",
		}, []string{"member"}),
		attestations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sigil_server_node_attestations_total",
			Help: "Node attestations this server ended, by attestor (a configured verifier, else \"unknown\"), " +
				"outcome (accepted, refused) and reason (ok, or why it was refused, from a fixed list).",
		}, []string{"attestor", "outcome", "reason"}),
	}
	m.reg.MustRegister(m.leaderChanges, m.isLeader, m.commit, m.applyLag, m.commitIndex, m.appliedIndex,
		m.lastContact, m.members, m.memberHealthy, m.memberLag, m.attestations)
	m.fed = newFedMetrics(m.reg)
	if issuance {
		m.iss = newIssuanceMetrics(m.reg)
	}
	return m
}

// Outcomes of node attestations (the outcome label of
// sigil_server_node_attestations_total).
const (
	attestAccepted = "accepted"
	attestRefused  = "refused"
)

// observeAttestation counts one node attestation. Every label comes from a
// fixed set (the configured verifier names, the outcomes, the reasons of
// nodeapi.go), so the series are bounded whatever callers send.
func (m *metrics) observeAttestation(attestor, outcome, reason string) {
	m.attestations.WithLabelValues(attestor, outcome, reason).Inc()
	if outcome == attestRefused {
		m.attestFailures.Add(1)
	}
}

// MetricsHandler serves the server's metrics in the Prometheus format.
func (s *Server) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{})
}

// ObserveCommit records a write's commit time (cluster.Metrics).
func (m *metrics) ObserveCommit(d time.Duration, err error) {
	res := "ok"
	if err != nil {
		res = "error"
	}
	m.commit.WithLabelValues(res).Observe(d.Seconds())
	m.iss.observeApply(res, d)
}

// raftLoop follows leader changes and samples Raft's indexes.
func (m *metrics) raftLoop(ctx context.Context, store *raftstore.Store) {
	ch := make(chan raft.Observation, 16)
	unregister := store.LeaderObservations(ch)
	defer unregister()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	sample := func() {
		st := store.Stats()
		applied := store.LastIndex()
		if st.AppliedIndex > applied {
			applied = st.AppliedIndex
		}
		lag := float64(0)
		if st.CommitIndex > applied {
			lag = float64(st.CommitIndex - applied)
		}
		m.applyLag.Set(lag)
		m.commitIndex.Set(float64(st.CommitIndex))
		m.appliedIndex.Set(float64(applied))
		if store.IsLeader() {
			m.isLeader.Set(1)
			m.lastContact.Set(0)
		} else {
			m.isLeader.Set(0)
			if !st.LastContact.IsZero() {
				m.lastContact.Set(time.Since(st.LastContact).Seconds())
			}
		}
	}
	sample()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ch:
			m.leaderChanges.Inc()
			sample()
		case <-t.C:
			sample()
		}
	}
}

// ObserveMembers records the members' health after a round of probes
// (cluster.Metrics).
func (m *metrics) ObserveMembers(self string, applied uint64, members []raftstore.Member, health func(string) (cluster.MemberHealth, bool)) {
	m.members.Set(float64(len(members)))
	for _, mem := range members {
		if mem.ID == self {
			m.memberHealthy.WithLabelValues(mem.ID).Set(1)
			m.memberLag.WithLabelValues(mem.ID).Set(0)
			continue
		}
		h, ok := health(mem.ID)
		if !ok || !h.OK {
			m.memberHealthy.WithLabelValues(mem.ID).Set(0)
			continue
		}
		m.memberHealthy.WithLabelValues(mem.ID).Set(1)
		lag := float64(0)
		if h.Status != nil && applied > h.Status.AppliedIndex {
			lag = float64(applied - h.Status.AppliedIndex)
		}
		m.memberLag.WithLabelValues(mem.ID).Set(lag)
	}
}
