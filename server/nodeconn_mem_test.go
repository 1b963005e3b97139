package server

import (
	"context"
	"crypto/tls"
	"testing"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/internal/heapsite"
)

// Each connected agent costs the server what its connection keeps for as
// long as it is open. gRPC gives every server connection a 32 KiB read
// buffer of its own, kept for the connection's life (it pools reads only
// from plain sockets, not TLS); the node API turns it off, since TLS
// already reads whole records into a buffer of its own. The test's
// clients keep gRPC's buffer, which shows that the profile sees such
// buffers at all.
func TestNodeConnectionsKeepNoGRPCReadBuffer(t *testing.T) {
	defer heapsite.RecordAll()()
	h := startServer(t)
	a := h.attest()
	cert := &tls.Certificate{Certificate: a.chain, PrivateKey: a.key}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const conns = 8
	for i := 0; i < conns; i++ {
		stream, err := h.nodeClient(cert).Sync(ctx, &sigilv1.SyncRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := stream.Recv(); err != nil {
			t.Fatal(err)
		}
	}
	const (
		server = "google.golang.org/grpc/internal/transport.NewServerTransport"
		client = "google.golang.org/grpc/internal/transport.NewHTTP2Client"
		buffer = "bufio.NewReaderSize"
	)
	if b, o := heapsite.InUse(client, buffer); o < conns {
		t.Fatalf("clients: %d read buffers (%d bytes) in the profile, want at least %d: the profile does not show them", o, b, conns)
	}
	if b, o := heapsite.InUse(server, buffer); o != 0 {
		t.Fatalf("the server keeps %d bytes in %d read buffers of gRPC's for %d connections", b, o, conns)
	}
}
