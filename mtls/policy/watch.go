package policy

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/sigil-id/sigil/clock"
)

// Interval bounds of the file watcher.
const (
	DefaultWatchInterval = time.Second
	MinWatchInterval     = 10 * time.Millisecond
	MaxWatchInterval     = time.Minute
)

// WatchOption configures Watch.
type WatchOption interface {
	applyWatch(*watchConfig)
}

type watchOptionFunc func(*watchConfig)

func (f watchOptionFunc) applyWatch(c *watchConfig) { f(c) }

type watchConfig struct {
	interval   time.Duration
	clock      clock.Clock
	log        *zap.Logger
	onReload   []func(*Policy, error)
	registerer prometheus.Registerer
}

// WithInterval sets how often the file is checked for changes (default
// 1s, bounded to 10ms..1m).
func WithInterval(d time.Duration) WatchOption {
	return watchOptionFunc(func(c *watchConfig) { c.interval = d })
}

// WithWatchClock sets the clock that paces the checks (tests).
func WithWatchClock(clk clock.Clock) WatchOption {
	return watchOptionFunc(func(c *watchConfig) { c.clock = clk })
}

// WithWatchLogger logs reloads and rejected edits.
func WithWatchLogger(l *zap.Logger) WatchOption {
	return watchOptionFunc(func(c *watchConfig) { c.log = l })
}

// WithOnReload calls fn after each reload attempt that found a change:
// with the new policy, or with nil and the reason the edit was rejected.
func WithOnReload(fn func(p *Policy, err error)) WatchOption {
	return watchOptionFunc(func(c *watchConfig) { c.onReload = append(c.onReload, fn) })
}

// WithWatchRegisterer registers the watcher's metrics
// (sigil_mtls_policy_reloads_total, sigil_mtls_policy_rules,
// sigil_mtls_policy_reload_failing) on reg.
func WithWatchRegisterer(reg prometheus.Registerer) WatchOption {
	return watchOptionFunc(func(c *watchConfig) { c.registerer = reg })
}

// Watcher holds the policy loaded from a file and reloads it when the file
// changes. A file that fails to parse or compile is rejected, with the
// error reported through Err, the logger and the reload callbacks, and the
// last good policy stays in force.
type Watcher struct {
	path string
	cfg  watchConfig
	cur  atomic.Pointer[Policy]

	mu      sync.Mutex // serializes reloads
	stamp   fileStamp
	lastErr error
	badSum  [32]byte // digest of the last rejected content

	reloads *prometheus.CounterVec
	rules   prometheus.Gauge
	failing prometheus.Gauge

	stop     chan struct{}
	done     chan struct{}
	stopOnce sync.Once
}

type fileStamp struct {
	mod  time.Time
	size int64
	ino  uint64
}

// Watch loads the policy at path (which must be valid) and starts
// watching it. Close stops the watcher.
func Watch(path string, opts ...WatchOption) (*Watcher, error) {
	cfg := watchConfig{interval: DefaultWatchInterval, clock: clock.New(), log: zap.NewNop()}
	for _, o := range opts {
		o.applyWatch(&cfg)
	}
	cfg.interval = min(max(cfg.interval, MinWatchInterval), MaxWatchInterval)
	w := &Watcher{path: path, cfg: cfg, stop: make(chan struct{}), done: make(chan struct{})}
	if cfg.registerer != nil {
		w.reloads = registerCounterVec(cfg.registerer, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sigil_mtls_policy_reloads_total",
			Help: "Policy file reloads, by result (ok, error).",
		}, []string{"result"}))
		w.rules = registerGauge(cfg.registerer, prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sigil_mtls_policy_rules",
			Help: "Rules in the policy in force.",
		}))
		w.failing = registerGauge(cfg.registerer, prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sigil_mtls_policy_reload_failing",
			Help: "1 while the policy file on disk is rejected and an older policy stays in force.",
		}))
	}
	st, err := stat(path)
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	p, err := Load(path)
	if err != nil {
		return nil, err
	}
	w.stamp = st
	w.set(p)
	go w.loop()
	return w, nil
}

func stat(path string) (fileStamp, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}, err
	}
	return fileStamp{mod: fi.ModTime(), size: fi.Size(), ino: inode(fi)}, nil
}

func (w *Watcher) set(p *Policy) {
	w.cur.Store(p)
	if w.rules != nil {
		w.rules.Set(float64(p.Len()))
	}
}

// Policy returns the policy in force.
func (w *Watcher) Policy() *Policy { return w.cur.Load() }

// Path is the watched file.
func (w *Watcher) Path() string { return w.path }

// Err returns why the file on disk was last rejected, or nil if the policy
// in force is the file's current content.
func (w *Watcher) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.lastErr
}

// Reload reads the file now. It returns nil if the file is unchanged or
// was loaded, and the error if it was rejected (the previous policy stays).
func (w *Watcher) Reload() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	st, err := stat(w.path)
	if err == nil {
		w.stamp = st
	}
	src, rerr := os.ReadFile(w.path)
	if err == nil {
		err = rerr
	}
	if err != nil {
		err = fmt.Errorf("policy: %w (keeping the policy loaded earlier)", err)
		return w.reject(err, [32]byte{})
	}
	sum := sha256.Sum256(src)
	if sum == w.Policy().Digest() {
		w.lastErr = nil
		if w.failing != nil {
			w.failing.Set(0)
		}
		return nil
	}
	if w.lastErr != nil && sum == w.badSum {
		return w.lastErr // same bad content: already reported
	}
	p, err := Parse(src, w.path)
	if err != nil {
		return w.reject(err, sum)
	}
	old := w.Policy()
	w.set(p)
	w.lastErr = nil
	if w.reloads != nil {
		w.reloads.WithLabelValues("ok").Inc()
		w.failing.Set(0)
	}
	w.cfg.log.Info("policy reloaded", zap.String("path", w.path), zap.Int("rules", p.Len()),
		zap.Int("previous_rules", old.Len()), zap.String("mode", p.Mode().String()))
	for _, fn := range w.cfg.onReload {
		fn(p, nil)
	}
	return nil
}

func (w *Watcher) reject(err error, sum [32]byte) error {
	w.lastErr = err
	w.badSum = sum
	if w.reloads != nil {
		w.reloads.WithLabelValues("error").Inc()
		w.failing.Set(1)
	}
	w.cfg.log.Error("policy edit rejected; the previous policy stays in force",
		zap.String("path", w.path), zap.Error(err), zap.Int("rules_in_force", w.Policy().Len()))
	for _, fn := range w.cfg.onReload {
		fn(nil, err)
	}
	return err
}

func (w *Watcher) loop() {
	defer close(w.done)
	for {
		select {
		case <-w.stop:
			return
		case <-w.cfg.clock.After(w.cfg.interval):
		}
		st, err := stat(w.path)
		w.mu.Lock()
		changed := err != nil || st != w.stamp
		// Coarse file system timestamps can hide a second write within
		// the same tick: recheck content while the file is fresh.
		if !changed && time.Since(st.mod) < 2*time.Second {
			changed = true
		}
		w.mu.Unlock()
		if changed {
			_ = w.Reload()
		}
	}
}

// Close stops watching. The last policy stays readable.
func (w *Watcher) Close() error {
	w.stopOnce.Do(func() { close(w.stop) })
	<-w.done
	return nil
}

func registerCounterVec(reg prometheus.Registerer, c *prometheus.CounterVec) *prometheus.CounterVec {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if old, ok := are.ExistingCollector.(*prometheus.CounterVec); ok {
				return old
			}
		}
	}
	return c
}

func registerGauge(reg prometheus.Registerer, g prometheus.Gauge) prometheus.Gauge {
	if err := reg.Register(g); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if old, ok := are.ExistingCollector.(prometheus.Gauge); ok {
				return old
			}
		}
	}
	return g
}
