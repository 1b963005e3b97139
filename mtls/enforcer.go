package mtls

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"

	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/mtls/policy"
)

// PolicySource gives the policy in force. *policy.Policy (a fixed policy)
// and *policy.Watcher (a hot-reloaded file) implement it.
type PolicySource interface {
	Policy() *policy.Policy
}

// Hook sees every policy decision before it is enforced, counted and
// logged, and may change it: deny what the policy allows (set Effect to
// policy.Deny and Detail to the reason), or allow after its own checks.
type Hook func(ctx context.Context, d policy.Decision) policy.Decision

// ErrDenied matches (errors.Is) every *DeniedError.
var ErrDenied = errors.New("mtls: permission denied")

// DeniedError is the error of a denied call; its message is the reason.
type DeniedError struct {
	Decision policy.Decision
}

func (e *DeniedError) Error() string { return "mtls: permission denied: " + e.Decision.Reason() }

// Is makes errors.Is(err, ErrDenied) true.
func (e *DeniedError) Is(target error) bool { return target == ErrDenied }

// EnforcerOption configures NewEnforcer.
type EnforcerOption interface {
	applyEnforcer(*enforcerConfig)
}

type enforcerOptionFunc func(*enforcerConfig)

func (f enforcerOptionFunc) applyEnforcer(c *enforcerConfig) { f(c) }

type enforcerConfig struct {
	service    string
	registerer prometheus.Registerer
	log        *zap.Logger
	allowRate  float64
	denyRate   float64
	hooks      []Hook
	clock      clock.Clock
}

// WithServiceName is the service this enforcer protects; it fills
// Target.Service when the enforcement point leaves it empty.
func WithServiceName(name string) EnforcerOption {
	return enforcerOptionFunc(func(c *enforcerConfig) { c.service = name })
}

// WithMetrics registers the decision metrics on reg:
//
//	sigil_mtls_policy_decisions_total{decision="allowed|denied|shadow_denied", rule}
//	sigil_mtls_policy_decision_duration_seconds (histogram)
//
// Without it nothing is registered anywhere. Enforcers sharing a
// registerer share the metrics.
func WithMetrics(reg prometheus.Registerer) EnforcerOption {
	return enforcerOptionFunc(func(c *enforcerConfig) { c.registerer = reg })
}

// WithLogSampling sets the share of decisions logged (0 to 1): allowed
// calls at allowRate (default 0.01), denied and shadow-denied calls at
// denyRate (default 1).
func WithLogSampling(allowRate, denyRate float64) EnforcerOption {
	return enforcerOptionFunc(func(c *enforcerConfig) { c.allowRate, c.denyRate = allowRate, denyRate })
}

// WithHook adds a hook run after the policy on every decision (in order).
func WithHook(h Hook) EnforcerOption {
	return enforcerOptionFunc(func(c *enforcerConfig) { c.hooks = append(c.hooks, h) })
}

// WithClock sets the clock used for time-window conditions (tests).
func WithClock(clk clock.Clock) EnforcerOption {
	return enforcerOptionFunc(func(c *enforcerConfig) { c.clock = clk })
}

// Enforcer applies a policy at an enforcement point: it decides, runs the
// hooks, counts, logs, and turns denials into errors. Its Authorize method
// is an Authorizer for ServerConfig, HTTPMiddleware and the gRPC
// interceptors.
type Enforcer struct {
	src PolicySource
	cfg enforcerConfig

	decisions *prometheus.CounterVec
	latency   prometheus.Histogram
}

// NewEnforcer enforces the policy src gives (read at each decision, so a
// reloaded policy applies to the next call).
func NewEnforcer(src PolicySource, opts ...EnforcerOption) *Enforcer {
	cfg := enforcerConfig{log: zap.NewNop(), allowRate: 0.01, denyRate: 1, clock: clock.New()}
	for _, o := range opts {
		o.applyEnforcer(&cfg)
	}
	e := &Enforcer{src: src, cfg: cfg}
	if cfg.registerer != nil {
		e.decisions = prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sigil_mtls_policy_decisions_total",
			Help: "Authorization decisions at this enforcement point, by decision (allowed, denied, shadow_denied) and rule.",
		}, []string{"decision", "rule"})
		e.latency = prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "sigil_mtls_policy_decision_duration_seconds",
			Help:    "Time to reach an authorization decision (policy and hooks).",
			Buckets: []float64{1e-7, 2.5e-7, 5e-7, 1e-6, 2.5e-6, 5e-6, 1e-5, 5e-5, 1e-4, 1e-3, 1e-2},
		})
		e.decisions = registerOrReuse(cfg.registerer, e.decisions)
		e.latency = registerOrReuse(cfg.registerer, e.latency)
	}
	return e
}

func registerOrReuse[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if old, ok := are.ExistingCollector.(C); ok {
				return old
			}
		}
	}
	return c
}

// Policy returns the policy in force.
func (e *Enforcer) Policy() *policy.Policy { return e.src.Policy() }

// Decide decides whether peer may call target, runs the hooks, and
// records the decision (metrics and sampled logs).
func (e *Enforcer) Decide(ctx context.Context, peer spiffeid.ID, target policy.Target) policy.Decision {
	start := time.Now()
	if target.Service == "" {
		target.Service = e.cfg.service
	}
	d := e.src.Policy().Decide(peer, target, e.cfg.clock.Now())
	for _, h := range e.cfg.hooks {
		d = h(ctx, d)
	}
	elapsed := time.Since(start)
	if e.decisions != nil {
		rule := d.Rule
		if rule == "" {
			rule = "none"
		}
		e.decisions.WithLabelValues(d.Effect.String(), rule).Inc()
		e.latency.Observe(elapsed.Seconds())
	}
	rate := e.cfg.denyRate
	if d.Effect == policy.Allow {
		rate = e.cfg.allowRate
	}
	if rate > 0 && (rate >= 1 || rand.Float64() < rate) {
		e.logDecision(d, elapsed, rate)
	}
	return d
}

func (e *Enforcer) logDecision(d policy.Decision, elapsed time.Duration, rate float64) {
	fields := []zap.Field{
		zap.String("decision", d.Effect.String()),
		zap.String("peer", d.Peer.String()),
		zap.String("target", d.Target.String()),
		zap.String("rule", d.Rule),
		zap.Duration("latency", elapsed),
		zap.Float64("sample_rate", rate),
	}
	switch d.Effect {
	case policy.Allow:
		e.cfg.log.Info("authorization decision", fields...)
	case policy.ShadowDeny:
		e.cfg.log.Warn("authorization decision: would deny (shadow)", append(fields, zap.String("reason", d.Reason()))...)
	default:
		e.cfg.log.Warn("authorization decision: denied", append(fields, zap.String("reason", d.Reason()))...)
	}
}

// Authorize is Decide as an Authorizer: nil when the call may proceed
// (allowed or shadow-denied), a *DeniedError otherwise.
func (e *Enforcer) Authorize(ctx context.Context, peer spiffeid.ID, target policy.Target) error {
	d := e.Decide(ctx, peer, target)
	if d.Allowed() {
		return nil
	}
	return &DeniedError{Decision: d}
}
