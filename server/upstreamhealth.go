package server

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// upstreamHealth is the state of this server's upstream authority: since
// when getting a new CA certificate signed fails (cleared by the next
// success), since when reading its roots fails (cleared likewise), and
// the last error. Either failure makes the upstream failing; the leader
// raises SigilUpstreamAuthorityFailing from it (package health). It is
// safe for concurrent use; nothing on the signing path touches it.
type upstreamHealth struct {
	mu         sync.Mutex
	mintSince  time.Time
	rootsSince time.Time
	lastErr    string
	lastErrAt  time.Time
	configured bool
}

func newUpstreamHealth(configured bool, reg prometheus.Registerer) *upstreamHealth {
	u := &upstreamHealth{configured: configured}
	if configured {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "sigil_server_upstream_authority_failing",
			Help: "1 while this server's upstream authority fails (signing a new CA certificate or reading its roots), 0 while it works.",
		}, func() float64 {
			if since, _ := u.state(); !since.IsZero() {
				return 1
			}
			return 0
		}))
	}
	return u
}

// mintFailed records a failed MintX509CA at now.
func (u *upstreamHealth) mintFailed(now time.Time, err error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.mintSince.IsZero() {
		u.mintSince = now
	}
	u.lastErr, u.lastErrAt = cutUTF8(err.Error(), maxKeyErrorLen), now
}

// mintOK records a CA certificate signed upstream.
func (u *upstreamHealth) mintOK() {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.mintSince = time.Time{}
}

// rootsFailed records a failed read of the upstream roots at now.
func (u *upstreamHealth) rootsFailed(now time.Time, err error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.rootsSince.IsZero() {
		u.rootsSince = now
	}
	u.lastErr, u.lastErrAt = cutUTF8(err.Error(), maxKeyErrorLen), now
}

// rootsOK records a successful read of the upstream roots.
func (u *upstreamHealth) rootsOK() {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.rootsSince = time.Time{}
}

// state returns since when the upstream fails (zero while it works) and
// the last error ("" while it works).
func (u *upstreamHealth) state() (since time.Time, lastErr string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	since = u.mintSince
	if !u.rootsSince.IsZero() && (since.IsZero() || u.rootsSince.Before(since)) {
		since = u.rootsSince
	}
	if since.IsZero() {
		return time.Time{}, ""
	}
	return since, u.lastErr
}
