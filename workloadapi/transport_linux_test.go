//go:build linux

package workloadapi

import (
	"context"
	"net"
	"path/filepath"
	"sync/atomic"
	"testing"

	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// fixedFetch answers every FetchX509SVID with the same response, as
// bench's limit server does.
type fixedFetch struct {
	workloadpb.UnimplementedSpiffeWorkloadAPIServer
}

func (fixedFetch) FetchX509SVID(_ *workloadpb.X509SVIDRequest, stream grpc.ServerStreamingServer[workloadpb.X509SVIDResponse]) error {
	return stream.Send(&workloadpb.X509SVIDResponse{Svids: []*workloadpb.X509SVID{{SpiffeId: "spiffe://example.org/fixed"}}})
}

// TestTransportOptionsAloneSendNoFlowControlPing: a plain gRPC server
// given TransportOptions (as bench's limit server is) has the Workload
// API server's transport: no HTTP/2 PING per call, which gRPC's
// defaults (dynamic windows) send for nearly every call.
func TestTransportOptionsAloneSendNoFlowControlPing(t *testing.T) {
	for _, tc := range []struct {
		name      string
		opts      []grpc.ServerOption
		wantPings bool
	}{
		{"defaults", nil, true},
		{"TransportOptions", TransportOptions(Limits{}), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sock := filepath.Join(t.TempDir(), "s.sock")
			l, err := net.Listen("unix", sock)
			if err != nil {
				t.Fatal(err)
			}
			g := grpc.NewServer(tc.opts...)
			workloadpb.RegisterSpiffeWorkloadAPIServer(g, fixedFetch{})
			go func() { _ = g.Serve(l) }()
			defer g.Stop()
			var dialed atomic.Pointer[frameCounter]
			cc, err := grpc.NewClient("passthrough:///counted",
				grpc.WithTransportCredentials(insecure.NewCredentials()),
				grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
					conn, err := (&net.Dialer{}).DialContext(ctx, "unix", sock)
					if err != nil {
						return nil, err
					}
					counter := &frameCounter{Conn: conn, byType: make(map[byte]int)}
					dialed.Store(counter)
					return counter, nil
				}))
			if err != nil {
				t.Fatal(err)
			}
			defer cc.Close()
			c := workloadpb.NewSpiffeWorkloadAPIClient(cc)
			const calls = 20
			for i := 0; i < calls; i++ {
				stream, err := c.FetchX509SVID(testCtx(t), &workloadpb.X509SVIDRequest{})
				if err != nil {
					t.Fatal(err)
				}
				if resp, err := stream.Recv(); err != nil || len(resp.Svids) != 1 {
					t.Fatalf("call %d: %v", i, err)
				}
			}
			counter := dialed.Load()
			if counter == nil || counter.frames(0x0) < calls {
				t.Fatal("the counting connection saw fewer DATA frames than calls")
			}
			if n := counter.pings(); (n > 0) != tc.wantPings {
				t.Fatalf("the server sent %d PINGs for %d calls", n, calls)
			}
		})
	}
}
