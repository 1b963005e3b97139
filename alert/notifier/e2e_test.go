// Package notifier_test runs the notifiers end to end: a real
// alert.Dispatcher delivers through the webhook, Slack and PagerDuty
// notifiers to local receivers on loopback that decode and check what
// each service would, with a fake clock driving the repeats and the
// retries. The notifiers' own tests check payload shapes one Notify at a
// time; these check what the Dispatcher adds: retries after 5xx, repeats
// that keep the dedupe key, the resolution, and a receiver outage within
// and beyond the queue bound.
package notifier_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sigil-id/sigil/alert"
	"github.com/sigil-id/sigil/alert/notifier/alertmanager"
	"github.com/sigil-id/sigil/alert/notifier/pagerduty"
	"github.com/sigil-id/sigil/alert/notifier/slack"
	"github.com/sigil-id/sigil/alert/notifier/webhook"
	"github.com/sigil-id/sigil/clock"
)

var t0 = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

const (
	secret     = "e2e-webhook-secret"
	routingKey = "R0UT1NGKEY0000000000000000000000"
	slackPath  = "/services/T000/B000/XXXXSECRETXXXX"
	maxSkew    = 5 * time.Minute
)

// delivery is one accepted alert as a receiver understood it.
type delivery struct {
	key      string // webhook key, PagerDuty dedup_key; "" for Slack
	status   string // firing | resolved
	summary  string
	startsAt string
}

// receiver is a local endpoint of one service. It answers 503 to the
// next failN requests and to every request while down, and refuses a
// request the service would refuse (bad signature, bad routing key, bad
// body) with a 4xx it records as a bad request.
type receiver struct {
	srv    *httptest.Server
	decode func(r *http.Request, body []byte) ([]delivery, error)

	mu       sync.Mutex
	failN    int
	down     bool
	requests int // every request, answered or not
	bad      []string
	got      []delivery
}

func newReceiver(t *testing.T, decode func(*http.Request, []byte) ([]delivery, error)) *receiver {
	rc := &receiver{decode: decode}
	rc.srv = httptest.NewServer(rc) // loopback
	t.Cleanup(rc.srv.Close)
	return rc
}

func (rc *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.requests++
	if err == nil && r.Method != http.MethodPost {
		err = fmt.Errorf("method %s", r.Method)
	}
	var ds []delivery
	if err == nil {
		ds, err = rc.decode(r, body)
	}
	if err != nil {
		rc.bad = append(rc.bad, err.Error())
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if rc.down || rc.failN > 0 {
		if rc.failN > 0 {
			rc.failN--
		}
		http.Error(w, "try later", http.StatusServiceUnavailable)
		return
	}
	rc.got = append(rc.got, ds...)
	w.WriteHeader(http.StatusAccepted)
}

func (rc *receiver) setDown(down bool) { rc.mu.Lock(); rc.down = down; rc.mu.Unlock() }

func (rc *receiver) snapshot() (requests int, got []delivery, bad []string) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return rc.requests, slices.Clone(rc.got), slices.Clone(rc.bad)
}

func (rc *receiver) delivered() []delivery { _, got, _ := rc.snapshot(); return got }

// decodeWebhook verifies the signature with the exported Verify, at the
// fake clock's time, as a receiver would.
func decodeWebhook(clk clock.Clock) func(*http.Request, []byte) ([]delivery, error) {
	return func(r *http.Request, body []byte) ([]delivery, error) {
		if err := webhook.Verify([]byte(secret), r.Header.Get(webhook.HeaderSignature), r.Header.Get(webhook.HeaderTimestamp), body, clk.Now(), maxSkew); err != nil {
			return nil, err
		}
		var b webhook.Body
		dec := json.NewDecoder(strings.NewReader(string(body)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&b); err != nil {
			return nil, err
		}
		if b.Version != webhook.Version {
			return nil, fmt.Errorf("version %q", b.Version)
		}
		var out []delivery
		for _, a := range b.Alerts {
			if (a.Status == "resolved") != (a.EndsAt != "") {
				return nil, fmt.Errorf("status %s with ends_at %q", a.Status, a.EndsAt)
			}
			out = append(out, delivery{key: a.Key, status: a.Status, summary: a.Summary, startsAt: a.StartsAt})
		}
		return out, nil
	}
}

// pdEvent is an Events API v2 event, declared independently of the
// notifier's type.
type pdEvent struct {
	RoutingKey  string `json:"routing_key"`
	EventAction string `json:"event_action"`
	DedupKey    string `json:"dedup_key"`
	Payload     *struct {
		Summary   string            `json:"summary"`
		Source    string            `json:"source"`
		Severity  string            `json:"severity"`
		Timestamp string            `json:"timestamp"`
		Component string            `json:"component"`
		Class     string            `json:"class"`
		Details   map[string]string `json:"custom_details"`
	} `json:"payload"`
	Client    string `json:"client"`
	ClientURL string `json:"client_url"`
}

func decodePagerDuty(_ *http.Request, body []byte) ([]delivery, error) {
	var e pdEvent
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&e); err != nil {
		return nil, err
	}
	if e.RoutingKey != routingKey || e.DedupKey == "" || len(e.DedupKey) > 255 {
		return nil, fmt.Errorf("routing key or dedup_key invalid: %+v", e)
	}
	switch e.EventAction {
	case "trigger":
		if e.Payload == nil || e.Payload.Summary == "" || e.Payload.Source == "" {
			return nil, fmt.Errorf("trigger without payload: %+v", e)
		}
		return []delivery{{key: e.DedupKey, status: "firing", summary: e.Payload.Summary, startsAt: e.Payload.Timestamp}}, nil
	case "resolve":
		if e.Payload != nil {
			return nil, fmt.Errorf("resolve with a payload: %+v", e)
		}
		return []delivery{{key: e.DedupKey, status: "resolved"}}, nil
	}
	return nil, fmt.Errorf("event_action %q", e.EventAction)
}

// decodeSlack reads the message's alert lines (FIRING or RESOLVED). A
// Slack message carries no key: the outage tests name each alert in its
// summary ("alert k07"), which stands in for it.
func decodeSlack(r *http.Request, body []byte) ([]delivery, error) {
	if r.URL.Path != slackPath {
		return nil, fmt.Errorf("path %s", r.URL.Path)
	}
	var m struct {
		Text string `json:"text"`
	}
	if err := json.Unmarshal(body, &m); err != nil || m.Text == "" {
		return nil, fmt.Errorf("invalid_payload: %v", err)
	}
	var out []delivery
	for _, line := range strings.Split(m.Text, "\n") {
		d := delivery{summary: line}
		if m := slackKey.FindStringSubmatch(line); m != nil {
			d.key = m[1]
		}
		switch {
		case strings.HasPrefix(line, ":rotating_light: FIRING "):
			d.status = "firing"
		case strings.HasPrefix(line, ":white_check_mark: RESOLVED "):
			d.status = "resolved"
		default:
			continue
		}
		out = append(out, d)
	}
	return out, nil
}

var slackKey = regexp.MustCompile(`: alert (k[0-9]+)`)

// countMeter is an alert.DispatchMeter that counts.
type countMeter struct {
	mu                    sync.Mutex
	sent, failed, dropped map[string]int
}

func newCountMeter() *countMeter {
	return &countMeter{sent: map[string]int{}, failed: map[string]int{}, dropped: map[string]int{}}
}

func (c *countMeter) Sent(n string, k int)    { c.mu.Lock(); c.sent[n] += k; c.mu.Unlock() }
func (c *countMeter) Failed(n string)         { c.mu.Lock(); c.failed[n]++; c.mu.Unlock() }
func (c *countMeter) Dropped(n string, k int) { c.mu.Lock(); c.dropped[n] += k; c.mu.Unlock() }
func (c *countMeter) Queued(string, int)      {}

func (c *countMeter) get(m map[string]int, n string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return m[n]
}

// eventually waits for cond, which the dispatcher's goroutines and the
// receivers make true; the bound is generous and never a timing
// assertion (the fake clock drives every delay of the dispatcher).
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func start(t *testing.T, cfg alert.DispatcherConfig) *alert.Dispatcher {
	t.Helper()
	d, err := alert.NewDispatcher(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { d.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return d
}

// kinds builds each notifier against its own receiver.
var kinds = []struct {
	name  string
	build func(t *testing.T, clk clock.Clock) (alert.Notifier, *receiver)
	keyed bool // the receiver sees the dedupe key
}{
	{"webhook", func(t *testing.T, clk clock.Clock) (alert.Notifier, *receiver) {
		rc := newReceiver(t, decodeWebhook(clk))
		n, err := webhook.New(webhook.Config{URL: rc.srv.URL + "/hook", Secret: secret, MinSeverity: alert.Info, Clock: clk})
		if err != nil {
			t.Fatal(err)
		}
		return n, rc
	}, true},
	{"slack", func(t *testing.T, _ clock.Clock) (alert.Notifier, *receiver) {
		rc := newReceiver(t, decodeSlack)
		n, err := slack.New(slack.Config{WebhookURL: rc.srv.URL + slackPath, MinSeverity: alert.Info})
		if err != nil {
			t.Fatal(err)
		}
		return n, rc
	}, false},
	{"pagerduty", func(t *testing.T, _ clock.Clock) (alert.Notifier, *receiver) {
		rc := newReceiver(t, decodePagerDuty)
		n, err := pagerduty.New(pagerduty.Config{RoutingKey: routingKey, URL: rc.srv.URL + "/v2/enqueue", MinSeverity: alert.Info})
		if err != nil {
			t.Fatal(err)
		}
		return n, rc
	}, true},
}

func sampleAlert(key string) alert.Alert {
	return alert.Alert{
		Key: key, Name: "SigilSVIDNotRenewed", Severity: alert.Warning,
		Summary: "agent spiffe://td/sigil/agent/x: 1 SVID past its renewal point and not renewed",
		Details: map[string]string{"agent_id": "spiffe://td/sigil/agent/x", "count": "1"},
		Source:  "sigil-1",
	}
}

// TestDispatchRetriesRepeatsAndResolves: through a Dispatcher, each
// notifier's receiver answers 503 twice, then accepts the alert (the
// retries are counted); the repeats keep the dedupe key, so the receiver
// sees one logical alert; the resolution follows with the same key. The
// webhook receiver verifies every signature with webhook.Verify.
func TestDispatchRetriesRepeatsAndResolves(t *testing.T) {
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			clk := clock.NewFake(t0)
			n, rc := k.build(t, clk)
			rc.failN = 2
			meter := newCountMeter()
			d := start(t, alert.DispatcherConfig{
				Notifiers: []alert.Notifier{n}, Clock: clk, Meter: meter,
				RetryMin: time.Second, RetryMax: time.Minute, RepeatInterval: time.Hour,
			})
			const key = "svid_not_renewed/spiffe://td/sigil/agent/x"
			d.Fire(sampleAlert(key))
			// Two 503s, each followed by a backoff on the fake clock
			// (1s, then 2s) beside the repeat timer.
			for i, wait := range []time.Duration{time.Second, 2 * time.Second} {
				eventually(t, fmt.Sprintf("failure %d", i+1), func() bool { return meter.get(meter.failed, n.Name()) == i+1 })
				eventually(t, "backoff timer", func() bool { return clk.Waiters() == 2 })
				if got := rc.delivered(); len(got) != 0 {
					t.Fatalf("delivered during the failures: %+v", got)
				}
				clk.Add(wait)
			}
			eventually(t, "delivery after the retries", func() bool { return len(rc.delivered()) == 1 })
			// The meter counts once Notify has returned.
			eventually(t, "meter sent = 1", func() bool { return meter.get(meter.sent, n.Name()) == 1 })
			// Repeats, an hour apart from the first send.
			for r := 1; r <= 2; r++ {
				eventually(t, "repeat timer", func() bool { return clk.Waiters() == 1 })
				clk.Set(t0.Add(time.Duration(r) * time.Hour))
				eventually(t, fmt.Sprintf("repeat %d", r), func() bool { return len(rc.delivered()) == 1+r })
			}
			d.Resolve(key, t0.Add(150*time.Minute))
			eventually(t, "resolution", func() bool { return len(rc.delivered()) == 4 })

			requests, got, bad := rc.snapshot()
			if len(bad) != 0 {
				t.Fatalf("receiver refused requests: %v", bad)
			}
			if requests != 6 {
				t.Errorf("receiver got %d requests, want 6 (2 refused, first send, 2 repeats, resolution)", requests)
			}
			if f := meter.get(meter.failed, n.Name()); f != 2 {
				t.Errorf("meter failed = %d, want 2", f)
			}
			for i, dl := range got {
				want := "firing"
				if i == 3 {
					want = "resolved"
				}
				if dl.status != want {
					t.Errorf("delivery %d: status %q, want %q", i, dl.status, want)
				}
				if k.keyed && dl.key != key {
					t.Errorf("delivery %d: key %q, want %q (one logical alert)", i, dl.key, key)
				}
				if i < 3 && !strings.Contains(dl.summary, "1 SVID past its renewal point") {
					t.Errorf("delivery %d: summary %q", i, dl.summary)
				}
				if k.name != "slack" && i < 3 && dl.startsAt != t0.Format(time.RFC3339Nano) {
					t.Errorf("delivery %d: starts at %q, want %s (kept across repeats)", i, dl.startsAt, t0.Format(time.RFC3339Nano))
				}
			}
			if k.name == "slack" && !strings.Contains(got[3].summary, "RESOLVED [warning] SigilSVIDNotRenewed") {
				t.Errorf("slack resolution line %q", got[3].summary)
			}
		})
	}
}

// TestDispatchOutageWithinQueue: while a receiver is down, alerts up to
// the queue's size wait; once it is back, every one is delivered and
// none is dropped.
func TestDispatchOutageWithinQueue(t *testing.T) {
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			const queue = 8
			got, meter, name := outage(t, k.build, queue, queue)
			if dr := meter.get(meter.dropped, name); dr != 0 {
				t.Errorf("dropped %d alerts within the queue bound", dr)
			}
			want := keys(0, queue)
			if !slices.Equal(sortedKeys(got), want) {
				t.Errorf("delivered %v, want %v", sortedKeys(got), want)
			}
			if len(got) != queue {
				t.Errorf("delivered %d alerts, want %d", len(got), queue)
			}
		})
	}
}

// TestDispatchOutageBeyondQueue: past the queue's size, the oldest alerts
// are dropped, the drop counter equals the overflow, and the newest are
// delivered once the receiver is back.
func TestDispatchOutageBeyondQueue(t *testing.T) {
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			const queue, n = 8, 13
			got, meter, name := outage(t, k.build, queue, n)
			if dr := meter.get(meter.dropped, name); dr != n-queue {
				t.Errorf("dropped %d, want %d (the overflow)", dr, n-queue)
			}
			if len(got) != queue {
				t.Errorf("delivered %d alerts, want %d", len(got), queue)
			}
			if want := keys(n-queue, n); !slices.Equal(sortedKeys(got), want) {
				t.Errorf("delivered %v, want the newest %v", sortedKeys(got), want)
			}
		})
	}
}

// outage fires n alerts at a Dispatcher whose queue holds queue alerts
// while the receiver is down (the first send fails, so the worker waits
// in backoff while the rest queue up), then brings the receiver back and
// returns what it delivered.
func outage(t *testing.T, build func(*testing.T, clock.Clock) (alert.Notifier, *receiver), queue, n int) ([]delivery, *countMeter, string) {
	t.Helper()
	clk := clock.NewFake(t0)
	nt, rc := build(t, clk)
	rc.setDown(true)
	meter := newCountMeter()
	d := start(t, alert.DispatcherConfig{
		Notifiers: []alert.Notifier{nt}, Clock: clk, Meter: meter, QueueSize: queue,
		RetryMin: time.Second, RetryMax: time.Minute, RepeatInterval: 1000 * time.Hour,
	})
	ks := keys(0, n)
	first := sampleAlert(ks[0])
	first.Summary = "alert " + ks[0]
	d.Fire(first)
	eventually(t, "first failure", func() bool { return meter.get(meter.failed, nt.Name()) == 1 })
	eventually(t, "backoff timer", func() bool { return clk.Waiters() == 2 })
	for _, key := range ks[1:] {
		a := sampleAlert(key)
		a.Summary = "alert " + key
		d.Fire(a)
	}
	rc.setDown(false)
	clk.Add(time.Second)
	want := min(n, queue)
	eventually(t, "delivery after the outage", func() bool { return len(rc.delivered()) == want })
	_, got, bad := rc.snapshot()
	if len(bad) != 0 {
		t.Fatalf("receiver refused requests: %v", bad)
	}
	// The meter counts once Notify has returned.
	eventually(t, fmt.Sprintf("meter sent = %d", want), func() bool { return meter.get(meter.sent, nt.Name()) == want })
	return got, meter, nt.Name()
}

func keys(from, to int) []string {
	var out []string
	for i := from; i < to; i++ {
		out = append(out, fmt.Sprintf("k%02d", i))
	}
	return out
}

func sortedKeys(ds []delivery) []string {
	var out []string
	for _, d := range ds {
		out = append(out, d.key)
	}
	slices.Sort(out)
	return out
}

// TestDispatchAlertmanagerRepeatsWithinResolveTimeout: with the server's
// repeat interval at its 4h default, the Alertmanager notifier still gets
// every firing alert each minute (its repeat_interval), under the same
// labels whichever server raised it, so Alertmanager neither resolves it
// by itself nor opens a second alert after a change of leader.
func TestDispatchAlertmanagerRepeatsWithinResolveTimeout(t *testing.T) {
	clk := clock.NewFake(t0)
	var mu sync.Mutex
	var posts []map[string]any
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var batch []map[string]any
		if r.URL.Path != "/api/v2/alerts" || json.NewDecoder(r.Body).Decode(&batch) != nil || len(batch) != 1 {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		mu.Lock()
		posts = append(posts, batch[0])
		mu.Unlock()
	}))
	defer srv.Close()
	am, err := alertmanager.New(alertmanager.Config{URLs: []string{srv.URL}})
	if err != nil {
		t.Fatal(err)
	}
	d := start(t, alert.DispatcherConfig{Notifiers: []alert.Notifier{am}, Clock: clk})
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(posts) }
	a := sampleAlert("svid_not_renewed/spiffe://td/sigil/agent/x")
	d.Fire(a)
	eventually(t, "first post", func() bool { return count() == 1 })
	for i := 1; i <= 3; i++ {
		eventually(t, "repeat timer", func() bool { return clk.Waiters() == 1 })
		clk.Add(time.Minute)
		eventually(t, fmt.Sprintf("repeat %d", i), func() bool { return count() == 1+i })
	}
	// The same condition as another server (a new leader) raises it:
	// another source and summary under the same key (this dispatcher
	// stands in for the new leader's).
	a.Source = "sigil-2"
	a.Summary += " (seen by sigil-2)"
	d.Fire(a)
	eventually(t, "post from sigil-2", func() bool { return count() == 5 })
	mu.Lock()
	defer mu.Unlock()
	labels0, _ := json.Marshal(posts[0]["labels"])
	for i, p := range posts {
		if l, _ := json.Marshal(p["labels"]); string(l) != string(labels0) {
			t.Errorf("post %d: labels %s, want %s", i, l, labels0)
		}
		if _, ok := p["endsAt"]; ok {
			t.Errorf("post %d of a firing alert has endsAt", i)
		}
	}
	if src := posts[4]["annotations"].(map[string]any)["source"]; src != "sigil-2" {
		t.Errorf("source annotation %v, want sigil-2", src)
	}
}
