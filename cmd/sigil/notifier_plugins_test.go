package main

import (
	"context"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"go.uber.org/zap"

	"github.com/sigil-id/sigil/alert"
	"github.com/sigil-id/sigil/cmd/sigil/internal/config"
	"github.com/sigil-id/sigil/plugin"
)

// testNotifier is a notifier plugin of this test binary only (the real
// ones register from their packages).
type testNotifier struct{ name string }

func (n testNotifier) Name() string                              { return n.name }
func (testNotifier) Notify(context.Context, []alert.Alert) error { return nil }

func init() {
	plugin.Register(plugin.KindNotifier, "test_notifier", func(body hcl.Body, _ plugin.Env) (any, error) {
		var c struct {
			Name string `hcl:"name,optional"`
		}
		if err := plugin.DecodeBody(body, &c); err != nil {
			return nil, err
		}
		if c.Name == "" {
			c.Name = "test_notifier"
		}
		return testNotifier{name: c.Name}, nil
	})
}

// The server's notifier plugins reach server.Config.Notifiers; without
// any the server has none.
func TestServerNotifierPlugins(t *testing.T) {
	for _, c := range []struct {
		name, src string
		want      []string
	}{
		{"none", `server { trust_domain = "example.org" }`, nil},
		{"one", `server {
  trust_domain = "example.org"
  plugins {
    node_attestor "join_token" {}
    key_manager "memory" {}
    notifier "test_notifier" { name = "oncall" }
  }
}`, []string{"oncall"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			f, err := config.LoadFile(writeConfig(t, c.src))
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
			if len(cfg.Notifiers) != len(c.want) {
				t.Fatalf("notifiers = %v, want %v", cfg.Notifiers, c.want)
			}
			for i, n := range cfg.Notifiers {
				if n.Name() != c.want[i] {
					t.Fatalf("notifier %d = %q, want %q", i, n.Name(), c.want[i])
				}
			}
		})
	}
}
