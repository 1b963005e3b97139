package raftstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/internal/storepb"
)

func ids(es []*sigilv1.Entry) []string {
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = e.Id
	}
	return out
}

func TestAuthorizedEntries(t *testing.T) {
	other := "spiffe://example.org/sigil/agent/join_token/other"
	banned := "spiffe://example.org/sigil/agent/join_token/banned"
	tf := newTestFSM(t)
	for _, c := range []*storepb.Command{
		attestNode(agent, "", sel("region", "eu"), sel("type", "gpu")),
		attestNode(other, "", sel("region", "us")),
		attestNode(banned, "", sel("region", "eu")),
		banNode(banned),
	} {
		if got := tf.single(c); got != codes.OK {
			t.Fatal(got)
		}
	}
	got := tf.batch(createEntries(
		entry("direct", "spiffe://example.org/web", agent),
		entry("other-direct", "spiffe://example.org/x", other),
		// Aliases: eu matches the agent; eu+gpu matches; eu+ssd does not.
		entry("alias-eu", "spiffe://example.org/eu-nodes", alias, sel("region", "eu")),
		entry("alias-eu-gpu", "spiffe://example.org/gpu-nodes", alias, sel("region", "eu"), sel("type", "gpu")),
		entry("alias-eu-ssd", "spiffe://example.org/ssd-nodes", alias, sel("region", "eu"), sel("disk", "ssd")),
		entry("via-eu", "spiffe://example.org/eu-app", "spiffe://example.org/eu-nodes"),
		entry("via-gpu", "spiffe://example.org/gpu-app", "spiffe://example.org/gpu-nodes"),
		entry("via-ssd", "spiffe://example.org/ssd-app", "spiffe://example.org/ssd-nodes"),
		// Nested below direct, two levels, and a cycle back up.
		entry("nested1", "spiffe://example.org/web/child", "spiffe://example.org/web"),
		entry("nested2", "spiffe://example.org/web/grandchild", "spiffe://example.org/web/child"),
		entry("cycle", "spiffe://example.org/web", "spiffe://example.org/web/grandchild", sel("unix", "uid:2")),
		entry("unrelated", "spiffe://example.org/u", "spiffe://example.org/nobody"),
	))
	for i, c := range got {
		if c != codes.OK {
			t.Fatalf("entry %d: %v", i, c)
		}
	}

	cases := []struct {
		agent   string
		want    []string
		wantErr error
	}{
		{agent, []string{"cycle", "direct", "nested1", "nested2", "via-eu", "via-gpu"}, nil},
		{other, []string{"other-direct"}, nil},
		{banned, nil, ErrBanned},
		{"spiffe://example.org/sigil/agent/join_token/nobody", nil, ErrNotFound},
	}
	for _, c := range cases {
		t.Run(c.agent, func(t *testing.T) {
			es, err := tf.f.reader().AuthorizedEntries(c.agent)
			if c.wantErr != nil {
				if !errors.Is(err, c.wantErr) {
					t.Fatalf("err %v, want %v", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(ids(es), c.want) {
				t.Fatalf("got %v, want %v", ids(es), c.want)
			}
		})
	}
}

func TestAuthorizedEntriesSelfCycle(t *testing.T) {
	// An entry whose spiffe_id is a parent of an entry that names it back.
	tf := newTestFSM(t)
	tf.single(attestNode(agent, ""))
	tf.batch(createEntries(
		entry("a", "spiffe://example.org/a", agent),
		entry("b", "spiffe://example.org/b", "spiffe://example.org/a"),
		entry("a-again", "spiffe://example.org/a", "spiffe://example.org/b"),
	))
	es, err := tf.f.reader().AuthorizedEntries(agent)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ids(es), []string{"a", "a-again", "b"}) {
		t.Fatalf("got %v", ids(es))
	}
}

func TestAuthorizedEntriesWatch(t *testing.T) {
	s := openMem(t, nil)
	ctx := context.Background()
	if _, err := s.Apply(ctx, attestNode(agent, "", sel("region", "eu"))); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Apply(ctx, createEntries(entry("unrelated", "spiffe://example.org/u", "spiffe://example.org/nobody", sel("x", "y")))); err != nil {
		t.Fatal(err)
	}

	type change struct {
		name  string
		cmd   *storepb.Command
		fires bool
	}
	changes := []change{
		// The watch is as fine as the radix tree: other tables and other
		// nodes never fire it; an unrelated entry may (spuriously).
		{"join token", createJoinToken(tokenHash("t"), t0.Add(100*365*24*time.Hour)), false},
		{"another node", attestNode("spiffe://example.org/sigil/agent/x/other", ""), false},
		{"update another node", updateNode("spiffe://example.org/sigil/agent/x/other", "01", 1), false},
		{"entry parented to agent", createEntries(entry("direct", "spiffe://example.org/web", agent)), true},
		{"nested entry", createEntries(entry("nested", "spiffe://example.org/web/c", "spiffe://example.org/web")), true},
		{"alias matching node", createEntries(entry("alias", "spiffe://example.org/eu", alias, sel("region", "eu"))), true},
		{"ban", banNode(agent), true},
	}
	for _, c := range changes {
		r := s.Read()
		if _, err := r.AuthorizedEntries(agent); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		ws := r.WatchSet()
		if _, err := s.Apply(ctx, c.cmd); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		wctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		err := ws.WatchCtx(wctx)
		cancel()
		if fired := err == nil; fired != c.fires {
			t.Fatalf("%s: watch fired=%v, want %v", c.name, fired, c.fires)
		}
	}
	if _, err := s.Read().AuthorizedEntries(agent); !errors.Is(err, ErrBanned) {
		t.Fatalf("after ban: %v", err)
	}
}

func TestListEntries(t *testing.T) {
	tf := newTestFSM(t)
	var all []*sigilv1.Entry
	for i := range 25 {
		parent := agent
		if i%2 == 1 {
			parent = "spiffe://example.org/sigil/agent/join_token/odd"
		}
		sels := []*sigilv1.Selector{sel("unix", fmt.Sprintf("uid:%d", i))}
		if i%3 == 0 {
			sels = append(sels, sel("k8s", "ns:prod"))
		}
		all = append(all, entry(fmt.Sprintf("e%02d", i), fmt.Sprintf("spiffe://example.org/svc%d", i%5), parent, sels...))
	}
	// Create in reverse so that id order is not insertion order.
	rev := slices.Clone(all)
	slices.Reverse(rev)
	for _, c := range tf.batch(createEntries(rev...)) {
		if c != codes.OK {
			t.Fatal(c)
		}
	}
	want := func(pred func(i int) bool) []string {
		var out []string
		for i, e := range all {
			if pred(i) {
				out = append(out, e.Id)
			}
		}
		return out
	}
	cases := []struct {
		name string
		f    EntryFilter
		size int
		want []string
	}{
		{"all", EntryFilter{}, 7, want(func(int) bool { return true })},
		{"all default page", EntryFilter{}, 0, want(func(int) bool { return true })},
		{"by spiffe id", EntryFilter{SPIFFEID: "spiffe://example.org/svc1"}, 2, want(func(i int) bool { return i%5 == 1 })},
		{"by parent", EntryFilter{ParentID: agent}, 4, want(func(i int) bool { return i%2 == 0 })},
		{"by selector", EntryFilter{Selectors: []*sigilv1.Selector{sel("k8s", "ns:prod")}}, 3, want(func(i int) bool { return i%3 == 0 })},
		{"by two selectors", EntryFilter{Selectors: []*sigilv1.Selector{sel("k8s", "ns:prod"), sel("unix", "uid:6")}}, 3, []string{"e06"}},
		{"parent and selector", EntryFilter{ParentID: agent, Selectors: []*sigilv1.Selector{sel("k8s", "ns:prod")}}, 1, want(func(i int) bool { return i%6 == 0 })},
		{"spiffe and parent", EntryFilter{SPIFFEID: "spiffe://example.org/svc0", ParentID: "spiffe://example.org/sigil/agent/join_token/odd"}, 10, []string{"e05", "e15"}},
		{"nothing", EntryFilter{SPIFFEID: "spiffe://example.org/none"}, 10, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := tf.f.reader()
			var got []string
			tok := ""
			pages := 0
			for {
				es, next, err := r.ListEntries(c.f, tok, c.size)
				if err != nil {
					t.Fatal(err)
				}
				if c.size > 0 && len(es) > c.size {
					t.Fatalf("page of %d > %d", len(es), c.size)
				}
				got = append(got, ids(es)...)
				pages++
				if next == "" {
					break
				}
				if pages > 100 {
					t.Fatal("pagination does not end")
				}
				tok = next
			}
			if !slices.Equal(got, c.want) {
				t.Fatalf("got %v, want %v", got, c.want)
			}
			if c.size > 0 && len(c.want) > c.size && pages < 2 {
				t.Fatalf("expected several pages, got %d", pages)
			}
		})
	}
	for _, bad := range []string{"!!!", "aGVsbG8", "djE6"} { // not base64, no prefix, empty id
		if _, _, err := tf.f.reader().ListEntries(EntryFilter{}, bad, 10); err == nil {
			t.Errorf("malformed token %q accepted", bad)
		}
	}
}

func TestListNodes(t *testing.T) {
	tf := newTestFSM(t)
	var want []string
	for i := range 5 {
		id := fmt.Sprintf("spiffe://example.org/sigil/agent/x/n%d", i)
		want = append(want, id)
		tf.single(attestNode(id, ""))
	}
	r := tf.f.reader()
	var got []string
	tok := ""
	for {
		ns, next, err := r.ListNodes(tok, 2)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range ns {
			got = append(got, n.SpiffeId)
		}
		if next == "" {
			break
		}
		tok = next
	}
	if !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	if _, _, err := r.ListNodes("%%", 2); err == nil {
		t.Fatal("malformed token accepted")
	}
}
