package main

import (
	"github.com/sigil-id/sigil/agent"
	"github.com/sigil-id/sigil/alert"
	"github.com/sigil-id/sigil/attestor/node"
	"github.com/sigil-id/sigil/attestor/workload"
	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/cmd/sigil/internal/config"
	"github.com/sigil-id/sigil/plugin"
	"github.com/sigil-id/sigil/server"

	// The plugins this binary ships: each registers itself (and the
	// selector types it produces) with the plugin registry. Adding a
	// plugin to the binary is one line here.
	_ "github.com/sigil-id/sigil/alert/notifier/alertmanager"
	_ "github.com/sigil-id/sigil/alert/notifier/pagerduty"
	_ "github.com/sigil-id/sigil/alert/notifier/slack"
	_ "github.com/sigil-id/sigil/alert/notifier/webhook"
	_ "github.com/sigil-id/sigil/attestor/node/awsiid"
	_ "github.com/sigil-id/sigil/attestor/node/azuremsi"
	_ "github.com/sigil-id/sigil/attestor/node/gcpiit"
	_ "github.com/sigil-id/sigil/attestor/node/jointoken"
	_ "github.com/sigil-id/sigil/attestor/node/k8spsat"
	_ "github.com/sigil-id/sigil/attestor/node/oidc"
	_ "github.com/sigil-id/sigil/attestor/node/x509pop"
	_ "github.com/sigil-id/sigil/attestor/workload/docker"
	_ "github.com/sigil-id/sigil/attestor/workload/k8s"
	_ "github.com/sigil-id/sigil/attestor/workload/systemd"
	_ "github.com/sigil-id/sigil/attestor/workload/unix"
	_ "github.com/sigil-id/sigil/ca/keymanager/disk"
	_ "github.com/sigil-id/sigil/ca/keymanager/memory"
)

// serverPlugins builds the server's plugins from s (its plugin blocks,
// flat keys and defaults) into cfg, whose trust domain, data directory,
// logger and clock they get.
func serverPlugins(s *config.Server, cfg *server.Config) error {
	blocks, where, err := s.PluginBlocks()
	if err != nil {
		return err
	}
	set, err := plugin.Build(blocks, where, plugin.Env{
		Role:        plugin.RoleServer,
		TrustDomain: cfg.TrustDomain,
		DataDir:     cfg.DataDir,
		Logger:      cfg.Logger,
		Clock:       cfg.Clock,
	})
	if err != nil {
		return err
	}
	cfg.NodeVerifiers = plugin.Values[node.Verifier](set, plugin.KindNodeAttestor)
	if ks := plugin.Values[ca.KeyStore](set, plugin.KindKeyManager); len(ks) > 0 {
		cfg.KeyStore = ks[0]
	}
	cfg.Notifiers = plugin.Values[alert.Notifier](set, plugin.KindNotifier)
	return nil
}

// agentPlugins builds the agent's plugins from a (its plugin blocks and
// defaults; a.JoinToken, already resolved, for the join_token attestor)
// into cfg.
func agentPlugins(a *config.Agent, cfg *agent.Config) error {
	blocks, where := a.PluginBlocks()
	set, err := plugin.Build(blocks, where, plugin.Env{
		Role:        plugin.RoleAgent,
		TrustDomain: cfg.TrustDomain,
		DataDir:     cfg.DataDir,
		Logger:      cfg.Logger,
		Clock:       cfg.Clock,
		JoinToken:   a.JoinToken,
	})
	if err != nil {
		return err
	}
	if na := plugin.Values[node.Attestor](set, plugin.KindNodeAttestor); len(na) > 0 {
		cfg.NodeAttestor = na[0]
	}
	cfg.WorkloadAttestors = plugin.Values[workload.Attestor](set, plugin.KindWorkloadAttestor)
	return nil
}
