package federation

import (
	"context"
	"errors"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"go.uber.org/zap"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/clock"
)

// NextRefresh is how long after a fetch the next one is due: the refresh
// hint clamped to [min, max] after a success (hint 0: max(min, 5m)
// clamped), and after failures an exponential backoff from min that
// never exceeds the hint-derived interval. min <= 0 means
// DefaultMinRefresh, max <= 0 DefaultMaxRefresh, and max below min is
// raised to min.
func NextRefresh(hint, min, max time.Duration, failures int) time.Duration {
	if min <= 0 {
		min = DefaultMinRefresh
	}
	if max <= 0 {
		max = DefaultMaxRefresh
	}
	if max < min {
		max = min
	}
	base := hint
	if base <= 0 {
		base = DefaultRefreshHint
		if base < min {
			base = min
		}
	}
	base = clampDuration(base, min, max)
	if failures <= 0 {
		return base
	}
	d := min
	for i := 1; i < failures && d < base; i++ {
		d *= 2
	}
	if d > base {
		d = base
	}
	return d
}

func clampDuration(d, lo, hi time.Duration) time.Duration {
	if d < lo {
		return lo
	}
	if d > hi {
		return hi
	}
	return d
}

// Store is what the Refresher reads and writes. The server implements it
// on the replicated store.
type Store interface {
	// Federation returns the relationships, the federated bundles and the
	// statuses (both keyed by trust domain name), and a channel closed
	// when any of them changes.
	Federation() (rels []*sigilv1.FederationRelationship, bundles map[string]*sigilv1.Bundle, statuses map[string]*sigilv1.FederationStatus, changed <-chan struct{})
	// SetBundle writes a fetched bundle with its status (one command,
	// SetFederatedBundle with refresh set).
	SetBundle(ctx context.Context, b *sigilv1.Bundle, st *sigilv1.FederationStatus) error
	// SetStatus writes a status (PutFederationStatus).
	SetStatus(ctx context.Context, st *sigilv1.FederationStatus) error
}

// Meter observes refreshes; the zero Refresher uses a no-op.
type Meter interface {
	// Refreshed counts one fetch of td's bundle; outcome is "changed",
	// "unchanged" or "error".
	Refreshed(td string, outcome string)
	// BundleAge sets how long ago td's bundle was last fetched
	// successfully (or -1 when never).
	BundleAge(td string, age time.Duration)
}

// RefresherConfig configures a Refresher.
type RefresherConfig struct {
	Store Store
	// Fetch fetches one relationship's bundle; default: Fetch with
	// FetchConfig.
	Fetch       func(ctx context.Context, rel *sigilv1.FederationRelationship, cur *sigilv1.Bundle) (*sigilv1.Bundle, error)
	FetchConfig FetchConfig
	// MinRefresh and MaxRefresh bound a foreign refresh hint (defaults
	// DefaultMinRefresh, DefaultMaxRefresh).
	MinRefresh, MaxRefresh time.Duration
	Meter                  Meter
	Logger                 *zap.Logger
	Clock                  clock.Clock
}

// Bounds of the Refresher's work.
const (
	// maxConcurrentFetches bounds the fetches in flight at once.
	maxConcurrentFetches = 8
	// storeWriteTimeout bounds one write to the store.
	storeWriteTimeout = 10 * time.Second
)

// Refresher keeps the federated bundles of every relationship current.
// Exactly one server runs it at a time (the leader).
type Refresher struct {
	store        Store
	fetch        func(ctx context.Context, rel *sigilv1.FederationRelationship, cur *sigilv1.Bundle) (*sigilv1.Bundle, error)
	fetchTimeout time.Duration
	min, max     time.Duration
	meter        Meter
	log          *zap.Logger
	clock        clock.Clock

	running atomic.Bool
}

// NewRefresher checks cfg and returns a Refresher.
func NewRefresher(cfg RefresherConfig) (*Refresher, error) {
	if cfg.Store == nil {
		return nil, errors.New("federation: refresher: Store is required")
	}
	if cfg.MinRefresh < 0 || cfg.MaxRefresh < 0 || cfg.FetchConfig.Timeout < 0 || cfg.FetchConfig.MaxSize < 0 {
		return nil, errors.New("federation: refresher: negative refresh bound, timeout or size")
	}
	if cfg.MinRefresh == 0 {
		cfg.MinRefresh = DefaultMinRefresh
	}
	if cfg.MaxRefresh == 0 {
		cfg.MaxRefresh = DefaultMaxRefresh
	}
	if cfg.MaxRefresh < cfg.MinRefresh {
		return nil, fmt.Errorf("federation: refresher: max refresh %v is below min refresh %v", cfg.MaxRefresh, cfg.MinRefresh)
	}
	if cfg.FetchConfig.Timeout == 0 {
		cfg.FetchConfig.Timeout = DefaultFetchTimeout
	}
	r := &Refresher{
		store:        cfg.Store,
		fetch:        cfg.Fetch,
		fetchTimeout: cfg.FetchConfig.Timeout,
		min:          cfg.MinRefresh,
		max:          cfg.MaxRefresh,
		meter:        cfg.Meter,
		log:          cfg.Logger,
		clock:        cfg.Clock,
	}
	if r.fetch == nil {
		fc := cfg.FetchConfig
		r.fetch = func(ctx context.Context, rel *sigilv1.FederationRelationship, cur *sigilv1.Bundle) (*sigilv1.Bundle, error) {
			return Fetch(ctx, rel, cur, fc)
		}
	}
	if r.meter == nil {
		r.meter = nopMeter{}
	}
	if r.log == nil {
		r.log = zap.NewNop()
	}
	if r.clock == nil {
		r.clock = clock.New()
	}
	return r, nil
}

type nopMeter struct{}

func (nopMeter) Refreshed(string, string)        {}
func (nopMeter) BundleAge(string, time.Duration) {}

// relState is the Refresher's view of one relationship.
type relState struct {
	gen    uint64 // tells a re-created relationship's state apart
	rel    *sigilv1.FederationRelationship
	bundle *sigilv1.Bundle           // stored, as last read
	status *sigilv1.FederationStatus // stored, as last read

	due       time.Time // of the next fetch
	inFlight  bool
	again     bool // fetch again as soon as the fetch in flight ends
	hadBundle bool

	failures    int
	lastErr     string    // of the last attempt; "" after a success
	lastSuccess time.Time // zero when never (as far as known)
	pendingReq  uint64    // a refresh_requests count to answer
	handledReq  uint64    // the last refresh_requests count answered
	requestedAt int64     // refresh_requested_at of pendingReq
}

// job is one attempt: what the fetch and the write decision need.
type job struct {
	td          string
	gen         uint64
	rel         *sigilv1.FederationRelationship
	cur         *sigilv1.Bundle
	status      *sigilv1.FederationStatus
	failures    int
	lastErr     string
	lastSuccess time.Time
	requested   uint64 // the refresh_requests count this attempt answers (0: none)
	requestedAt int64
	start       time.Time
}

// result is what an attempt changes in the relationship's state.
type result struct {
	td          string
	gen         uint64
	failures    int
	lastErr     string
	lastSuccess time.Time
	next        time.Time
}

// Run refreshes until ctx is done: each relationship at its own schedule
// (NextRefresh), at once for a new or changed relationship, a
// relationship without a bundle, or one whose status has
// refresh_requested_at after last_attempt_at. A relationship whose
// stored status plans its next fetch (a previous leader's schedule) and
// that did not change since keeps that schedule. A fetch that fails
// keeps the last good bundle and records the error; a fetched bundle is
// written only when it differs (Equal) from the stored one, and a status
// only when the error changes or appears or clears, on request, or once
// StatusHeartbeat has passed since the one stored. At most 8 fetches run
// at once, each bounded by the fetch timeout. Run returns nil once ctx is
// done and every fetch it started has ended.
func (r *Refresher) Run(ctx context.Context) error {
	if !r.running.CompareAndSwap(false, true) {
		return errors.New("federation: refresher: Run is already running")
	}
	defer r.running.Store(false)
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()

	results := make(chan result, maxConcurrentFetches)
	states := make(map[string]*relState)
	var gen uint64
	inFlight := 0
	for {
		rels, bundles, statuses, changed := r.store.Federation()
		now := r.clock.Now()
		r.reconcile(states, &gen, rels, bundles, statuses, now)

		// Start what is due, most overdue first.
		var due []*relState
		var next time.Time
		for _, st := range states {
			switch {
			case st.inFlight:
			case !st.due.After(now):
				due = append(due, st)
			case next.IsZero() || st.due.Before(next):
				next = st.due
			}
		}
		slices.SortFunc(due, func(a, b *relState) int { return a.due.Compare(b.due) })
		for _, st := range due {
			if inFlight == maxConcurrentFetches {
				break
			}
			j := r.startJob(st, now)
			inFlight++
			wg.Add(1)
			go func() {
				defer wg.Done()
				results <- r.attempt(ctx, j)
			}()
		}
		var timer <-chan time.Time
		if !next.IsZero() && inFlight < maxConcurrentFetches {
			timer = r.clock.After(next.Sub(now))
		}

		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-timer:
		case res := <-results:
			inFlight--
			r.apply(states, res, r.clock.Now())
		}
	}
}

// reconcile brings states up to date with the store's relationships.
func (r *Refresher) reconcile(states map[string]*relState, gen *uint64, rels []*sigilv1.FederationRelationship,
	bundles map[string]*sigilv1.Bundle, statuses map[string]*sigilv1.FederationStatus, now time.Time) {
	seen := make(map[string]bool, len(rels))
	for _, rel := range rels {
		td := rel.GetTrustDomain()
		seen[td] = true
		b, status := bundles[td], statuses[td]
		st := states[td]
		switch {
		case st == nil:
			*gen++
			st = &relState{gen: *gen, rel: rel, due: now, hadBundle: b != nil}
			if status != nil {
				st.failures = int(status.GetConsecutiveFailures())
				st.lastErr = status.GetLastError()
				if status.GetLastSuccessAt() > 0 {
					st.lastSuccess = time.Unix(status.GetLastSuccessAt(), 0)
				}
				// Keep the schedule of the server that refreshed before
				// (a previous leader) unless the relationship changed
				// after its last status.
				if b != nil && status.GetNextRefreshAt() > 0 && rel.GetModifyIndex() <= status.GetModifyIndex() {
					st.due = time.Unix(status.GetNextRefreshAt(), 0)
				}
			}
			states[td] = st
			r.log.Debug("federation relationship scheduled", zap.String("trust_domain", td), zap.Time("due", st.due))
		case !sameEndpoint(st.rel, rel):
			st.rel = rel
			st.failures = 0
			r.refreshNow(st, now)
		default:
			st.rel = rel // a rewrite that changes nothing fetched
		}
		switch {
		case b == nil && st.hadBundle:
			// The bundle was deleted: fetch it again.
			r.refreshNow(st, now)
		case b != nil && !st.hadBundle && st.lastErr != "":
			// A bundle set by hand while failing (an https_spiffe
			// relationship had none to authenticate with): retry now.
			r.refreshNow(st, now)
		}
		st.hadBundle = b != nil
		if req := status.GetRefreshRequests(); req > status.GetRefreshesDone() && req > st.handledReq {
			st.pendingReq, st.requestedAt = req, status.GetRefreshRequestedAt()
			r.refreshNow(st, now)
		}
		st.bundle, st.status = b, status
	}
	for td := range states {
		if !seen[td] {
			delete(states, td)
			r.log.Debug("federation relationship dropped", zap.String("trust_domain", td))
		}
	}
}

// sameEndpoint reports whether two versions of a relationship fetch the
// same way (store-set fields and from_config aside).
func sameEndpoint(a, b *sigilv1.FederationRelationship) bool {
	return a.GetTrustDomain() == b.GetTrustDomain() &&
		a.GetBundleEndpointUrl() == b.GetBundleEndpointUrl() &&
		a.GetProfile() == b.GetProfile() &&
		a.GetEndpointSpiffeId() == b.GetEndpointSpiffeId()
}

// refreshNow makes st due now, or right after the fetch in flight.
func (r *Refresher) refreshNow(st *relState, now time.Time) {
	if st.inFlight {
		st.again = true
		return
	}
	st.due = now
}

func (r *Refresher) startJob(st *relState, now time.Time) job {
	st.inFlight, st.again = true, false
	j := job{
		td:          st.rel.GetTrustDomain(),
		gen:         st.gen,
		rel:         st.rel,
		cur:         st.bundle,
		status:      st.status,
		failures:    st.failures,
		lastErr:     st.lastErr,
		lastSuccess: st.lastSuccess,
		start:       now,
	}
	if st.pendingReq > st.handledReq {
		j.requested, j.requestedAt = st.pendingReq, st.requestedAt
		st.handledReq = st.pendingReq
	}
	return j
}

// apply records an attempt's result in its relationship's state.
func (r *Refresher) apply(states map[string]*relState, res result, now time.Time) {
	st := states[res.td]
	if st == nil || st.gen != res.gen {
		return // deleted (and maybe re-created) meanwhile
	}
	st.inFlight = false
	st.failures, st.lastErr, st.lastSuccess, st.due = res.failures, res.lastErr, res.lastSuccess, res.next
	if st.again {
		st.again = false
		st.due = now
	}
}

// attempt fetches j's bundle and writes what changed.
func (r *Refresher) attempt(ctx context.Context, j job) result {
	log := r.log.With(zap.String("trust_domain", j.td), zap.String("url", j.rel.GetBundleEndpointUrl()))
	res := result{td: j.td, gen: j.gen, failures: j.failures, lastErr: j.lastErr, lastSuccess: j.lastSuccess}
	td, err := spiffeid.TrustDomainFromString(j.td)
	var b *sigilv1.Bundle
	if err == nil {
		fctx, cancel := context.WithTimeout(ctx, r.fetchTimeout)
		b, err = r.fetch(fctx, j.rel, j.cur)
		cancel()
	}
	if err == nil {
		// Fetch checks this; a Fetch given in the config may not.
		err = CheckUpdate(td, j.cur, b)
	}
	now := r.clock.Now()
	if ctx.Err() != nil {
		// Stopped (leadership lost): record nothing.
		res.next = now
		return res
	}
	attemptAt := max(j.start.Unix(), j.requestedAt)
	if err != nil {
		return r.failed(ctx, log, j, res, err, now, attemptAt)
	}

	res.failures, res.lastErr, res.lastSuccess = 0, "", now
	res.next = now.Add(NextRefresh(secondsToDuration(b.GetRefreshHint()), r.min, r.max, 0))
	status := &sigilv1.FederationStatus{
		TrustDomain:   j.td,
		LastSuccessAt: now.Unix(),
		LastAttemptAt: attemptAt,
		LastErrorAt:   j.status.GetLastErrorAt(),
		NextRefreshAt: res.next.Unix(),
		RefreshesDone: j.requested,
	}
	changed := j.cur == nil || !Equal(j.cur, b)
	wctx, cancel := context.WithTimeout(ctx, storeWriteTimeout)
	defer cancel()
	if changed {
		if err := r.store.SetBundle(wctx, b, status); err != nil {
			return r.failed(ctx, log, j, res, fmt.Errorf("federation: store the bundle of %q: %w", j.td, err), now, attemptAt)
		}
		log.Info("federated bundle updated", zap.Uint64("sequence", b.GetSequenceNumber()),
			zap.Int("x509_authorities", len(b.GetX509Authorities())), zap.Int("jwt_authorities", len(b.GetJwtAuthorities())))
	} else if j.requested > 0 || j.status == nil || j.status.GetLastError() != "" || j.status.GetConsecutiveFailures() != 0 ||
		now.Unix()-j.status.GetLastSuccessAt() >= int64(StatusHeartbeat/time.Second) {
		if err := r.store.SetStatus(wctx, status); err != nil && ctx.Err() == nil {
			log.Warn("cannot record the federation status", zap.Error(err))
		}
	}
	if j.lastErr != "" {
		log.Info("federated bundle refresh works again")
	}
	outcome := "unchanged"
	if changed {
		outcome = "changed"
	}
	r.meter.Refreshed(j.td, outcome)
	r.meter.BundleAge(j.td, 0)
	return res
}

// failed records a failed attempt: the status when the error is new
// (or on request or heartbeat), a log line when the error text changed,
// never a bundle.
func (r *Refresher) failed(ctx context.Context, log *zap.Logger, j job, res result, err error, now time.Time, attemptAt int64) result {
	text := errorText(err)
	res.failures = j.failures + 1
	res.lastErr = text
	res.lastSuccess = j.lastSuccess
	res.next = now.Add(NextRefresh(secondsToDuration(j.cur.GetRefreshHint()), r.min, r.max, res.failures))
	if text != j.lastErr {
		log.Warn("federated bundle refresh failed; keeping the last good bundle",
			zap.Error(err), zap.Time("next_attempt", res.next))
	}
	stored := j.status
	if j.requested > 0 || stored == nil || stored.GetLastError() != text ||
		now.Unix()-stored.GetLastAttemptAt() >= int64(StatusHeartbeat/time.Second) {
		status := &sigilv1.FederationStatus{
			TrustDomain:         j.td,
			LastSuccessAt:       stored.GetLastSuccessAt(),
			LastAttemptAt:       attemptAt,
			LastError:           text,
			LastErrorAt:         now.Unix(),
			NextRefreshAt:       res.next.Unix(),
			ConsecutiveFailures: uint32(min(res.failures, math.MaxUint32)),
			RefreshesDone:       j.requested,
		}
		if !j.lastSuccess.IsZero() {
			status.LastSuccessAt = max(status.LastSuccessAt, j.lastSuccess.Unix())
		}
		wctx, cancel := context.WithTimeout(ctx, storeWriteTimeout)
		defer cancel()
		if werr := r.store.SetStatus(wctx, status); werr != nil && ctx.Err() == nil && text != j.lastErr {
			log.Warn("cannot record the federation status", zap.Error(werr))
		}
	}
	r.meter.Refreshed(j.td, "error")
	if j.lastSuccess.IsZero() {
		r.meter.BundleAge(j.td, -1)
	} else {
		r.meter.BundleAge(j.td, now.Sub(j.lastSuccess))
	}
	return res
}

// localAddr matches the local end of a connection in a net.OpError's text
// ("read tcp 10.0.0.1:53124->10.0.0.2:8443: …"): its port changes with
// every attempt, and an error that only differs there is the same error.
var localAddr = regexp.MustCompile(`\b(tcp|tcp4|tcp6) \S+->`)

// maxErrorText bounds an error recorded in the replicated status (a
// partner's document can put its own text in an error).
const maxErrorText = 1024

// errorText is err's text without what changes from one attempt to the
// next for the same failure, so that it is logged and recorded once, and
// at most maxErrorText bytes of it.
func errorText(err error) string {
	text := localAddr.ReplaceAllString(err.Error(), "$1 ")
	if len(text) > maxErrorText {
		text = strings.ToValidUTF8(text[:maxErrorText], "") + "…"
	}
	return text
}
