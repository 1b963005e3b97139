package config

import (
	"strings"
	"testing"
	"time"
)

// The agent's health_report_interval is a duration; the agent checks its
// range (agent.Config.Validate).
func TestAgentHealthReportInterval(t *testing.T) {
	f, err := Parse("test.hcl", []byte(`agent { health_report_interval = "2m" }`))
	if err != nil {
		t.Fatal(err)
	}
	if f.Agent.HealthReportInterval != 2*time.Minute {
		t.Fatalf("health report interval = %v, want 2m", f.Agent.HealthReportInterval)
	}
	if f, err := Parse("test.hcl", []byte(`agent {}`)); err != nil || f.Agent.HealthReportInterval != 0 {
		t.Fatalf("unset: %v, %v", f, err)
	}
	for src, want := range map[string]string{
		`agent { health_report_interval = "-1s" }`:   `test.hcl: agent.health_report_interval: invalid duration "-1s": must not be negative`,
		`agent { health_report_interval = "often" }`: `test.hcl: agent.health_report_interval: invalid duration "often"`,
	} {
		if _, err := Parse("test.hcl", []byte(src)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want %q", src, err, want)
		}
	}
}
