package mtls

import (
	"context"
	"errors"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/sigil-id/sigil/internal/grpcstream"
	"github.com/sigil-id/sigil/mtls/policy"
)

// ServerCredentials are gRPC transport credentials for a server:
// ServerConfig(src, opts...) with HTTP/2 negotiated.
func ServerCredentials(src X509Source, opts ...TLSOption) credentials.TransportCredentials {
	return credentials.NewTLS(ServerConfig(src, opts...))
}

// ClientCredentials are gRPC transport credentials for a client:
// ClientConfig(src, opts...).
func ClientCredentials(src X509Source, opts ...TLSOption) credentials.TransportCredentials {
	return credentials.NewTLS(ClientConfig(src, opts...))
}

// grpcPeerID returns the caller's SPIFFE ID: from the context if a
// previous interceptor put it there, else from the TLS peer.
func grpcPeerID(ctx context.Context) (spiffeid.ID, error) {
	if id, ok := PeerIDFromContext(ctx); ok {
		return id, nil
	}
	p, ok := peer.FromContext(ctx)
	if !ok || p.AuthInfo == nil {
		return spiffeid.ID{}, errors.New("mtls: no client identity: the server must use mtls.ServerCredentials (mutual TLS)")
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return spiffeid.ID{}, errors.New("mtls: no client identity: the connection is not TLS")
	}
	return PeerID(info.State)
}

func grpcAuthorize(ctx context.Context, authz Authorizer, fullMethod string) (context.Context, error) {
	id, err := grpcPeerID(ctx)
	if err != nil {
		return nil, status.Error(codes.Unauthenticated, err.Error())
	}
	if err := authz(ctx, id, policy.GRPCTarget("", fullMethod)); err != nil {
		return nil, status.Error(codes.PermissionDenied, prefixed(err).Error())
	}
	return WithPeerID(ctx, id), nil
}

// UnaryServerInterceptor authorizes every unary call by the caller's
// SPIFFE ID and the full method, answering PermissionDenied with the
// reason, and puts the ID in the handler's context (PeerIDFromContext).
func UnaryServerInterceptor(authz Authorizer) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		ctx, err := grpcAuthorize(ctx, authz, info.FullMethod)
		if err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
}

// StreamServerInterceptor is UnaryServerInterceptor for streams: the
// call is authorized when the stream opens.
func StreamServerInterceptor(authz Authorizer) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ctx, err := grpcAuthorize(ss.Context(), authz, info.FullMethod)
		if err != nil {
			return err
		}
		return handler(srv, grpcstream.WithContext(ss, ctx))
	}
}
