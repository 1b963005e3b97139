package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"path/filepath"
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
	admin := sigilv1.NewAdminClient(conn)
	issued := map[string]bool{}
	for i := 0; i < 2; i++ {
		resp, err := admin.CreateJoinToken(ctx, &sigilv1.CreateJoinTokenRequest{})
		if err != nil {
			f.Fatal(err)
		}
		issued[resp.Token] = true
		csr := newCSR(f, mustKey(f), "agent")
		for _, req := range []*sigilv1.AttestRequest{
			{AttestationType: jointoken.Name, Payload: []byte(resp.Token), Csr: csr},
			{AttestationType: jointoken.Name, Payload: []byte(resp.Token), Csr: []byte("not a CSR")},
		} {
			b, _ := proto.Marshal(req)
			f.Add(b)
		}
	}
	bogus, _ := jointoken.Generate()
	for _, req := range []*sigilv1.AttestRequest{
		{AttestationType: jointoken.Name, Payload: []byte(bogus), Csr: newCSR(f, mustKey(f), "agent")},
		{AttestationType: jointoken.Name, Payload: []byte("not-a-token")},
		{AttestationType: "x509pop", Payload: []byte(bogus)},
		{AttestationType: jointoken.Name, Payload: []byte(strings.Repeat("a", 40<<10))},
		{},
	} {
		b, _ := proto.Marshal(req)
		f.Add(b)
	}
	f.Add([]byte{0xff, 0xff, 0xff})

	api := &nodeAPI{s: srv}
	agents := func(t *testing.T) int {
		resp, err := admin.ListAgents(ctx, &sigilv1.ListAgentsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		return len(resp.Agents)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		req := &sigilv1.AttestRequest{}
		if err := proto.Unmarshal(raw, req); err != nil {
			return // gRPC refuses it before the handler
		}
		index, nAgents := srv.store.LastIndex(), agents(t)
		resp, err := api.Attest(ctx, req)
		if err != nil {
			switch status.Code(err) {
			case codes.PermissionDenied, codes.InvalidArgument, codes.ResourceExhausted:
			default:
				t.Fatalf("refusal with code %v: %v", status.Code(err), err)
			}
			if got := srv.store.LastIndex(); got != index {
				t.Fatalf("a refused attestation (%v) moved the Raft index from %d to %d", err, index, got)
			}
			if got := agents(t); got != nAgents {
				t.Fatalf("a refused attestation changed the agents from %d to %d", nAgents, got)
			}
			return
		}
		if !issued[string(req.Payload)] {
			t.Fatalf("attested %s with a token the server did not issue", resp.SpiffeId)
		}
		if got := srv.store.LastIndex(); got != index+1 {
			t.Fatalf("an attestation moved the Raft index from %d to %d, want one entry", index, got)
		}
	})
}

func mustKey(tb testing.TB) *ecdsa.PrivateKey {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return key
}
