package mtls_test

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/sigil-id/sigil/mtls"
	"github.com/sigil-id/sigil/mtls/mtlstest"
	"github.com/sigil-id/sigil/mtls/policy"
)

const grpcPolicy = `
rule "web-checks-health" {
  from = ["spiffe://example.org/web"]
  to   = ["grpc:/grpc.health.v1.Health/*"]
}
rule "batch-checks-only" {
  from = ["spiffe://example.org/batch"]
  to   = ["grpc:/grpc.health.v1.Health/Check"]
}
`

// idServer wraps the health server to report who called.
type idServer struct {
	*health.Server
	seen chan spiffeid.ID
}

func (s *idServer) Check(ctx context.Context, req *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	id, _ := mtls.PeerIDFromContext(ctx)
	select {
	case s.seen <- id:
	default:
	}
	return s.Server.Check(ctx, req)
}

func serveGRPC(t *testing.T, src mtls.X509Source, authz mtls.Authorizer) (string, *health.Server, chan spiffeid.ID) {
	t.Helper()
	hs := health.NewServer()
	srv := grpc.NewServer(
		grpc.Creds(mtls.ServerCredentials(src)),
		grpc.UnaryInterceptor(mtls.UnaryServerInterceptor(authz)),
		grpc.StreamInterceptor(mtls.StreamServerInterceptor(authz)),
	)
	seen := make(chan spiffeid.ID, 10)
	healthpb.RegisterHealthServer(srv, &idServer{Server: hs, seen: seen})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	return l.Addr().String(), hs, seen
}

func grpcClient(t *testing.T, addr string, src mtls.X509Source) healthpb.HealthClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(
		mtls.ClientCredentials(src, mtls.WithServerID(spiffeid.RequireFromString(serverID)))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return healthpb.NewHealthClient(conn)
}

func TestGRPCInterceptors(t *testing.T) {
	e := newEnv(t)
	p, err := policy.Parse([]byte(grpcPolicy), "policy.hcl")
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	enf := mtls.NewEnforcer(p, mtls.WithServiceName("health"), mtls.WithMetrics(reg))
	addr, hs, seen := serveGRPC(t, e.server, enf.Authorize)
	hs.SetServingStatus("users", healthpb.HealthCheckResponse_SERVING)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	web := grpcClient(t, addr, e.source(clientID))
	if _, err := web.Check(ctx, &healthpb.HealthCheckRequest{Service: "users"}); err != nil {
		t.Fatalf("allowed unary: %v", err)
	}
	if id := <-seen; id.String() != clientID {
		t.Fatalf("handler saw %s", id)
	}

	batch := grpcClient(t, addr, e.source(otherID))
	if _, err := batch.Check(ctx, &healthpb.HealthCheckRequest{Service: "users"}); err != nil {
		t.Fatalf("batch unary: %v", err)
	}
	// The stream method is not allowed for batch.
	stream, err := batch.Watch(ctx, &healthpb.HealthCheckRequest{Service: "users"})
	if err == nil {
		_, err = stream.Recv()
	}
	st, _ := status.FromError(err)
	if st.Code() != codes.PermissionDenied ||
		!strings.Contains(st.Message(), "spiffe://example.org/batch may not call gRPC /grpc.health.v1.Health/Watch on service health: no rule in policy.hcl allows it") {
		t.Fatalf("denied stream: %v", err)
	}
	// A federated peer is refused with PermissionDenied too.
	_, err = grpcClient(t, addr, e.source(partnerID)).Check(ctx, &healthpb.HealthCheckRequest{})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("federated peer: %v", err)
	}
	// An untrusted trust domain fails the handshake.
	_, err = grpcClient(t, addr, mtlstest.NewSource(e.evil.SVID(evilID, time.Hour), e.ca.Bundle())).Check(ctx, &healthpb.HealthCheckRequest{})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("untrusted peer: %v", err)
	}
	if got := counter(t, reg, "denied", "none"); got != 2 {
		t.Fatalf("denied counter %v", got)
	}
	if got := counter(t, reg, "allowed", "batch-checks-only"); got != 1 {
		t.Fatalf("allowed counter %v", got)
	}
}

// TestGRPCStreamAcrossRotation: a server stream opened before the SVIDs
// rotate keeps delivering, and a new connection uses the new SVIDs.
func TestGRPCStreamAcrossRotation(t *testing.T) {
	e := newEnv(t)
	p, _ := policy.Parse([]byte(grpcPolicy), "")
	addr, hs, _ := serveGRPC(t, e.server, mtls.NewEnforcer(p).Authorize)
	hs.SetServingStatus("users", healthpb.HealthCheckResponse_SERVING)
	clientSrc := e.source(clientID)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client := grpcClient(t, addr, clientSrc)

	var pr peer.Peer
	if _, err := client.Check(ctx, &healthpb.HealthCheckRequest{Service: "users"}, grpc.Peer(&pr)); err != nil {
		t.Fatal(err)
	}
	stream, err := client.Watch(ctx, &healthpb.HealthCheckRequest{Service: "users"})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := stream.Recv(); err != nil || r.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("first message: %v %v", r, err)
	}
	serial := func(pr *peer.Peer) string {
		return pr.AuthInfo.(credentials.TLSInfo).State.PeerCertificates[0].SerialNumber.String()
	}
	before := serial(&pr)

	e.server.SetSVID(e.ca.SVID(serverID, time.Hour))
	clientSrc.SetSVID(e.ca.SVID(clientID, time.Hour))

	hs.SetServingStatus("users", healthpb.HealthCheckResponse_NOT_SERVING)
	if r, err := stream.Recv(); err != nil || r.Status != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("stream after rotation: %v %v", r, err)
	}
	// The same connection keeps serving unary calls too.
	var pr2 peer.Peer
	if _, err := client.Check(ctx, &healthpb.HealthCheckRequest{Service: "users"}, grpc.Peer(&pr2)); err != nil {
		t.Fatal(err)
	}
	if serial(&pr2) != before {
		t.Fatal("the existing connection was replaced")
	}
	// A new connection handshakes with the rotated server SVID.
	var pr3 peer.Peer
	if _, err := grpcClient(t, addr, clientSrc).Check(ctx, &healthpb.HealthCheckRequest{Service: "users"}, grpc.Peer(&pr3)); err != nil {
		t.Fatal(err)
	}
	now, _ := e.server.GetX509SVID()
	if serial(&pr3) == before || serial(&pr3) != now.Certificates[0].SerialNumber.String() {
		t.Fatalf("new connection: serial %s, before %s", serial(&pr3), before)
	}
}
