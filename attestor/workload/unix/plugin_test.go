package unix

import (
	"strings"
	"testing"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/plugin"
	"github.com/sigil-id/sigil/registration"
)

func TestPluginRegistered(t *testing.T) {
	if !strings.Contains(strings.Join(registration.SelectorTypes(), ","), Name) {
		t.Fatal("the unix selector type is not registered")
	}
	if err := registration.ValidateSelectorInput(&sigilv1.Selector{Type: Name, Value: "uid:1000"}); err != nil {
		t.Fatalf("a unix selector is refused: %v", err)
	}
	if got := strings.Join(plugin.Names(plugin.KindWorkloadAttestor), ","); got != Name {
		t.Fatalf("workload attestors = %s", got)
	}
}
