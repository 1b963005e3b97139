//go:build linux

package workloadapi

import (
	"net"
	"path/filepath"
	"testing"

	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
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
			const calls = 20
			counter := countedFetches(t, sock, testCtx(t), calls)
			if n := counter.pings(); (n > 0) != tc.wantPings {
				t.Fatalf("the server sent %d PINGs for %d calls", n, calls)
			}
		})
	}
}
