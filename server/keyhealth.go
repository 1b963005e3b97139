package server

import (
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/health"
)

// This file keeps the state of this server's key manager (issue 14): the
// CA and slot managers report every signature, key generation and key
// load to keyHealth (a ca.KeyObserver); the state goes into the
// Cluster.AgentReports answer (report.go) and, through the leader's
// gather, into the SigilKeyManagerFailing condition (package health).

// maxKeyErrorLen bounds the key manager error kept and sent, in bytes.
const maxKeyErrorLen = health.MaxErrorLen

// Outcomes of sigil_server_key_operations_total.
const (
	keyOutcomeOK    = "ok"
	keyOutcomeError = "error"
)

// keyHealth is the state of this server's key manager: failing since
// when (zero while it works), the last failure's error and the last
// success. It is safe for concurrent use; KeyOK, on the signing path,
// costs a clock read, an atomic store and a counter's atomic add (plus
// one store when it ends a failure).
type keyHealth struct {
	clk clock.Clock
	// failingSince and lastSuccess are Unix nanoseconds; 0 for none.
	failingSince atomic.Int64
	lastSuccess  atomic.Int64
	lastErr      atomic.Pointer[string]
	// ops: op → outcome → counter; nil without metrics.
	ops map[string]map[string]prometheus.Counter
}

var _ ca.KeyObserver = (*keyHealth)(nil)

// newKeyHealth returns the key manager state. The gauge
// sigil_server_key_manager_failing is registered on reg always;
// sigil_server_key_operations_total, counted on the signing path, only
// when counters is true (Config.DisableMetrics false).
func newKeyHealth(clk clock.Clock, reg prometheus.Registerer, counters bool) *keyHealth {
	k := &keyHealth{clk: clk}
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "sigil_server_key_manager_failing",
		Help: "1 while this server's key manager fails (its last signature, key generation or key load failed), 0 while it works.",
	}, func() float64 {
		if k.failingSince.Load() != 0 {
			return 1
		}
		return 0
	}))
	if counters {
		vec := prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sigil_server_key_operations_total",
			Help: "Calls this server made to its key manager for its CA and JWT keys, by op (sign, generate, get) and outcome (ok, error).",
		}, []string{"op", "outcome"})
		reg.MustRegister(vec)
		k.ops = map[string]map[string]prometheus.Counter{}
		for _, op := range []string{ca.KeyOpSign, ca.KeyOpGenerate, ca.KeyOpGet} {
			k.ops[op] = map[string]prometheus.Counter{}
			for _, o := range []string{keyOutcomeOK, keyOutcomeError} {
				k.ops[op][o] = vec.WithLabelValues(op, o)
			}
		}
	}
	return k
}

// KeyOK implements ca.KeyObserver: the key manager works (again).
func (k *keyHealth) KeyOK(op string) {
	k.lastSuccess.Store(k.clk.Now().UnixNano())
	if k.failingSince.Load() != 0 {
		k.failingSince.Store(0)
	}
	k.count(op, keyOutcomeOK)
}

// KeyFailed implements ca.KeyObserver: the first failure after a success
// starts the failure; every failure replaces the error.
func (k *keyHealth) KeyFailed(op string, err error) {
	msg := cutUTF8(err.Error(), maxKeyErrorLen)
	k.lastErr.Store(&msg)
	k.failingSince.CompareAndSwap(0, k.clk.Now().UnixNano())
	k.count(op, keyOutcomeError)
}

func (k *keyHealth) count(op, outcome string) {
	if c, ok := k.ops[op][outcome]; ok {
		c.Inc()
	}
}

// state returns since when the key manager fails (zero while it works)
// and the last failure's error ("" while it works).
func (k *keyHealth) state() (since time.Time, lastErr string) {
	ns := k.failingSince.Load()
	if ns == 0 {
		return time.Time{}, ""
	}
	if p := k.lastErr.Load(); p != nil {
		lastErr = *p
	}
	return time.Unix(0, ns).UTC(), lastErr
}

// healthServer is this server's key manager state as package health
// reads it.
func (s *Server) healthServer() health.Server {
	since, lastErr := s.keys.state()
	usince, uerr := s.upstream.state()
	return health.Server{Name: s.cfg.NodeName, KeyManagerFailingSince: since, KeyManagerError: lastErr,
		UpstreamFailingSince: usince, UpstreamError: uerr}
}

// cutUTF8 is s cut to at most n bytes at a UTF-8 boundary.
func cutUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
