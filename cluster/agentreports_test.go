package cluster

import (
	"context"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sigil-id/sigil/internal/clusterpb"
)

// TestClusterAgentReports: AgentReports is answered by the function of
// Config.AgentReports, for members only: a member's call reaches it (with
// the caller's node name in the context), a server without the function
// answers Unimplemented, and neither a caller without an SVID nor a
// removed server reaches it.
func TestClusterAgentReports(t *testing.T) {
	var mu sync.Mutex
	var callers []string
	answer := func(ctx context.Context, req *clusterpb.AgentReportsRequest) (*clusterpb.AgentReportsResponse, error) {
		mu.Lock()
		defer mu.Unlock()
		name, _ := ctx.Value(peerKey{}).(string)
		callers = append(callers, name)
		return &clusterpb.AgentReportsResponse{Generation: req.Since + 1, Instance: "i1"}, nil
	}
	calls := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), callers...)
	}
	tc := newTestCluster(t, nil)
	s0 := tc.mustStart("s0", nodeOpts{bootstrap: true})
	s1 := tc.mustStart("s1", nodeOpts{join: []string{s0.addr}, tune: func(c *Config) { c.AgentReports = answer }})
	s2 := tc.mustStart("s2", nodeOpts{join: []string{s0.addr}})
	tc.waitMembers(3)

	cc, err := s0.c.Conn(s1.addr)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := clusterpb.NewClusterClient(cc).AgentReports(context.Background(), &clusterpb.AgentReportsRequest{Since: 41})
	if err != nil || resp.Generation != 42 || resp.Instance != "i1" {
		t.Fatalf("member's call: %v %v", resp, err)
	}
	if got := calls(); len(got) != 1 || got[0] != "s0" {
		t.Fatalf("calls seen by the function: %v", got)
	}
	cc1, err := s1.c.Conn(s0.addr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := clusterpb.NewClusterClient(cc1).AgentReports(context.Background(), &clusterpb.AgentReportsRequest{}); status.Code(err) != codes.Unimplemented {
		t.Fatalf("server without the function: %v, want Unimplemented", err)
	}

	// A removed server is refused.
	if err := tc.leader().store.RemoveServer(context.Background(), "s2"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "s1 without s2", func() bool { return !s1.store.IsMember("s2") })
	cc2, err := s2.c.Conn(s1.addr)
	if err != nil {
		t.Fatal(err)
	}
	_, err = clusterpb.NewClusterClient(cc2).AgentReports(context.Background(), &clusterpb.AgentReportsRequest{})
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "not a member") {
		t.Fatalf("removed server's call: %v, want PermissionDenied", err)
	}
	// A caller without an SVID is refused.
	s0.svid.Store(nil)
	cc3, err := s0.c.Conn(s1.addr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := clusterpb.NewClusterClient(cc3).AgentReports(context.Background(), &clusterpb.AgentReportsRequest{}); err == nil {
		t.Fatal("call without an SVID answered")
	}
	if got := calls(); len(got) != 1 {
		t.Fatalf("refused calls reached the function: %v", got)
	}
}
