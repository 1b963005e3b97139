package workloadapi

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/attestor/workload"
)

// attest identifies the caller: it runs the attestors on the peer's pid
// (runAttestors) and then checks that the peer process is still the one
// that connected, so a process that exits, and whose pid is reused, while
// any attestor is still working (asking a kubelet, say) gets nothing.
//
// Attestation fails closed: if any attestor fails or times out, the caller
// gets an error and no selectors, never the selectors of the others.
func (s *Server) attest(ctx context.Context) ([]*sigilv1.Selector, error) {
	info, err := peerInfo(ctx)
	if err != nil {
		return nil, err
	}
	sels, err := s.runAttestors(ctx, info.Caller())
	if err != nil {
		if ctx.Err() != nil {
			return nil, status.FromContextError(ctx.Err()).Err()
		}
		if errors.Is(err, workload.ErrProcessGone) {
			return nil, status.Error(codes.PermissionDenied, "caller process is gone")
		}
		var ae *attestorError
		if !errors.As(err, &ae) { // runAttestors returns no other error
			ae = &attestorError{name: "unknown", err: err}
		}
		if ok, suppressed := s.failures.allow(info.UID, info.PID); ok {
			s.log.Error("workload attestation failed; no identity for the caller",
				zap.String("attestor", ae.name), zap.Int32("pid", info.PID), zap.Uint32("uid", info.UID),
				zap.Bool("timed_out", ae.timedOut), zap.Int("suppressed", suppressed), zap.Error(ae.err))
		}
		if ae.timedOut {
			return nil, status.Error(codes.Unavailable, "workload attestation timed out")
		}
		return nil, status.Error(codes.Internal, "workload attestation failed")
	}
	if s.afterAttest != nil {
		s.afterAttest(info.PID)
	}
	if err := s.stillCaller(info); err != nil {
		return nil, err
	}
	if ce := s.log.Check(zap.DebugLevel, "workload attested"); ce != nil {
		ce.Write(zap.Int32("pid", info.PID), zap.Stringers("selectors", selectorStrings(sels)))
	}
	return sels, nil
}

// peerInfo returns the credentials the transport recorded for the caller.
func peerInfo(ctx context.Context) (*PeerInfo, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil, status.Error(codes.PermissionDenied, "caller could not be identified")
	}
	info, ok := p.AuthInfo.(*PeerInfo)
	if !ok {
		return nil, status.Error(codes.PermissionDenied, "caller could not be identified")
	}
	return info, nil
}

// attestorError is the failure of one attestor on one call, or the
// timeout of one or more.
type attestorError struct {
	name     string // comma-separated if several timed out
	timedOut bool
	err      error
}

func (e *attestorError) Error() string {
	return fmt.Sprintf("workloadapi: attestor %q: %v", e.name, e.err)
}

func (e *attestorError) Unwrap() error { return e.err }

// attestorResult is what attestor i returned.
type attestorResult struct {
	i    int
	sels []*sigilv1.Selector
	err  error
}

// runAttestors runs every attestor on caller at the same time, each with
// a context canceled after s.attestorTimeout (or when ctx is done), and
// returns their selectors concatenated in the configured order. The first
// attestor to fail, or those still running when the bound passes, make it
// fail (an *attestorError naming it or them); the others' contexts
// are then canceled and their results dropped. An attestor that ignores
// its context delays the caller by no more than the bound: its goroutine
// ends whenever the attestor returns.
func (s *Server) runAttestors(ctx context.Context, caller workload.Caller) ([]*sigilv1.Selector, error) {
	if sels, ok, err := s.attestQuick(caller); ok {
		return sels, err
	}
	actx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Buffered for every attestor: a result nobody waits for any more does
	// not block its goroutine.
	results := make(chan attestorResult, len(s.attestors))
	for i, a := range s.attestors {
		go func() {
			sels, err := a.Attest(actx, caller)
			results <- attestorResult{i: i, sels: sels, err: err}
		}()
	}
	timeout := s.clk.After(s.attestorTimeout)
	got := make([][]*sigilv1.Selector, len(s.attestors))
	done := make([]bool, len(s.attestors))
	n := 0
	for range s.attestors {
		select {
		case r := <-results:
			if r.err != nil {
				return nil, &attestorError{name: s.attestors[r.i].Name(), err: r.err}
			}
			got[r.i], done[r.i] = r.sels, true
			n += len(r.sels)
		case <-timeout:
			// Answers already in count; the attestors still without one
			// are named.
			for drained := false; !drained; {
				select {
				case r := <-results:
					done[r.i] = true
				default:
					drained = true
				}
			}
			var late []string
			for i, d := range done {
				if !d {
					late = append(late, s.attestors[i].Name())
				}
			}
			return nil, &attestorError{name: strings.Join(late, ","), timedOut: true,
				err: fmt.Errorf("no answer within %v", s.attestorTimeout)}
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if len(got) == 1 {
		return got[0], nil
	}
	sels := make([]*sigilv1.Selector, 0, n)
	for _, g := range got {
		sels = append(sels, g...)
	}
	return sels, nil
}

// quickAttestor is an attestor that can often answer at once, from what
// it holds, doing nothing that may block or take long (no network, no
// user name service, no hashing): the unix attestor once it has seen the
// caller's user, group and executable. AttestQuick returns ok false when
// it cannot, and the attestor is then run with Attest.
type quickAttestor interface {
	AttestQuick(c workload.Caller) (sels []*sigilv1.Selector, ok bool, err error)
}

// attestQuick runs the attestors inline, without the goroutines and the
// timer of runAttestors, when every one of them is a quickAttestor that
// answers at once; their answers then stand as runAttestors would return
// them. It returns ok false, and the attestors are run as usual, when
// any cannot answer that way.
func (s *Server) attestQuick(caller workload.Caller) (sels []*sigilv1.Selector, ok bool, err error) {
	for _, a := range s.attestors {
		if _, ok := a.(quickAttestor); !ok {
			return nil, false, nil
		}
	}
	for _, a := range s.attestors {
		got, ok, err := a.(quickAttestor).AttestQuick(caller)
		if !ok {
			return nil, false, nil
		}
		if err != nil {
			return nil, true, &attestorError{name: a.Name(), err: err}
		}
		if len(s.attestors) == 1 {
			return got, true, nil
		}
		sels = append(sels, got...)
	}
	return sels, true, nil
}

// noIdentity is the answer to a caller whose selectors match no entry
// (or none that serves what it asked for): the standard PermissionDenied
// to the workload, and for the operator a log line, rate-limited per uid
// and pid, with the selectors the caller had.
func (s *Server) noIdentity(ctx context.Context, sels []*sigilv1.Selector) error {
	info, err := peerInfo(ctx)
	if err != nil {
		return errNoIdentity
	}
	if ok, suppressed := s.denials.allow(info.UID, info.PID); ok {
		s.log.Info("no identity for the caller: no registration entry matches its selectors",
			zap.Int32("pid", info.PID), zap.Uint32("uid", info.UID),
			zap.Stringers("selectors", selectorStrings(sels)), zap.Int("suppressed", suppressed))
	}
	return errNoIdentity
}
