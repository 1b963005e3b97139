package server

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// TestAdminRefusesOversizedAndInvalidInput: the admin API applies the input
// limits of package registration to creates, updates, list filters, agent
// IDs and join token lifetimes; every refusal names the limit and changes
// nothing (entry list, the entry itself and the Raft index).
func TestAdminRefusesOversizedAndInvalidInput(t *testing.T) {
	h := startServer(t)
	ctx := context.Background()
	a := h.attest()
	good := h.createEntry("spiffe://example.org/web", a.id, "unix:uid:1000")
	before, err := h.admin.ListEntries(ctx, &sigilv1.ListEntriesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	index := h.srv.store.LastIndex()

	sel := func(typ, val string) []*sigilv1.Selector { return []*sigilv1.Selector{{Type: typ, Value: val}} }
	longID := "spiffe://example.org/" + strings.Repeat("a", 6000)
	cases := []struct {
		name string
		e    *sigilv1.Entry
		want string
	}{
		{"6 KB SPIFFE ID", &sigilv1.Entry{SpiffeId: longID, ParentId: a.id, Selectors: sel("unix", "uid:1")}, "SPIFFE IDs are at most 2048 bytes"},
		{"6 KB parent ID", &sigilv1.Entry{SpiffeId: "spiffe://example.org/x", ParentId: longID, Selectors: sel("unix", "uid:1")}, "parent_id is 6021 bytes long"},
		{"1 MiB selector", &sigilv1.Entry{SpiffeId: "spiffe://example.org/x", ParentId: a.id, Selectors: sel("unix", "path:/"+strings.Repeat("p", 1<<20))}, "is too long (at most 4096)"},
		{"reserved path case", &sigilv1.Entry{SpiffeId: "spiffe://example.org/SIGIL/agent/x", ParentId: a.id, Selectors: sel("unix", "uid:1")}, "reserved for Sigil"},
		{"uid abc", &sigilv1.Entry{SpiffeId: "spiffe://example.org/x", ParentId: a.id, Selectors: sel("unix", "uid:abc")}, "not a numeric id"},
		{"uid -1", &sigilv1.Entry{SpiffeId: "spiffe://example.org/x", ParentId: a.id, Selectors: sel("unix", "uid:-1")}, "not a numeric id"},
		{"unknown type", &sigilv1.Entry{SpiffeId: "spiffe://example.org/x", ParentId: a.id, Selectors: sel("foo", "bar")}, `unknown selector type "foo"`},
		{"1 s X.509 TTL", &sigilv1.Entry{SpiffeId: "spiffe://example.org/x", ParentId: a.id, Selectors: sel("unix", "uid:1"), X509SvidTtl: 1}, "x509_svid_ttl 1s out of range"},
		{"1 s JWT TTL", &sigilv1.Entry{SpiffeId: "spiffe://example.org/x", ParentId: a.id, Selectors: sel("unix", "uid:1"), JwtSvidTtl: 1}, "jwt_svid_ttl 1s out of range"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cr, err := h.admin.BatchCreateEntry(ctx, &sigilv1.BatchCreateEntryRequest{Entries: []*sigilv1.Entry{c.e}})
			if err != nil {
				t.Fatal(err)
			}
			if st := cr.Results[0].Status; codes.Code(st.Code) != codes.InvalidArgument || !strings.Contains(st.Message, c.want) {
				t.Fatalf("create: %v, want InvalidArgument with %q", st, c.want)
			}
			upd := proto.Clone(c.e).(*sigilv1.Entry)
			upd.Id = good.Id
			ur, err := h.admin.BatchUpdateEntry(ctx, &sigilv1.BatchUpdateEntryRequest{Entries: []*sigilv1.Entry{upd}})
			if err != nil {
				t.Fatal(err)
			}
			if st := ur.Results[0].Status; codes.Code(st.Code) != codes.InvalidArgument || !strings.Contains(st.Message, c.want) {
				t.Fatalf("update: %v, want InvalidArgument with %q", st, c.want)
			}
		})
	}

	// List filters and agent IDs are bounded too.
	if _, err := h.admin.ListEntries(ctx, &sigilv1.ListEntriesRequest{Selectors: sel("unix", "path:/"+strings.Repeat("p", 1<<20))}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("list with a 1 MiB selector: %v", err)
	}
	if _, err := h.admin.ListEntries(ctx, &sigilv1.ListEntriesRequest{SpiffeId: longID}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("list with a long ID: %v", err)
	}
	if _, err := h.admin.GetAgent(ctx, &sigilv1.GetAgentRequest{SpiffeId: "spiffe://example.org/sigil/agent/x/" + strings.Repeat("a", 3000)}); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "at most 2048 bytes") {
		t.Fatalf("get agent with a long ID: %v", err)
	}

	// Entry ids that cannot exist cost no Raft write.
	longEntryID := strings.Repeat("i", 256)
	upd := proto.Clone(good).(*sigilv1.Entry)
	upd.Id = longEntryID
	if ur, err := h.admin.BatchUpdateEntry(ctx, &sigilv1.BatchUpdateEntryRequest{Entries: []*sigilv1.Entry{upd}}); err != nil || codes.Code(ur.Results[0].Status.Code) != codes.InvalidArgument || !strings.Contains(ur.Results[0].Status.Message, "entry id of 256 bytes is too long") {
		t.Fatalf("update with a 256-byte id: %v %v", ur, err)
	}
	dr, err := h.admin.BatchDeleteEntry(ctx, &sigilv1.BatchDeleteEntryRequest{Ids: []string{longEntryID, "", "a\nb"}})
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range dr.Results {
		if codes.Code(r.Status.Code) != codes.InvalidArgument {
			t.Fatalf("delete %d: %v", i, r.Status)
		}
	}
	if _, err := h.admin.GetEntry(ctx, &sigilv1.GetEntryRequest{Id: longEntryID}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("get with a 256-byte id: %v", err)
	}

	// Join tokens: ten years and one second past a day are refused, a day is not.
	for _, ttl := range []int32{10 * 365 * 24 * 3600, 24*3600 + 1} {
		if _, err := h.admin.CreateJoinToken(ctx, &sigilv1.CreateJoinTokenRequest{Ttl: ttl}); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "want 1s to 24h0m0s") {
			t.Fatalf("join token ttl %d: %v", ttl, err)
		}
	}

	if got := h.srv.store.LastIndex(); got != index {
		t.Fatalf("Raft index moved from %d to %d on refused input", index, got)
	}
	after, err := h.admin.ListEntries(ctx, &sigilv1.ListEntriesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(before, after) {
		t.Fatalf("entries changed:\nbefore %v\nafter  %v", before, after)
	}
	if _, err := h.admin.CreateJoinToken(ctx, &sigilv1.CreateJoinTokenRequest{Ttl: 24 * 3600}); err != nil {
		t.Fatalf("a one-day join token refused: %v", err)
	}
}
