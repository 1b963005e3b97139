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
	const (
		server = "google.golang.org/grpc/internal/transport.NewServerTransport"
		client = "google.golang.org/grpc/internal/transport.NewHTTP2Client"
		buffer = "bufio.NewReaderSize"
	)
	// What is in use before the test's connections (anything an earlier
	// test left, sampled at the old rate) is not counted.
	srvBefore, _ := heapsite.InUse(server, buffer)
	_, cliBefore := heapsite.InUse(client, buffer)
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
	if b, o := heapsite.InUse(client, buffer); o-cliBefore < conns {
		t.Fatalf("clients: %d more read buffer objects (%d bytes in all) in the profile, want at least %d: the profile does not show them", o-cliBefore, b, conns)
	}
	if b, _ := heapsite.InUse(server, buffer); b > srvBefore {
		t.Fatalf("the server keeps %d bytes more in read buffers of gRPC's for %d connections", b-srvBefore, conns)
	}
}
