package cli

import (
	"strings"
	"testing"
	"time"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// TestAgentListSelectorsAndLastSeen: `sigil agent list -selector` (repeatable)
// sends the filter to the server and pages through its answer; list and
// show print each agent's attestation type, node selectors, serial,
// expiry and last seen.
func TestAgentListSelectorsAndLastSeen(t *testing.T) {
	f := newFakeAdmin() // two agents a page
	t0 := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	for i, c := range []struct{ id, cluster string }{{"n1", "prod"}, {"n2", "dev"}, {"n3", "prod"}, {"n4", "prod"}} {
		f.agents = append(f.agents, &sigilv1.AttestedNode{
			SpiffeId:        "spiffe://example.org/sigil/agent/k8s_psat/" + c.cluster + "/" + c.id,
			AttestationType: "k8s_psat",
			CertSerial:      "0a1b",
			CertNotAfter:    t0.Add(time.Hour).Unix(),
			CreatedAt:       t0.Unix(),
			LastSeen:        t0.Add(time.Duration(i) * time.Minute).Unix(),
			Selectors: []*sigilv1.Selector{
				{Type: "k8s_psat", Value: "cluster:" + c.cluster},
				{Type: "k8s_psat", Value: "agent_node_name:" + c.id},
			},
		})
	}
	sock := startFakeAdmin(t, f)

	code, out, errOut := run(t, "agent", "list", "-socket", sock, "-selector", "k8s_psat:cluster:prod")
	if code != 0 || !strings.HasPrefix(out, "Found 3 agents\n") || strings.Contains(out, "/dev/n2") {
		t.Fatalf("agent list -selector: %d %q %q", code, out, errOut)
	}
	code, out, _ = run(t, "agent", "list", "-socket", sock, "-selector", "k8s_psat:cluster:prod", "-selector", "k8s_psat:agent_node_name:n3")
	if code != 0 || !strings.HasPrefix(out, "Found 1 agent\n") || !strings.Contains(out, "/prod/n3") {
		t.Fatalf("agent list, two selectors: %d %q", code, out)
	}
	code, out, _ = run(t, "agent", "show", "-socket", sock, "-spiffe-id", "spiffe://example.org/sigil/agent/k8s_psat/dev/n2")
	want := `SPIFFE ID        : spiffe://example.org/sigil/agent/k8s_psat/dev/n2
Attestation type : k8s_psat
SVID serial      : 0a1b
SVID expires at  : 2026-11-30T13:00:00Z
Banned           : false
Selector         : k8s_psat:cluster:dev
Selector         : k8s_psat:agent_node_name:n2
Last seen        : 2026-11-30T12:01:00Z
Attested at      : 2026-11-30T12:00:00Z
`
	if code != 0 || out != want {
		t.Fatalf("agent show: %d\n%s\nwant\n%s", code, out, want)
	}
	for _, bad := range []string{"nocolon", ":x", "k8s_psat:"} {
		if code, _, errOut := run(t, "agent", "list", "-socket", sock, "-selector", bad); code != ExitUsage || !strings.Contains(errOut, "invalid -selector") {
			t.Errorf("-selector %q: %d %q", bad, code, errOut)
		}
	}
}
