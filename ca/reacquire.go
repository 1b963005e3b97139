package ca

import (
	"context"
	"crypto"
	"fmt"
	"io"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/sigil-id/sigil/clock"
)

// This file makes a CA key recover from a failing key manager backend
// (an HSM unplugged and plugged back, a KMS throttling) without a
// restart: the signer the CA, the slot manager and the JWT signer hold is
// a reacquiringSigner, which after a backend failure obtains the key
// again from the key manager (KeyManager.GetKey), with backoff.

// Backoff of the re-acquire of a failing key: the first GetKey runs about
// reacquireMinBackoff after the failure, each one that fails (or whose
// key then fails to sign) doubles the delay up to reacquireMaxBackoff.
// Every delay is jittered: drawn uniformly from [delay/2, delay].
const (
	reacquireMinBackoff = time.Second
	reacquireMaxBackoff = time.Minute
	// reacquireTimeout bounds one GetKey: a signer blocks for at most
	// that long (plus its own signature), once per backoff interval.
	reacquireTimeout = 30 * time.Second
)

// reacquiring returns s, the key keyID of km (already wrapped by
// observeSigner), as a signer that recovers from backend failures:
//
//   - While the key works, Sign costs one atomic load more than s.Sign.
//   - A signature that fails with a backend failure (what observe reports:
//     not a missing key, not a canceled call) fails with an error naming
//     the key and saying when the key is re-acquired, wrapping the cause,
//     and schedules a re-acquire after the backoff.
//   - Until then, signatures still go to s (a backend that recovers by
//     itself, a KMS no longer throttling, signs again at once). The first
//     signature once the backoff has passed calls km.GetKey(keyID) (one
//     at a time: signatures meanwhile fail at once with the last error,
//     without reaching the backend) and, if the key it returns has the
//     same public key as s, signs with it and keeps it. A key with
//     another public key is refused (reported to obs as a failed
//     KeyOpGet): there is no fallback, to another key or another store.
//     A GetKey that fails, a key refused, or a re-acquired key that fails
//     to sign doubles the backoff.
//
// GetKey outcomes are reported to obs (KeyOpGet) as everywhere else, and
// the re-acquired signer is wrapped by observeSigner. s itself is
// returned when s or km is nil; clk nil is the wall clock.
func reacquiring(s crypto.Signer, km KeyManager, keyID string, clk clock.Clock, obs KeyObserver) crypto.Signer {
	if s == nil || km == nil {
		return s
	}
	if clk == nil {
		clk = clock.New()
	}
	r := &reacquiringSigner{km: km, keyID: keyID, clk: clk, obs: obs, pub: s.Public()}
	r.state.Store(&signerState{signer: s})
	return r
}

// signerState is a reacquiringSigner's signer and failure; immutable once
// stored.
type signerState struct {
	signer crypto.Signer
	// err is the last backend failure; nil while the key works.
	err error
	// failures counts the re-acquires that failed since err was set.
	failures int
	// next is when the next re-acquire may run (err != nil).
	next time.Time
}

// reacquiringSigner is the crypto.Signer reacquiring returns. It is safe
// for concurrent use.
type reacquiringSigner struct {
	km    KeyManager
	keyID string
	clk   clock.Clock
	obs   KeyObserver
	pub   crypto.PublicKey

	state atomic.Pointer[signerState]
	// running is set while a re-acquire (GetKey) runs.
	running atomic.Bool
}

// Public returns the key's public key, the same before and after any
// re-acquire.
func (r *reacquiringSigner) Public() crypto.PublicKey { return r.pub }

// Sign signs with the current signer; see reacquiring.
func (r *reacquiringSigner) Sign(rand io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	st := r.state.Load()
	if st.err == nil {
		sig, err := st.signer.Sign(rand, digest, opts)
		if !backendFailure(err) {
			return sig, err
		}
		return nil, r.fail(st, err)
	}
	return r.signFailing(st, rand, digest, opts)
}

// fail records the backend failure err of st's signer, scheduling a
// re-acquire, and returns the error for the caller.
func (r *reacquiringSigner) fail(st *signerState, err error) error {
	next := &signerState{signer: st.signer, err: err, failures: st.failures, next: st.next}
	if st.err == nil {
		next.next = r.clk.Now().Add(jitter(backoff(0)))
	}
	if !r.state.CompareAndSwap(st, next) {
		// Another signature changed the state meanwhile: report its
		// schedule.
		if cur := r.state.Load(); cur.err != nil {
			next = cur
		}
	}
	return r.failedError(err, next.next)
}

// signFailing signs while the key is failing (st.err set).
func (r *reacquiringSigner) signFailing(st *signerState, rand io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if !r.clk.Now().Before(st.next) && r.running.CompareAndSwap(false, true) {
		defer r.running.Store(false)
		// st may be stale: another signature may have recovered the
		// key or re-acquired it between our load and the flag.
		if cur := r.state.Load(); cur != st {
			if cur.err == nil {
				return r.Sign(rand, digest, opts)
			}
			st = cur
			if r.clk.Now().Before(st.next) {
				return nil, r.failedError(st.err, st.next)
			}
		}
		return r.reacquire(st, rand, digest, opts)
	}
	if r.running.Load() {
		return nil, fmt.Errorf("key %q failed, re-acquire from the key manager in progress: %w", r.keyID, st.err)
	}
	// Backing off: the current signer may work again by itself.
	sig, err := st.signer.Sign(rand, digest, opts)
	switch {
	case err == nil:
		r.state.CompareAndSwap(st, &signerState{signer: st.signer})
		return sig, nil
	case !backendFailure(err):
		return nil, err
	}
	r.state.CompareAndSwap(st, &signerState{signer: st.signer, err: err, failures: st.failures, next: st.next})
	return nil, r.failedError(err, st.next)
}

// reacquire gets the key again from the key manager and signs with it;
// r.running is held.
func (r *reacquiringSigner) reacquire(st *signerState, rand io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), reacquireTimeout)
	s, err := r.km.GetKey(ctx, r.keyID)
	cancel()
	if err == nil && !samePublicKey(s.Public(), r.pub) {
		err = fmt.Errorf("the key manager returned another key (a different public key) for %q: refused", r.keyID)
	}
	observe(r.obs, KeyOpGet, err)
	if err != nil {
		return nil, r.retryLater(st.signer, st, err)
	}
	s = observeSigner(s, r.obs)
	sig, err := s.Sign(rand, digest, opts)
	if !backendFailure(err) {
		r.state.Store(&signerState{signer: s})
		return sig, err
	}
	return nil, r.retryLater(s, st, err)
}

// retryLater records that a re-acquire failed with err (keeping signer),
// doubling the backoff, and returns the error for the caller.
func (r *reacquiringSigner) retryLater(signer crypto.Signer, st *signerState, err error) error {
	next := &signerState{signer: signer, err: err, failures: st.failures + 1}
	next.next = r.clk.Now().Add(jitter(backoff(next.failures)))
	r.state.Store(next)
	return r.failedError(err, next.next)
}

// failedError is the error of a signature while the key fails with err
// and is re-acquired at next.
func (r *reacquiringSigner) failedError(err error, next time.Time) error {
	in := max(next.Sub(r.clk.Now()), 0).Round(time.Millisecond)
	return fmt.Errorf("key %q failed, re-acquire from the key manager scheduled in %s: %w", r.keyID, in, err)
}

// backoff is the delay before the re-acquire that follows failures failed
// ones: reacquireMinBackoff doubled failures times, at most
// reacquireMaxBackoff.
func backoff(failures int) time.Duration {
	d := reacquireMinBackoff
	for range failures {
		if d >= reacquireMaxBackoff/2 {
			return reacquireMaxBackoff
		}
		d *= 2
	}
	return d
}

// jitter returns a duration drawn uniformly from [d/2, d].
func jitter(d time.Duration) time.Duration {
	return d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
}

// samePublicKey reports whether a and b are the same public key.
func samePublicKey(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}
