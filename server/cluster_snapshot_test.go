package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// TestSnapshotSaveRestoreStreamed: a snapshot larger than one chunk is
// saved as several chunks of at most snapshotChunk bytes; an upload cut in
// small chunks restores; a corrupt upload is refused as InvalidArgument
// and changes nothing; and no spooled upload is left in the data
// directory either way.
func TestSnapshotSaveRestoreStreamed(t *testing.T) {
	mc := startMemCluster(t, 1)
	l := mc.leader()
	ctx := context.Background()
	admin := sigilv1.NewAdminClient(l.admin)
	const n = 12000
	for i := 0; i < n; i += 1000 {
		var es []*sigilv1.Entry
		for j := i; j < i+1000; j++ {
			es = append(es, &sigilv1.Entry{
				SpiffeId:  fmt.Sprintf("spiffe://example.org/workload/%d", j),
				ParentId:  "spiffe://example.org/sigil/agent/join_token/node-1",
				Selectors: []*sigilv1.Selector{{Type: "unix", Value: fmt.Sprintf("uid:%d", j)}},
			})
		}
		resp, err := admin.BatchCreateEntry(ctx, &sigilv1.BatchCreateEntryRequest{Entries: es})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range resp.Results {
			if codes.Code(r.Status.Code) != codes.OK {
				t.Fatalf("create: %v", r.Status)
			}
		}
	}

	stream, err := sigilv1.NewClusterAdminClient(l.admin).SnapshotSave(ctx, &sigilv1.SnapshotSaveRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var snap []byte
	chunks := 0
	for {
		chunk, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if len(chunk.Data) == 0 || len(chunk.Data) > snapshotChunk {
			t.Fatalf("chunk of %d bytes", len(chunk.Data))
		}
		chunks++
		snap = append(snap, chunk.Data...)
	}
	if chunks < 2 || len(snap) < n*100 {
		t.Fatalf("%d entries saved as %d bytes in %d chunks", n, len(snap), chunks)
	}

	restore := func(data []byte, chunk int) (*sigilv1.SnapshotRestoreResponse, error) {
		up, err := sigilv1.NewClusterAdminClient(l.admin).SnapshotRestore(ctx)
		if err != nil {
			return nil, err
		}
		for len(data) > 0 {
			k := min(chunk, len(data))
			if err := up.Send(&sigilv1.SnapshotChunk{Data: data[:k]}); err != nil {
				break // the server's error comes from CloseAndRecv
			}
			data = data[k:]
		}
		return up.CloseAndRecv()
	}
	noSpool := func() {
		t.Helper()
		err := filepath.WalkDir(l.cfg.DataDir, func(path string, d fs.DirEntry, err error) error {
			if err == nil && strings.HasPrefix(d.Name(), "restore-") {
				t.Fatalf("spooled upload left behind: %s", path)
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}

	// A corrupt upload: refused, nothing changes.
	extra, err := admin.BatchCreateEntry(ctx, &sigilv1.BatchCreateEntryRequest{Entries: []*sigilv1.Entry{{
		SpiffeId: "spiffe://example.org/after", ParentId: "spiffe://example.org/sigil/agent/join_token/node-1",
		Selectors: []*sigilv1.Selector{{Type: "unix", Value: "uid:1"}},
	}}})
	if err != nil || codes.Code(extra.Results[0].Status.Code) != codes.OK {
		t.Fatalf("create: %v %v", extra, err)
	}
	bad := append([]byte{}, snap...)
	bad[len(bad)/2] ^= 0x10
	if _, err := restore(bad, 64<<10); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "checksum mismatch") {
		t.Fatalf("corrupt upload: %v", err)
	}
	if _, err := l.srv.store.Read().Entry(extra.Results[0].Entry.Id); err != nil {
		t.Fatalf("a refused restore changed the state: %v", err)
	}
	noSpool()

	// The good one, in chunks of 1,000 bytes.
	resp, err := restore(snap, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Entries != n {
		t.Fatalf("restored %d entries, want %d", resp.Entries, n)
	}
	clusterWait(t, "the restored state", func() bool {
		_, err := l.srv.store.Read().Entry(extra.Results[0].Entry.Id)
		return err != nil
	})
	noSpool()
}
