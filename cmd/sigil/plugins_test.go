package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/ca/keymanager/disk"
	"github.com/sigil-id/sigil/ca/keymanager/memory"
	"github.com/sigil-id/sigil/cmd/sigil/internal/config"
	"github.com/sigil-id/sigil/plugin"
	"github.com/sigil-id/sigil/registration"
)

// The daemons receive their plugins as values: neither server/ nor agent/
// may depend on a concrete plugin package.
func TestDaemonsImportNoConcretePlugin(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "github.com/sigil-id/sigil/server", "github.com/sigil-id/sigil/agent").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 20 {
		t.Fatalf("go list listed %d packages: %s", len(deps), out)
	}
	for _, d := range concretePlugins(deps) {
		t.Errorf("server or agent depends on the concrete plugin package %s", d)
	}
	// The check sees plugins where they are: the binary has them all.
	out, err = exec.Command("go", "list", "-deps", "github.com/sigil-id/sigil/cmd/sigil").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	if got := concretePlugins(strings.Fields(string(out))); len(got) < 4 {
		t.Errorf("the binary's concrete plugins = %v, want at least jointoken, unix, disk and memory", got)
	}
}

// concretePlugins returns the packages in deps under attestor/node/<name>,
// attestor/workload/<name>, ca/keymanager/<name>, ca/upstream/<name> or
// alert/notifier/<name>.
func concretePlugins(deps []string) []string {
	const mod = "github.com/sigil-id/sigil/"
	var out []string
	for _, d := range deps {
		for _, parent := range []string{"attestor/node/", "attestor/workload/", "ca/keymanager/", "ca/upstream/", "alert/notifier/"} {
			if strings.HasPrefix(d, mod+parent) {
				out = append(out, d)
			}
		}
	}
	return out
}

// The binary imports the plugins, and so the selector types they produce:
// the server validates entries with them.
func TestBinaryKnowsPluginSelectorTypes(t *testing.T) {
	got := strings.Join(registration.SelectorTypes(), ",")
	for _, want := range []string{"join_token", "unix"} {
		if !strings.Contains(","+got+",", ","+want+",") {
			t.Errorf("selector type %q not registered: %s", want, got)
		}
	}
}

// knownNodeAttestors lists the node attestors the binary ships, as
// configuration errors name them.
var knownNodeAttestors = strings.Join(plugin.Names(plugin.KindNodeAttestor), ", ")

// knownKeyManagers lists the key managers the binary ships.
var knownKeyManagers = strings.Join(plugin.Names(plugin.KindKeyManager), ", ")

func writeConfig(t *testing.T, src string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "sigil.hcl")
	if err := os.WriteFile(p, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// serverFromFile builds a server.Config the way `sigil server -config`
// does.
func serverFromFile(t *testing.T, src string) (string, error) {
	t.Helper()
	p := writeConfig(t, src)
	f, err := config.LoadFile(p)
	if err != nil {
		return p, err
	}
	if err := f.Server.Validate(); err != nil {
		return p, err
	}
	_, err = serverConfig(f.Server, zap.NewNop())
	return p, err
}

func agentFromFile(t *testing.T, src string) (string, error) {
	t.Helper()
	p := writeConfig(t, src)
	f, err := config.LoadFile(p)
	if err != nil {
		return p, err
	}
	if err := f.Agent.Validate(); err != nil {
		return p, err
	}
	_, err = agentConfig(f.Agent, zap.NewNop())
	return p, err
}

func TestPluginConfigErrors(t *testing.T) {
	for _, c := range []struct {
		name  string
		agent bool
		src   string
		want  string // after "<file>:"
	}{
		{"unknown plugin", false, `server {
  trust_domain = "example.org"
  plugins {
    node_attestor "join_token" {}
    key_manager "dsik" {}
  }
}`, `5: key_manager "dsik": unknown plugin (known: ` + knownKeyManagers + `)`},
		{"unknown key", false, `server {
  trust_domain = "example.org"
  plugins {
    node_attestor "join_token" {}
    key_manager "disk" {
      directroy = "/var/lib/sigil/keys"
    }
  }
}`, `6: key_manager "disk": Unsupported argument; An argument named "directroy" is not expected here. Did you mean "directory"?`},
		{"bad value", false, `server {
  trust_domain = "example.org"
  plugins {
    node_attestor "join_token" {}
    key_manager "disk" {
      directory = ""
    }
  }
}`, `6: key_manager "disk": directory: must not be empty`},
		{"wrong type", false, `server {
  trust_domain = "example.org"
  plugins {
    node_attestor "join_token" {}
    key_manager "disk" {
      directory = ["a"]
    }
  }
}`, `6: key_manager "disk": Unsuitable value type`},
		{"two key managers", false, `server {
  trust_domain = "example.org"
  plugins {
    node_attestor "join_token" {}
    key_manager "disk" {}
    key_manager "memory" {}
  }
}`, `6: key_manager "memory": a second key_manager (the first is key_manager "disk" at `},
		{"no node attestor", false, `server {
  trust_domain = "example.org"
  plugins {
    key_manager "disk" {}
  }
}`, `3: plugins: no node_attestor: the server needs one (known: ` + knownNodeAttestors + `), e.g. node_attestor "` + plugin.Names(plugin.KindNodeAttestor)[0] + `" {}`},
		{"no key manager", false, `server {
  trust_domain = "example.org"
  plugins {
    node_attestor "join_token" {}
  }
}`, `3: plugins: no key_manager: the server needs one (known: ` + knownKeyManagers + `)`},
		{"agent plugin in server", false, `server {
  trust_domain = "example.org"
  plugins {
    node_attestor "join_token" {}
    key_manager "disk" {}
    workload_attestor "unix" {}
  }
}`, `6: workload_attestor "unix": workload_attestor plugins belong in the agent block, not in the server block`},
		{"setting for a plugin without settings", false, `server {
  trust_domain = "example.org"
  plugins {
    node_attestor "join_token" {
      ttl = "1h"
    }
    key_manager "memory" {}
  }
}`, `5: node_attestor "join_token": Unsupported argument; An argument named "ttl" is not expected here.`},
		{"flat key manager conflicts", false, `server {
  trust_domain = "example.org"
  key_manager  = "memory"
  plugins {
    node_attestor "join_token" {}
    key_manager "disk" {}
  }
}`, `3: key_manager = "memory" conflicts with key_manager "disk" at `},
		{"unknown kind", false, `server {
  trust_domain = "example.org"
  plugins {
    node_atestor "join_token" {}
  }
}`, `4,5: Unsupported block type; Blocks of type "node_atestor" are not expected here. Did you mean "node_attestor"?`},
		{"top-level plugins with both daemons", false, `server { trust_domain = "example.org" }
agent { trust_domain = "example.org" }

plugins {
  node_attestor "join_token" {}
}`, `4: a top-level plugins block is ambiguous in a file with both a server and an agent block`},
		{"two plugins blocks", false, `plugins {
  node_attestor "join_token" {}
}
server {
  trust_domain = "example.org"
  plugins {
    node_attestor "join_token" {}
  }
}`, `1: plugins: the server block has a plugins block of its own (`},
		{"two workload attestors of one name", true, `agent {
  trust_domain   = "example.org"
  server_address = "127.0.0.1:8081"
  plugins {
    node_attestor "join_token" {}
    workload_attestor "unix" {}
    workload_attestor "unix" {}
  }
}`, `7: workload_attestor "unix": declared twice (first at `},
		{"agent without node attestor", true, `agent {
  trust_domain   = "example.org"
  server_address = "127.0.0.1:8081"
  plugins {
    workload_attestor "unix" {}
  }
}`, `4: plugins: no node_attestor: the agent needs one (known: ` + knownNodeAttestors + `)`},
		{"key manager in agent", true, `agent {
  trust_domain   = "example.org"
  server_address = "127.0.0.1:8081"
  plugins {
    node_attestor "join_token" {}
    workload_attestor "unix" {}
    key_manager "disk" {}
  }
}`, `7: key_manager "disk": key_manager plugins belong in the server block, not in the agent block`},
	} {
		t.Run(c.name, func(t *testing.T) {
			var p string
			var err error
			if c.agent {
				p, err = agentFromFile(t, c.src)
			} else {
				p, err = serverFromFile(t, c.src)
			}
			if err == nil || !strings.HasPrefix(err.Error(), p+":") || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v\nwant %s:%s...", err, p, c.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error of more than one line: %q", err)
			}
		})
	}
}

// A plugins block, a top-level one, flat keys and the defaults all build
// working configurations.
func TestPluginConfigForms(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		name    string
		src     string
		check   func(t *testing.T, ks ca.KeyStore)
		wantErr string
	}{
		{"defaults", `server { trust_domain = "example.org" }`, func(t *testing.T, ks ca.KeyStore) {
			if _, ok := ks.(*disk.Store); !ok {
				t.Fatalf("key store %T, want disk", ks)
			}
		}, ""},
		{"flat key_manager", `server {
  trust_domain = "example.org"
  key_manager  = "memory"
}`, func(t *testing.T, ks ca.KeyStore) {
			if _, ok := ks.(memory.Store); !ok {
				t.Fatalf("key store %T, want memory", ks)
			}
		}, ""},
		{"flat key_manager agreeing with the block", `server {
  trust_domain = "example.org"
  key_manager  = "memory"
  plugins {
    node_attestor "join_token" {}
    key_manager "memory" {}
  }
}`, func(t *testing.T, ks ca.KeyStore) {
			if _, ok := ks.(memory.Store); !ok {
				t.Fatalf("key store %T, want memory", ks)
			}
		}, ""},
		{"block with directories", `server {
  trust_domain = "example.org"
  plugins {
    node_attestor "join_token" {}
    key_manager "disk" {
      directory         = "` + dir + `/k"
      cluster_directory = "` + dir + `/c"
    }
  }
}`, func(t *testing.T, ks ca.KeyStore) {
			d, ok := ks.(*disk.Store)
			if !ok || d.Dir(ca.KeyScopeAuthorities) != dir+"/k" || d.Dir(ca.KeyScopeClusterIdentity) != dir+"/c" {
				t.Fatalf("key store %#v, want disk in %s/k and %s/c", ks, dir, dir)
			}
		}, ""},
		{"top-level plugins", `plugins {
  node_attestor "join_token" {}
  key_manager "memory" {}
}
server { trust_domain = "example.org" }`, func(t *testing.T, ks ca.KeyStore) {
			if _, ok := ks.(memory.Store); !ok {
				t.Fatalf("key store %T, want memory", ks)
			}
		}, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := writeConfig(t, c.src)
			f, err := config.LoadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if err := f.Server.Validate(); err != nil {
				t.Fatal(err)
			}
			cfg, err := serverConfig(f.Server, zap.NewNop())
			if err != nil {
				t.Fatal(err)
			}
			if len(cfg.NodeVerifiers) != 1 || cfg.NodeVerifiers[0].Name() != "join_token" {
				t.Fatalf("node verifiers %v", cfg.NodeVerifiers)
			}
			c.check(t, cfg.KeyStore)
		})
	}
}

// The agent's join token stays a secret outside the plugin block, and a
// join token for another node attestor is refused with the new form.
func TestAgentPluginForms(t *testing.T) {
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(strings.Repeat("ab", 32)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := writeConfig(t, `plugins {
  node_attestor "join_token" {}
  workload_attestor "unix" {}
}
agent {
  trust_domain    = "example.org"
  server_address  = "127.0.0.1:8081"
  join_token_file = "`+tokenFile+`"
}`)
	f, err := config.LoadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Agent.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := f.Agent.ResolveJoinToken(nil); err != nil {
		t.Fatal(err)
	}
	cfg, err := agentConfig(f.Agent, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	if cfg.NodeAttestor == nil || cfg.NodeAttestor.Name() != "join_token" || len(cfg.WorkloadAttestors) != 1 || cfg.WorkloadAttestors[0].Name() != "unix" {
		t.Fatalf("plugins %v %v", cfg.NodeAttestor, cfg.WorkloadAttestors)
	}
	payload, err := cfg.NodeAttestor.Payload(t.Context())
	if err != nil || string(payload) != strings.Repeat("ab", 32) {
		t.Fatalf("the join_token attestor does not present the token from join_token_file: %v", err)
	}

	// A join token with another node attestor (a name the registry does
	// not know: the conflict is found first).
	p = writeConfig(t, `agent {
  trust_domain    = "example.org"
  server_address  = "127.0.0.1:8081"
  join_token_file = "/etc/sigil/join-token"
  plugins {
    node_attestor "x509pop" {}
    workload_attestor "unix" {}
  }
}`)
	f, err = config.LoadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	err = f.Agent.Validate()
	if err == nil || !strings.Contains(err.Error(), p+`:4: join_token_file = "/etc/sigil/join-token" conflicts with node_attestor "x509pop" at `+p+`:6`) ||
		!strings.Contains(err.Error(), `node_attestor "join_token" {}`) {
		t.Fatalf("Validate = %v", err)
	}
}
