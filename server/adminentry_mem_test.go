package server

import (
	"context"
	"fmt"
	"runtime"
	"testing"

	"go.uber.org/zap"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// liveHeap is the live heap after a full collection.
func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// realisticEntries are entries [lo, hi) of a Kubernetes-shaped store: one
// SPIFFE ID per service account, parented to parent, with a namespace
// selector shared by many entries and a service account selector of their
// own.
func realisticEntries(parent string, lo, hi int) []*sigilv1.Entry {
	out := make([]*sigilv1.Entry, 0, hi-lo)
	for i := lo; i < hi; i++ {
		ns := fmt.Sprintf("ns-%d", i%50)
		sa := fmt.Sprintf("sa-%d", i)
		out = append(out, &sigilv1.Entry{
			SpiffeId: "spiffe://example.org/ns/" + ns + "/sa/" + sa, ParentId: parent,
			Selectors: []*sigilv1.Selector{{Type: "unix", Value: "group:" + ns}, {Type: "unix", Value: "user:" + sa}},
		})
	}
	return out
}

// createThroughAdmin creates entries [lo, hi) with BatchCreateEntry calls
// of MaxAdminBatch entries and returns their ids.
func createThroughAdmin(tb testing.TB, h *harness, parent string, lo, hi int) []string {
	tb.Helper()
	var ids []string
	for i := lo; i < hi; i += MaxAdminBatch {
		resp, err := h.admin.BatchCreateEntry(context.Background(), &sigilv1.BatchCreateEntryRequest{
			Entries: realisticEntries(parent, i, min(i+MaxAdminBatch, hi))})
		if err != nil {
			tb.Fatal(err)
		}
		for _, r := range resp.Results {
			if r.Status.GetCode() != 0 {
				tb.Fatalf("entry refused: %s", r.Status.GetMessage())
			}
			ids = append(ids, r.Entry.Id)
		}
	}
	return ids
}

// BenchmarkAdminEntryHeap creates 100,000 entries through the admin API of
// a real single-node server and reports the live heap they added to the
// whole process (store, Raft, gRPC), per entry. The server logs nowhere:
// the test harness's log observer would keep every audit event.
func BenchmarkAdminEntryHeap(b *testing.B) {
	for n := 0; n < b.N; n++ {
		h := startServerConfig(b, nil, nil, func(c *Config) { c.Logger = zap.NewNop() })
		a := h.attest()
		before := liveHeap()
		createThroughAdmin(b, h, a.id, 0, 100000)
		after := liveHeap()
		b.ReportMetric(float64(int64(after)-int64(before))/100000, "heap-B/entry")
		runtime.KeepAlive(h)
	}
	b.ReportMetric(0, "ns/op")
}
