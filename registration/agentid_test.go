package registration

import "testing"

// TestAgentIDSegments: an attestor's id may be several path segments
// (k8s_psat's "<cluster>/<node>"), each a valid SPIFFE path segment.
func TestAgentIDSegments(t *testing.T) {
	id, err := AgentID(td, "k8s_psat", "prod/3f0c2a9e-node")
	if err != nil || id.String() != "spiffe://example.org/sigil/agent/k8s_psat/prod/3f0c2a9e-node" {
		t.Fatalf("AgentID = %v, %v", id, err)
	}
	for _, bad := range []string{"prod/", "/node", "prod//node", "prod/../node", "prod/./node", "prod/no de", ""} {
		if id, err := AgentID(td, "k8s_psat", bad); err == nil {
			t.Errorf("AgentID(%q) = %v, want an error", bad, id)
		}
	}
	if _, err := AgentID(td, "a/b", "x"); err == nil {
		t.Error("an attestor name with a slash was accepted")
	}
}
