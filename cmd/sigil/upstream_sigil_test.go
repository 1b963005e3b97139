package main

import (
	"strings"
	"testing"

	"go.uber.org/zap"

	upsigil "github.com/sigil-id/sigil/ca/upstream/sigil"
	"github.com/sigil-id/sigil/cmd/sigil/internal/config"
	"github.com/sigil-id/sigil/plugin"
)

// The binary ships the sigil upstream authority, and a server block with
// allow_downstream and upstream_authority "sigil" becomes a server.Config
// with both; closeUpstream closes it.
func TestServerConfigNested(t *testing.T) {
	if !strings.Contains(","+strings.Join(plugin.Names(plugin.KindUpstreamAuthority), ",")+",", ",sigil,") {
		t.Fatalf("upstream authorities %v lack sigil", plugin.Names(plugin.KindUpstreamAuthority))
	}
	f, err := config.LoadFile(writeConfig(t, `server {
  trust_domain     = "example.org"
  allow_downstream = true
  plugins {
    node_attestor "join_token" {}
    key_manager "memory" {}
    upstream_authority "sigil" {
      server_address      = "10.0.0.1:8081, 10.0.0.2:8081"
      workload_api_socket = "/run/sigil-upstream/agent/public/api.sock"
      timeout             = "3s"
    }
  }
}`))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := serverConfig(f.Server, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.AllowDownstream {
		t.Error("allow_downstream did not reach server.Config")
	}
	up, ok := cfg.UpstreamAuthority.(*upsigil.Upstream)
	if !ok {
		t.Fatalf("upstream authority %T, want *sigil.Upstream", cfg.UpstreamAuthority)
	}
	closeUpstream(up, zap.NewNop())
	if _, err := up.Roots(t.Context()); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Fatalf("Roots after closeUpstream: %v", err)
	}
}

func TestUpstreamSigilConfigErrors(t *testing.T) {
	for _, c := range []struct {
		name, block, want string
	}{
		{"no server_address", `workload_api_socket = "/run/up/api.sock"`, `5: upstream_authority "sigil": server_address: is required`},
		{"bad server_address", "server_address = \"10.0.0.1\"\n      workload_api_socket = \"/run/up/api.sock\"", `6: upstream_authority "sigil": server_address: "10.0.0.1" is not host:port`},
		{"no socket", `server_address = "10.0.0.1:8081"`, `5: upstream_authority "sigil": workload_api_socket: is required`},
		{"relative socket", "server_address = \"10.0.0.1:8081\"\n      workload_api_socket = \"api.sock\"", `workload_api_socket: "api.sock" must be an absolute path`},
		{"bad timeout", "server_address = \"10.0.0.1:8081\"\n      workload_api_socket = \"/run/up/api.sock\"\n      timeout = \"soon\"", `8: upstream_authority "sigil": timeout: "soon" is not a duration`},
		{"zero timeout", "server_address = \"10.0.0.1:8081\"\n      workload_api_socket = \"/run/up/api.sock\"\n      timeout = \"0s\"", `timeout: "0s" must be positive`},
		{"unknown key", "server_adress = \"10.0.0.1:8081\"", `Unsupported argument; An argument named "server_adress" is not expected here. Did you mean "server_address"?`},
	} {
		t.Run(c.name, func(t *testing.T) {
			p, err := serverFromFile(t, `server {
  trust_domain = "example.org"
  plugins {
    node_attestor "join_token" {}
    upstream_authority "sigil" {
      `+c.block+`
    }
  }
}`)
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), p+":") {
				t.Fatalf("error %v, want %s:... %q", err, p, c.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error spans several lines: %q", err)
			}
		})
	}
}
