package server

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/attestor/node"
)

// AttestStream is the attestation in rounds: the agent's first message
// carries its evidence and CSR, the verifier may send challenges the agent
// answers, and the server ends the call with the agent's SVID or a
// refusal. It is open to callers without an agent SVID, behind the same
// guard as Attest (nodeapi_limits.go: rate, in-flight, read budget), and
// the server bounds what the verifier cannot: the size of every message
// (MaxAttestRequestSize), the number of rounds (MaxAttestRounds) and the
// time from the call's start to the verifier's decision
// (MaxAttestDuration), after which a stalled caller is cut off and its
// in-flight slot freed. Nothing is signed or written before the verifier
// accepted the evidence.
func (n *nodeAPI) AttestStream(stream sigilv1.Node_AttestStreamServer) error {
	s := n.s
	lim := s.nodeLimits
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	ex := &exchange{
		stream:    stream,
		ctx:       ctx,
		maxRounds: lim.MaxAttestRounds,
		maxSize:   lim.MaxAttestRequestSize,

		maxDuration: lim.MaxAttestDuration,
	}
	timeUp := s.cfg.Clock.After(lim.MaxAttestDuration)
	go func() {
		select {
		case <-timeUp:
			ex.timedOut.Store(true)
			cancel()
		case <-ctx.Done():
		}
	}()
	first, err := ex.recv()
	if err != nil {
		st := ex.streamError(err, "waiting for the attestation request")
		return n.refuse("", "", statusReason(st), err, st)
	}
	if size := proto.Size(first); size > lim.MaxAttestRequestSize {
		return n.refuse(first.GetAttest().GetAttestationType(), "", reasonTooLarge, nil,
			status.Errorf(codes.ResourceExhausted, "attestation request of %d bytes exceeds the limit of %d bytes", size, lim.MaxAttestRequestSize))
	}
	req := first.GetAttest()
	if req == nil {
		return n.refuse("", "", reasonMalformed, nil,
			status.Error(codes.InvalidArgument, "the first message of an attestation must carry the attestation request"))
	}
	ex.attestationType, ex.payload = req.AttestationType, req.Payload
	res, v, err := n.verify(ctx, req, ex)
	if err != nil {
		return err
	}
	if ex.timedOut.Load() {
		// The verifier decided after the time was up (it did not watch
		// its context): the bound holds whatever it returned.
		return n.refuse(req.AttestationType, "", reasonDeadline, errors.New("the verifier decided after the time was up"), ex.deadlineError())
	}
	// The time bound is for the exchange with the caller; signing and
	// the Raft write run under the call's own context, as for Attest.
	resp, err := n.record(stream.Context(), req, v, res)
	if err != nil {
		return err
	}
	return stream.Send(&sigilv1.AttestStreamResponse{Step: &sigilv1.AttestStreamResponse_Result{Result: resp}})
}

// exchange is the server's node.Exchange: the payload of one attestation
// and, on AttestStream, its challenge rounds within the server's bounds.
// The unary Attest's exchange allows no round.
type exchange struct {
	attestationType string
	payload         []byte
	unary           bool

	// AttestStream only.
	stream      sigilv1.Node_AttestStreamServer
	ctx         context.Context // canceled when the time is up or the call ends
	timedOut    atomic.Bool
	maxRounds   int
	maxSize     int
	maxDuration time.Duration

	mu     sync.Mutex
	used   int   // rounds
	failed error // the status the attestation ends with, once a round failed
}

var _ node.Exchange = (*exchange)(nil)

func (e *exchange) Payload() []byte { return e.payload }

// Challenge runs one round. Any failure is final: the attestation is
// refused with the status it recorded, whatever the verifier returns.
func (e *exchange) Challenge(ctx context.Context, challenge []byte) ([]byte, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.failed != nil {
		return nil, fmt.Errorf("server: an earlier challenge round failed: %w", e.failed)
	}
	switch {
	case e.unary:
		e.failed = status.Errorf(codes.FailedPrecondition, "attestation type %q needs a challenge round, which Attest does not carry; "+
			"the agent must attest with AttestStream (upgrade the agent)", e.attestationType)
		return nil, fmt.Errorf("server: %w", node.ErrRoundsExhausted)
	case e.used >= e.maxRounds:
		e.failed = status.Errorf(codes.FailedPrecondition, "attestation failed: the %q verifier asked for more than %d challenge rounds",
			e.attestationType, e.maxRounds)
		return nil, fmt.Errorf("server: %w (%d)", node.ErrRoundsExhausted, e.maxRounds)
	case len(challenge) > e.maxSize:
		e.failed = status.Errorf(codes.Internal, "attestation failed: the %q verifier's challenge of %d bytes exceeds the limit of %d bytes",
			e.attestationType, len(challenge), e.maxSize)
		return nil, fmt.Errorf("server: challenge of %d bytes exceeds the limit of %d bytes", len(challenge), e.maxSize)
	}
	e.used++
	// The verifier's ctx is derived from e.ctx; a verifier may pass
	// another, so both bound the round (see bounded).
	err := e.bounded(ctx, func() error {
		return e.stream.Send(&sigilv1.AttestStreamResponse{Step: &sigilv1.AttestStreamResponse_Challenge{Challenge: challenge}})
	})
	if err != nil {
		e.failed = e.streamError(err, "sending a challenge")
		return nil, fmt.Errorf("server: sending the challenge: %w", e.failed)
	}
	var msg *sigilv1.AttestStreamRequest
	err = e.bounded(ctx, func() error {
		var err error
		msg, err = e.stream.Recv()
		return err
	})
	if err != nil {
		e.failed = e.streamError(err, "waiting for the answer to a challenge")
		return nil, fmt.Errorf("server: receiving the answer: %w", e.failed)
	}
	if size := proto.Size(msg); size > e.maxSize {
		e.failed = status.Errorf(codes.ResourceExhausted, "answer of %d bytes exceeds the limit of %d bytes", size, e.maxSize)
		return nil, fmt.Errorf("server: %w", e.failed)
	}
	ans, ok := msg.GetStep().(*sigilv1.AttestStreamRequest_Answer)
	if !ok {
		e.failed = status.Error(codes.InvalidArgument, "the agent sent something other than the answer to the challenge")
		return nil, fmt.Errorf("server: %w", e.failed)
	}
	return ans.Answer, nil
}

// failure is the status the attestation ends with because a round failed,
// or nil.
func (e *exchange) failure() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.failed
}

// rounds is the number of challenge rounds run.
func (e *exchange) rounds() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.used
}

// recv reads the caller's next message within the time bound.
func (e *exchange) recv() (*sigilv1.AttestStreamRequest, error) {
	var msg *sigilv1.AttestStreamRequest
	err := e.bounded(e.ctx, func() error {
		var err error
		msg, err = e.stream.Recv()
		return err
	})
	return msg, err
}

// bounded runs fn (a stream Send or Recv, which do not watch e.ctx) and
// returns its error, or ctx's and e.ctx's when one ends first. fn then
// ends when the call does (gRPC ends the stream when the handler
// returns); its goroutine holds nothing else.
func (e *exchange) bounded(ctx context.Context, fn func() error) error {
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		return err
	case <-e.ctx.Done():
		return e.ctx.Err()
	case <-ctx.Done():
		return ctx.Err()
	}
}

// deadlineError is the status of an attestation cut off by its time
// bound.
func (e *exchange) deadlineError() error {
	return status.Errorf(codes.DeadlineExceeded, "attestation took longer than the limit of %s", e.maxDuration)
}

// streamError turns a failed Send or Recv into the status the call ends
// with.
func (e *exchange) streamError(err error, doing string) error {
	switch {
	case e.timedOut.Load():
		return e.deadlineError()
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	}
	if st, ok := status.FromError(err); ok {
		return st.Err()
	}
	// io.EOF: the caller closed its side.
	return status.Errorf(codes.InvalidArgument, "the caller ended the attestation while the server was %s", doing)
}
