package cluster

import (
	"math"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/internal/sourcelimit"
)

// Join rate limits. Every JoinChallenge and every Join costs one token
// from the caller's source bucket and one from the global bucket; a Join
// whose proof of the secret is wrong costs joinFailPenalty more from both.
// So one source can test at most about joinPerSourceRate/(1+penalty)
// guesses a second (0.18/s), all sources together about
// joinGlobalRate/(1+penalty) (0.9/s), against about 9,000/s before
// limits, and parallel connections do not help. A legitimate join costs
// two tokens (challenge and join) per server asked.
const (
	joinPerSourceRate  = 2.0 // tokens per second
	joinPerSourceBurst = 10.0
	joinGlobalRate     = 10.0
	joinGlobalBurst    = 40.0
	joinFailPenalty    = 10.0
	// joinMaxSources bounds the per-source buckets kept.
	joinMaxSources = 4096
)

// joinBucket is the token bucket of one source, or of all sources
// together.
type joinBucket struct {
	bucket *rate.Limiter
	// limited: the last attempt from here was refused (for logging the
	// first refusal only).
	limited bool
}

func (b *joinBucket) Idle(now time.Time) bool { return sourcelimit.BucketFull(b.bucket, now) }

// wait is how long until the bucket holds one token.
func (b *joinBucket) wait(now time.Time) time.Duration {
	tokens := b.bucket.TokensAt(now)
	if tokens >= 1 {
		return 0
	}
	return time.Duration((1 - tokens) / float64(b.bucket.Limit()) * float64(time.Second)).Round(time.Second / 10)
}

// penalize takes joinFailPenalty tokens, letting the bucket go below zero
// but not below -joinFailPenalty, so that concurrent failures do not pile
// up a long lockout. The charge is in whole tokens: a bucket already below
// zero may stay less than a token above -joinFailPenalty.
func (b *joinBucket) penalize(now time.Time) {
	if n := int(math.Min(joinFailPenalty, math.Floor(b.bucket.TokensAt(now)+joinFailPenalty))); n > 0 {
		b.bucket.ReserveN(now, n)
	}
}

// joinLimiter rate-limits join attempts per source address and in total.
// Its memory is bounded: at most joinMaxSources sources are tracked, and
// buckets that have refilled are dropped when that bound is reached.
type joinLimiter struct {
	clock clock.Clock

	mu     sync.Mutex
	global joinBucket
	srcs   sourcelimit.Table[*joinBucket]
}

func newJoinLimiter(c clock.Clock) *joinLimiter {
	if c == nil {
		c = clock.New()
	}
	return &joinLimiter{
		clock:  c,
		global: joinBucket{bucket: sourcelimit.NewBucket(joinGlobalRate, joinGlobalBurst)},
		srcs: sourcelimit.NewTable(joinMaxSources, 0, func() *joinBucket {
			return &joinBucket{bucket: sourcelimit.NewBucket(joinPerSourceRate, joinPerSourceBurst)}
		}),
	}
}

// limitDecision is the outcome of joinLimiter.allow.
type limitDecision struct {
	ok bool
	// retry is how long the caller should wait when !ok.
	retry time.Duration
	// global: the global limit refused (else the source's).
	global bool
	// first: this is the first refusal since the source's last accepted
	// attempt (log it; stay quiet about the following ones).
	first bool
}

// allow takes a token for one attempt from src, or refuses.
func (l *joinLimiter) allow(src string) limitDecision {
	now := l.clock.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.srcs.Add(src, now)
	if !ok {
		first := !l.global.limited
		l.global.limited = true
		return limitDecision{retry: time.Second, global: true, first: first}
	}
	if b.bucket.TokensAt(now) < 1 {
		first := !b.limited
		b.limited = true
		return limitDecision{retry: b.wait(now), first: first}
	}
	if l.global.bucket.TokensAt(now) < 1 {
		first := !l.global.limited
		l.global.limited = true
		return limitDecision{retry: l.global.wait(now), global: true, first: first}
	}
	b.bucket.AllowN(now, 1)
	l.global.bucket.AllowN(now, 1)
	b.limited, l.global.limited = false, false
	return limitDecision{ok: true}
}

// penalize charges src (and the global bucket) for a failed proof.
func (l *joinLimiter) penalize(src string) {
	now := l.clock.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.global.penalize(now)
	if b, ok := l.srcs.Get(src); ok {
		b.penalize(now)
	}
}
