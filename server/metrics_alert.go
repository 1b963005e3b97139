package server

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sigil-id/sigil/alert"
)

// This file holds the alert dispatcher's metrics (docs/metrics.md): a
// Prometheus alert.DispatchMeter, and a collector of the firing alerts by
// severity computed from Dispatcher.Active on each scrape.
//
// The notifier label is a configured notifier's name: the set is fixed
// when the server starts, so the series are bounded by the number of
// notifier blocks.

// Outcomes of a delivery (the outcome label of
// sigil_server_alert_notifications_total).
const (
	notifySent   = "sent"
	notifyFailed = "failed"
)

// alertMeter is the Prometheus alert.DispatchMeter. The children of each
// configured notifier are resolved once (init), so that a call is an
// atomic add; a name that is not configured is ignored, which keeps the
// label bounded whatever the Dispatcher reports.
type alertMeter struct {
	notifications *prometheus.CounterVec
	dropped       *prometheus.CounterVec
	queue         *prometheus.GaugeVec

	// by is written once by init, before the Dispatcher runs, and only
	// read afterwards.
	by map[string]*notifierMetrics
}

type notifierMetrics struct {
	sent, failed, dropped prometheus.Counter
	queue                 prometheus.Gauge
}

var _ alert.DispatchMeter = (*alertMeter)(nil)

func newAlertMeter(reg prometheus.Registerer) *alertMeter {
	m := &alertMeter{
		notifications: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sigil_server_alert_notifications_total",
			Help: "Alert deliveries by notifier (a configured notifier's name) and outcome: sent counts the alerts of each successful delivery, failed counts each failed delivery (a batch, retried with backoff).",
		}, []string{"notifier", "outcome"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sigil_server_alert_notifications_dropped_total",
			Help: "Alerts dropped from a notifier's full queue (superseded entries first, then the oldest), by notifier.",
		}, []string{"notifier"}),
		queue: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "sigil_server_alert_queue",
			Help: "Alerts waiting in a notifier's queue (bounded by the queue size, 1024), by notifier.",
		}, []string{"notifier"}),
		by: map[string]*notifierMetrics{},
	}
	reg.MustRegister(m.notifications, m.dropped, m.queue)
	return m
}

// init creates the series of each notifier (at zero, so that a rate or
// an increase is defined before the first event).
func (m *alertMeter) init(notifiers []string) {
	for _, n := range notifiers {
		m.by[n] = &notifierMetrics{
			sent:    m.notifications.WithLabelValues(n, notifySent),
			failed:  m.notifications.WithLabelValues(n, notifyFailed),
			dropped: m.dropped.WithLabelValues(n),
			queue:   m.queue.WithLabelValues(n),
		}
	}
}

// Sent counts n alerts delivered to notifier.
func (m *alertMeter) Sent(notifier string, n int) {
	if c := m.by[notifier]; c != nil {
		c.sent.Add(float64(n))
	}
}

// Failed counts one failed delivery to notifier.
func (m *alertMeter) Failed(notifier string) {
	if c := m.by[notifier]; c != nil {
		c.failed.Inc()
	}
}

// Dropped counts n alerts dropped from notifier's full queue.
func (m *alertMeter) Dropped(notifier string, n int) {
	if c := m.by[notifier]; c != nil {
		c.dropped.Add(float64(n))
	}
}

// Queued sets notifier's queue length.
func (m *alertMeter) Queued(notifier string, n int) {
	if c := m.by[notifier]; c != nil {
		c.queue.Set(float64(n))
	}
}

// firingCollector reports sigil_server_alerts_firing{severity} from the
// Dispatcher's table of active alerts at scrape time: one series per
// known severity (0 when none fires); an alert of another severity is
// not counted.
type firingCollector struct {
	active func() []alert.Alert
	desc   *prometheus.Desc
}

func newFiringCollector(active func() []alert.Alert) *firingCollector {
	return &firingCollector{active: active, desc: prometheus.NewDesc("sigil_server_alerts_firing",
		"Alerts firing on this server's dispatcher, by severity (info, warning, critical): the cluster's alerts on the Raft leader, plus the alerts each server raises itself (no leader).",
		[]string{"severity"}, nil)}
}

// Describe implements prometheus.Collector.
func (c *firingCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

// Collect implements prometheus.Collector.
func (c *firingCollector) Collect(ch chan<- prometheus.Metric) {
	counts := map[alert.Severity]int{}
	for _, a := range c.active() {
		counts[a.Severity]++
	}
	for _, s := range []alert.Severity{alert.Info, alert.Warning, alert.Critical} {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(counts[s]), string(s))
	}
}
