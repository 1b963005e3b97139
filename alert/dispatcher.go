package alert

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/sigil-id/sigil/clock"
)

// Router is implemented by a Notifier that takes only alerts of at least
// some severity. A Notifier that does not implement it takes Warning and
// above.
type Router interface {
	// MinSeverity is the least severity the notifier takes.
	MinSeverity() Severity
}

// Repeater is implemented by a Notifier whose receiver needs a firing
// alert sent again more often than the Dispatcher's RepeatInterval (e.g.
// Alertmanager, which resolves an alert it has not heard of for its
// resolve_timeout). The Dispatcher repeats each firing alert to such a
// notifier every min(DispatcherConfig.RepeatInterval, RepeatInterval());
// a zero or negative RepeatInterval is ignored.
type Repeater interface {
	// RepeatInterval is the longest the notifier may go without hearing
	// of an alert that still fires.
	RepeatInterval() time.Duration
}

// DefaultMinSeverity is the minimum severity of a Notifier that is not a
// Router.
const DefaultMinSeverity = Warning

// DispatchMeter counts what the Dispatcher does for each notifier (by
// Name). Its methods must be safe for concurrent use and must not block.
type DispatchMeter interface {
	// Sent counts n alerts delivered in one successful Notify.
	Sent(notifier string, n int)
	// Failed counts one failed Notify (to be retried).
	Failed(notifier string)
	// Dropped counts n alerts dropped because the queue was full.
	Dropped(notifier string, n int)
	// Queued reports the queue's length, n, after it changed.
	Queued(notifier string, n int)
}

type nopMeter struct{}

func (nopMeter) Sent(string, int)    {}
func (nopMeter) Failed(string)       {}
func (nopMeter) Dropped(string, int) {}
func (nopMeter) Queued(string, int)  {}

// DispatcherConfig configures a Dispatcher.
type DispatcherConfig struct {
	// Notifiers receive the alerts; their Names must be unique. None is
	// valid: the Dispatcher then only keeps the table of active alerts.
	Notifiers []Notifier
	// QueueSize bounds each notifier's queue. Default 1024.
	QueueSize int
	// RepeatInterval is how often a firing alert is sent again to each
	// notifier while it fires unchanged; a notifier that is a Repeater
	// gets it at the shorter of this and its own interval. Default 4h.
	RepeatInterval time.Duration
	// RetryMin and RetryMax bound the exponential backoff between
	// retries of a failed send. Defaults 1s and 5m.
	RetryMin, RetryMax time.Duration
	// SendTimeout bounds one Notify call. Default 30s.
	SendTimeout time.Duration
	// Clock times repeats and retries. Default the real clock.
	Clock clock.Clock
	// Logger logs failed sends and drops. Default a no-op logger.
	Logger *zap.Logger
	// Meter counts sends, failures, drops and queue lengths. Default a
	// no-op meter.
	Meter DispatchMeter
}

// DefaultDispatcherConfig returns the defaults, without notifiers.
func DefaultDispatcherConfig() DispatcherConfig {
	return DispatcherConfig{
		QueueSize:      1024,
		RepeatInterval: 4 * time.Hour,
		RetryMin:       time.Second,
		RetryMax:       5 * time.Minute,
		SendTimeout:    30 * time.Second,
	}
}

// Validate reports a configuration NewDispatcher refuses: a nil notifier,
// two notifiers of the same name, a negative bound or RetryMin above
// RetryMax.
func (c DispatcherConfig) Validate() error {
	names := map[string]bool{}
	for i, n := range c.Notifiers {
		if n == nil {
			return fmt.Errorf("alert: notifier %d is nil", i)
		}
		if names[n.Name()] {
			return fmt.Errorf("alert: two notifiers named %q", n.Name())
		}
		names[n.Name()] = true
	}
	if c.QueueSize < 0 || c.RepeatInterval < 0 || c.RetryMin < 0 || c.RetryMax < 0 || c.SendTimeout < 0 {
		return errors.New("alert: queue size, repeat interval, retry bounds and send timeout may not be negative")
	}
	if c.RetryMin > 0 && c.RetryMax > 0 && c.RetryMin > c.RetryMax {
		return fmt.Errorf("alert: retry_min %s is above retry_max %s", c.RetryMin, c.RetryMax)
	}
	return nil
}

func (c DispatcherConfig) withDefaults() DispatcherConfig {
	d := DefaultDispatcherConfig()
	if c.QueueSize == 0 {
		c.QueueSize = d.QueueSize
	}
	if c.RepeatInterval == 0 {
		c.RepeatInterval = d.RepeatInterval
	}
	if c.RetryMin == 0 {
		c.RetryMin = d.RetryMin
	}
	if c.RetryMax == 0 {
		c.RetryMax = max(d.RetryMax, c.RetryMin)
	}
	if c.SendTimeout == 0 {
		c.SendTimeout = d.SendTimeout
	}
	if c.Clock == nil {
		c.Clock = clock.New()
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	if c.Meter == nil {
		c.Meter = nopMeter{}
	}
	return c
}

// Dispatcher keeps the table of active alerts and delivers them to its
// notifiers: each notifier has its own goroutine and a bounded queue, and
// gets only the alerts of at least its minimum severity (Router). A
// firing alert is sent when it starts or changes (severity, summary,
// details), again every RepeatInterval (per notifier: see Repeater) while
// it fires, and once when it is resolved. A failed send is retried with exponential backoff, with
// whatever was queued meanwhile. Fire and Resolve never block: when a
// queue is full, the oldest entries of keys that have a newer entry are
// dropped first, then the oldest entries, and the drops are counted.
type Dispatcher struct {
	cfg     DispatcherConfig
	workers []*worker

	mu     sync.Mutex
	active map[string]*activeAlert
	wake   chan struct{} // a new key fires: the repeat loop recomputes
	ran    bool
}

type activeAlert struct {
	alert Alert
	// lastSent is, per worker (by index in Dispatcher.workers), when the
	// alert was last queued to it (start, change or repeat).
	lastSent []time.Time
}

// newActive returns the entry of a, queued to every worker at now.
func (d *Dispatcher) newActive(a Alert, now time.Time) *activeAlert {
	e := &activeAlert{alert: a, lastSent: make([]time.Time, len(d.workers))}
	for i := range e.lastSent {
		e.lastSent[i] = now
	}
	return e
}

// NewDispatcher returns a Dispatcher for cfg (zero fields take their
// defaults); Run delivers what Fire and Resolve queue.
func NewDispatcher(cfg DispatcherConfig) (*Dispatcher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	d := &Dispatcher{cfg: cfg, active: map[string]*activeAlert{}, wake: make(chan struct{}, 1)}
	for _, n := range cfg.Notifiers {
		min := DefaultMinSeverity
		if r, ok := n.(Router); ok {
			min = r.MinSeverity()
		}
		repeat := cfg.RepeatInterval
		if r, ok := n.(Repeater); ok && r.RepeatInterval() > 0 && r.RepeatInterval() < repeat {
			repeat = r.RepeatInterval()
		}
		d.workers = append(d.workers, &worker{d: d, n: n, name: n.Name(), min: min, repeat: repeat, signal: make(chan struct{}, 1)})
	}
	return d, nil
}

// Notifiers returns the names of the notifiers, in configuration order.
func (d *Dispatcher) Notifiers() []string {
	out := make([]string, len(d.workers))
	for i, w := range d.workers {
		out[i] = w.name
	}
	return out
}

// Run delivers alerts until ctx is done, then returns once its goroutines
// have stopped (what is still queued is not sent). Call it once.
func (d *Dispatcher) Run(ctx context.Context) error {
	d.mu.Lock()
	if d.ran {
		d.mu.Unlock()
		return errors.New("alert: Dispatcher.Run called twice")
	}
	d.ran = true
	d.mu.Unlock()
	var wg sync.WaitGroup
	for _, w := range d.workers {
		wg.Add(1)
		go func() { defer wg.Done(); w.run(ctx) }()
	}
	d.repeatLoop(ctx)
	wg.Wait()
	return nil
}

// Fire records a firing alert and queues it for the notifiers if it is
// new or changed. A zero StartsAt is set to now (or kept from the alert
// already firing under the key); EndsAt is ignored. An alert without a
// Key is ignored. Fire never blocks.
func (d *Dispatcher) Fire(a Alert) {
	if a.Key == "" {
		d.cfg.Logger.Warn("alert without a key ignored", zap.String("name", a.Name))
		return
	}
	now := d.cfg.Clock.Now()
	a.EndsAt = time.Time{}
	a.Details = cloneDetails(a.Details)
	d.mu.Lock()
	defer d.mu.Unlock()
	prev, ok := d.active[a.Key]
	if a.StartsAt.IsZero() {
		if ok {
			a.StartsAt = prev.alert.StartsAt
		} else {
			a.StartsAt = now
		}
	}
	if ok && !changed(prev.alert, a) {
		return
	}
	d.active[a.Key] = d.newActive(a, now)
	d.queue(a)
	if !ok {
		select {
		case d.wake <- struct{}{}:
		default:
		}
	}
}

// Resolve ends the alert firing under key (at; a zero at is now) and
// queues its resolution for the notifiers. An unknown key is ignored.
// Resolve never blocks.
func (d *Dispatcher) Resolve(key string, at time.Time) {
	if at.IsZero() {
		at = d.cfg.Clock.Now()
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	prev, ok := d.active[key]
	if !ok {
		return
	}
	delete(d.active, key)
	a := prev.alert
	a.EndsAt = at
	d.queue(a)
}

// Forget stops tracking the alert firing under key without sending its
// resolution: it is no longer repeated nor listed by Active, and a later
// Fire of the key is new. A server that loses leadership forgets the
// cluster's alerts, which the next leader adopts and resolves. An unknown
// key is ignored; what is already queued is still sent.
func (d *Dispatcher) Forget(key string) {
	d.mu.Lock()
	delete(d.active, key)
	d.mu.Unlock()
}

// Active returns the firing alerts, by key.
func (d *Dispatcher) Active() []Alert {
	d.mu.Lock()
	out := make([]Alert, 0, len(d.active))
	for _, e := range d.active {
		a := e.alert
		a.Details = cloneDetails(a.Details)
		out = append(out, a)
	}
	d.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out
}

// TestResult is one notifier's answer to Test.
type TestResult struct {
	// Notifier is the notifier's Name.
	Notifier string
	// Err is Notify's error; nil means delivered.
	Err error
}

// Test sends a to every notifier at once, whatever its severity and the
// notifiers' routing, bypassing the queues, and returns each notifier's
// result in configuration order once all have answered or ctx is done.
// It does not record a as active.
func (d *Dispatcher) Test(ctx context.Context, a Alert) []TestResult {
	out := make([]TestResult, len(d.workers))
	var wg sync.WaitGroup
	for i, w := range d.workers {
		out[i].Notifier = w.name
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := w.n.Notify(ctx, []Alert{a})
			if err == nil && ctx.Err() != nil {
				err = ctx.Err()
			}
			out[i].Err = err
		}()
	}
	wg.Wait()
	return out
}

// queue puts a on the queue of every notifier it is routed to. d.mu is
// held.
func (d *Dispatcher) queue(a Alert) {
	for _, w := range d.workers {
		if routed(w.min, a.Severity) {
			w.push(a)
		}
	}
}

// repeatLoop queues firing alerts again to each notifier that has not
// been sent them for its repeat interval, until ctx is done.
func (d *Dispatcher) repeatLoop(ctx context.Context) {
	var timer <-chan time.Time
	var timerAt time.Time
	for {
		next := d.repeatDue(d.cfg.Clock.Now())
		if next.IsZero() {
			timer, timerAt = nil, time.Time{}
		} else if timer == nil || !next.Equal(timerAt) {
			timer, timerAt = d.cfg.Clock.After(next.Sub(d.cfg.Clock.Now())), next
		}
		select {
		case <-ctx.Done():
			return
		case <-d.wake:
		case <-timer:
			timer = nil
		}
	}
}

// repeatDue queues each firing alert to each notifier it is routed to
// whose repeat is due at now, and returns when the next repeat is due
// (zero: none).
func (d *Dispatcher) repeatDue(now time.Time) time.Time {
	d.mu.Lock()
	defer d.mu.Unlock()
	var next time.Time
	for _, e := range d.active {
		for i, w := range d.workers {
			if !routed(w.min, e.alert.Severity) {
				continue
			}
			due := e.lastSent[i].Add(w.repeat)
			if !due.After(now) {
				e.lastSent[i] = now
				w.push(e.alert)
				due = now.Add(w.repeat)
			}
			if next.IsZero() || due.Before(next) {
				next = due
			}
		}
	}
	return next
}

// worker delivers one notifier's queue.
type worker struct {
	d      *Dispatcher
	n      Notifier
	name   string
	min    Severity
	repeat time.Duration // min(cfg.RepeatInterval, the Repeater's)
	signal chan struct{}

	mu sync.Mutex
	q  []Alert
}

func (w *worker) push(a ...Alert) {
	w.mu.Lock()
	var dropped int
	w.q, dropped = enqueue(w.q, w.d.cfg.QueueSize, a...)
	n := len(w.q)
	w.mu.Unlock()
	if dropped > 0 {
		w.d.cfg.Meter.Dropped(w.name, dropped)
		w.d.cfg.Logger.Warn("alert queue full: alerts dropped", zap.String("notifier", w.name), zap.Int("dropped", dropped))
	}
	w.d.cfg.Meter.Queued(w.name, n)
	select {
	case w.signal <- struct{}{}:
	default:
	}
}

// requeue puts a failed batch back in front of what was queued since.
func (w *worker) requeue(batch []Alert) {
	w.mu.Lock()
	var dropped int
	w.q, dropped = enqueue(append(batch[:len(batch):len(batch)], w.q...), w.d.cfg.QueueSize)
	n := len(w.q)
	w.mu.Unlock()
	if dropped > 0 {
		w.d.cfg.Meter.Dropped(w.name, dropped)
	}
	w.d.cfg.Meter.Queued(w.name, n)
}

func (w *worker) take() []Alert {
	w.mu.Lock()
	batch := w.q
	w.q = nil
	w.mu.Unlock()
	if len(batch) > 0 {
		w.d.cfg.Meter.Queued(w.name, 0)
	}
	return latestByKey(batch)
}

func (w *worker) run(ctx context.Context) {
	cfg := w.d.cfg
	attempt := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.signal:
		}
		for {
			batch := w.take()
			if len(batch) == 0 {
				break
			}
			sctx, cancel := context.WithTimeout(ctx, cfg.SendTimeout)
			err := w.n.Notify(sctx, batch)
			cancel()
			if err == nil {
				cfg.Meter.Sent(w.name, len(batch))
				attempt = 0
				continue
			}
			w.requeue(batch)
			if ctx.Err() != nil {
				return
			}
			cfg.Meter.Failed(w.name)
			wait := backoff(cfg.RetryMin, cfg.RetryMax, attempt)
			attempt++
			cfg.Logger.Warn("sending alerts failed; retrying", zap.String("notifier", w.name), zap.Int("alerts", len(batch)), zap.Duration("retry_in", wait), zap.Error(err))
			select {
			case <-ctx.Done():
				return
			case <-cfg.Clock.After(wait):
			}
		}
	}
}

func cloneDetails(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func (w *worker) queueLen() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.q)
}
