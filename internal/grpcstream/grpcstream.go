// Package grpcstream holds the one wrapper that gRPC stream interceptors
// need to pass a derived context (an authenticated peer, a deadline, call
// bookkeeping) to the handler: a grpc.ServerStream whose Context is
// replaced.
package grpcstream

import (
	"context"

	"google.golang.org/grpc"
)

// WithContext returns ss with Context() answering ctx; every other method
// is ss's. ctx should derive from ss.Context(), so that the stream's
// cancellation still reaches the handler.
func WithContext(ss grpc.ServerStream, ctx context.Context) grpc.ServerStream {
	return &stream{ServerStream: ss, ctx: ctx}
}

type stream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *stream) Context() context.Context { return s.ctx }
