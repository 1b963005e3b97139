package workloadapi

import (
	"os"
	"testing"

	"github.com/sigil-id/sigil/internal/heapsite"
)

// An agent holds one or more connections per workload, each for as long
// as the workload runs. gRPC gives each server connection a read buffer
// of its own, 32 KiB by default, kept for the connection's life (it pools
// reads only from plain sockets, and a Workload API connection is wrapped
// to identify its peer); the Workload API keeps it at readBuffer, since
// requests are a few hundred bytes.
func TestConnectionsKeepSmallReadBuffers(t *testing.T) {
	defer heapsite.RecordAll()()
	f := start(t, nil)
	f.cache.SetIdentity(uidSelector(os.Geteuid()), f.ca.identity(t, "e1", "/workload"))
	const (
		server = "google.golang.org/grpc/internal/transport.NewServerTransport"
		buffer = "bufio.NewReaderSize"
	)
	// What is in use before the test's connections (anything an earlier
	// test left, sampled at the old rate) is not counted.
	b0, o0 := heapsite.InUse(server, buffer)
	const conns = 8
	for i := 0; i < conns; i++ {
		if _, err := f.client(t).FetchX509SVID(testCtx(t)); err != nil {
			t.Fatal(err)
		}
	}
	// A buffered reader is two objects: the reader and its buffer.
	b, o := heapsite.InUse(server, buffer)
	b, o = b-b0, o-o0
	if o < 2*conns {
		t.Fatalf("%d objects (%d bytes) of read buffers in the profile for %d connections: the profile does not show them", o, b, conns)
	}
	if per := b / (o / 2); per > readBuffer+256 {
		t.Fatalf("%d bytes of read buffer per connection (%d connections), want at most %d", per, o/2, readBuffer+256)
	}
}
