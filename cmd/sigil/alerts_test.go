package main

import (
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/sigil-id/sigil/cmd/sigil/internal/config"
	"github.com/sigil-id/sigil/health"
	"github.com/sigil-id/sigil/server"
)

// TestServerConfigAlerts: the alerts block reaches server.Config; without
// one the server's defaults apply.
func TestServerConfigAlerts(t *testing.T) {
	f, err := config.Parse("server.hcl", []byte(`server {
  trust_domain = "example.org"
  alerts {
    evaluate_interval = "20s"
    expiry_critical   = "20m"
    max_ids           = 5
    report_interval   = "45s"
    repeat_interval   = "1h"
  }
}
`))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := serverConfig(f.Server, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	want := health.DefaultConfig()
	want.ExpiryCritical, want.MaxIDs = 20*time.Minute, 5
	if cfg.Health != want || cfg.EvaluateInterval != 20*time.Second || cfg.AgentReportInterval != 45*time.Second || cfg.AlertRepeatInterval != time.Hour {
		t.Fatalf("server config: health %+v, evaluate %v, report %v, repeat %v", cfg.Health, cfg.EvaluateInterval, cfg.AgentReportInterval, cfg.AlertRepeatInterval)
	}

	cfg, err = serverConfig(&config.Server{TrustDomain: "example.org"}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Health != health.DefaultConfig() || cfg.EvaluateInterval != server.DefaultEvaluateInterval || cfg.AlertRepeatInterval != 0 {
		t.Fatalf("defaults: health %+v, evaluate %v, repeat %v", cfg.Health, cfg.EvaluateInterval, cfg.AlertRepeatInterval)
	}
}
