package server

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/attestor/node"
	"github.com/sigil-id/sigil/attestor/node/jointoken"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/internal/eventually"
)

// hmacName is the attestation type of the test-only challenge-response
// attestor.
const hmacName = "hmac_test"

// hmacVerifier is a test-only challenge-response verifier: the payload is
// the node's name, and each round sends a fresh random nonce that the
// agent must answer with HMAC-SHA256(key, nonce || name). rounds is how
// many rounds it asks for; ignoreFailure makes it accept the node even
// when a round failed (a careless plugin, which the server must not
// trust).
type hmacVerifier struct {
	key           []byte
	rounds        int
	ignoreFailure bool
}

func (hmacVerifier) Name() string { return hmacName }

func (v hmacVerifier) Verify(ctx context.Context, _ node.State, ex node.Exchange) (*node.Result, error) {
	name := string(ex.Payload())
	if name == "" || len(name) > 32 || strings.Trim(name, "abcdefghijklmnopqrstuvwxyz0123456789-") != "" {
		return nil, errors.New("hmac_test: the payload is not a node name")
	}
	for i := 0; i < v.rounds; i++ {
		nonce := make([]byte, 32)
		if _, err := rand.Read(nonce); err != nil {
			return nil, err
		}
		ans, err := ex.Challenge(ctx, nonce)
		if err != nil {
			if v.ignoreFailure {
				break
			}
			return nil, fmt.Errorf("hmac_test: round %d: %w", i+1, err)
		}
		if !hmac.Equal(ans, hmacAnswer(v.key, nonce, name)) {
			return nil, fmt.Errorf("hmac_test: %w", &node.RefusedError{Public: "wrong answer to the challenge",
				Reason: fmt.Sprintf("round %d: the answer does not match", i+1)})
		}
	}
	return &node.Result{ID: name, Selectors: []*sigilv1.Selector{{Type: hmacName, Value: name}}}, nil
}

func hmacAnswer(key, nonce []byte, name string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(nonce)
	m.Write([]byte(name))
	return m.Sum(nil)
}

// addVerifier registers v on a running server. The write happens under
// the node guard's lock, which the guard's tap takes before every
// attestation handler runs, so later calls see it.
func (h *harness) addVerifier(v node.Verifier) {
	g := h.srv.nodeGuard
	g.mu.Lock()
	defer g.mu.Unlock()
	h.srv.verifiers[v.Name()] = v
}

// streamAttest runs one attestation on AttestStream over the real node
// API (TLS, gRPC) and answers each challenge with answer; it returns the
// result, the challenges seen and the call's error.
func streamAttest(ctx context.Context, c sigilv1.NodeClient, req *sigilv1.AttestRequest, answer func(challenge []byte) []byte) (*sigilv1.AttestResponse, int, error) {
	stream, err := c.AttestStream(ctx)
	if err != nil {
		return nil, 0, err
	}
	if err := stream.Send(&sigilv1.AttestStreamRequest{Step: &sigilv1.AttestStreamRequest_Attest{Attest: req}}); err != nil {
		_, err = stream.Recv()
		return nil, 0, err
	}
	challenges := 0
	for {
		msg, err := stream.Recv()
		if err != nil {
			return nil, challenges, err
		}
		switch step := msg.Step.(type) {
		case *sigilv1.AttestStreamResponse_Result:
			return step.Result, challenges, nil
		case *sigilv1.AttestStreamResponse_Challenge:
			challenges++
			if err := stream.Send(&sigilv1.AttestStreamRequest{Step: &sigilv1.AttestStreamRequest_Answer{Answer: answer(step.Challenge)}}); err != nil {
				_, err = stream.Recv()
				return nil, challenges, err
			}
		default:
			return nil, challenges, errors.New("neither challenge nor result")
		}
	}
}

// TestAttestStreamChallengeRounds: a challenge-response attestor attests
// over AttestStream on the real node API: the right answers get the
// agent's SVID (one Raft write); a wrong answer, a verifier asking for
// more rounds than the server allows (even one that ignores the failed
// round and accepts), an answer over the size limit, a message that is
// not an answer, and the unary Attest (which carries no round) are each
// refused with nothing signed or written.
func TestAttestStreamChallengeRounds(t *testing.T) {
	key := []byte("test hmac key")
	h := startServerWith(t, clock.NewFake(time.Now()), func(l *nodeLimits) {
		l.MaxAttestRounds = 2
		l.MaxAttestRequestSize = 4 << 10
	})
	h.addVerifier(hmacVerifier{key: key, rounds: 2})
	c := h.nodeClient(nil)
	ctx := context.Background()
	right := func(name string) func([]byte) []byte {
		return func(nonce []byte) []byte { return hmacAnswer(key, nonce, name) }
	}
	req := func(name string) *sigilv1.AttestRequest {
		return &sigilv1.AttestRequest{AttestationType: hmacName, Payload: []byte(name), Csr: attackCSR(t)}
	}

	before := h.nodeAttackState()
	resp, challenges, err := streamAttest(ctx, c, req("node-1"), right("node-1"))
	if err != nil {
		t.Fatalf("attestation with the right answers: %v", err)
	}
	if want := "spiffe://example.org/sigil/agent/hmac_test/node-1"; resp.SpiffeId != want || len(resp.SvidChain) == 0 || resp.Bundle == nil {
		t.Fatalf("result %s (chain %d, bundle %v), want %s", resp.SpiffeId, len(resp.SvidChain), resp.Bundle != nil, want)
	}
	if challenges != 2 {
		t.Fatalf("%d challenges, want 2", challenges)
	}
	if got := h.nodeAttackState(); got.index != before.index+1 || got.agents != before.agents+1 {
		t.Fatalf("Raft index %d -> %d, agents %d -> %d; want one write and one agent", before.index, got.index, before.agents, got.agents)
	}

	// Each refusal leaves the state as it was.
	before = h.nodeAttackState()
	refused := func(what string, err error, code codes.Code, msg string) {
		t.Helper()
		if status.Code(err) != code || !strings.Contains(status.Convert(err).Message(), msg) {
			t.Fatalf("%s: got %v, want %v containing %q", what, err, code, msg)
		}
		h.requireNodeAttackState(what, before)
	}

	// A wrong answer in the second round: the public message only.
	n := 0
	_, _, err = streamAttest(ctx, c, req("node-2"), func(nonce []byte) []byte {
		n++
		if n == 2 {
			return make([]byte, 32)
		}
		return hmacAnswer(key, nonce, "node-2")
	})
	refused("a wrong answer", err, codes.PermissionDenied, "attestation failed: wrong answer to the challenge")
	if msg := status.Convert(err).Message(); strings.Contains(msg, "round 2") {
		t.Errorf("the refusal tells the caller the reason: %q", msg)
	}
	// The answer of another node.
	_, _, err = streamAttest(ctx, c, req("node-2"), right("node-1"))
	refused("another node's answer", err, codes.PermissionDenied, "wrong answer")

	// A verifier that asks for 3 rounds where the server allows 2; the
	// careless one accepts after the refused round, and is refused all
	// the same.
	for _, careless := range []bool{false, true} {
		h.addVerifier(hmacVerifier{key: key, rounds: 3, ignoreFailure: careless})
		_, challenges, err = streamAttest(ctx, c, req("node-3"), right("node-3"))
		refused(fmt.Sprintf("too many rounds (careless %v)", careless), err, codes.FailedPrecondition, "more than 2 challenge rounds")
		if challenges != 2 {
			t.Fatalf("the agent saw %d challenges, want the 2 allowed", challenges)
		}
	}
	h.addVerifier(hmacVerifier{key: key, rounds: 1})

	// An answer over the size limit.
	_, _, err = streamAttest(ctx, c, req("node-4"), func([]byte) []byte { return make([]byte, 8<<10) })
	refused("an oversized answer", err, codes.ResourceExhausted, "exceeds the limit of 4096 bytes")

	// A second attestation request where the answer was due.
	stream, err := c.AttestStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if err := stream.Send(&sigilv1.AttestStreamRequest{Step: &sigilv1.AttestStreamRequest_Attest{Attest: req("node-5")}}); err != nil {
			t.Fatal(err)
		}
	}
	var last error
	for last == nil {
		_, last = stream.Recv()
	}
	refused("a message that is not an answer", last, codes.InvalidArgument, "something other than the answer")

	// A first message that is not an attestation request.
	stream, err = c.AttestStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&sigilv1.AttestStreamRequest{Step: &sigilv1.AttestStreamRequest_Answer{Answer: []byte("x")}}); err != nil {
		t.Fatal(err)
	}
	_, err = stream.Recv()
	refused("an answer first", err, codes.InvalidArgument, "must carry the attestation request")

	// The unary Attest of the previous version carries no round.
	_, err = c.Attest(ctx, req("node-6"))
	refused("the unary Attest of a challenge-response attestor", err, codes.FailedPrecondition, "needs a challenge round")

	if n := h.logs.FilterMessage("agent attested").Len(); n != 1 {
		t.Errorf("%d agents attested, want 1", n)
	}
	nodeAttackNoneInFlight(t, h.srv.nodeGuard)
}

// TestAttestStreamStalledCallerCutOff: a caller that opens an attestation
// stream and then stalls (sends nothing, or never answers a challenge)
// holds an in-flight attestation slot only until MaxAttestDuration (by the
// injected clock); then the server ends the call with DeadlineExceeded,
// frees the slot, and has written nothing.
func TestAttestStreamStalledCallerCutOff(t *testing.T) {
	clk := clock.NewFake(time.Now())
	h := startServerWith(t, clk, nil)
	h.addVerifier(hmacVerifier{key: []byte("k"), rounds: 1})
	c := h.nodeClient(nil)
	g := h.srv.nodeGuard
	limit := h.srv.nodeLimits.MaxAttestDuration
	// Open the connection first, so that its own timer is not counted.
	if _, err := c.Attest(context.Background(), &sigilv1.AttestRequest{AttestationType: hmacName}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("warm-up call: %v", err)
	}
	nodeAttackNoneInFlight(t, g)
	before := h.nodeAttackState()

	for _, answerFirst := range []bool{false, true} {
		waiters := clk.Waiters()
		// The caller's own deadline only keeps a broken server from
		// hanging the test; the server's bound must end the call first.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		stream, err := c.AttestStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if answerFirst {
			// Send the evidence, read the challenge, never answer.
			if err := stream.Send(&sigilv1.AttestStreamRequest{Step: &sigilv1.AttestStreamRequest_Attest{Attest: &sigilv1.AttestRequest{
				AttestationType: hmacName, Payload: []byte("stalled"), Csr: attackCSR(t)}}}); err != nil {
				t.Fatal(err)
			}
			msg, err := stream.Recv()
			if err != nil || msg.GetChallenge() == nil {
				t.Fatalf("want a challenge, got %v, %v", msg, err)
			}
		}
		// The handler has started its timer (a new clock waiter).
		eventually.True(t, 10*time.Second, func() bool { return clk.Waiters() > waiters },
			"the attestation did not start its time bound")
		if n := g.attestsInFlight(); n != 1 {
			t.Fatalf("%d attestations in flight, want the stalled one", n)
		}
		clk.Add(limit - time.Second)
		clk.Add(time.Second)
		_, err = stream.Recv()
		if status.Code(err) != codes.DeadlineExceeded || !strings.Contains(err.Error(), "longer than the limit of "+limit.String()) {
			t.Fatalf("stalled caller (evidence sent %v): got %v, want DeadlineExceeded", answerFirst, err)
		}
		// The slot is free although the caller never closed its side.
		nodeAttackNoneInFlight(t, g)
		h.requireNodeAttackState("a stalled attestation", before)
		cancel()
	}
}

// TestAttestStreamJoinToken: the join token attestor attests over
// AttestStream with no challenge, once: a second use (on the stream or
// on the unary Attest) is refused with the one public message, and of
// concurrent uses of one token on the stream and on Attest exactly one
// wins, with one Raft write.
func TestAttestStreamJoinToken(t *testing.T) {
	h := startServer(t)
	c := h.nodeClient(nil)
	ctx := context.Background()
	noAnswer := func([]byte) []byte { t.Error("the join token verifier sent a challenge"); return nil }

	token, agentID := h.token()
	resp, challenges, err := streamAttest(ctx, c, &sigilv1.AttestRequest{AttestationType: jointoken.Name, Payload: []byte(token), Csr: attackCSR(t)}, noAnswer)
	if err != nil || resp.SpiffeId != agentID || challenges != 0 {
		t.Fatalf("join token on the stream: %v, %d challenges, %v", resp, challenges, err)
	}
	before := h.nodeAttackState()
	const want = "attestation failed: " + jointoken.RefusedMessage
	_, _, err = streamAttest(ctx, c, &sigilv1.AttestRequest{AttestationType: jointoken.Name, Payload: []byte(token), Csr: attackCSR(t)}, noAnswer)
	if status.Code(err) != codes.PermissionDenied || status.Convert(err).Message() != want {
		t.Fatalf("second use on the stream: got %v, want PermissionDenied %q", err, want)
	}
	_, err = c.Attest(ctx, &sigilv1.AttestRequest{AttestationType: jointoken.Name, Payload: []byte(token), Csr: attackCSR(t)})
	if status.Code(err) != codes.PermissionDenied || status.Convert(err).Message() != want {
		t.Fatalf("second use on Attest: got %v, want PermissionDenied %q", err, want)
	}
	h.requireNodeAttackState("a spent token", before)

	token, agentID = h.token()
	before = h.nodeAttackState()
	const n = 10
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		ok       []string
		refusals = map[codes.Code]int{}
		start    = make(chan struct{})
	)
	clients := make([]sigilv1.NodeClient, n)
	for i := range clients {
		clients[i] = h.nodeClient(nil)
	}
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			r := &sigilv1.AttestRequest{AttestationType: jointoken.Name, Payload: []byte(token), Csr: attackCSR(t)}
			<-start
			var resp *sigilv1.AttestResponse
			var err error
			if i%2 == 0 {
				resp, _, err = streamAttest(ctx, clients[i], r, noAnswer)
			} else {
				resp, err = clients[i].Attest(ctx, r)
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				refusals[status.Code(err)]++
				return
			}
			ok = append(ok, resp.SpiffeId)
		}(i)
	}
	close(start)
	wg.Wait()
	if len(ok) != 1 || ok[0] != agentID || refusals[codes.PermissionDenied] != n-1 {
		t.Fatalf("successes %v, refusals %v; want exactly one success for %s and %d PermissionDenied", ok, refusals, agentID, n-1)
	}
	if got := h.nodeAttackState(); got.index != before.index+1 || got.agents != before.agents+1 {
		t.Fatalf("Raft index %d -> %d, agents %d -> %d; want one write and one agent", before.index, got.index, before.agents, got.agents)
	}
}
