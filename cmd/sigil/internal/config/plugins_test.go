package config

import (
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/sigil-id/sigil/plugin"
)

func names(blocks []plugin.Block) string {
	var out []string
	for _, b := range blocks {
		out = append(out, b.String())
	}
	return strings.Join(out, ", ")
}

func TestParsePlugins(t *testing.T) {
	f, err := Parse("s.hcl", []byte(`server {
  trust_domain = "example.org"
  plugins {
    node_attestor "join_token" {}
    key_manager "disk" {
      directory = "/k"
    }
  }
}
`))
	if err != nil {
		t.Fatal(err)
	}
	p := f.Server.Plugins
	if p == nil || p.Block == nil || p.Block.Start.Line != 3 || len(p.Blocks) != 2 {
		t.Fatalf("plugins = %+v", p)
	}
	if got := names(p.Blocks); got != `node_attestor "join_token", key_manager "disk"` {
		t.Errorf("blocks = %s", got)
	}
	if p.Blocks[1].DefRange.Start.Line != 5 || p.Blocks[1].DefRange.Filename != "s.hcl" {
		t.Errorf("key_manager block at %+v, want s.hcl line 5", p.Blocks[1].DefRange)
	}
	blocks, where, err := f.Server.PluginBlocks()
	if err != nil || len(blocks) != 2 || where.Start.Line != 3 {
		t.Errorf("PluginBlocks = %s at %v, %v", names(blocks), where, err)
	}

	// A -key-manager flag that contradicts the block shows the new form.
	fs := pflag.NewFlagSet("server", pflag.ContinueOnError)
	flags := NewServerFlags(fs)
	if err := fs.Parse([]string{"--key-manager", "memory"}); err != nil {
		t.Fatal(err)
	}
	flags.Apply(f.Server)
	err = f.Server.Validate()
	if err == nil || err.Error() != `-key-manager memory conflicts with key_manager "disk" at s.hcl:5: keep only the block, in the plugins block: key_manager "disk" {}` {
		t.Errorf("Validate = %v", err)
	}
}

func TestPluginDefaults(t *testing.T) {
	for _, c := range []struct {
		name, src string
		server    string
		agent     string
	}{
		{"no plugins block", `server { trust_domain = "e.org" }
agent { trust_domain = "e.org" }`, `node_attestor "join_token", key_manager "disk"`, `node_attestor "join_token", workload_attestor "unix"`},
		{"flat key manager", `server { key_manager = "memory" }`, `key_manager "memory", node_attestor "join_token"`, ""},
		{"flat key manager into a plugins block", `server {
  key_manager = "memory"
  plugins {
    node_attestor "join_token" {}
  }
}`, `node_attestor "join_token", key_manager "memory"`, ""},
		{"plugins block: no defaults", `agent {
  plugins {
    workload_attestor "unix" {}
  }
}`, "", `workload_attestor "unix"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			f, err := Parse("d.hcl", []byte(c.src))
			if err != nil {
				t.Fatal(err)
			}
			if f.Server != nil {
				blocks, _, err := f.Server.PluginBlocks()
				if err != nil || names(blocks) != c.server {
					t.Errorf("server plugins = %s, %v; want %s", names(blocks), err, c.server)
				}
			}
			if f.Agent != nil {
				blocks, _ := f.Agent.PluginBlocks()
				if names(blocks) != c.agent {
					t.Errorf("agent plugins = %s; want %s", names(blocks), c.agent)
				}
			}
		})
	}
	// Without a file (flags only) the defaults have no position.
	blocks, where, err := (&Server{}).PluginBlocks()
	if err != nil || names(blocks) != `node_attestor "join_token", key_manager "disk"` || where.Filename != "" {
		t.Errorf("flag-only server plugins = %s at %v, %v", names(blocks), where, err)
	}
}

func TestParsePluginsErrors(t *testing.T) {
	for _, c := range []struct{ name, src, want string }{
		{"top level without a daemon", "plugins {\n}\n", `e.hcl:1: a top-level plugins block needs a server or an agent block in the file`},
		{"two plugins blocks in one daemon", "server {\n  plugins {}\n  plugins {}\n}", `e.hcl:3,3: Duplicate plugins block`},
		{"attribute in plugins", "server {\n  plugins {\n    key_manager = \"disk\"\n  }\n}", `e.hcl:3,5: Unsupported argument`},
		{"plugin without a name", "agent {\n  plugins {\n    workload_attestor {}\n  }\n}", `e.hcl:3,23: Missing name for workload_attestor`},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse("e.hcl", []byte(c.src))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Parse = %v, want %s", err, c.want)
			}
		})
	}
}
