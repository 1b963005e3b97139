package main

import (
	"errors"
	"io"

	"go.uber.org/zap"

	"github.com/sigil-id/sigil/agent"
	"github.com/sigil-id/sigil/alert"
	"github.com/sigil-id/sigil/attestor/node"
	"github.com/sigil-id/sigil/attestor/workload"
	"github.com/sigil-id/sigil/audit"
	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/cmd/sigil/internal/config"
	"github.com/sigil-id/sigil/plugin"
	"github.com/sigil-id/sigil/registration"
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
	_ "github.com/sigil-id/sigil/audit/filesink"
	_ "github.com/sigil-id/sigil/ca/keymanager/awskms"
	_ "github.com/sigil-id/sigil/ca/keymanager/disk"
	_ "github.com/sigil-id/sigil/ca/keymanager/memory"
	_ "github.com/sigil-id/sigil/ca/keymanager/pkcs11"
	_ "github.com/sigil-id/sigil/ca/keymanager/tpm"
	_ "github.com/sigil-id/sigil/ca/upstream/disk"
	_ "github.com/sigil-id/sigil/ca/upstream/sigil"
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
		NodeName:    cfg.NodeName,
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
	if ua := plugin.Values[ca.UpstreamAuthority](set, plugin.KindUpstreamAuthority); len(ua) > 0 {
		cfg.UpstreamAuthority = ua[0]
	}
	cfg.Notifiers = plugin.Values[alert.Notifier](set, plugin.KindNotifier)
	if sinks := plugin.Values[audit.Sink](set, plugin.KindAuditSink); len(sinks) > 0 {
		// The log keeps its audit records as the server writes them by
		// default (audit.NewZap on its logger with server_id).
		log := cfg.Logger
		if id, err := registration.ServerID(cfg.TrustDomain, cfg.NodeName); err == nil {
			log = log.With(zap.String("server_id", id.String()))
		}
		cfg.AuditSink = withAuditSinks(audit.NewZap(log), sinks)
	}
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
	if sinks := plugin.Values[audit.Sink](set, plugin.KindAuditSink); len(sinks) > 0 {
		// As the agent's default sink: its logger with the trust domain.
		log := cfg.Logger.With(zap.String("trust_domain", cfg.TrustDomain.Name()))
		cfg.AuditSink = withAuditSinks(audit.NewZap(log), sinks)
	}
	return nil
}

// auditSinks is a daemon's audit sink when audit_sink plugins are
// configured: the log sink and the plugins through audit.Multi, and Close
// for the plugins that hold files.
type auditSinks struct {
	audit.Sink
	closers []io.Closer
}

func withAuditSinks(logSink audit.Sink, plugins []audit.Sink) *auditSinks {
	a := &auditSinks{Sink: audit.Multi(append([]audit.Sink{logSink}, plugins...)...)}
	for _, p := range plugins {
		if c, ok := p.(io.Closer); ok {
			a.closers = append(a.closers, c)
		}
	}
	return a
}

// Close closes the audit sink plugins that can be closed (flushing them).
func (a *auditSinks) Close() error {
	var errs []error
	for _, c := range a.closers {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}

// closeAuditSinks closes s when it is the daemon's audit_sink plugins
// (after the daemon stopped, so that no event comes later); a failure is
// logged, as the daemon's own outcome is already decided.
func closeAuditSinks(s audit.Sink, log *zap.Logger) {
	if a, ok := s.(*auditSinks); ok {
		if err := a.Close(); err != nil {
			log.Error("closing audit sinks", zap.Error(err))
		}
	}
}
