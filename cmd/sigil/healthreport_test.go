package main

import (
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/sigil-id/sigil/agent"
	"github.com/sigil-id/sigil/cmd/sigil/internal/config"
)

// health_report_interval reaches agent.Config; unset keeps the agent's
// default and one out of range is refused.
func TestAgentConfigHealthReportInterval(t *testing.T) {
	base := config.Agent{TrustDomain: "example.org", ServerAddress: "10.0.0.1:8081"}
	cfg, err := agentConfig(&base, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	if cfg.HealthReportInterval != agent.DefaultHealthReportInterval {
		t.Errorf("default health report interval = %v, want %v", cfg.HealthReportInterval, agent.DefaultHealthReportInterval)
	}
	a := base
	a.HealthReportInterval = 2 * time.Minute
	if cfg, err = agentConfig(&a, zap.NewNop()); err != nil || cfg.HealthReportInterval != 2*time.Minute {
		t.Errorf("health report interval = %v (%v), want 2m", cfg.HealthReportInterval, err)
	}
	a.HealthReportInterval = time.Second
	if _, err := agentConfig(&a, zap.NewNop()); err == nil || !strings.Contains(err.Error(), "agent: health report interval 1s is outside 5s..10m0s") {
		t.Errorf("1s interval: error %v", err)
	}
}
