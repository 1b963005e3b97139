package agent

import (
	"math/rand/v2"
	"time"
)

// RenewAt is when an SVID valid from notBefore to notAfter should be
// renewed: at 50 % of its lifetime plus up to 10 % more, chosen by jitter
// in [0, 1). Spreading renewals keeps a fleet of agents from renewing in
// lockstep after a mass issuance. Jitter outside [0, 1) is clamped.
func RenewAt(notBefore, notAfter time.Time, jitter float64) time.Time {
	if jitter < 0 {
		jitter = 0
	}
	if jitter >= 1 {
		jitter = 0.999999
	}
	lifetime := notAfter.Sub(notBefore)
	if lifetime <= 0 {
		return notBefore
	}
	return notBefore.Add(time.Duration(float64(lifetime) * (0.5 + jitter*0.1)))
}

// renewAt is RenewAt with a random jitter.
func renewAt(notBefore, notAfter time.Time) time.Time {
	return RenewAt(notBefore, notAfter, rand.Float64())
}

// backoff is a capped exponential backoff with full jitter in
// [d/2, d] where d = base·2^attempt capped at max.
func backoff(base, max time.Duration, attempt int) time.Duration {
	return Backoff(base, max, attempt, rand.Float64())
}

// Backoff is the wait before retry number attempt (from 0): d =
// base·2^attempt capped at max, of which the upper half is scaled by
// jitter in [0, 1), giving [d/2, d]. Jitter outside [0, 1) is clamped.
func Backoff(base, max time.Duration, attempt int, jitter float64) time.Duration {
	if jitter < 0 {
		jitter = 0
	}
	if jitter >= 1 {
		jitter = 0.999999
	}
	d := base
	for i := 0; i < attempt && d < max; i++ {
		d *= 2
	}
	if d > max {
		d = max
	}
	half := d / 2
	return half + time.Duration(jitter*float64(half+1))
}
