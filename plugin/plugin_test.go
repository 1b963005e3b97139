package plugin

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/attestor/workload"
)

// fakeWorkload is a workload attestor with a setting.
type fakeWorkload struct{ label string }

func (fakeWorkload) Name() string { return "fake" }
func (fakeWorkload) Attest(context.Context, workload.Caller) ([]*sigilv1.Selector, error) {
	return nil, nil
}

func init() {
	Register(KindWorkloadAttestor, "fake", func(body hcl.Body, env Env) (any, error) {
		var c struct {
			Label string `hcl:"label,optional"`
		}
		if err := DecodeBody(body, &c); err != nil {
			return nil, err
		}
		if c.Label == "bad" {
			return nil, AttrError(body, "label", "%q is not allowed", c.Label)
		}
		if env.Logger == nil || env.Clock == nil {
			return nil, errors.New("env without logger or clock")
		}
		return fakeWorkload{label: c.Label}, nil
	})
	// "liar" returns a value that is not a workload.Attestor.
	Register(KindWorkloadAttestor, "liar", func(hcl.Body, Env) (any, error) { return "not an attestor", nil })
}

func parse(t *testing.T, src string) []Block {
	t.Helper()
	f, diags := hclsyntax.ParseConfig([]byte(src), "p.hcl", hcl.Pos{Line: 1, Column: 1})
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	blocks, err := ParseBlocks(f.Body)
	if err != nil {
		t.Fatal(err)
	}
	return blocks
}

func TestRegisterPanics(t *testing.T) {
	for name, f := range map[string]func(){
		"unknown kind": func() { Register("upstream", "x", func(hcl.Body, Env) (any, error) { return nil, nil }) },
		"empty name":   func() { Register(KindKeyManager, "", func(hcl.Body, Env) (any, error) { return nil, nil }) },
		"nil fn":       func() { Register(KindKeyManager, "x", nil) },
		"twice":        func() { Register(KindWorkloadAttestor, "fake", func(hcl.Body, Env) (any, error) { return nil, nil }) },
	} {
		t.Run(name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Fatal("no panic")
				}
			}()
			f()
		})
	}
	if got := strings.Join(Names(KindWorkloadAttestor), ","); got != "fake,liar" {
		t.Fatalf("Names = %s", got)
	}
}

func TestBuild(t *testing.T) {
	blocks := parse(t, "workload_attestor \"fake\" {\n  label = \"a\"\n}\n")
	set, err := Build(blocks, hcl.Range{}, Env{Role: RoleAgent})
	// The agent also needs a node attestor, which none is registered for
	// in this package's tests.
	if err == nil || !strings.Contains(err.Error(), "plugins: no node_attestor: the agent needs one") {
		t.Fatalf("Build = %v, %v", set, err)
	}
	for _, c := range []struct {
		name, src string
		role      Role
		want      string
	}{
		{"unknown key", "workload_attestor \"fake\" {\n\n  lable = \"a\"\n}", RoleAgent, `p.hcl:3: workload_attestor "fake": Unsupported argument; An argument named "lable" is not expected here. Did you mean "label"?`},
		{"bad value", "workload_attestor \"fake\" {\n  label = \"bad\"\n}", RoleAgent, `p.hcl:2: workload_attestor "fake": label: "bad" is not allowed`},
		{"unknown plugin", "\nworkload_attestor \"fkae\" {}", RoleAgent, `p.hcl:2: workload_attestor "fkae": unknown plugin (known: fake, liar)`},
		{"wrong role", "workload_attestor \"fake\" {}", RoleServer, `p.hcl:1: workload_attestor "fake": workload_attestor plugins belong in the agent block, not in the server block`},
		{"twice", "workload_attestor \"fake\" {}\nworkload_attestor \"fake\" {}", RoleAgent, `p.hcl:2: workload_attestor "fake": declared twice (first at p.hcl:1)`},
		{"wrong type", "workload_attestor \"liar\" {}", RoleAgent, `p.hcl:1: workload_attestor "liar": the plugin returned string, which is not a workload.Attestor`},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Build(parse(t, c.src), hcl.Range{Filename: "p.hcl"}, Env{Role: c.role})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Build = %v\nwant %s", err, c.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error of more than one line: %q", err)
			}
		})
	}
}

func TestParseBlocksRefusesUnknownKind(t *testing.T) {
	f, _ := hclsyntax.ParseConfig([]byte("key_manger \"disk\" {}"), "p.hcl", hcl.Pos{Line: 1, Column: 1})
	_, err := ParseBlocks(f.Body)
	if err == nil || !strings.Contains(err.Error(), `p.hcl:1,1: Unsupported block type`) || !strings.Contains(err.Error(), `Did you mean "key_manager"?`) {
		t.Fatalf("ParseBlocks = %v", err)
	}
	f, _ = hclsyntax.ParseConfig([]byte("key_manager {}"), "p.hcl", hcl.Pos{Line: 1, Column: 1})
	if _, err := ParseBlocks(f.Body); err == nil || !strings.Contains(err.Error(), "Missing name") {
		t.Fatalf("ParseBlocks without a name = %v", err)
	}
}

func TestValues(t *testing.T) {
	s := Set{{Kind: KindWorkloadAttestor, Name: "fake", Value: fakeWorkload{label: "x"}}, {Kind: KindKeyManager, Name: "k", Value: 1}}
	got := Values[workload.Attestor](s, KindWorkloadAttestor)
	if len(got) != 1 || got[0].(fakeWorkload).label != "x" {
		t.Fatalf("Values = %v", got)
	}
	if got := Values[workload.Attestor](s, KindKeyManager); len(got) != 0 {
		t.Fatalf("Values of another kind = %v", got)
	}
}
