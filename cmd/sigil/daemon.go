package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"

	"github.com/sigil-id/sigil/agent"
	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/cmd/sigil/internal/config"
	"github.com/sigil-id/sigil/cmd/sigil/internal/health"
	"github.com/sigil-id/sigil/internal/exepages"
	"github.com/sigil-id/sigil/internal/gcfloor"
	"github.com/sigil-id/sigil/server"
)

// shutdownGrace bounds how long the health endpoint waits for requests in
// flight at shutdown.
const shutdownGrace = 5 * time.Second

func newServerCommand() *cobra.Command {
	var path string
	var flags *config.ServerFlags
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run a Sigil server node",
		Long: `Run a Sigil server node: the certificate authority of the trust domain, its
node API for agents and its admin API on a local unix socket.

Settings come from the server block of the -config file; flags given on the
command line override the file.`,
		Example: `  sigil server -config /etc/sigil/server.hcl
  sigil server -trust-domain example.org -data-dir /var/lib/sigil/server`,
		Args: cobra.NoArgs,
		RunE: daemonRun(&path, "server", func(f *config.File) *config.Server { return f.Server },
			func(settings *config.Server) (config.Log, []string, error) {
				flags.Apply(settings)
				if err := settings.Validate(); err != nil {
					return config.Log{}, nil, err
				}
				return settings.Log, flags.Warnings(), settings.ResolveJoinSecret(os.Getenv)
			},
			func(ctx context.Context, settings *config.Server, log *zap.Logger) error {
				cfg, err := serverConfig(settings, log)
				if err != nil {
					return err
				}
				return runServer(ctx, cfg, log, settings.CodePages)
			}),
	}
	cmd.Flags().StringVar(&path, "config", "", "HCL configuration file with a server block")
	flags = config.NewServerFlags(cmd.Flags())
	return cmd
}

// daemonRun is the body of `sigil server` and `sigil agent`: it reads the
// daemon's block of the -config file at *path (or starts from empty
// settings), lets prepare apply the flags, validate and resolve secrets
// (it returns the log settings and the flags' warnings), builds the
// logger and runs the daemon until SIGINT or SIGTERM.
func daemonRun[S any](path *string, block string, fromFile func(*config.File) *S,
	prepare func(*S) (config.Log, []string, error), run func(context.Context, *S, *zap.Logger) error,
) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, _ []string) error {
		settings := new(S)
		if *path != "" {
			f, err := config.LoadFile(*path)
			if err != nil {
				return err
			}
			if settings = fromFile(f); settings == nil {
				return fmt.Errorf("%s has no %s block", *path, block)
			}
		}
		logSettings, warnings, err := prepare(settings)
		if err != nil {
			return err
		}
		log, err := config.NewLogger(logSettings, "json", cmd.ErrOrStderr())
		if err != nil {
			return err
		}
		defer log.Sync() //nolint:errcheck // stderr may not support sync
		for _, w := range warnings {
			log.Warn(w)
		}
		ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		return run(ctx, settings, log)
	}
}

// serverConfig turns the command-line settings into a server.Config on top
// of the server's defaults.
func serverConfig(s *config.Server, log *zap.Logger) (server.Config, error) {
	cfg := server.DefaultConfig()
	td, err := spiffeid.TrustDomainFromString(s.TrustDomain)
	if err != nil {
		return cfg, fmt.Errorf("trust_domain %q is invalid: %v", s.TrustDomain, err)
	}
	cfg.TrustDomain = td
	setString(&cfg.NodeName, s.NodeName)
	setString(&cfg.DataDir, s.DataDir)
	setString(&cfg.BindAddress, s.BindAddress)
	setString(&cfg.AdminSocket, s.AdminSocket)
	cfg.HealthAddress = s.HealthAddress
	setDuration(&cfg.CATTL, s.CATTL)
	setDuration(&cfg.X509SVIDTTL, s.X509SVIDTTL)
	setDuration(&cfg.AgentSVIDTTL, s.AgentSVIDTTL)
	setDuration(&cfg.JoinTokenTTL, s.JoinTokenTTL)
	setDuration(&cfg.JWTSVIDTTL, s.JWTSVIDTTL)
	setDuration(&cfg.CAPropagationDelay, s.CAPropagationDelay)
	setDuration(&cfg.RemovedServerGrace, s.RemovedServerGrace)
	cfg.ClusterAddress = s.ClusterAddress
	cfg.AdvertiseAddress = s.AdvertiseAddress
	for _, a := range strings.Split(s.RetryJoin, ",") {
		if a = strings.TrimSpace(a); a != "" {
			cfg.JoinAddresses = append(cfg.JoinAddresses, a)
		}
	}
	cfg.JoinSecret = s.JoinSecret
	if cfg.JoinSecret == "" {
		cfg.JoinSecret = os.Getenv("SIGIL_JOIN_SECRET")
	}
	cfg.NoBootstrap = s.NoBootstrap
	cfg.AllowDownstream = s.AllowDownstream
	cfg.AdminAddress = s.AdminAddress
	for _, v := range strings.Split(s.AdminIDs, ",") {
		if v = strings.TrimSpace(v); v == "" {
			continue
		}
		id, err := spiffeid.FromString(v)
		if err != nil {
			return cfg, fmt.Errorf("admin_ids: %q is not a SPIFFE ID: %v", v, err)
		}
		cfg.AdminIDs = append(cfg.AdminIDs, id)
	}
	cfg.RaftHeartbeatTimeout = s.RaftHeartbeatTimeout
	cfg.Logger = log
	cfg.Federation = federationConfig(s.Federation)
	cfg.X509SVIDTemplate, cfg.CATemplate = s.X509SVIDTemplate, s.CATemplate
	if a := s.Alerts; a != nil {
		cfg.Health = a.Health
		cfg.EvaluateInterval = a.EvaluateInterval
		cfg.AgentReportInterval = a.ReportInterval
		cfg.AlertRepeatInterval = a.RepeatInterval
	}
	if err := serverPlugins(s, &cfg); err != nil {
		return cfg, err
	}
	if err := cfg.Validate(); err != nil {
		closeAuditSinks(cfg.AuditSink, log)
		return cfg, err
	}
	return cfg, nil
}

// federationConfig turns the file's federation block (nil: none) into
// the server's; every relationship it declares is from_config.
func federationConfig(f *config.Federation) server.FederationConfig {
	var out server.FederationConfig
	if f == nil {
		return out
	}
	if ep := f.BundleEndpoint; ep != nil {
		out.BundleEndpoint = server.BundleEndpointConfig{
			Address:     ep.Address,
			Profile:     ep.Profile,
			CertFile:    ep.CertFile,
			KeyFile:     ep.KeyFile,
			RefreshHint: ep.RefreshHint,
		}
	}
	out.MinRefresh = f.MinRefresh
	out.MaxRefresh = f.MaxRefresh
	out.FetchTimeout = f.FetchTimeout
	out.PartnerRefreshBound = f.PartnerRefreshBound
	for _, r := range f.Relationships {
		out.Relationships = append(out.Relationships, server.ConfigRelationship{
			Relationship: &sigilv1.FederationRelationship{
				TrustDomain:       r.TrustDomain,
				BundleEndpointUrl: r.BundleEndpointURL,
				Profile:           r.Profile,
				EndpointSpiffeId:  r.EndpointSPIFFEID,
				FromConfig:        true,
			},
			BootstrapBundle: r.BootstrapBundle,
		})
	}
	return out
}

// runServer runs the server until ctx is done. pages is the code_pages
// block (nil: none, the default); without it (in-process tests) the
// server does not drop its executable's pages.
func runServer(ctx context.Context, cfg server.Config, log *zap.Logger, pages ...*config.CodePages) error {
	defer closeAuditSinks(cfg.AuditSink, log)
	defer closeKeyStore(cfg.KeyStore, log)
	defer closeUpstream(cfg.UpstreamAuthority, log)
	srv, err := server.New(cfg)
	if err != nil {
		return err
	}
	// Most of a server's live heap is its registration entries, records
	// without pointers that a collection never scans: the headroom
	// follows what it scans (internal/gcfloor), so the peak heap, and
	// the runtime's bookkeeping for it that stays after deletions, is
	// smaller. The floor is the runtime's own minimum heap goal. GOGC
	// set in the environment turns this off.
	if stop, err := gcfloor.Start(gcfloor.ScanConfig()); err != nil {
		log.Debug("no scan headroom", zap.Error(err))
	} else {
		defer stop()
	}
	if cfg.HealthAddress != "" {
		hs, err := health.Start(cfg.HealthAddress, health.Closed(srv.Ready(), "server is starting"), log.Named("health"),
			health.WithHandler("/metrics", srv.MetricsHandler()))
		if err != nil {
			return err
		}
		defer stopHealth(hs, log)
	}
	log.Info("starting server",
		zap.String("trust_domain", cfg.TrustDomain.String()),
		zap.String("node_name", cfg.NodeName),
		zap.String("bind_address", cfg.BindAddress),
		zap.String("admin_socket", cfg.AdminSocket),
		zap.String("admin_address", cfg.AdminAddress))
	startCodePages(ctx, pages, srv.Ready(), log)
	err = srv.Run(ctx)
	if err != nil && !errors.Is(err, context.Canceled) {
		return prefixed("server", err)
	}
	log.Info("server stopped")
	return nil
}

func newAgentCommand() *cobra.Command {
	var path string
	var flags *config.AgentFlags
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run a Sigil agent, or manage attested agents (list, show, evict, ban)",
		Long: `Run a Sigil agent: it attests this node to a server, receives the
registration entries it is authorized for and serves SVIDs to local
workloads on the SPIFFE Workload API socket.

Settings come from the agent block of the -config file; flags given on the
command line override the file. The subcommands manage attested agents
through a server's admin socket.`,
		Example: `  sigil agent -config /etc/sigil/agent.hcl
  sigil agent -trust-domain example.org -server-address 10.0.0.1:8081 -trust-bundle-path bundle.pem -join-token-file /etc/sigil/join-token
  sigil agent list`,
		Args: cobra.NoArgs,
		RunE: daemonRun(&path, "agent", func(f *config.File) *config.Agent { return f.Agent },
			func(settings *config.Agent) (config.Log, []string, error) {
				flags.Apply(settings)
				if err := settings.Validate(); err != nil {
					return config.Log{}, nil, err
				}
				return settings.Log, flags.Warnings(), settings.ResolveJoinToken(os.Getenv)
			},
			func(ctx context.Context, settings *config.Agent, log *zap.Logger) error {
				cfg, err := agentConfig(settings, log)
				if err != nil {
					return err
				}
				return runAgent(ctx, cfg, settings.HealthAddress, log, settings.CodePages)
			}),
	}
	cmd.Flags().StringVar(&path, "config", "", "HCL configuration file with an agent block")
	flags = config.NewAgentFlags(cmd.Flags())
	return cmd
}

// defaultAgentDataDir is used when neither the file nor a flag names one.
const defaultAgentDataDir = "./.sigil/agent"

// agentConfig turns the command-line settings into an agent.Config on top
// of the agent's defaults.
func agentConfig(a *config.Agent, log *zap.Logger) (agent.Config, error) {
	cfg := agent.DefaultConfig()
	td, err := spiffeid.TrustDomainFromString(a.TrustDomain)
	if err != nil {
		return cfg, fmt.Errorf("trust_domain %q is invalid: %v", a.TrustDomain, err)
	}
	cfg.TrustDomain = td
	cfg.ServerAddress = a.ServerAddress
	if cfg.DataDir == "" {
		cfg.DataDir = defaultAgentDataDir
	}
	setString(&cfg.DataDir, a.DataDir)
	setString(&cfg.SocketPath, a.SocketPath)
	setString(&cfg.AdminSocket, a.AdminSocket)
	cfg.TrustBundlePath = a.TrustBundlePath
	cfg.WorkloadAPILimits.MaxConnsPerUID = a.MaxWorkloadConnsPerUID
	cfg.WorkloadAPILimits.MaxConns = a.MaxWorkloadConns
	cfg.WorkloadAttestorTimeout = a.WorkloadAttestorTimeout
	if a.HealthReportInterval != 0 {
		cfg.HealthReportInterval = a.HealthReportInterval
	}
	cfg.SDSSocket = a.SDSSocket
	if c := a.SVIDCache; c != nil {
		cfg.SVIDCache = agent.SVIDCacheConfig{MaxSVIDs: c.MaxSVIDs, EagerSelectors: c.EagerSelectors, IdleAfter: c.IdleAfter}
	}
	cfg.Logger = log
	if cfg.SVIDFiles, err = agentSVIDFiles(a.SVIDFiles); err != nil {
		return cfg, err
	}
	if err := agentPlugins(a, &cfg); err != nil {
		return cfg, err
	}
	if err := cfg.Validate(); err != nil {
		closeAuditSinks(cfg.AuditSink, log)
		return cfg, err
	}
	return cfg, nil
}

// runAgent runs the agent until ctx is done; pages is as for runServer.
func runAgent(ctx context.Context, cfg agent.Config, healthAddr string, log *zap.Logger, pages ...*config.CodePages) error {
	defer closeAuditSinks(cfg.AuditSink, log)
	a, err := agent.New(cfg)
	if err != nil {
		return err
	}
	// The agent keeps a small heap while every Workload API call
	// allocates a few KiB inside gRPC: without a floor the collector
	// runs every few hundred cached fetches (see internal/gcfloor). GOGC
	// set in the environment turns this off.
	if stop, err := gcfloor.Start(gcfloor.DefaultConfig()); err != nil {
		log.Debug("no heap floor", zap.Error(err))
	} else {
		defer stop()
	}
	if healthAddr != "" {
		ready := health.All(health.Closed(a.Ready(), "agent is starting"), a.Healthy)
		hs, err := health.Start(healthAddr, ready, log.Named("health"),
			health.WithHandler("/metrics", a.MetricsHandler()))
		if err != nil {
			return err
		}
		defer stopHealth(hs, log)
	}
	log.Info("starting agent",
		zap.String("trust_domain", cfg.TrustDomain.String()),
		zap.String("server_address", cfg.ServerAddress),
		zap.String("socket_path", cfg.SocketPath))
	startCodePages(ctx, pages, a.Ready(), log)
	err = a.Run(ctx)
	if err != nil && !errors.Is(err, context.Canceled) {
		return prefixed("agent", err)
	}
	log.Info("agent stopped")
	return nil
}

func stopHealth(hs *health.Server, log *zap.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if err := hs.Stop(ctx); err != nil {
		log.Warn("health endpoint shutdown", zap.Error(err))
	}
}

// prefixed says which daemon err comes from, unless err already does
// (the daemons' errors start with their package's name): "server: data
// dir: ...", never "server: server: data dir: ...".
func prefixed(who string, err error) error {
	if err == nil || strings.HasPrefix(err.Error(), who+": ") {
		return err
	}
	return fmt.Errorf("%s: %w", who, err)
}

func setString(dst *string, v string) {
	if v != "" {
		*dst = v
	}
}

func setDuration(dst *time.Duration, v time.Duration) {
	if v != 0 {
		*dst = v
	}
}

// closeUpstream releases the upstream authority's sessions (a PKCS#11
// session, an upstream cluster's connections) once the server has
// stopped, if it holds any (io.Closer).
func closeUpstream(ua ca.UpstreamAuthority, log *zap.Logger) {
	if c, ok := ua.(io.Closer); ok {
		if err := c.Close(); err != nil {
			log.Warn("closing the upstream authority", zap.Error(err))
		}
	}
}

// closeKeyStore releases the key manager's sessions (an HSM session, a
// KMS client) once the server has stopped, if it holds any (io.Closer).
func closeKeyStore(ks ca.KeyStore, log *zap.Logger) {
	if c, ok := ks.(io.Closer); ok {
		if err := c.Close(); err != nil {
			log.Warn("closing the key manager", zap.Error(err))
		}
	}
}

// startCodePages starts, for a daemon run from the command line (pages
// given, its only element nil without a code_pages block), the drops of
// the executable's unused pages once ready is closed and the process is
// quiet (internal/exepages); they stop with ctx.
func startCodePages(ctx context.Context, pages []*config.CodePages, ready <-chan struct{}, log *zap.Logger) {
	if len(pages) == 0 {
		return
	}
	cfg := exepages.Config{Report: func(res exepages.Result, err error) {
		if err != nil && res.Unmapped {
			log.Warn("unmapping the executable's pages at start", zap.Error(err),
				zap.Int("mappings", res.Mappings), zap.Uint64("resident_kib", res.Resident>>10))
			return
		}
		if err != nil {
			log.Warn("dropping the executable's unused pages", zap.Error(err),
				zap.Int("mappings", res.Mappings), zap.Uint64("resident_kib", res.Resident>>10))
			return
		}
		if res.Again {
			log.Debug("unmapped the executable's pages again while starting", zap.Int("mappings", res.Mappings),
				zap.Uint64("resident_kib", res.Resident>>10))
			return
		}
		if res.Unmapped {
			log.Info("unmapped the executable's pages after initialisation", zap.Int("mappings", res.Mappings),
				zap.Uint64("resident_kib", res.Resident>>10))
			return
		}
		log.Info("dropped the executable's unused pages", zap.Int("mappings", res.Mappings),
			zap.Uint64("advised_kib", res.Size>>10), zap.Uint64("resident_kib", res.Resident>>10),
			zap.Uint64("random_kib", res.Random>>10))
	}}
	if p := pages[0]; p != nil {
		cfg.Disabled, cfg.After, cfg.Readahead = !p.Drop, p.After, p.Readahead
	}
	go exepages.Run(ctx, cfg, ready)
}
