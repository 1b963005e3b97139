package svidfiles

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/zap"

	"github.com/sigil-id/sigil/clock"
)

// DefaultRetryInterval is Config.RetryInterval when zero.
const DefaultRetryInterval = 5 * time.Second

// Update is what a Source delivers on each X.509 change: every SVID the
// caller is entitled to (the first is the default one) and the X.509
// authorities of every trust domain it may trust, its own included.
type Update struct {
	SVIDs   []*x509svid.SVID
	Bundles map[spiffeid.TrustDomain][]*x509.Certificate
}

// Source supplies SVIDs: the Workload API for `sigil svid watch`, the
// agent's cache for its svid_files blocks.
type Source interface {
	// WatchX509 calls update with the first Update and then with each
	// change, until ctx is done (it then returns ctx's error) or it fails
	// for good. It retries passing failures itself. update does not block
	// for long and must not be called concurrently.
	WatchX509(ctx context.Context, update func(*Update)) error
	// FetchJWT returns a JWT-SVID of id for audience, and its expiry.
	FetchJWT(ctx context.Context, id spiffeid.ID, audience string) (token string, expiresAt time.Time, err error)
}

// Config configures Run.
type Config struct {
	// Writer is where the files go. Required.
	Writer *Writer
	// SPIFFEID chooses the SVID to write when the source delivers several;
	// zero takes the first (the Workload API's default SVID).
	SPIFFEID spiffeid.ID
	// JWTAudiences are the audiences of the JWT-SVIDs kept in
	// jwt_<audience>.token, each refreshed at half its remaining lifetime.
	JWTAudiences []string
	// Notifier is told of each rotation once its files are in place; nil
	// tells nobody.
	Notifier Notifier
	// Logger logs rotations and failures; nil discards them.
	Logger *zap.Logger
	// Clock times JWT refreshes and retries; nil is the wall clock.
	Clock clock.Clock
	// RetryInterval is the wait before retrying a failed write or JWT
	// fetch; DefaultRetryInterval when zero.
	RetryInterval time.Duration
}

// Validate reports the first problem with the configuration.
func (c *Config) Validate() error {
	if c.Writer == nil {
		return errors.New("svidfiles: no writer")
	}
	if c.RetryInterval < 0 {
		return fmt.Errorf("svidfiles: retry interval %v is negative", c.RetryInterval)
	}
	return CheckAudiences(c.JWTAudiences)
}

// Run keeps the files of cfg current from src until ctx is done, then
// stops the notifier and returns nil. On each X.509 update it writes the
// chosen SVID and the bundles (WriteX509), and, the first time and
// whenever the SVID's SPIFFE ID changes, fetches every JWT-SVID; then it
// calls the notifier (the first call starts an -exec consumer). JWT-SVIDs
// refreshed on their own schedule are written without notifying:
// consumers read token files when they use them. Run returns an error when
// src fails for good, the notifier fails, or a supervised consumer exits
// on its own (an *ExitError).
func Run(ctx context.Context, cfg Config, src Source) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	r := &runner{cfg: cfg, src: src, log: cfg.Logger, clk: cfg.Clock, jwtDue: map[string]time.Time{}}
	if r.log == nil {
		r.log = zap.NewNop()
	}
	if r.clk == nil {
		r.clk = clock.New()
	}
	if r.cfg.RetryInterval == 0 {
		r.cfg.RetryInterval = DefaultRetryInterval
	}
	if cfg.Notifier != nil {
		defer cfg.Notifier.Stop()
	}
	return r.run(ctx)
}

type runner struct {
	cfg Config
	src Source
	log *zap.Logger
	clk clock.Clock

	id      spiffeid.ID          // SPIFFE ID of the SVID on disk
	jwtDue  map[string]time.Time // audience -> next refresh
	started bool                 // the notifier has been told once
}

func (r *runner) run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()

	var (
		mu     sync.Mutex
		latest *Update
	)
	kick := make(chan struct{}, 1)
	watchErr := make(chan error, 1)
	wg.Go(func() {
		err := r.src.WatchX509(ctx, func(u *Update) {
			mu.Lock()
			latest = u
			mu.Unlock()
			select {
			case kick <- struct{}{}:
			default:
			}
		})
		if ctx.Err() == nil {
			if err == nil {
				err = errors.New("svidfiles: the SVID source stopped")
			}
			watchErr <- err
		}
	})

	var exited <-chan error
	if r.cfg.Notifier != nil {
		exited = r.cfg.Notifier.Exited()
	}
	var retry <-chan time.Time
	for {
		var jwtTimer <-chan time.Time
		if d, ok := r.nextJWT(); ok && r.started {
			jwtTimer = r.clk.After(d)
		}
		select {
		case <-ctx.Done():
			return nil
		case err := <-watchErr:
			return err
		case err := <-exited:
			return err
		case <-kick:
		case <-retry:
		case <-jwtTimer:
			r.refreshJWTs(ctx, false)
			continue
		}
		retry = nil
		mu.Lock()
		u := latest
		latest = nil
		mu.Unlock()
		if u == nil {
			continue
		}
		if err := r.rotate(ctx, u); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var fatal *fatalError
			if errors.As(err, &fatal) {
				return fatal.err
			}
			r.log.Error("cannot write the SVID files; retrying", zap.String("dir", r.cfg.Writer.Dir()), zap.Error(err))
			mu.Lock()
			if latest == nil {
				latest = u
			}
			mu.Unlock()
			retry = r.clk.After(r.cfg.RetryInterval)
		}
	}
}

type fatalError struct{ err error }

func (e *fatalError) Error() string { return e.err.Error() }

// rotate writes u and tells the notifier.
func (r *runner) rotate(ctx context.Context, u *Update) error {
	svid, err := r.pick(u)
	if err != nil {
		return err
	}
	m := &Material{SVID: svid, Bundle: u.Bundles[svid.ID.TrustDomain()]}
	for td, certs := range u.Bundles {
		if td != svid.ID.TrustDomain() {
			if m.Federated == nil {
				m.Federated = map[spiffeid.TrustDomain][]*x509.Certificate{}
			}
			m.Federated[td] = certs
		}
	}
	if err := r.cfg.Writer.WriteX509(m); err != nil {
		return err
	}
	leaf := svid.Certificates[0]
	r.log.Info("SVID files written", zap.String("dir", r.cfg.Writer.Dir()), zap.Stringer("spiffe_id", svid.ID),
		zap.String("serial", leaf.SerialNumber.Text(16)), zap.Time("expires", leaf.NotAfter))
	if svid.ID != r.id || !r.started {
		r.id = svid.ID
		clear(r.jwtDue)
		// The first write waits for every token, so that a consumer
		// started now finds them; later ones only schedule retries.
		if !r.refreshJWTs(ctx, !r.started) {
			return ctx.Err()
		}
	}
	if r.cfg.Notifier != nil {
		if err := r.cfg.Notifier.Rotated(ctx); err != nil {
			return &fatalError{err}
		}
	}
	r.started = true
	return nil
}

func (r *runner) pick(u *Update) (*x509svid.SVID, error) {
	if len(u.SVIDs) == 0 {
		return nil, errors.New("svidfiles: no X.509-SVID was delivered")
	}
	if r.cfg.SPIFFEID.IsZero() {
		return u.SVIDs[0], nil
	}
	for _, s := range u.SVIDs {
		if s.ID == r.cfg.SPIFFEID {
			return s, nil
		}
	}
	return nil, fmt.Errorf("svidfiles: no X.509-SVID for %s was delivered (%d others were)", r.cfg.SPIFFEID, len(u.SVIDs))
}

// refreshJWTs fetches the tokens that are due (all when the SPIFFE ID
// changed, since their dues were reset). With wait it retries until every
// one is written and returns false only when ctx ends.
func (r *runner) refreshJWTs(ctx context.Context, wait bool) bool {
	now := r.clk.Now()
	for _, aud := range r.cfg.JWTAudiences {
		if due, ok := r.jwtDue[aud]; ok && due.After(now) {
			continue
		}
		for {
			next, err := r.fetchJWT(ctx, aud)
			if err == nil {
				r.jwtDue[aud] = next
				break
			}
			if ctx.Err() != nil {
				return false
			}
			r.log.Warn("cannot refresh a JWT-SVID; retrying", zap.String("audience", aud), zap.Error(err))
			if !wait {
				r.jwtDue[aud] = r.clk.Now().Add(r.cfg.RetryInterval)
				break
			}
			select {
			case <-ctx.Done():
				return false
			case <-r.clk.After(r.cfg.RetryInterval):
			}
		}
	}
	return true
}

func (r *runner) fetchJWT(ctx context.Context, aud string) (time.Time, error) {
	token, exp, err := r.src.FetchJWT(ctx, r.id, aud)
	if err != nil {
		return time.Time{}, err
	}
	if err := r.cfg.Writer.WriteJWT(aud, token); err != nil {
		return time.Time{}, err
	}
	now := r.clk.Now()
	next := now.Add(exp.Sub(now) / 2)
	if min := now.Add(time.Second); next.Before(min) {
		next = min
	}
	r.log.Info("JWT-SVID file written", zap.String("audience", aud), zap.String("file", JWTFileName(aud)), zap.Time("expires", exp))
	return next, nil
}

// nextJWT is how long until the earliest token refresh.
func (r *runner) nextJWT() (time.Duration, bool) {
	var first time.Time
	for _, due := range r.jwtDue {
		if first.IsZero() || due.Before(first) {
			first = due
		}
	}
	if first.IsZero() {
		return 0, false
	}
	d := first.Sub(r.clk.Now())
	if d < 0 {
		d = 0
	}
	return d, true
}
