package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/clock"
)

// attestHMAC attests node name with the hmac_test verifier (no rounds) on
// the unary Attest and returns the agent.
func (h *harness) attestHMAC(name string) (*testAgent, error) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	resp, err := h.nodeClient(nil).Attest(context.Background(), &sigilv1.AttestRequest{
		AttestationType: hmacName, Payload: []byte(name), Csr: newCSR(h.t, key, "agent"),
	})
	if err != nil {
		return nil, err
	}
	cert := &tls.Certificate{Certificate: resp.SvidChain, PrivateKey: key}
	return &testAgent{id: resp.SpiffeId, key: key, chain: resp.SvidChain, node: h.nodeClient(cert)}, nil
}

func listAgentIDs(t *testing.T, h *harness, pageSize int32, sels ...*sigilv1.Selector) []string {
	t.Helper()
	var ids []string
	tok := ""
	for range 100 {
		resp, err := h.admin.ListAgents(context.Background(), &sigilv1.ListAgentsRequest{PageSize: pageSize, PageToken: tok, Selectors: sels})
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range resp.Agents {
			ids = append(ids, a.SpiffeId)
		}
		if tok = resp.NextPageToken; tok == "" {
			return ids
		}
	}
	t.Fatal("paging does not end")
	return nil
}

// TestAdminListAgentsBySelector: ListAgents filters on the agents' node
// selectors on the server, pages, and refuses a malformed filter.
func TestAdminListAgentsBySelector(t *testing.T) {
	h := startServerWith(t, clock.NewFake(time.Now()), nil)
	h.addVerifier(hmacVerifier{key: []byte("k")})
	for _, n := range []string{"n1", "n2", "n3"} {
		if _, err := h.attestHMAC(n); err != nil {
			t.Fatal(err)
		}
	}
	h.attest() // a join token agent
	if all := listAgentIDs(t, h, 1); len(all) != 4 {
		t.Fatalf("all agents: %v", all)
	}
	got := listAgentIDs(t, h, 1, &sigilv1.Selector{Type: hmacName, Value: "n2"})
	if len(got) != 1 || got[0] != "spiffe://example.org/sigil/agent/hmac_test/n2" {
		t.Fatalf("filtered: %v", got)
	}
	if got := listAgentIDs(t, h, 10, &sigilv1.Selector{Type: hmacName, Value: "n2"}, &sigilv1.Selector{Type: hmacName, Value: "n3"}); len(got) != 0 {
		t.Fatalf("agents with both selectors: %v", got)
	}
	for _, bad := range []*sigilv1.Selector{{Type: "", Value: "x"}, {Type: "a:b", Value: "x"}, {Type: "t", Value: ""}} {
		_, err := h.admin.ListAgents(context.Background(), &sigilv1.ListAgentsRequest{Selectors: []*sigilv1.Selector{bad}})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "agent filter") {
			t.Errorf("filter %v: %v, want InvalidArgument", bad, err)
		}
	}
	many := make([]*sigilv1.Selector, maxAgentFilterSelectors+1)
	for i := range many {
		many[i] = &sigilv1.Selector{Type: "t", Value: "v"}
	}
	if _, err := h.admin.ListAgents(context.Background(), &sigilv1.ListAgentsRequest{Selectors: many}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("too many selectors: %v", err)
	}
}

// TestAdminAgentLastSeen: an agent's last seen is its attestation time,
// then its last renewal's.
func TestAdminAgentLastSeen(t *testing.T) {
	clk := clock.NewFake(time.Now())
	h := startServerWith(t, clk, nil)
	h.addVerifier(hmacVerifier{key: []byte("k")})
	a, err := h.attestHMAC("n1")
	if err != nil {
		t.Fatal(err)
	}
	attested := clk.Now().Unix()
	n, err := h.admin.GetAgent(context.Background(), &sigilv1.GetAgentRequest{SpiffeId: a.id})
	if err != nil || n.LastSeen != attested || n.AttestationType != hmacName || len(n.Selectors) != 1 {
		t.Fatalf("after attestation: %v %v", n, err)
	}
	clk.Add(10 * time.Second)
	if _, err := a.node.RenewAgent(context.Background(), &sigilv1.RenewAgentRequest{Csr: newCSR(t, a.key, "a")}); err != nil {
		t.Fatal(err)
	}
	n, err = h.admin.GetAgent(context.Background(), &sigilv1.GetAgentRequest{SpiffeId: a.id})
	if err != nil || n.LastSeen != clk.Now().Unix() || n.CreatedAt != attested {
		t.Fatalf("after renewal: %v %v, want last seen %d", n, err, clk.Now().Unix())
	}
}

// TestAdminBanSurvivesEviction: evicting a banned agent is refused (it
// would let the agent attest again), so it stays banned and its
// attestations are refused; banning an evicted agent records the ban, so
// it cannot attest again either. An evicted agent that is not banned
// attests again.
func TestAdminBanSurvivesEviction(t *testing.T) {
	h := startServerWith(t, clock.NewFake(time.Now()), nil)
	h.addVerifier(hmacVerifier{key: []byte("k")})
	ctx := context.Background()

	a, err := h.attestHMAC("n1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.admin.EvictAgent(ctx, &sigilv1.EvictAgentRequest{SpiffeId: a.id}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.attestHMAC("n1"); err != nil {
		t.Fatalf("an evicted agent attests again: %v", err)
	}

	// Banned, then evicted.
	if _, err := h.admin.BanAgent(ctx, &sigilv1.BanAgentRequest{SpiffeId: a.id}); err != nil {
		t.Fatal(err)
	}
	_, err = h.admin.EvictAgent(ctx, &sigilv1.EvictAgentRequest{SpiffeId: a.id})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "banned") {
		t.Fatalf("evict of a banned agent: %v, want FailedPrecondition", err)
	}
	if _, err := h.attestHMAC("n1"); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "banned") {
		t.Fatalf("banned agent attests: %v", err)
	}

	// Evicted, then banned.
	b, err := h.attestHMAC("n2")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.admin.EvictAgent(ctx, &sigilv1.EvictAgentRequest{SpiffeId: b.id}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.admin.BanAgent(ctx, &sigilv1.BanAgentRequest{SpiffeId: b.id}); err != nil {
		t.Fatalf("ban of an evicted agent: %v", err)
	}
	if _, err := h.attestHMAC("n2"); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "banned") {
		t.Fatalf("evicted then banned agent attests: %v", err)
	}
	n, err := h.admin.GetAgent(ctx, &sigilv1.GetAgentRequest{SpiffeId: b.id})
	if err != nil || !n.Banned {
		t.Fatalf("evicted then banned agent: %v %v", n, err)
	}
	// An ID never seen can be banned ahead; a malformed one is refused.
	if _, err := h.admin.BanAgent(ctx, &sigilv1.BanAgentRequest{SpiffeId: "spiffe://example.org/sigil/agent/hmac_test/n3"}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.attestHMAC("n3"); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("agent banned ahead attests: %v", err)
	}
	if _, err := h.admin.BanAgent(ctx, &sigilv1.BanAgentRequest{SpiffeId: "spiffe://example.org/web"}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("ban of a non-agent ID: %v", err)
	}
}
