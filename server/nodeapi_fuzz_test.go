package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/attestor/node/jointoken"
)

// FuzzAttestPayload decodes arbitrary bytes as an AttestRequest, as the
// node API does, and hands it to the Attest handler of a real server
// (Raft store on disk, its CA, the join token verifier). Invariants: no
// panic; a refused request gets PermissionDenied, InvalidArgument or
// ResourceExhausted and leaves the Raft index and the agent list as they
// were; an accepted one carried a token this server issued, and then
// wrote exactly one Raft entry.
func FuzzAttestPayload(f *testing.F) {
	fs := newFuzzNodeServer(f)
	for _, tok := range fs.tokens {
		csr := newCSR(f, mustKey(f), "agent")
		for _, req := range []*sigilv1.AttestRequest{
			{AttestationType: jointoken.Name, Payload: []byte(tok), Csr: csr},
			{AttestationType: jointoken.Name, Payload: []byte(tok), Csr: []byte("not a CSR")},
		} {
			b, _ := proto.Marshal(req)
			f.Add(b)
		}
	}
	for _, req := range fuzzBogusRequests(f) {
		b, _ := proto.Marshal(req)
		f.Add(b)
	}
	f.Add([]byte{0xff, 0xff, 0xff})

	api := &nodeAPI{s: fs.srv}
	f.Fuzz(func(t *testing.T, raw []byte) {
		req := &sigilv1.AttestRequest{}
		if err := proto.Unmarshal(raw, req); err != nil {
			return // gRPC refuses it before the handler
		}
		index, nAgents := fs.srv.store.LastIndex(), fs.agents(t)
		resp, err := api.Attest(fs.ctx, req)
		if err != nil {
			fs.checkRefused(t, err, index, nAgents)
			return
		}
		if !fs.issued[string(req.Payload)] {
			t.Fatalf("attested %s with a token the server did not issue", resp.SpiffeId)
		}
		if got := fs.srv.store.LastIndex(); got != index+1 {
			t.Fatalf("an attestation moved the Raft index from %d to %d, want one entry", index, got)
		}
	})
}

// FuzzAttestStream decodes two arbitrary byte strings as the first two
// messages of an AttestStream call, as the node API does, and runs the
// handler of a real server (Raft store on disk, its CA, the join token
// verifier and the test-only HMAC challenge-response verifier, one round)
// on them; the call's other messages end it. Invariants: no panic; a
// refusal has one of the expected codes and leaves the Raft index and the
// agent list as they were; an accepted attestation carried a token this
// server issued (no fuzz input can answer the HMAC verifier's random
// challenge) and wrote exactly one Raft entry.
func FuzzAttestStream(f *testing.F) {
	fs := newFuzzNodeServer(f)
	fs.srv.verifiers[hmacName] = hmacVerifier{key: []byte("fuzz key"), rounds: 1}
	msg := func(m *sigilv1.AttestStreamRequest) []byte {
		b, _ := proto.Marshal(m)
		return b
	}
	attest := func(r *sigilv1.AttestRequest) []byte {
		return msg(&sigilv1.AttestStreamRequest{Step: &sigilv1.AttestStreamRequest_Attest{Attest: r}})
	}
	answer := msg(&sigilv1.AttestStreamRequest{Step: &sigilv1.AttestStreamRequest_Answer{Answer: make([]byte, 32)}})
	csr := newCSR(f, mustKey(f), "agent")
	for _, tok := range fs.tokens {
		f.Add(attest(&sigilv1.AttestRequest{AttestationType: jointoken.Name, Payload: []byte(tok), Csr: csr}), []byte(nil))
		f.Add(attest(&sigilv1.AttestRequest{AttestationType: jointoken.Name, Payload: []byte(tok), Csr: csr}), answer)
	}
	hmacReq := attest(&sigilv1.AttestRequest{AttestationType: hmacName, Payload: []byte("node-1"), Csr: csr})
	f.Add(hmacReq, answer)
	f.Add(hmacReq, hmacReq)
	f.Add(hmacReq, []byte(nil))
	f.Add(answer, hmacReq)
	for _, req := range fuzzBogusRequests(f) {
		f.Add(attest(req), answer)
	}
	f.Add([]byte{}, []byte{})
	f.Add([]byte{0xff, 0xff, 0xff}, answer)

	api := &nodeAPI{s: fs.srv}
	f.Fuzz(func(t *testing.T, first, second []byte) {
		var msgs []*sigilv1.AttestStreamRequest
		for _, raw := range [][]byte{first, second} {
			m := &sigilv1.AttestStreamRequest{}
			if err := proto.Unmarshal(raw, m); err != nil {
				break // gRPC ends the call before the handler reads it
			}
			msgs = append(msgs, m)
		}
		index, nAgents := fs.srv.store.LastIndex(), fs.agents(t)
		stream := &fuzzAttestStream{ctx: fs.ctx, in: msgs}
		err := api.AttestStream(stream)
		if err != nil {
			if stream.result != nil {
				t.Fatal("a refused attestation sent a result")
			}
			fs.checkRefused(t, err, index, nAgents, codes.FailedPrecondition)
			return
		}
		if stream.result == nil {
			t.Fatal("an accepted attestation sent no result")
		}
		req := msgs[0].GetAttest()
		if req.GetAttestationType() != jointoken.Name || !fs.issued[string(req.GetPayload())] {
			t.Fatalf("attested %s with evidence the server did not issue", stream.result.SpiffeId)
		}
		if got := fs.srv.store.LastIndex(); got != index+1 {
			t.Fatalf("an attestation moved the Raft index from %d to %d, want one entry", index, got)
		}
	})
}

// fuzzAttestStream is the server side of an AttestStream call for the
// fuzz target: Recv returns the given messages, then io.EOF (the caller
// closed its side); Send keeps the result.
type fuzzAttestStream struct {
	grpc.ServerStream
	ctx    context.Context
	in     []*sigilv1.AttestStreamRequest
	result *sigilv1.AttestResponse
}

func (s *fuzzAttestStream) Context() context.Context { return s.ctx }

func (s *fuzzAttestStream) Recv() (*sigilv1.AttestStreamRequest, error) {
	if len(s.in) == 0 {
		return nil, io.EOF
	}
	m := s.in[0]
	s.in = s.in[1:]
	return m, nil
}

func (s *fuzzAttestStream) Send(m *sigilv1.AttestStreamResponse) error {
	if r := m.GetResult(); r != nil {
		s.result = r
	}
	return nil
}

// fuzzNodeServer is a real server for the node API fuzz targets, with two
// join tokens issued.
type fuzzNodeServer struct {
	srv    *Server
	ctx    context.Context
	admin  sigilv1.AdminClient
	tokens []string
	issued map[string]bool
}

func newFuzzNodeServer(f *testing.F) *fuzzNodeServer {
	dir := f.TempDir()
	cfg := DefaultConfig()
	cfg.TrustDomain = testTD
	cfg.NodeName = "s1"
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.BindAddress = "127.0.0.1:0"
	cfg.AdminSocket = filepath.Join(dir, "admin", "admin.sock")
	cfg.Logger = zap.NewNop()
	withPlugins(f, &cfg, "disk")
	srv, err := New(cfg)
	if err != nil {
		f.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	f.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
		}
	})
	select {
	case <-srv.Ready():
	case err := <-done:
		f.Fatalf("server exited: %v", err)
	case <-time.After(30 * time.Second):
		f.Fatal("server not ready")
	}
	conn, err := grpc.NewClient("unix://"+cfg.AdminSocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { conn.Close() })
	fs := &fuzzNodeServer{srv: srv, ctx: ctx, admin: sigilv1.NewAdminClient(conn), issued: map[string]bool{}}
	for i := 0; i < 2; i++ {
		resp, err := fs.admin.CreateJoinToken(ctx, &sigilv1.CreateJoinTokenRequest{})
		if err != nil {
			f.Fatal(err)
		}
		fs.tokens = append(fs.tokens, resp.Token)
		fs.issued[resp.Token] = true
	}
	return fs
}

// fuzzBogusRequests are attestation requests every server refuses.
func fuzzBogusRequests(f *testing.F) []*sigilv1.AttestRequest {
	bogus, _ := jointoken.Generate()
	return []*sigilv1.AttestRequest{
		{AttestationType: jointoken.Name, Payload: []byte(bogus), Csr: newCSR(f, mustKey(f), "agent")},
		{AttestationType: jointoken.Name, Payload: []byte("not-a-token")},
		{AttestationType: "x509pop", Payload: []byte(bogus)},
		{AttestationType: jointoken.Name, Payload: []byte(strings.Repeat("a", 40<<10))},
		{},
	}
}

func (fs *fuzzNodeServer) agents(t *testing.T) int {
	resp, err := fs.admin.ListAgents(fs.ctx, &sigilv1.ListAgentsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return len(resp.Agents)
}

// checkRefused fails t unless err is a refusal (PermissionDenied,
// InvalidArgument, ResourceExhausted or one of more) that left the Raft
// index and the agents as they were.
func (fs *fuzzNodeServer) checkRefused(t *testing.T, err error, index uint64, nAgents int, more ...codes.Code) {
	t.Helper()
	switch c := status.Code(err); {
	case c == codes.PermissionDenied, c == codes.InvalidArgument, c == codes.ResourceExhausted, slices.Contains(more, c):
	default:
		t.Fatalf("refusal with code %v: %v", c, err)
	}
	if got := fs.srv.store.LastIndex(); got != index {
		t.Fatalf("a refused attestation (%v) moved the Raft index from %d to %d", err, index, got)
	}
	if got := fs.agents(t); got != nAgents {
		t.Fatalf("a refused attestation changed the agents from %d to %d", nAgents, got)
	}
}

func mustKey(tb testing.TB) *ecdsa.PrivateKey {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return key
}
