package federation

import (
	"context"
	"errors"
	"time"

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

// Refresher keeps the federated bundles of every relationship current.
// Exactly one server runs it at a time (the leader).
type Refresher struct{}

// NewRefresher checks cfg and returns a Refresher.
func NewRefresher(cfg RefresherConfig) (*Refresher, error) {
	return nil, errors.New("federation: refresher not implemented yet")
}

// Run refreshes until ctx is done: each relationship at its own schedule
// (NextRefresh), at once for a new or changed relationship, a
// relationship without a bundle, or one whose status has
// refresh_requested_at after last_attempt_at. A fetch that fails keeps the
// last good bundle and records the error; a fetched bundle is written
// only when it differs (Equal) from the stored one.
func (r *Refresher) Run(ctx context.Context) error {
	return errors.New("federation: refresher not implemented yet")
}
