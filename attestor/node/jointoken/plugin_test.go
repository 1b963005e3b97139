package jointoken

import (
	"context"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"

	"github.com/sigil-id/sigil/attestor/node"
	"github.com/sigil-id/sigil/plugin"
	"github.com/sigil-id/sigil/registration"
)

func TestPlugin(t *testing.T) {
	if !strings.Contains(strings.Join(registration.SelectorTypes(), ","), Name) {
		t.Fatal("the join_token selector type is not registered")
	}
	token := strings.Repeat("ab", 32)
	// Registered for the registry: an agent with only this plugin lacks a
	// workload attestor (which this package does not register), nothing
	// else.
	_, err := plugin.Build([]plugin.Block{{Kind: plugin.KindNodeAttestor, Name: Name, Body: hcl.EmptyBody()}}, hcl.Range{},
		plugin.Env{Role: plugin.RoleAgent, JoinToken: token})
	if err == nil || !strings.HasPrefix(err.Error(), "plugins: no workload_attestor") {
		t.Fatalf("Build = %v", err)
	}
	if _, err := plugin.Build([]plugin.Block{{Kind: plugin.KindNodeAttestor, Name: Name, Body: hcl.EmptyBody()}}, hcl.Range{},
		plugin.Env{Role: plugin.RoleServer}); err == nil || !strings.HasPrefix(err.Error(), "plugins: no key_manager") {
		t.Fatalf("Build for a server = %v", err)
	}
	v, err := pluginNew(hcl.EmptyBody(), plugin.Env{Role: plugin.RoleAgent, JoinToken: token})
	if err != nil {
		t.Fatal(err)
	}
	if p, err := v.(node.Attestor).Payload(context.Background()); err != nil || string(p) != token {
		t.Fatalf("agent half presents %q, %v", p, err)
	}
	v, err = pluginNew(hcl.EmptyBody(), plugin.Env{Role: plugin.RoleServer})
	if err != nil {
		t.Fatal(err)
	}
	sv := v.(*ServerVerifier)
	tok, hash, id, err := sv.NewJoinToken()
	if err != nil || Validate(tok) != nil || hash != Hash(tok) || id != AgentIDSegment(tok) {
		t.Fatalf("NewJoinToken = %q %q %q %v", tok, hash, id, err)
	}
	if sv.Name() != Name || sv.Verifier == nil {
		t.Fatalf("server half %+v", sv)
	}
}
