package plugin

import (
	"context"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"

	"github.com/sigil-id/sigil/alert"
	"github.com/sigil-id/sigil/attestor/node"
	"github.com/sigil-id/sigil/ca"
)

// The server-role fakes of this file let Build assemble a whole server
// plugin set.
type (
	fakeVerifier struct{}
	fakeKeyStore struct{}
	fakeNotifier struct{ name string }
)

func (fakeVerifier) Name() string { return "nv" }
func (fakeVerifier) Verify(context.Context, node.State, node.Exchange) (*node.Result, error) {
	return nil, nil
}
func (fakeKeyStore) OpenKeyManager(context.Context, ca.KeyScope) (ca.KeyManager, error) {
	return nil, nil
}
func (fakeKeyStore) Persistent() bool                            { return false }
func (n fakeNotifier) Name() string                              { return n.name }
func (fakeNotifier) Notify(context.Context, []alert.Alert) error { return nil }

func init() {
	Register(KindNodeAttestor, "nv_fake", func(hcl.Body, Env) (any, error) { return fakeVerifier{}, nil })
	Register(KindKeyManager, "km_fake", func(hcl.Body, Env) (any, error) { return fakeKeyStore{}, nil })
	for _, name := range []string{"mem_a", "mem_b"} {
		Register(KindNotifier, name, func(body hcl.Body, _ Env) (any, error) {
			if err := NoSettings(body); err != nil {
				return nil, err
			}
			return fakeNotifier{name: name}, nil
		})
	}
}

func TestBuildNotifiersZeroOrMany(t *testing.T) {
	base := "node_attestor \"nv_fake\" {}\nkey_manager \"km_fake\" {}\n"
	set, err := Build(parse(t, base), hcl.Range{}, Env{Role: RoleServer})
	if err != nil {
		t.Fatalf("a server without notifiers: %v", err)
	}
	if got := Values[alert.Notifier](set, KindNotifier); len(got) != 0 {
		t.Fatalf("notifiers = %v", got)
	}
	set, err = Build(parse(t, base+"notifier \"mem_a\" {}\nnotifier \"mem_b\" {}\n"), hcl.Range{}, Env{Role: RoleServer})
	if err != nil {
		t.Fatal(err)
	}
	got := Values[alert.Notifier](set, KindNotifier)
	if len(got) != 2 || got[0].Name() != "mem_a" || got[1].Name() != "mem_b" {
		t.Fatalf("notifiers = %v", got)
	}
	_, err = Build(parse(t, "notifier \"mem_a\" {}\n"), hcl.Range{}, Env{Role: RoleAgent})
	if err == nil || !strings.Contains(err.Error(), "notifier plugins belong in the server block") {
		t.Fatalf("a notifier in the agent block: %v", err)
	}
}
