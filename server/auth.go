package server

import (
	"context"
	"errors"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/internal/grpcstream"
	"github.com/sigil-id/sigil/raftstore"
	"github.com/sigil-id/sigil/registration"
)

type agentKey struct{}

// agentFrom returns the authenticated agent of a node API call.
func agentFrom(ctx context.Context) (spiffeid.ID, bool) {
	id, ok := ctx.Value(agentKey{}).(spiffeid.ID)
	return id, ok
}

// isOpenMethod reports whether a node API method is open to callers
// without an agent SVID: the attestations.
func isOpenMethod(fullMethod string) bool {
	return fullMethod == sigilv1.Node_Attest_FullMethodName || fullMethod == sigilv1.Node_AttestStream_FullMethodName
}

// authenticate checks that the caller presented a valid SVID of an agent
// that is attested and not banned, and returns the context carrying its ID.
func (s *Server) authenticate(ctx context.Context) (context.Context, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "no peer information")
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.PeerCertificates) == 0 {
		return nil, status.Error(codes.Unauthenticated, "an agent SVID is required")
	}
	bundle, err := s.currentBundle()
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	id, _, err := x509svid.Verify(ti.State.PeerCertificates, bundle, x509svid.WithTime(s.cfg.Clock.Now()))
	if err != nil {
		return nil, status.Errorf(codes.Unauthenticated, "agent SVID is not valid: %v", err)
	}
	if !registration.IsAgentID(id) {
		return nil, status.Errorf(codes.PermissionDenied, "%s is not an agent", id)
	}
	n, err := s.store.Read().Node(id.String())
	switch {
	case errors.Is(err, raftstore.ErrNotFound):
		return nil, status.Errorf(codes.PermissionDenied, "agent %s is not attested (evicted?)", id)
	case err != nil:
		return nil, status.Error(codes.Internal, err.Error())
	case n.Banned:
		return nil, status.Errorf(codes.PermissionDenied, "agent %s is banned", id)
	}
	return context.WithValue(ctx, agentKey{}, id), nil
}

// isDownstreamMethod reports whether a node API method is of the
// Downstream service, which authenticates its callers itself (see
// downstream.go): they are downstream workloads, not agents.
func isDownstreamMethod(fullMethod string) bool {
	return strings.HasPrefix(fullMethod, "/"+sigilv1.Downstream_ServiceDesc.ServiceName+"/")
}

func (s *Server) authUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if !strings.HasPrefix(info.FullMethod, "/sigil.v1.Node/") || isOpenMethod(info.FullMethod) || isDownstreamMethod(info.FullMethod) {
		return handler(ctx, req)
	}
	actx, err := s.authenticate(ctx)
	if err != nil {
		return nil, err
	}
	return handler(actx, req)
}

func (s *Server) authStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if !strings.HasPrefix(info.FullMethod, "/sigil.v1.Node/") || isOpenMethod(info.FullMethod) {
		return handler(srv, ss)
	}
	actx, err := s.authenticate(ss.Context())
	if err != nil {
		return err
	}
	return handler(srv, grpcstream.WithContext(ss, actx))
}
