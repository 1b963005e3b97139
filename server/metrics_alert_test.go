package server

import (
	"errors"
	"fmt"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"

	"github.com/sigil-id/sigil/alert"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/internal/eventually"
)

// TestMetricsAlertDispatch: a running server's /metrics counts the alerts
// each notifier was sent, its failed deliveries, its queue, and the
// firing alerts by severity (computed at scrape time from the
// dispatcher's table).
func TestMetricsAlertDispatch(t *testing.T) {
	ok := &memNotifier{name: "pager", min: alert.Info}
	bad := &memNotifier{name: "hook", min: alert.Critical, err: errors.New("hook: receiver answered 503")}
	srv, _, _ := startAlertServer(t, ok, bad)
	for _, sev := range []alert.Severity{alert.Info, alert.Warning, alert.Critical} {
		if v := metricValue(t, srv, "sigil_server_alerts_firing", map[string]string{"severity": string(sev)}); v != 0 {
			t.Errorf("firing %s before any alert = %v, want 0", sev, v)
		}
	}
	for _, n := range []string{"pager", "hook"} {
		for _, name := range []string{"sigil_server_alert_notifications_dropped_total", "sigil_server_alert_queue"} {
			if v := metricValue(t, srv, name, map[string]string{"notifier": n}); v != 0 {
				t.Errorf("%s{notifier=%q} = %v at start, want 0", name, n, v)
			}
		}
	}
	srv.alerts.Fire(alert.Alert{Key: "w", Name: "T", Severity: alert.Warning, Summary: "w"})
	srv.alerts.Fire(alert.Alert{Key: "c1", Name: "T", Severity: alert.Critical, Summary: "c1"})
	srv.alerts.Fire(alert.Alert{Key: "c2", Name: "T", Severity: alert.Critical, Summary: "c2"})
	sent := func(n string) float64 {
		return metricValue(t, srv, "sigil_server_alert_notifications_total", map[string]string{"notifier": n, "outcome": "sent"})
	}
	failed := func(n string) float64 {
		return metricValue(t, srv, "sigil_server_alert_notifications_total", map[string]string{"notifier": n, "outcome": "failed"})
	}
	eventually.True(t, 10*time.Second, func() bool { return sent("pager") == 3 }, "pager sent = %v, want 3", sent("pager"))
	eventually.True(t, 10*time.Second, func() bool { return failed("hook") >= 1 }, "hook failed = %v, want ≥ 1", failed("hook"))
	if v := sent("hook"); v != 0 {
		t.Errorf("hook sent = %v, want 0 (every delivery fails)", v)
	}
	if v := failed("pager"); v != 0 {
		t.Errorf("pager failed = %v, want 0", v)
	}
	want := map[string]float64{"info": 0, "warning": 1, "critical": 2}
	for sev, n := range want {
		if v := metricValue(t, srv, "sigil_server_alerts_firing", map[string]string{"severity": sev}); v != n {
			t.Errorf("firing %s = %v, want %v", sev, v, n)
		}
	}
	srv.alerts.Resolve("c1", time.Time{})
	if v := metricValue(t, srv, "sigil_server_alerts_firing", map[string]string{"severity": "critical"}); v != 1 {
		t.Errorf("firing critical after a resolve = %v, want 1", v)
	}

	// The same series on the HTTP handler the server serves.
	rec := httptest.NewRecorder()
	srv.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	for _, line := range []string{
		`sigil_server_alerts_firing{severity="warning"} 1`,
		`sigil_server_alert_notifications_total{notifier="pager",outcome="sent"} `,
		`sigil_server_alert_notifications_dropped_total{notifier="hook"} 0`,
		`sigil_server_alert_queue{notifier="pager"} 0`,
	} {
		if !strings.Contains(string(body), line) {
			t.Errorf("/metrics lacks %q", line)
		}
	}
}

// TestMetricsAlertQueueOverflow: a notifier's queue past its bound drops
// the oldest, and the drop counter and queue gauge say so. The
// dispatcher is not running, so nothing leaves the queue.
func TestMetricsAlertQueueOverflow(t *testing.T) {
	reg := prometheus.NewRegistry()
	cfg := DefaultConfig()
	cfg.Clock = clock.NewFake(time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC))
	cfg.Notifiers = []alert.Notifier{&memNotifier{name: "hook", min: alert.Info}}
	d, err := newDispatcher(cfg, zap.NewNop(), reg)
	if err != nil {
		t.Fatal(err)
	}
	size := alert.DefaultDispatcherConfig().QueueSize
	for i := range size + 7 {
		d.Fire(alert.Alert{Key: fmt.Sprintf("k%d", i), Name: "T", Severity: alert.Warning, Summary: "s"})
	}
	expected := fmt.Sprintf(`
# HELP sigil_server_alert_notifications_dropped_total Alerts dropped from a notifier's full queue (superseded entries first, then the oldest), by notifier.
# TYPE sigil_server_alert_notifications_dropped_total counter
sigil_server_alert_notifications_dropped_total{notifier="hook"} 7
# HELP sigil_server_alert_queue Alerts waiting in a notifier's queue (bounded by the queue size, 1024), by notifier.
# TYPE sigil_server_alert_queue gauge
sigil_server_alert_queue{notifier="hook"} %d
`, size)
	if err := testutil.GatherAndCompare(reg, strings.NewReader(expected), "sigil_server_alert_notifications_dropped_total", "sigil_server_alert_queue"); err != nil {
		t.Error(err)
	}
	if n, err := testutil.GatherAndCount(reg, "sigil_server_alerts_firing"); err != nil || n != 3 {
		t.Errorf("sigil_server_alerts_firing series = %d (%v), want 3 (one per severity)", n, err)
	}
}

// TestAlertMeterIgnoresUnknownNotifiers: the notifier label takes only
// configured names, whatever the dispatcher reports.
func TestAlertMeterIgnoresUnknownNotifiers(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := newAlertMeter(reg)
	m.init([]string{"pager"})
	m.Sent("pager", 2)
	m.Sent("stranger", 5)
	m.Failed("stranger")
	m.Dropped("stranger", 1)
	m.Queued("stranger", 1)
	if n := testutil.CollectAndCount(m.notifications); n != 2 {
		t.Errorf("%d notification series, want 2 (pager sent and failed)", n)
	}
	if v := testutil.ToFloat64(m.notifications.WithLabelValues("pager", "sent")); v != 2 {
		t.Errorf("pager sent = %v, want 2", v)
	}
	if n := testutil.CollectAndCount(m.dropped) + testutil.CollectAndCount(m.queue); n != 2 {
		t.Errorf("%d dropped and queue series, want 2 (pager's)", n)
	}
}
