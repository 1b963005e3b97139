package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sigil-id/sigil/alert"
	"github.com/sigil-id/sigil/cmd/sigil/internal/config"
	"github.com/sigil-id/sigil/plugin"
)

// The binary ships the four notifiers, and a server's plugins block
// builds them (secrets from a file and from the environment).
func TestBinaryShipsNotifiers(t *testing.T) {
	// Tests of this package register their own (named test_*).
	shipped := slices.DeleteFunc(plugin.Names(plugin.KindNotifier), func(n string) bool { return strings.HasPrefix(n, "test_") })
	if !slices.Equal(shipped, []string{"alertmanager", "pagerduty", "slack", "webhook"}) {
		t.Fatalf("notifier plugins = %v", shipped)
	}
	secret := filepath.Join(t.TempDir(), "webhook.secret")
	if err := os.WriteFile(secret, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SIGIL_TEST_SLACK_URL", "https://hooks.slack.example/services/T/B/X")
	t.Setenv("SIGIL_TEST_PD_KEY", "0123456789abcdef")
	p := writeConfig(t, `server {
  trust_domain = "example.org"
  plugins {
    node_attestor "join_token" {}
    key_manager "memory" {}
    notifier "alertmanager" { url = "http://127.0.0.1:9093" }
    notifier "webhook" {
      url          = "https://alerts.example.org/sigil"
      secret_file  = "`+secret+`"
      min_severity = "info"
    }
    notifier "slack" {
      webhook_url_env = "SIGIL_TEST_SLACK_URL"
      name            = "oncall-slack"
    }
    notifier "pagerduty" {
      routing_key_env = "SIGIL_TEST_PD_KEY"
      min_severity    = "critical"
    }
  }
}`)
	f, err := config.LoadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	blocks, where, err := f.Server.PluginBlocks()
	if err != nil {
		t.Fatal(err)
	}
	set, err := plugin.Build(blocks, where, plugin.Env{Role: plugin.RoleServer, DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	type router interface{ MinSeverity() alert.Severity }
	var got []string
	for _, n := range plugin.Values[alert.Notifier](set, plugin.KindNotifier) {
		got = append(got, n.Name()+"/"+string(n.(router).MinSeverity()))
	}
	want := []string{"alertmanager/warning", "webhook/info", "oncall-slack/warning", "pagerduty/critical"}
	if !slices.Equal(got, want) {
		t.Fatalf("notifiers = %v, want %v", got, want)
	}
	if _, err := serverFromFile(t, mustRead(t, p)); err != nil {
		t.Fatalf("sigil server with notifiers: %v", err)
	}
}

func mustRead(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// Notifier configuration errors name the file and line, and notifiers
// belong to servers only.
func TestNotifierConfigErrors(t *testing.T) {
	p, err := serverFromFile(t, `server {
  trust_domain = "example.org"
  plugins {
    node_attestor "join_token" {}
    key_manager "memory" {}
    notifier "webhook" {
      url = "https://alerts.example.org/sigil"
    }
  }
}`)
	if err == nil || !strings.HasPrefix(err.Error(), p+":6: ") || !strings.Contains(err.Error(), `notifier "webhook": secret_file or secret_env is required`) {
		t.Errorf("webhook without secret: %v", err)
	}
	p, err = agentFromFile(t, `agent {
  trust_domain   = "example.org"
  server_address = "127.0.0.1:8081"
  plugins {
    node_attestor "join_token" {}
    workload_attestor "unix" {}
    notifier "alertmanager" { url = "http://127.0.0.1:9093" }
  }
}`)
	if err == nil || !strings.HasPrefix(err.Error(), p+":7: ") || !strings.Contains(err.Error(), "notifier plugins belong in the server block") {
		t.Errorf("notifier in an agent: %v", err)
	}
}
