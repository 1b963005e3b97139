package server

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/audit"
)

// TestBatchCreateEntryAcrossCommands: a batch larger than one Raft command
// (maxEntriesPerCommand) keeps every result at its request index, refuses
// invalid entries before Raft, refuses a duplicate that lands in a later
// command than its original, stores every valid entry once, and audits
// each created entry once with the unix caller's fields.
func TestBatchCreateEntryAcrossCommands(t *testing.T) {
	var mu sync.Mutex
	created := map[string]audit.Event{}
	h := startServerConfig(t, nil, nil, func(cfg *Config) {
		cfg.AuditSink = audit.SinkFunc(func(ev audit.Event) {
			if ev.What == "entry_created" {
				mu.Lock()
				created[ev.Subject] = ev
				mu.Unlock()
			}
		})
	})
	a := h.attest()
	const n = 2*maxEntriesPerCommand + 100
	const dupOf, dupAt = 5, 2*maxEntriesPerCommand + 50
	entries := make([]*sigilv1.Entry, n)
	invalid := map[int]bool{}
	for i := range entries {
		entries[i] = &sigilv1.Entry{SpiffeId: "spiffe://example.org/w/" + strconv.Itoa(i), ParentId: a.id,
			Selectors: []*sigilv1.Selector{{Type: "unix", Value: "uid:" + strconv.Itoa(i)}}}
		if i%700 == 3 || i == maxEntriesPerCommand-1 || i == maxEntriesPerCommand {
			entries[i].SpiffeId = "not a spiffe id " + strconv.Itoa(i)
			invalid[i] = true
		}
	}
	entries[dupAt] = &sigilv1.Entry{SpiffeId: entries[dupOf].SpiffeId, ParentId: a.id,
		Selectors: []*sigilv1.Selector{{Type: "unix", Value: "uid:" + strconv.Itoa(dupOf)}}}
	resp, err := h.admin.BatchCreateEntry(context.Background(), &sigilv1.BatchCreateEntryRequest{Entries: entries})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Results) != n {
		t.Fatalf("%d results for %d entries", len(resp.Results), n)
	}
	ok := 0
	for i, r := range resp.Results {
		code := codes.Code(r.Status.GetCode())
		switch {
		case invalid[i]:
			if code != codes.InvalidArgument || !strings.Contains(r.Status.Message, "spiffe") || r.Entry.GetId() != "" {
				t.Fatalf("invalid entry %d: %v, id %q", i, r.Status, r.Entry.GetId())
			}
		case i == dupAt:
			if code != codes.AlreadyExists {
				t.Fatalf("duplicate entry %d: %v", i, r.Status)
			}
		default:
			if code != codes.OK || r.Entry.GetSpiffeId() != entries[i].SpiffeId || r.Entry.GetId() == "" || r.Entry.GetModifyIndex() == 0 {
				t.Fatalf("entry %d: %v, %v", i, r.Status, r.Entry)
			}
			ok++
			stored, err := h.admin.GetEntry(context.Background(), &sigilv1.GetEntryRequest{Id: r.Entry.Id})
			if err != nil || stored.SpiffeId != entries[i].SpiffeId {
				t.Fatalf("entry %d stored as %v, %v", i, stored, err)
			}
		}
	}
	if want := n - len(invalid) - 1; ok != want {
		t.Fatalf("%d entries created, want %d", ok, want)
	}
	listed, token := 0, ""
	for pages := 0; ; pages++ {
		list, err := h.admin.ListEntries(context.Background(), &sigilv1.ListEntriesRequest{PageToken: token})
		if err != nil || pages > n {
			t.Fatalf("list page %d: %v", pages, err)
		}
		listed += len(list.Entries)
		if token = list.NextPageToken; token == "" {
			break
		}
	}
	if listed != ok {
		t.Fatalf("%d entries listed, %d created", listed, ok)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(created) != ok {
		t.Fatalf("%d entry_created events for %d entries", len(created), ok)
	}
	for _, r := range resp.Results {
		if r.Status.GetCode() != 0 {
			continue
		}
		ev, found := created[r.Entry.Id]
		if !found || ev.Who != audit.Admin {
			t.Fatalf("entry %s: audit event %+v", r.Entry.Id, ev)
		}
		transport := false
		for _, f := range ev.Fields {
			if f.Key == "transport" && f.Value == adminTransportUnix {
				transport = true
			}
		}
		if !transport {
			t.Fatalf("entry %s: audit event lacks the caller's transport: %+v", r.Entry.Id, ev.Fields)
		}
	}
}

// TestBatchUpdateDeleteEntryAcrossCommands: updates and deletes of more
// entries than one Raft command carries apply to every entry, with each
// result at its request index.
func TestBatchUpdateDeleteEntryAcrossCommands(t *testing.T) {
	h := startServer(t)
	a := h.attest()
	const n = 2*maxEntriesPerCommand + 10
	entries := make([]*sigilv1.Entry, n)
	for i := range entries {
		entries[i] = &sigilv1.Entry{SpiffeId: "spiffe://example.org/w/" + strconv.Itoa(i), ParentId: a.id,
			Selectors: []*sigilv1.Selector{{Type: "unix", Value: "uid:" + strconv.Itoa(i)}}}
	}
	ctx := context.Background()
	resp, err := h.admin.BatchCreateEntry(ctx, &sigilv1.BatchCreateEntryRequest{Entries: entries})
	if err != nil {
		t.Fatal(err)
	}
	stored := make([]*sigilv1.Entry, n)
	ids := make([]string, n)
	for i, r := range resp.Results {
		if r.Status.GetCode() != 0 {
			t.Fatalf("create %d: %v", i, r.Status)
		}
		stored[i], ids[i] = r.Entry, r.Entry.Id
		stored[i].X509SvidTtl = 600
	}
	up, err := h.admin.BatchUpdateEntry(ctx, &sigilv1.BatchUpdateEntryRequest{Entries: stored})
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range up.Results {
		if r.Status.GetCode() != 0 || r.Entry.GetId() != ids[i] || r.Entry.GetRevision() != 1 || r.Entry.GetX509SvidTtl() != 600 {
			t.Fatalf("update %d: %v %v", i, r.Status, r.Entry)
		}
	}
	unknown := strings.Repeat("0", 32)
	del, err := h.admin.BatchDeleteEntry(ctx, &sigilv1.BatchDeleteEntryRequest{Ids: append(ids, unknown)})
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range del.Results[:n] {
		if r.Status.GetCode() != 0 || r.Id != ids[i] {
			t.Fatalf("delete %d: %v %s", i, r.Status, r.Id)
		}
	}
	if last := del.Results[n]; codes.Code(last.Status.GetCode()) != codes.NotFound || last.Id != unknown {
		t.Fatalf("delete of an unknown id: %v", last)
	}
	list, err := h.admin.ListEntries(ctx, &sigilv1.ListEntriesRequest{})
	if err != nil || len(list.Entries) != 0 {
		t.Fatalf("entries after deleting all: %d, %v", len(list.GetEntries()), err)
	}
}

// TestBatchCreateEntryOverLimit: one entry past MaxAdminBatch refuses the
// whole call with InvalidArgument naming the limit, and creates nothing;
// exactly MaxAdminBatch is accepted.
func TestBatchCreateEntryOverLimit(t *testing.T) {
	h := startServer(t)
	a := h.attest()
	batch := func(n int) []*sigilv1.Entry {
		out := make([]*sigilv1.Entry, n)
		for i := range out {
			out[i] = &sigilv1.Entry{SpiffeId: "spiffe://example.org/w/" + strconv.Itoa(i), ParentId: a.id,
				Selectors: []*sigilv1.Selector{{Type: "unix", Value: "uid:1"}}}
		}
		return out
	}
	_, err := h.admin.BatchCreateEntry(context.Background(), &sigilv1.BatchCreateEntryRequest{Entries: batch(MaxAdminBatch + 1)})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "exceeds the limit of "+strconv.Itoa(MaxAdminBatch)) {
		t.Fatalf("batch of %d: %v", MaxAdminBatch+1, err)
	}
	list, err := h.admin.ListEntries(context.Background(), &sigilv1.ListEntriesRequest{})
	if err != nil || len(list.Entries) != 0 {
		t.Fatalf("entries after a refused batch: %d, %v", len(list.GetEntries()), err)
	}
	resp, err := h.admin.BatchCreateEntry(context.Background(), &sigilv1.BatchCreateEntryRequest{Entries: batch(MaxAdminBatch)})
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range resp.Results {
		if r.Status.GetCode() != 0 {
			t.Fatalf("entry %d of a batch at the limit: %v", i, r.Status)
		}
	}
}
