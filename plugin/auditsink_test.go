package plugin

import (
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"

	"github.com/sigil-id/sigil/audit"
)

func init() {
	Register(KindAuditSink, "fake", func(body hcl.Body, env Env) (any, error) {
		if err := NoSettings(body); err != nil {
			return nil, err
		}
		return audit.Nop, nil
	})
	Register(KindAuditSink, "fake2", func(hcl.Body, Env) (any, error) { return audit.Nop, nil })
	// "liar" returns a value that is not an audit.Sink.
	Register(KindAuditSink, "liar", func(hcl.Body, Env) (any, error) { return 42, nil })
}

// audit_sink is optional and repeatable in both roles; its values are
// audit.Sinks.
func TestAuditSinkKind(t *testing.T) {
	for _, role := range []Role{RoleServer, RoleAgent} {
		// No node attestor is registered in this package's tests: Build
		// reports it last, once the audit sinks were built.
		_, err := Build(parse(t, "audit_sink \"fake\" {}\naudit_sink \"fake2\" {}\n"), hcl.Range{Filename: "p.hcl"}, Env{Role: role})
		if err == nil || !strings.Contains(err.Error(), "plugins: no node_attestor: the "+string(role)+" needs one") {
			t.Errorf("%s: Build = %v, want only the missing node attestor", role, err)
		}
		for _, c := range []struct{ src, want string }{
			{"audit_sink \"fake\" {\n  level = 1\n}", `p.hcl:2: audit_sink "fake": Unsupported argument`},
			{"audit_sink \"liar\" {}", `p.hcl:1: audit_sink "liar": the plugin returned int, which is not a audit.Sink`},
			{"audit_sink \"fake\" {}\naudit_sink \"fake\" {}", `p.hcl:2: audit_sink "fake": declared twice (first at p.hcl:1)`},
		} {
			if _, err := Build(parse(t, c.src), hcl.Range{Filename: "p.hcl"}, Env{Role: role}); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("%s: Build(%q) = %v, want %s", role, c.src, err, c.want)
			}
		}
	}
	set := Set{{Kind: KindAuditSink, Name: "fake", Value: audit.Nop}, {Kind: KindWorkloadAttestor, Name: "fake", Value: fakeWorkload{}}}
	if got := Values[audit.Sink](set, KindAuditSink); len(got) != 1 {
		t.Errorf("Values = %v, want the one audit sink", got)
	}
}
