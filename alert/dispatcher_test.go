package alert

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/sigil-id/sigil/clock"
)

var t0 = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

// memNotifier records what it is sent; it fails its first failN sends,
// and blocks each send until release is closed when release is set.
type memNotifier struct {
	name    string
	min     Severity // "" : not a Router
	release chan struct{}

	mu      sync.Mutex
	failN   int
	calls   int
	batches [][]Alert
}

func (m *memNotifier) Name() string { return m.name }

func (m *memNotifier) Notify(ctx context.Context, alerts []Alert) error {
	if m.release != nil {
		select {
		case <-m.release:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.calls++
	if m.failN > 0 {
		m.failN--
		return errors.New("receiver down")
	}
	m.batches = append(m.batches, append([]Alert(nil), alerts...))
	return nil
}

func (m *memNotifier) sent() [][]Alert {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([][]Alert(nil), m.batches...)
}

func (m *memNotifier) callCount() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.calls
}

type routedNotifier struct{ *memNotifier }

func (r routedNotifier) MinSeverity() Severity { return r.min }

type countMeter struct {
	mu                          sync.Mutex
	sent, failed, dropped, qlen map[string]int
}

func newCountMeter() *countMeter {
	return &countMeter{sent: map[string]int{}, failed: map[string]int{}, dropped: map[string]int{}, qlen: map[string]int{}}
}

func (c *countMeter) Sent(n string, k int)    { c.mu.Lock(); c.sent[n] += k; c.mu.Unlock() }
func (c *countMeter) Failed(n string)         { c.mu.Lock(); c.failed[n]++; c.mu.Unlock() }
func (c *countMeter) Dropped(n string, k int) { c.mu.Lock(); c.dropped[n] += k; c.mu.Unlock() }
func (c *countMeter) Queued(n string, k int)  { c.mu.Lock(); c.qlen[n] = k; c.mu.Unlock() }
func (c *countMeter) get(m map[string]int, n string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return m[n]
}

// eventually waits for cond, which goroutines of the dispatcher make
// true; it fails the test after a generous bound (never a timing
// assertion: fake clocks drive every delay of the dispatcher).
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

func start(t *testing.T, cfg DispatcherConfig) *Dispatcher {
	t.Helper()
	d, err := NewDispatcher(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { d.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return d
}

func alertN(key string, sev Severity) Alert {
	return Alert{Key: key, Name: "Test", Severity: sev, Summary: "s " + key, Source: "n1"}
}

func TestDispatcherRoutesBySeverity(t *testing.T) {
	clk := clock.NewFake(t0)
	crit := routedNotifier{&memNotifier{name: "crit", min: Critical}}
	info := routedNotifier{&memNotifier{name: "info", min: Info}}
	def := &memNotifier{name: "default"} // not a Router: Warning
	d := start(t, DispatcherConfig{Notifiers: []Notifier{crit, info, def}, Clock: clk})
	d.Fire(alertN("a", Info))
	d.Fire(alertN("b", Warning))
	d.Fire(alertN("c", Critical))
	keys := func(m *memNotifier) map[string]bool {
		out := map[string]bool{}
		for _, b := range m.sent() {
			for _, a := range b {
				out[a.Key] = true
			}
		}
		return out
	}
	eventually(t, "info gets all three", func() bool { return len(keys(info.memNotifier)) == 3 })
	eventually(t, "default gets b and c", func() bool { return len(keys(def)) == 2 })
	eventually(t, "crit gets c", func() bool { return keys(crit.memNotifier)["c"] })
	if k := keys(def); k["a"] {
		t.Errorf("default notifier got an info alert: %v", k)
	}
	if k := keys(crit.memNotifier); len(k) != 1 {
		t.Errorf("critical notifier got %v, want only c", k)
	}
}

func TestDispatcherRetriesWithBackoff(t *testing.T) {
	clk := clock.NewFake(t0)
	m := &memNotifier{name: "flaky", failN: 2}
	meter := newCountMeter()
	d := start(t, DispatcherConfig{Notifiers: []Notifier{m}, Clock: clk, Meter: meter, RetryMin: time.Second, RetryMax: time.Minute, RepeatInterval: 1000 * time.Hour})
	d.Fire(alertN("a", Critical))
	eventually(t, "first failure", func() bool { return meter.get(meter.failed, "flaky") == 1 })
	// Waiters: the repeat timer and the 1s retry.
	eventually(t, "retry timer", func() bool { return clk.Waiters() == 2 })
	d.Fire(alertN("b", Critical)) // queued while retrying: batched with a
	clk.Add(time.Second)
	eventually(t, "second failure", func() bool { return meter.get(meter.failed, "flaky") == 2 })
	eventually(t, "2s retry timer", func() bool { return clk.Waiters() == 2 })
	clk.Add(time.Second) // only half the second backoff
	if got := m.callCount(); got != 2 {
		t.Fatalf("retried before the backoff: %d calls", got)
	}
	clk.Add(time.Second)
	eventually(t, "delivery", func() bool { return len(m.sent()) == 1 })
	b := m.sent()[0]
	if len(b) != 2 || b[0].Key != "a" || b[1].Key != "b" {
		t.Fatalf("retried batch = %v, want a then b", b)
	}
	if got := meter.get(meter.sent, "flaky"); got != 2 {
		t.Errorf("Sent = %d, want 2", got)
	}
}

func TestDispatcherSlowNotifierNeverBlocksFire(t *testing.T) {
	clk := clock.NewFake(t0)
	slow := &memNotifier{name: "slow", release: make(chan struct{})}
	fast := &memNotifier{name: "fast"}
	meter := newCountMeter()
	d := start(t, DispatcherConfig{Notifiers: []Notifier{slow, fast}, Clock: clk, Meter: meter, QueueSize: 4})
	fired := make(chan struct{})
	go func() {
		for i := range 50 {
			d.Fire(alertN(fmt.Sprintf("k%d", i), Critical))
		}
		close(fired)
	}()
	select {
	case <-fired:
	case <-time.After(10 * time.Second):
		t.Fatal("Fire blocked behind a slow notifier")
	}
	eventually(t, "fast notifier gets alerts", func() bool { return len(fast.sent()) > 0 })
	// The slow notifier holds at most one batch in Notify and 4 queued.
	dropped := meter.get(meter.dropped, "slow")
	if dropped < 50-4-4 {
		t.Errorf("slow notifier dropped %d, want at least %d", dropped, 50-4-4)
	}
	close(slow.release)
	eventually(t, "slow notifier catches up", func() bool {
		b := slow.sent()
		return len(b) > 0 && b[len(b)-1][len(b[len(b)-1])-1].Key == "k49"
	})
	got := 0
	for _, b := range slow.sent() {
		got += len(b)
	}
	if got+dropped != 50 {
		t.Errorf("slow notifier got %d alerts and dropped %d, want 50 in all", got, dropped)
	}
}

func TestDispatcherRepeatsWhileFiring(t *testing.T) {
	clk := clock.NewFake(t0)
	m := &memNotifier{name: "m"}
	d := start(t, DispatcherConfig{Notifiers: []Notifier{m}, Clock: clk, RepeatInterval: time.Hour})
	d.Fire(alertN("a", Warning))
	eventually(t, "first send", func() bool { return len(m.sent()) == 1 })
	eventually(t, "repeat timer", func() bool { return clk.Waiters() == 1 })
	d.Fire(alertN("a", Warning)) // unchanged: not sent again
	clk.Add(59 * time.Minute)
	if n := len(m.sent()); n != 1 {
		t.Fatalf("sent %d times before the repeat interval", n)
	}
	clk.Add(time.Minute)
	eventually(t, "repeat", func() bool { return len(m.sent()) == 2 })
	eventually(t, "next repeat timer", func() bool { return clk.Waiters() == 1 })
	clk.Add(time.Hour)
	eventually(t, "second repeat", func() bool { return len(m.sent()) == 3 })
	for _, b := range m.sent() {
		if len(b) != 1 || b[0].Key != "a" || b[0].Resolved() || !b[0].StartsAt.Equal(t0) {
			t.Fatalf("repeat sent %+v", b)
		}
	}
}

func TestDispatcherSendsChangesAndResolution(t *testing.T) {
	clk := clock.NewFake(t0)
	m := &memNotifier{name: "m", release: make(chan struct{})}
	close(m.release)
	d := start(t, DispatcherConfig{Notifiers: []Notifier{m}, Clock: clk})
	a := alertN("a", Warning)
	a.Details = map[string]string{"agent": "x"}
	d.Fire(a)
	eventually(t, "start", func() bool { return len(m.sent()) == 1 })
	a.Details = map[string]string{"agent": "y"}
	clk.Add(time.Minute)
	d.Fire(a)
	eventually(t, "change", func() bool { return len(m.sent()) == 2 })
	if act := d.Active(); len(act) != 1 || act[0].Details["agent"] != "y" || !act[0].StartsAt.Equal(t0) {
		t.Fatalf("Active = %+v", act)
	}
	end := t0.Add(2 * time.Minute)
	d.Resolve("a", end)
	d.Resolve("unknown", end)
	eventually(t, "resolution", func() bool { return len(m.sent()) == 3 })
	r := m.sent()[2][0]
	if !r.Resolved() || !r.EndsAt.Equal(end) || r.Key != "a" || r.Details["agent"] != "y" {
		t.Fatalf("resolution = %+v", r)
	}
	if act := d.Active(); len(act) != 0 {
		t.Fatalf("Active after resolve = %+v", act)
	}
}

func TestDispatcherDedupesByKey(t *testing.T) {
	clk := clock.NewFake(t0)
	m := &memNotifier{name: "m", release: make(chan struct{})}
	d := start(t, DispatcherConfig{Notifiers: []Notifier{m}, Clock: clk})
	d.Fire(alertN("first", Warning)) // the worker takes it and blocks in Notify
	eventually(t, "queue drained", func() bool { return d.workers[0].queueLen() == 0 })
	for _, s := range []string{"one", "two", "three"} {
		a := alertN("a", Warning)
		a.Summary = s
		d.Fire(a)
	}
	d.Fire(alertN("b", Warning))
	close(m.release)
	eventually(t, "second batch", func() bool { return len(m.sent()) == 2 })
	b := m.sent()[1]
	if len(b) != 2 || b[0].Key != "a" || b[0].Summary != "three" || b[1].Key != "b" {
		t.Fatalf("batch = %+v, want a (three) then b", b)
	}
}

func TestDispatcherQueueOverflowCounted(t *testing.T) {
	clk := clock.NewFake(t0)
	m := &memNotifier{name: "m"}
	meter := newCountMeter()
	d, err := NewDispatcher(DispatcherConfig{Notifiers: []Notifier{m}, Clock: clk, Meter: meter, QueueSize: 3})
	if err != nil {
		t.Fatal(err)
	}
	// Not running: everything stays queued.
	for i := range 5 {
		d.Fire(alertN(fmt.Sprintf("k%d", i), Warning))
	}
	if got := meter.get(meter.dropped, "m"); got != 2 {
		t.Fatalf("dropped = %d, want 2", got)
	}
	if got := meter.get(meter.qlen, "m"); got != 3 {
		t.Fatalf("queued = %d, want 3", got)
	}
	w := d.workers[0]
	w.mu.Lock()
	q := append([]Alert(nil), w.q...)
	w.mu.Unlock()
	if len(q) != 3 || q[0].Key != "k2" || q[2].Key != "k4" {
		t.Fatalf("queue = %v, want k2..k4", q)
	}
}

func TestDispatcherTestReportsEachNotifier(t *testing.T) {
	ok := routedNotifier{&memNotifier{name: "ok", min: Critical}}
	bad := &memNotifier{name: "bad", failN: 1}
	d, err := NewDispatcher(DispatcherConfig{Notifiers: []Notifier{ok, bad}})
	if err != nil {
		t.Fatal(err)
	}
	res := d.Test(context.Background(), alertN("sigil_test/n1", Info))
	if len(res) != 2 || res[0].Notifier != "ok" || res[0].Err != nil || res[1].Notifier != "bad" || res[1].Err == nil {
		t.Fatalf("Test = %+v", res)
	}
	if got := ok.sent(); len(got) != 1 || got[0][0].Key != "sigil_test/n1" {
		t.Fatalf("ok notifier got %v (Test ignores routing)", got)
	}
	if len(d.Active()) != 0 {
		t.Fatal("Test recorded an active alert")
	}
}

func TestDispatcherTestBoundedByContext(t *testing.T) {
	hung := &memNotifier{name: "hung", release: make(chan struct{})}
	d, err := NewDispatcher(DispatcherConfig{Notifiers: []Notifier{hung}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	res := d.Test(ctx, alertN("t", Warning))
	if len(res) != 1 || !errors.Is(res[0].Err, context.Canceled) {
		t.Fatalf("Test = %+v", res)
	}
}

func TestDispatcherNoNotifiers(t *testing.T) {
	d := start(t, DispatcherConfig{Clock: clock.NewFake(t0)})
	d.Fire(alertN("a", Critical))
	if act := d.Active(); len(act) != 1 {
		t.Fatalf("Active = %v", act)
	}
	if res := d.Test(context.Background(), alertN("t", Info)); len(res) != 0 {
		t.Fatalf("Test = %v", res)
	}
}

func TestDispatcherConfigValidate(t *testing.T) {
	a := &memNotifier{name: "x"}
	for _, c := range []DispatcherConfig{
		{Notifiers: []Notifier{a, &memNotifier{name: "x"}}},
		{Notifiers: []Notifier{nil}},
		{QueueSize: -1},
		{RetryMin: time.Minute, RetryMax: time.Second},
	} {
		if _, err := NewDispatcher(c); err == nil {
			t.Errorf("NewDispatcher(%+v) accepted", c)
		}
	}
}

// repeatNotifier is a Repeater asking for repeats every every.
type repeatNotifier struct {
	*memNotifier
	every time.Duration
}

func (r repeatNotifier) RepeatInterval() time.Duration { return r.every }

// TestDispatcherRepeatsPerNotifier: each notifier gets a firing alert
// again at the shorter of the Dispatcher's RepeatInterval and its own
// (Repeater); one notifier's repeats are not sent to the others.
func TestDispatcherRepeatsPerNotifier(t *testing.T) {
	clk := clock.NewFake(t0)
	fast := repeatNotifier{&memNotifier{name: "fast"}, time.Minute}
	slow := repeatNotifier{&memNotifier{name: "slow"}, 10 * time.Hour} // longer than the Dispatcher's: 5m
	off := repeatNotifier{&memNotifier{name: "off"}, 0}                // zero: ignored, 5m
	plain := &memNotifier{name: "plain"}
	d := start(t, DispatcherConfig{Notifiers: []Notifier{fast, slow, off, plain}, Clock: clk, RepeatInterval: 5 * time.Minute})
	d.Fire(alertN("a", Warning))
	all := []*memNotifier{fast.memNotifier, slow.memNotifier, off.memNotifier, plain}
	for _, m := range all {
		eventually(t, m.name+" first send", func() bool { return len(m.sent()) == 1 })
	}
	for i := 1; i <= 10; i++ {
		eventually(t, "repeat timer", func() bool { return clk.Waiters() == 1 })
		clk.Add(time.Minute)
		eventually(t, fmt.Sprintf("fast repeat %d", i), func() bool { return len(fast.sent()) == 1+i })
		want := 1 + i/5
		for _, m := range all[1:] {
			if i%5 == 0 {
				eventually(t, fmt.Sprintf("%s repeat at %dm", m.name, i), func() bool { return len(m.sent()) == want })
			}
		}
	}
	// Every repeat has been awaited: no notifier got more than its own.
	if n := len(fast.sent()); n != 11 {
		t.Errorf("fast notifier got %d sends in 10m, want 11", n)
	}
	for _, m := range all[1:] {
		if n := len(m.sent()); n != 3 {
			t.Errorf("%s got %d sends in 10m, want 3 (start, 5m, 10m)", m.name, n)
		}
	}
	for _, m := range all {
		for _, b := range m.sent() {
			if len(b) != 1 || b[0].Key != "a" || b[0].Resolved() || !b[0].StartsAt.Equal(t0) {
				t.Fatalf("%s: repeat sent %+v", m.name, b)
			}
		}
	}
}

// TestDispatcherRepeatsOnlyRoutedAlerts: a Repeater is not sent alerts
// below its minimum severity by repeats either, and a change restarts
// every notifier's repeat interval.
func TestDispatcherRepeatsOnlyRoutedAlerts(t *testing.T) {
	clk := clock.NewFake(t0)
	crit := &critRepeater{repeatNotifier{&memNotifier{name: "crit"}, time.Minute}}
	plain := &memNotifier{name: "plain"}
	d := start(t, DispatcherConfig{Notifiers: []Notifier{crit, plain}, Clock: clk, RepeatInterval: time.Hour})
	d.Fire(alertN("w", Warning))
	d.Fire(alertN("c", Critical))
	eventually(t, "crit gets c", func() bool { return len(crit.sent()) >= 1 })
	eventually(t, "plain gets w and c", func() bool { return countKeys(plain.sent()) == 2 })
	eventually(t, "repeat timer", func() bool { return clk.Waiters() >= 1 })
	before := countKeys(crit.sent())
	clk.Add(time.Minute)
	eventually(t, "crit repeat", func() bool { return countKeys(crit.sent()) == before+1 })
	for _, b := range crit.sent() {
		for _, a := range b {
			if a.Key != "c" {
				t.Fatalf("critical notifier was sent %q", a.Key)
			}
		}
	}
	if n := countKeys(plain.sent()); n != 2 {
		t.Errorf("plain notifier got %d alerts before its repeat interval, want 2", n)
	}
}

type critRepeater struct{ repeatNotifier }

func (critRepeater) MinSeverity() Severity { return Critical }

func countKeys(batches [][]Alert) int {
	n := 0
	for _, b := range batches {
		n += len(b)
	}
	return n
}
