package main

import (
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/sigil-id/sigil/agent"
	"github.com/sigil-id/sigil/cmd/sigil/internal/config"
)

// The svid_cache block reaches agent.Config; without it the agent's
// defaults hold, and what the agent refuses is refused with its message.
func TestAgentConfigSVIDCache(t *testing.T) {
	base := config.Agent{TrustDomain: "example.org", ServerAddress: "10.0.0.1:8081"}
	cfg, err := agentConfig(&base, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	if c := cfg.SVIDCache; c.MaxSVIDs != agent.DefaultMaxSVIDs || c.IdleAfter != agent.DefaultIdleAfter || len(c.EagerSelectors) != 0 {
		t.Errorf("default svid cache = %+v", c)
	}
	f, err := config.Parse("agent.hcl", []byte(`agent {
  trust_domain   = "example.org"
  server_address = "10.0.0.1:8081"
  svid_cache {
    max_svids       = 20000
    eager_selectors = ["unix:uid:0"]
    idle_after      = "1h"
  }
}`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg, err = agentConfig(f.Agent, zap.NewNop()); err != nil {
		t.Fatal(err)
	}
	if c := cfg.SVIDCache; c.MaxSVIDs != 20000 || c.IdleAfter != time.Hour || strings.Join(c.EagerSelectors, ",") != "unix:uid:0" {
		t.Errorf("svid cache = %+v", c)
	}
	a := base
	a.SVIDCache = &config.SVIDCache{IdleAfter: time.Millisecond}
	if _, err := agentConfig(&a, zap.NewNop()); err == nil || !strings.Contains(err.Error(), "agent: svid cache idle_after 1ms is outside 1s..720h0m0s") {
		t.Errorf("idle_after 1ms: error %v", err)
	}
}
