package raftstore

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/internal/storepb"
)

func evictKeepBanned(id string) *storepb.Command {
	return &storepb.Command{Op: &storepb.Command_EvictNode{EvictNode: &storepb.EvictNode{SpiffeId: id, KeepBanned: true}}}
}

func banUnknown(id string) *storepb.Command {
	return &storepb.Command{Op: &storepb.Command_BanNode{BanNode: &storepb.BanNode{SpiffeId: id, BanUnknown: true}}}
}

// TestBanSurvivesEviction: an eviction written with keep_banned (as the
// servers write it now) is refused for a banned node, which stays banned
// and cannot attest; one written without it (by an earlier version)
// still removes the node, as it did.
func TestBanSurvivesEviction(t *testing.T) {
	tf := newTestFSM(t)
	if c := tf.single(attestNode(agent, "")); c != codes.OK {
		t.Fatalf("attest: %v", c)
	}
	if c := tf.single(evictKeepBanned(agent)); c != codes.OK {
		t.Fatalf("evict of an unbanned node: %v", c)
	}
	if c := tf.single(attestNode(agent, "")); c != codes.OK {
		t.Fatalf("attest after evict: %v", c)
	}
	if c := tf.single(banNode(agent)); c != codes.OK {
		t.Fatalf("ban: %v", c)
	}
	if c := tf.single(evictKeepBanned(agent)); c != codes.FailedPrecondition {
		t.Fatalf("evict of a banned node: %v, want FailedPrecondition", c)
	}
	if n, err := tf.f.reader().Node(agent); err != nil || !n.Banned {
		t.Fatalf("after the refused eviction: %v %v, want banned", n, err)
	}
	if c := tf.single(attestNode(agent, "")); c != codes.PermissionDenied {
		t.Fatalf("banned node attests: %v, want PermissionDenied", c)
	}
	// An old-form eviction (replayed from an earlier version's log)
	// applies as it did.
	if c := tf.single(evictNode(agent)); c != codes.OK {
		t.Fatalf("old-form evict of a banned node: %v, want OK", c)
	}
	if _, err := tf.f.reader().Node(agent); !errors.Is(err, ErrNotFound) {
		t.Fatalf("old-form evict kept the node: %v", err)
	}
}

// TestBanUnknownNode: a ban written with ban_unknown for an ID that is
// not attested (evicted first) records it banned, so that it cannot
// attest; without it the command fails with NotFound, as it did.
func TestBanUnknownNode(t *testing.T) {
	tf := newTestFSM(t)
	id := "spiffe://example.org/sigil/agent/oidc/github/repo/main"
	if c := tf.single(banNode(id)); c != codes.NotFound {
		t.Fatalf("old-form ban of an unknown node: %v, want NotFound", c)
	}
	tf.now = t0.Add(time.Minute)
	if c := tf.single(banUnknown(id)); c != codes.OK {
		t.Fatalf("ban unknown: %v", c)
	}
	n, err := tf.f.reader().Node(id)
	if err != nil || !n.Banned || n.AttestationType != "oidc" || n.CreatedAt != t0.Add(time.Minute).Unix() {
		t.Fatalf("banned record %v %v", n, err)
	}
	if c := tf.single(attestNode(id, "")); c != codes.PermissionDenied {
		t.Fatalf("attest of a banned unknown node: %v, want PermissionDenied", c)
	}
	if c := tf.single(banUnknown(id)); c != codes.OK {
		t.Fatalf("ban again: %v", c)
	}
	for _, bad := range []string{"spiffe://example.org/web", "spiffe://other.org/sigil/agent/x/y", "not an id"} {
		if c := tf.single(banUnknown(bad)); c != codes.InvalidArgument {
			t.Errorf("ban unknown %q: %v, want InvalidArgument", bad, c)
		}
	}
}

// TestUpdateNodeRecordsLastSeen: a renewal (UpdateNode) sets last_seen to
// the command's time; attestation keeps what the command carries.
func TestUpdateNodeRecordsLastSeen(t *testing.T) {
	tf := newTestFSM(t)
	cmd := attestNode(agent, "")
	cmd.GetAttestNode().Node.LastSeen = t0.Unix()
	if c := tf.single(cmd); c != codes.OK {
		t.Fatalf("attest: %v", c)
	}
	if n, _ := tf.f.reader().Node(agent); n.LastSeen != t0.Unix() {
		t.Fatalf("last seen after attestation = %d, want %d", n.LastSeen, t0.Unix())
	}
	tf.now = t0.Add(20 * time.Minute)
	if c := tf.single(updateNode(agent, "0b", t0.Add(time.Hour).Unix())); c != codes.OK {
		t.Fatalf("update: %v", c)
	}
	n, _ := tf.f.reader().Node(agent)
	if n.LastSeen != tf.now.Unix() || n.CreatedAt != t0.Unix() {
		t.Fatalf("after renewal: last seen %d created %d, want %d and %d", n.LastSeen, n.CreatedAt, tf.now.Unix(), t0.Unix())
	}
}

// TestListNodesMatching: only nodes with all the given selectors, paged.
func TestListNodesMatching(t *testing.T) {
	tf := newTestFSM(t)
	prod := sel("k8s_psat", "cluster:prod")
	var want []string
	for i := range 7 {
		id := fmt.Sprintf("spiffe://example.org/sigil/agent/k8s_psat/n%d", i)
		sels := []*sigilv1.Selector{sel("k8s_psat", fmt.Sprintf("agent_node_name:n%d", i))}
		if i%2 == 0 {
			sels = append(sels, prod)
			want = append(want, id)
		}
		tf.single(attestNode(id, "", sels...))
	}
	r := tf.f.reader()
	var got []string
	tok := ""
	for pages := 0; ; pages++ {
		ns, next, err := r.ListNodesMatching([]*sigilv1.Selector{prod}, tok, 2)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range ns {
			got = append(got, n.SpiffeId)
		}
		if next == "" {
			break
		}
		if pages > 10 {
			t.Fatal("paging does not end")
		}
		tok = next
	}
	if !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	both := []*sigilv1.Selector{prod, sel("k8s_psat", "agent_node_name:n4")}
	if ns, _, err := r.ListNodesMatching(both, "", 10); err != nil || len(ns) != 1 || ns[0].SpiffeId != want[2] {
		t.Fatalf("two selectors: %v %v", ns, err)
	}
	if ns, _, err := r.ListNodesMatching([]*sigilv1.Selector{sel("k8s_psat", "cluster:dev")}, "", 10); err != nil || len(ns) != 0 {
		t.Fatalf("no match: %v %v", ns, err)
	}
	if _, _, err := r.ListNodesMatching([]*sigilv1.Selector{nil}, "", 10); err == nil {
		t.Fatal("nil selector accepted")
	}
}
