package main

import (
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/sigil-id/sigil/agent"
	"github.com/sigil-id/sigil/cmd/sigil/internal/config"
)

// commentedListen matches a commented-out listen address in an example,
// which a reader may uncomment: `# cluster_address = ":8444"`.
var commentedListen = regexp.MustCompile(`(?m)^\s*#\s*(bind_address|health_address|cluster_address)\s*=\s*"([^"]*)"`)

// Every example configuration parses, builds a server or agent
// configuration with its plugins, and no two listen addresses of the
// examples (commented-out ones included) share a port, so that a server
// and an agent started from them on one machine do not collide.
func TestExampleConfigs(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("..", "..", "examples", "config", "*.hcl"))
	if err != nil || len(files) < 2 {
		t.Fatalf("example configs: %v %v", files, err)
	}
	ports := map[string]string{} // port -> where
	listen := func(where, addr string) {
		if addr == "" {
			return
		}
		_, port, err := net.SplitHostPort(addr)
		if err != nil {
			t.Errorf("%s: listen address %q: %v", where, addr, err)
			return
		}
		if prev, dup := ports[port]; dup {
			t.Errorf("%s listens on port %s, as %s does", where, port, prev)
		}
		ports[port] = where
	}
	for _, p := range files {
		name := filepath.Base(p)
		f, err := config.LoadFile(p)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if f.Server == nil && f.Agent == nil {
			t.Errorf("%s has no server or agent block", name)
		}
		if s := f.Server; s != nil {
			if err := s.Validate(); err != nil {
				t.Errorf("%s: %v", name, err)
			}
			cfg, err := serverConfig(s, zap.NewNop())
			if err != nil {
				t.Errorf("%s: %v", name, err)
			} else if len(cfg.NodeVerifiers) == 0 || cfg.KeyStore == nil {
				t.Errorf("%s: no plugins built", name)
			}
			listen(name+" bind_address", s.BindAddress)
			listen(name+" health_address", s.HealthAddress)
			listen(name+" cluster_address", s.ClusterAddress)
		}
		if a := f.Agent; a != nil {
			if err := a.Validate(); err != nil {
				t.Errorf("%s: %v", name, err)
			}
			// agentConfig would read the bundle file the example names;
			// build what comes from the file and the plugins.
			cfg := agent.DefaultConfig()
			if err := agentPlugins(a, &cfg); err != nil {
				t.Errorf("%s: %v", name, err)
			} else if cfg.NodeAttestor == nil || len(cfg.WorkloadAttestors) == 0 {
				t.Errorf("%s: no plugins built", name)
			}
			listen(name+" health_address", a.HealthAddress)
		}
		src, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range commentedListen.FindAllStringSubmatch(string(src), -1) {
			listen(name+" "+m[1]+" (commented out)", m[2])
		}
	}
	// The agent example reaches the server example's node API.
	s, _ := config.LoadFile(filepath.Join("..", "..", "examples", "config", "server.hcl"))
	a, _ := config.LoadFile(filepath.Join("..", "..", "examples", "config", "agent.hcl"))
	if s == nil || a == nil || !strings.HasSuffix(a.Agent.ServerAddress, s.Server.BindAddress) {
		t.Errorf("the agent example's server_address does not reach the server example's bind_address")
	}
	if len(ports) < 4 {
		t.Errorf("found only the listen ports %v", ports)
	}
}
