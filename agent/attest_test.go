package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/attestor/node"
	"github.com/sigil-id/sigil/attestor/node/jointoken"
	"github.com/sigil-id/sigil/clock"
)

// hmacAttestor is a test-only challenge-response attestor (the agent
// half): its payload is the node's name, and it answers a nonce with
// HMAC-SHA256(key, nonce || name). challengeFree makes it claim it needs
// no challenge.
type hmacAttestor struct {
	key, name     string
	challengeFree bool
}

func (hmacAttestor) Name() string { return "hmac_test" }

func (a hmacAttestor) Payload(context.Context) ([]byte, error) { return []byte(a.name), nil }

func (a hmacAttestor) Answer(_ context.Context, nonce []byte) ([]byte, error) {
	return hmacOf(a.key, nonce, a.name), nil
}

func (a hmacAttestor) ChallengeFree() bool { return a.challengeFree }

func hmacOf(key string, nonce []byte, name string) []byte {
	m := hmac.New(sha256.New, []byte(key))
	m.Write(nonce)
	m.Write([]byte(name))
	return m.Sum(nil)
}

// roundsServer is a node API over real TLS for the agent's attestation
// client: AttestStream sends one nonce per round and checks the HMAC
// answer; streamCode, if set, is what AttestStream answers instead (a
// server of the previous version answers Unimplemented, or
// Unauthenticated from its guard); Attest accepts any request.
type roundsServer struct {
	sigilv1.UnimplementedNodeServer
	key        string
	rounds     int
	streamCode codes.Code

	mu          sync.Mutex
	attestCalls int
	answers     int
}

func (s *roundsServer) AttestStream(stream sigilv1.Node_AttestStreamServer) error {
	if s.streamCode != codes.OK {
		return status.Error(s.streamCode, "refused by the test server")
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	name := string(first.GetAttest().GetPayload())
	for i := 0; i < s.rounds; i++ {
		nonce := make([]byte, 32)
		rand.Read(nonce)
		if err := stream.Send(&sigilv1.AttestStreamResponse{Step: &sigilv1.AttestStreamResponse_Challenge{Challenge: nonce}}); err != nil {
			return err
		}
		msg, err := stream.Recv()
		if err != nil {
			return err
		}
		if !hmac.Equal(msg.GetAnswer(), hmacOf(s.key, nonce, name)) {
			return status.Error(codes.PermissionDenied, "attestation failed: wrong answer to the challenge")
		}
		s.mu.Lock()
		s.answers++
		s.mu.Unlock()
	}
	return stream.Send(&sigilv1.AttestStreamResponse{Step: &sigilv1.AttestStreamResponse_Result{Result: &sigilv1.AttestResponse{SpiffeId: "stream:" + name}}})
}

func (s *roundsServer) Attest(_ context.Context, req *sigilv1.AttestRequest) (*sigilv1.AttestResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.attestCalls++
	return &sigilv1.AttestResponse{SpiffeId: "unary:" + string(req.Payload)}, nil
}

func (s *roundsServer) counts() (attest, answers int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.attestCalls, s.answers
}

// startRoundsServer serves s on loopback with a server SVID of a test CA
// and returns a node API client that trusts it, as the agent dials.
func startRoundsServer(t *testing.T, s *roundsServer) sigilv1.NodeClient {
	t.Helper()
	now := time.Now()
	ca := newTestCA(t, now)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	chain := ca.sign(t, spiffeid.RequireFromString("spiffe://example.org/sigil/server/s1"), key.Public(), now.Add(-time.Minute), time.Hour)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{chain[0].Raw}, PrivateKey: key, Leaf: chain[0]}},
		MinVersion:   tls.VersionTLS12,
	})))
	sigilv1.RegisterNodeServer(srv, s)
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	bundle := x509bundle.FromX509Authorities(testTD, []*x509.Certificate{ca.cert})
	conn, err := dial(l.Addr().String(), serverTLSConfig(testTD, bundle, nil))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return sigilv1.NewNodeClient(conn)
}

// TestAttestCallAnswersChallenges: the agent attests on AttestStream and
// answers every challenge with its attestor; a wrong answer is the
// server's refusal, with no fallback to the unary Attest.
func TestAttestCallAnswersChallenges(t *testing.T) {
	s := &roundsServer{key: "k", rounds: 2}
	c := startRoundsServer(t, s)
	ctx := context.Background()
	resp, err := attestCall(ctx, c, hmacAttestor{key: "k", name: "node-1"}, &sigilv1.AttestRequest{AttestationType: "hmac_test", Payload: []byte("node-1")})
	if err != nil || resp.GetSpiffeId() != "stream:node-1" {
		t.Fatalf("attestation: %v, %v", resp, err)
	}
	if attest, answers := s.counts(); attest != 0 || answers != 2 {
		t.Fatalf("Attest calls %d, right answers %d; want 0 and 2", attest, answers)
	}
	_, err = attestCall(ctx, c, hmacAttestor{key: "wrong", name: "node-1", challengeFree: true}, &sigilv1.AttestRequest{AttestationType: "hmac_test", Payload: []byte("node-1")})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("wrong answer: got %v, want PermissionDenied", err)
	}
	if attest, _ := s.counts(); attest != 0 {
		t.Fatalf("a refusal fell back to the unary Attest (%d calls)", attest)
	}
}

// TestAttestCallFallsBackForChallengeFreeAttestors: on a server of the
// previous version (AttestStream answered with Unimplemented, or with
// Unauthenticated by its guard), an attestor that needs no challenge (the
// join token) attests with the unary Attest; one that needs a challenge
// gets the server's answer and does not call Attest.
func TestAttestCallFallsBackForChallengeFreeAttestors(t *testing.T) {
	token, err := jointoken.Generate()
	if err != nil {
		t.Fatal(err)
	}
	for _, code := range []codes.Code{codes.Unimplemented, codes.Unauthenticated} {
		t.Run(code.String(), func(t *testing.T) {
			s := &roundsServer{streamCode: code}
			c := startRoundsServer(t, s)
			ctx := context.Background()
			jt := jointoken.NewAttestor(token)
			resp, err := attestCall(ctx, c, jt, &sigilv1.AttestRequest{AttestationType: jt.Name(), Payload: []byte(token)})
			if err != nil || resp.GetSpiffeId() != "unary:"+token {
				t.Fatalf("join token on an old server: %v, %v", resp, err)
			}
			_, err = attestCall(ctx, c, hmacAttestor{key: "k", name: "n"}, &sigilv1.AttestRequest{AttestationType: "hmac_test", Payload: []byte("n")})
			if status.Code(err) != code {
				t.Fatalf("challenge-response attestor on an old server: got %v, want %v", err, code)
			}
			if attest, _ := s.counts(); attest != 1 {
				t.Fatalf("%d Attest calls, want only the join token's", attest)
			}
		})
	}
}

// TestAttestCallAttestorAnswerError: an attestor that cannot answer a
// challenge ends the attestation with its error, named.
func TestAttestCallAttestorAnswerError(t *testing.T) {
	c := startRoundsServer(t, &roundsServer{key: "k", rounds: 1})
	token, _ := jointoken.Generate()
	_, err := attestCall(context.Background(), c, jointoken.NewAttestor(token), &sigilv1.AttestRequest{AttestationType: jointoken.Name, Payload: []byte(token)})
	if err == nil || !strings.Contains(err.Error(), "join_token attestor answering challenge 1") || !strings.Contains(err.Error(), "answers no challenge") {
		t.Fatalf("got %v, want the attestor's refusal to answer", err)
	}
}

var _ node.ChallengeFree = hmacAttestor{}

// TestAgentSpentJoinTokenAfterExpiry: an agent whose saved SVID has
// expired and whose join token the server refuses as spent stops with the
// attestor's message telling the operator what to do (node.SingleUse),
// not a retry loop.
func TestAgentSpentJoinTokenAfterExpiry(t *testing.T) {
	srv := newFakeServer(t)
	dir := filepath.Join(t.TempDir(), "data")
	r := startAgent(t, srv.config(t, dir))
	r.stop(t)

	cfg := srv.config(t, dir)
	cfg.Clock = clock.NewFake(time.Now().Add(2 * srv.agentTTL)) // the saved SVID has expired
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	err = a.Run(ctx)
	want := "agent SVID expired and cannot re-attest: " + jointoken.SpentMessage
	if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "token already used") {
		t.Fatalf("Run = %v, want %q and the server's refusal", err, want)
	}
	if attest, _, _ := srv.counts(); attest != 2 {
		t.Fatalf("Attest called %d times, want 2 (no retry of a refusal)", attest)
	}
}
