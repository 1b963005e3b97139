// Package alert tells on-call about rotation health: alerts with stable
// dedupe keys, the Notifier interface that carries them to Alertmanager,
// webhooks, Slack or PagerDuty, and the Dispatcher that routes them by
// severity, repeats them, sends their resolution, and never blocks the
// code that raises them (a notifier that is down costs a bounded retry
// queue, whose drops are counted).
package alert

import (
	"context"
	"time"
)

// Severity orders alerts for routing.
type Severity string

// Severities, from least to most urgent.
const (
	Info     Severity = "info"
	Warning  Severity = "warning"
	Critical Severity = "critical"
)

// Rank orders severities (Info 1, Warning 2, Critical 3); an unknown
// severity is 0.
func (s Severity) Rank() int {
	switch s {
	case Info:
		return 1
	case Warning:
		return 2
	case Critical:
		return 3
	}
	return 0
}

// Alert is one condition, firing or resolved.
type Alert struct {
	// Key is the stable dedupe key: the same condition on the same
	// subject always has the same key (e.g.
	// "svid_not_renewed/spiffe://td/sigil/agent/join_token/abc"). At most
	// 256 bytes.
	Key string
	// Name is the condition, e.g. "SVIDNotRenewed" (Alertmanager's
	// alertname).
	Name     string
	Severity Severity
	// Summary is one line for a human.
	Summary string
	// Details give on-call the context to act (agent, SPIFFE IDs at
	// risk, expiry); bounded by the condition that raises the alert.
	Details map[string]string
	// Source names the server that raised it.
	Source string
	// StartsAt is when the condition began; EndsAt is zero while it
	// fires and the time it ended once resolved.
	StartsAt, EndsAt time.Time
	// GeneratorURL links back to where the alert can be inspected
	// (optional).
	GeneratorURL string
}

// Resolved reports whether the alert has ended.
func (a Alert) Resolved() bool { return !a.EndsAt.IsZero() }

// Notifier delivers alerts to one receiver. Notify sends a batch of
// firing and resolved alerts; it must be safe for concurrent use, honour
// ctx, and be idempotent by Key (the Dispatcher may send the same alert
// again: a repeat, or a retry after an error). An error means the batch
// may not have been delivered and will be retried.
type Notifier interface {
	// Name identifies the notifier in logs, metrics and `sigil alert
	// test` (the plugin name, or the name given in its block).
	Name() string
	Notify(ctx context.Context, alerts []Alert) error
}
