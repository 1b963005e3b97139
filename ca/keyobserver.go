package ca

import (
	"context"
	"crypto"
	"errors"
	"io"
)

// KeyObserver is told the outcome of every call the CA makes to its key
// manager's backend: each signature (X.509-SVIDs, JWT-SVIDs, CA
// self-signing), each GenerateKey and each GetKey. A server feeds it into
// its key manager health (a failing HSM or KMS raises an alert).
//
// Only backend failures are reported: a request the caller got wrong (a
// bad CSR, an SPIFFE ID outside the trust domain) never reaches the key
// and is not reported at all, nor is a GetKey that finds no key
// (ErrKeyNotFound) or a call whose context was canceled.
//
// Both methods are called on the signing path, concurrently: they must be
// safe for concurrent use and cheap (an atomic store), and must not block.
type KeyObserver interface {
	// KeyOK reports a key operation op (KeyOpSign, KeyOpGenerate or
	// KeyOpGet) that succeeded.
	KeyOK(op string)
	// KeyFailed reports a key operation op (KeyOpSign, KeyOpGenerate or
	// KeyOpGet) that failed with err.
	KeyFailed(op string, err error)
}

// The operations a KeyObserver is told about.
const (
	KeyOpSign     = "sign"
	KeyOpGenerate = "generate"
	KeyOpGet      = "get"
)

// observeSigner returns s, reporting the outcome of each of its
// signatures to obs; s itself when obs is nil (no cost).
func observeSigner(s crypto.Signer, obs KeyObserver) crypto.Signer {
	if obs == nil || s == nil {
		return s
	}
	return observedSigner{Signer: s, obs: obs}
}

// observedSigner is a crypto.Signer that reports each Sign to obs.
type observedSigner struct {
	crypto.Signer
	obs KeyObserver
}

// Sign signs with the wrapped signer and reports the outcome.
func (s observedSigner) Sign(rand io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	sig, err := s.Signer.Sign(rand, digest, opts)
	observe(s.obs, KeyOpSign, err)
	return sig, err
}

// observe reports the outcome err of key operation op to obs (when not
// nil), leaving out what is not a backend failure: a missing key and a
// canceled call. A deadline exceeded is a failure: a backend that does
// not answer in time (a KMS unreachable) is one.
func observe(obs KeyObserver, op string, err error) {
	switch {
	case obs == nil:
	case err == nil:
		obs.KeyOK(op)
	case backendFailure(err):
		obs.KeyFailed(op, err)
	}
}

// backendFailure reports whether err, the outcome of a key operation, is
// a failure of the key manager's backend: not nil, not a missing key,
// not a canceled call.
func backendFailure(err error) bool {
	return err != nil && !errors.Is(err, ErrKeyNotFound) && !errors.Is(err, context.Canceled)
}
