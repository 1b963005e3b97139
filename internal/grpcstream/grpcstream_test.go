package grpcstream

import (
	"context"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

type key struct{}

// fakeStream stands for the transport's stream; only what the wrapper
// must pass through is implemented.
type fakeStream struct {
	grpc.ServerStream
	ctx  context.Context
	sent []any
}

func (f *fakeStream) Context() context.Context     { return f.ctx }
func (f *fakeStream) SendMsg(m any) error          { f.sent = append(f.sent, m); return nil }
func (f *fakeStream) SetHeader(metadata.MD) error  { return nil }
func (f *fakeStream) SendHeader(metadata.MD) error { return nil }
func (f *fakeStream) SetTrailer(metadata.MD)       {}
func (f *fakeStream) RecvMsg(any) error            { return nil }

func TestWithContextReplacesOnlyTheContext(t *testing.T) {
	inner := &fakeStream{ctx: context.Background()}
	ctx := context.WithValue(inner.ctx, key{}, "peer")
	ss := WithContext(inner, ctx)
	if ss.Context().Value(key{}) != "peer" {
		t.Fatal("wrapped stream does not carry the new context")
	}
	if inner.Context().Value(key{}) != nil {
		t.Fatal("the inner stream's context changed")
	}
	if err := ss.SendMsg("m"); err != nil || len(inner.sent) != 1 || inner.sent[0] != "m" {
		t.Fatalf("SendMsg not passed through: %v %v", err, inner.sent)
	}
}
