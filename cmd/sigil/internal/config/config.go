// Package config reads the HCL configuration files of `sigil server` and
// `sigil agent`, lets command-line flags override them, and builds the
// process logger. It knows nothing about the server and agent packages: it
// produces plain settings that the commands copy into server.Config and
// agent.Config, and the plugin blocks (with the flat keys and the defaults
// applied: PluginBlocks) that the commands build with package plugin.
package config

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/spf13/pflag"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/plugin"
)

// Server holds the settings of `sigil server`. Zero values mean "use the
// server's default".
type Server struct {
	TrustDomain   string
	NodeName      string
	DataDir       string
	BindAddress   string
	AdminSocket   string
	HealthAddress string
	KeyManager    string
	CATTL         time.Duration
	X509SVIDTTL   time.Duration
	AgentSVIDTTL  time.Duration
	JoinTokenTTL  time.Duration
	JWTSVIDTTL    time.Duration
	// CAPropagationDelay is how long a new key is in the bundle before it
	// signs; 0 means a sixth of CATTL.
	CAPropagationDelay time.Duration
	// RemovedServerGrace: see server.Config.RemovedServerGrace.
	RemovedServerGrace time.Duration
	// Cluster settings (see server.Config).
	ClusterAddress       string
	AdvertiseAddress     string
	RetryJoin            string // comma-separated cluster addresses
	JoinSecret           string
	JoinSecretFile       string // file (mode 0600) holding the join secret
	NoBootstrap          bool
	RaftHeartbeatTimeout time.Duration
	// AllowDownstream: see server.Config.AllowDownstream.
	AllowDownstream bool
	Log             Log

	// Remote administration (server.Config.AdminAddress, AdminIDs): the
	// admin API on TCP with mutual TLS; AdminIDs are comma-separated
	// SPIFFE IDs, checked by the command.
	AdminAddress string
	AdminIDs     string

	// Plugins is what the file says about plugins; nil without a file.
	// PluginBlocks applies KeyManager and the defaults to it.
	Plugins *Plugins
	// Federation is the file's federation block; nil without one.
	Federation *Federation
	// Alerts is the file's alerts block; nil without one.
	Alerts *Alerts
	// X509SVIDTemplateFile and CATemplateFile are the paths of the
	// operator's certificate templates (x509_svid_template_file,
	// ca_template_file; docs/templates.md); "" for none. The command
	// reads and validates them at start.
	X509SVIDTemplateFile string
	CATemplateFile       string
	// X509SVIDTemplate and CATemplate are those templates, parsed and
	// validated; nil for none.
	X509SVIDTemplate *ca.X509SVIDTemplate
	CATemplate       *ca.CATemplate
	// CodePages is the code_pages block; nil when there is none (the
	// default: drop).
	CodePages *CodePages
}

// Agent holds the settings of `sigil agent`. Zero values mean "use the
// agent's default".
type Agent struct {
	TrustDomain     string
	ServerAddress   string
	DataDir         string
	SocketPath      string
	AdminSocket     string // the agent's admin API socket (sigil workload explain)
	JoinToken       string
	JoinTokenFile   string // file (mode 0600) holding the join token
	TrustBundlePath string
	HealthAddress   string
	Log             Log
	// MaxWorkloadConnsPerUID and MaxWorkloadConns cap the Workload API
	// connections open at once from one uid and in all; 0 means the
	// default (workloadapi.Limits).
	MaxWorkloadConnsPerUID int
	MaxWorkloadConns       int
	// WorkloadAttestorTimeout bounds each workload attestor's run on a
	// Workload API call; 0 means the default (agent.Config).
	WorkloadAttestorTimeout time.Duration
	// HealthReportInterval is the longest time between two rotation
	// reports to the server (heartbeats); 0 means the default
	// (agent.Config).
	HealthReportInterval time.Duration

	// SDSSocket is a socket of its own for Envoy's Secret Discovery
	// Service (sds_socket); "" serves SDS on the Workload API socket.
	SDSSocket string

	// Plugins is what the file says about plugins; nil without a file.
	// PluginBlocks applies the defaults to it.
	Plugins *Plugins

	// SVIDFiles holds the svid_files blocks; nil when there are none (a
	// pointer keeps Agent comparable).
	SVIDFiles *SVIDFilesBlocks

	// SVIDCache is the svid_cache block; nil when there is none.
	SVIDCache *SVIDCache

	// CodePages is the code_pages block; nil when there is none (the
	// default: drop).
	CodePages *CodePages
}

// Log holds the logging settings shared by both daemons.
type Log struct {
	Level  string // debug, info, warn, error; "" means info
	Format string // json or console; "" means json
}

// File is a parsed configuration file. A file may hold a server block, an
// agent block or both. A plugins block goes inside the server or agent
// block, or at the top level of a file that holds only one of them.
type File struct {
	Server *Server
	Agent  *Agent
}

// hclFile mirrors the file layout for gohcl. Durations are strings here and
// are parsed after decoding so that a bad one gets a precise message.
type hclFile struct {
	Server *hclServer `hcl:"server,block"`
	Agent  *hclAgent  `hcl:"agent,block"`
	// Plugins at the top level belong to the file's one daemon block.
	Plugins *hclPlugins `hcl:"plugins,block"`
}

type hclServer struct {
	TrustDomain   string `hcl:"trust_domain,optional"`
	NodeName      string `hcl:"node_name,optional"`
	DataDir       string `hcl:"data_dir,optional"`
	BindAddress   string `hcl:"bind_address,optional"`
	AdminSocket   string `hcl:"admin_socket,optional"`
	HealthAddress string `hcl:"health_address,optional"`
	KeyManager    string `hcl:"key_manager,optional"`
	CATTL         string `hcl:"ca_ttl,optional"`
	X509SVIDTTL   string `hcl:"x509_svid_ttl,optional"`
	AgentSVIDTTL  string `hcl:"agent_svid_ttl,optional"`
	JoinTokenTTL  string `hcl:"join_token_ttl,optional"`
	JWTSVIDTTL    string `hcl:"jwt_svid_ttl,optional"`
	CAPropagation string `hcl:"ca_propagation_delay,optional"`
	// RemovedServerGrace: see server.Config.RemovedServerGrace.
	RemovedServerGrace string `hcl:"removed_server_grace,optional"`
	// Cluster.
	ClusterAddress       string   `hcl:"cluster_address,optional"`
	AdvertiseAddress     string   `hcl:"advertise_address,optional"`
	RetryJoin            []string `hcl:"retry_join,optional"`
	JoinSecret           string   `hcl:"join_secret,optional"`
	JoinSecretFile       string   `hcl:"join_secret_file,optional"`
	Bootstrap            *bool    `hcl:"bootstrap,optional"`
	RaftHeartbeatTimeout string   `hcl:"raft_heartbeat_timeout,optional"`
	LogLevel             string   `hcl:"log_level,optional"`
	LogFormat            string   `hcl:"log_format,optional"`
	// AllowDownstream: see server.Config.AllowDownstream.
	AllowDownstream bool `hcl:"allow_downstream,optional"`
	// Remote administration.
	AdminAddress string   `hcl:"admin_address,optional"`
	AdminIDs     []string `hcl:"admin_ids,optional"`
	// Certificate templates (docs/templates.md).
	X509SVIDTemplateFile string `hcl:"x509_svid_template_file,optional"`
	CATemplateFile       string `hcl:"ca_template_file,optional"`

	Plugins    *hclPlugins    `hcl:"plugins,block"`
	Federation *hclFederation `hcl:"federation,block"`
	Alerts     *hclAlerts     `hcl:"alerts,block"`
	CodePages  *hclCodePages  `hcl:"code_pages,block"`
}

type hclAgent struct {
	TrustDomain     string `hcl:"trust_domain,optional"`
	ServerAddress   string `hcl:"server_address,optional"`
	DataDir         string `hcl:"data_dir,optional"`
	SocketPath      string `hcl:"socket_path,optional"`
	AdminSocket     string `hcl:"admin_socket,optional"`
	JoinToken       string `hcl:"join_token,optional"`
	JoinTokenFile   string `hcl:"join_token_file,optional"`
	TrustBundlePath string `hcl:"trust_bundle_path,optional"`
	HealthAddress   string `hcl:"health_address,optional"`
	LogLevel        string `hcl:"log_level,optional"`
	LogFormat       string `hcl:"log_format,optional"`

	MaxWorkloadConnsPerUID int `hcl:"workload_api_max_connections_per_uid,optional"`
	MaxWorkloadConns       int `hcl:"workload_api_max_connections,optional"`

	WorkloadAttestorTimeout string `hcl:"workload_attestor_timeout,optional"`
	HealthReportInterval    string `hcl:"health_report_interval,optional"`

	SDSSocket string `hcl:"sds_socket,optional"`

	Plugins *hclPlugins `hcl:"plugins,block"`

	SVIDFiles []hclSVIDFiles `hcl:"svid_files,block"`

	SVIDCache *hclSVIDCache `hcl:"svid_cache,block"`

	CodePages *hclCodePages `hcl:"code_pages,block"`
}

// LoadFile reads and parses the configuration file at path.
func LoadFile(path string) (*File, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return Parse(path, src)
}

// Parse parses HCL source; filename is used in error messages only.
// Unknown blocks or attributes, wrong types and bad durations are errors.
func Parse(filename string, src []byte) (*File, error) {
	f, diags := hclsyntax.ParseConfig(src, filename, hcl.Pos{Line: 1, Column: 1})
	if diags.HasErrors() {
		return nil, plugin.DiagError(diags)
	}
	var raw hclFile
	if diags := gohcl.DecodeBody(f.Body, nil, &raw); diags.HasErrors() {
		return nil, plugin.DiagError(diags)
	}
	body, ok := f.Body.(*hclsyntax.Body)
	if !ok {
		return nil, fmt.Errorf("%s: not a native HCL file", filename)
	}
	if raw.Plugins != nil && (raw.Server == nil) == (raw.Agent == nil) {
		at := raw.Plugins.Body.MissingItemRange()
		for _, b := range body.Blocks {
			if b.Type == "plugins" {
				at = b.DefRange()
			}
		}
		if raw.Server == nil {
			return nil, fmt.Errorf("%s: a top-level plugins block needs a server or an agent block in the file", pos(at))
		}
		return nil, fmt.Errorf("%s: a top-level plugins block is ambiguous in a file with both a server and an agent block: move it into one of them (server { plugins { ... } })", pos(at))
	}
	out := &File{}
	if s := raw.Server; s != nil {
		out.Server = &Server{
			TrustDomain:   s.TrustDomain,
			NodeName:      s.NodeName,
			DataDir:       s.DataDir,
			BindAddress:   s.BindAddress,
			AdminSocket:   s.AdminSocket,
			HealthAddress: s.HealthAddress,
			KeyManager:    s.KeyManager,
			Log:           Log{Level: s.LogLevel, Format: s.LogFormat},

			ClusterAddress:   s.ClusterAddress,
			AdvertiseAddress: s.AdvertiseAddress,
			RetryJoin:        strings.Join(s.RetryJoin, ","),
			JoinSecret:       s.JoinSecret,
			JoinSecretFile:   s.JoinSecretFile,

			AllowDownstream:      s.AllowDownstream,
			AdminAddress:         s.AdminAddress,
			AdminIDs:             strings.Join(s.AdminIDs, ","),
			X509SVIDTemplateFile: s.X509SVIDTemplateFile,
			CATemplateFile:       s.CATemplateFile,
		}
		if s.Bootstrap != nil {
			out.Server.NoBootstrap = !*s.Bootstrap
		}
		p, err := readPlugins(body, "server", s.Plugins, raw.Plugins)
		if err != nil {
			return nil, err
		}
		out.Server.Plugins = p
		durations := []struct {
			name string
			src  string
			dst  *time.Duration
		}{
			{"ca_ttl", s.CATTL, &out.Server.CATTL},
			{"x509_svid_ttl", s.X509SVIDTTL, &out.Server.X509SVIDTTL},
			{"agent_svid_ttl", s.AgentSVIDTTL, &out.Server.AgentSVIDTTL},
			{"join_token_ttl", s.JoinTokenTTL, &out.Server.JoinTokenTTL},
			{"jwt_svid_ttl", s.JWTSVIDTTL, &out.Server.JWTSVIDTTL},
			{"ca_propagation_delay", s.CAPropagation, &out.Server.CAPropagationDelay},
			{"removed_server_grace", s.RemovedServerGrace, &out.Server.RemovedServerGrace},
			{"raft_heartbeat_timeout", s.RaftHeartbeatTimeout, &out.Server.RaftHeartbeatTimeout},
		}
		for _, d := range durations {
			if d.src == "" {
				continue
			}
			v, err := parseDuration(d.src)
			if err != nil {
				return nil, fmt.Errorf("%s: server.%s: %w", filename, d.name, err)
			}
			*d.dst = v
		}
		if s.Federation != nil {
			fed, err := readFederation(filename, syntaxBlock(body, "server"), s.Federation)
			if err != nil {
				return nil, err
			}
			out.Server.Federation = fed
		}
		if s.Alerts != nil {
			al, err := readAlerts(filename, syntaxBlock(body, "server"), s.Alerts)
			if err != nil {
				return nil, err
			}
			out.Server.Alerts = al
		}
		if err := readTemplates(filename, syntaxBlock(body, "server"), out.Server); err != nil {
			return nil, err
		}
		if out.Server.CodePages, err = readCodePages(filename, "server", s.CodePages); err != nil {
			return nil, err
		}
	}
	if a := raw.Agent; a != nil {
		out.Agent = &Agent{
			TrustDomain:     a.TrustDomain,
			ServerAddress:   a.ServerAddress,
			DataDir:         a.DataDir,
			SocketPath:      a.SocketPath,
			AdminSocket:     a.AdminSocket,
			JoinToken:       a.JoinToken,
			JoinTokenFile:   a.JoinTokenFile,
			TrustBundlePath: a.TrustBundlePath,
			HealthAddress:   a.HealthAddress,
			Log:             Log{Level: a.LogLevel, Format: a.LogFormat},

			MaxWorkloadConnsPerUID: a.MaxWorkloadConnsPerUID,
			MaxWorkloadConns:       a.MaxWorkloadConns,

			SDSSocket: a.SDSSocket,
		}
		if a.MaxWorkloadConnsPerUID < 0 || a.MaxWorkloadConns < 0 {
			return nil, fmt.Errorf("%s: agent: workload_api_max_connections_per_uid and workload_api_max_connections must not be negative", filename)
		}
		if a.WorkloadAttestorTimeout != "" {
			d, err := parseDuration(a.WorkloadAttestorTimeout)
			if err != nil {
				return nil, fmt.Errorf("%s: agent.workload_attestor_timeout: %w", filename, err)
			}
			out.Agent.WorkloadAttestorTimeout = d
		}
		if a.HealthReportInterval != "" {
			d, err := parseDuration(a.HealthReportInterval)
			if err != nil {
				return nil, fmt.Errorf("%s: agent.health_report_interval: %w", filename, err)
			}
			out.Agent.HealthReportInterval = d
		}
		p, err := readPlugins(body, "agent", a.Plugins, raw.Plugins)
		if err != nil {
			return nil, err
		}
		out.Agent.Plugins = p

		if out.Agent.SVIDFiles, err = readSVIDFiles(filename, a.SVIDFiles); err != nil {
			return nil, err
		}
		if out.Agent.SVIDCache, err = readSVIDCache(filename, a.SVIDCache); err != nil {
			return nil, err
		}
		if out.Agent.CodePages, err = readCodePages(filename, "agent", a.CodePages); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// parseDuration is time.ParseDuration that also refuses negative values.
func parseDuration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("invalid duration %q (want e.g. \"90s\", \"1h\", \"24h\")", s)
	}
	if d < 0 {
		return 0, fmt.Errorf("invalid duration %q: must not be negative", s)
	}
	return d, nil
}

// ServerFlags are the command-line flags of `sigil server`.
type ServerFlags struct {
	fs       *pflag.FlagSet
	val      Server
	joins    []string
	adminIDs []string
}

// NewServerFlags registers the server flags on fs.
func NewServerFlags(fs *pflag.FlagSet) *ServerFlags {
	f := &ServerFlags{fs: fs}
	fs.StringVar(&f.val.TrustDomain, "trust-domain", "", "trust domain of this cluster, e.g. example.org")
	fs.StringVar(&f.val.NodeName, "node-name", "", "name of this server node (default: hostname)")
	fs.StringVar(&f.val.DataDir, "data-dir", "", "directory for Raft data and CA keys (default ./.sigil/server)")
	fs.StringVar(&f.val.BindAddress, "bind-address", "", "listen address of the node API (default :8081)")
	fs.StringVar(&f.val.AdminSocket, "admin-socket", "", "path of the admin API unix socket (default /run/sigil/server/private/admin.sock; $XDG_RUNTIME_DIR/sigil/server/private/admin.sock for a user other than root)")
	fs.StringVar(&f.val.HealthAddress, "health-address", "", "listen address of the /live and /ready endpoints (empty: disabled)")
	fs.StringVar(&f.val.KeyManager, "key-manager", "", "where CA keys are kept, for key managers without settings: disk or memory (default disk); pkcs11, tpm and awskms need a key_manager block")
	fs.DurationVar(&f.val.CATTL, "ca-ttl", 0, "lifetime of CA certificates (default 24h)")
	fs.DurationVar(&f.val.X509SVIDTTL, "x509-svid-ttl", 0, "default lifetime of workload X.509-SVIDs (default 1h)")
	fs.DurationVar(&f.val.AgentSVIDTTL, "agent-svid-ttl", 0, "lifetime of agent SVIDs (default 1h)")
	fs.DurationVar(&f.val.JoinTokenTTL, "join-token-ttl", 0, "default lifetime of join tokens (default 10m)")
	fs.DurationVar(&f.val.JWTSVIDTTL, "jwt-svid-ttl", 0, "default lifetime of JWT-SVIDs (default 5m)")
	fs.DurationVar(&f.val.CAPropagationDelay, "ca-propagation-delay", 0, "how long a new CA or JWT key is in the bundle before it signs (default ca_ttl/6)")
	fs.StringVar(&f.val.ClusterAddress, "cluster-address", "", "listen address of the cluster port (Raft and server-to-server mTLS); empty: a single server")
	fs.StringVar(&f.val.AdvertiseAddress, "advertise-address", "", "host:port peers reach the cluster port at (default: the cluster address)")
	fs.StringArrayVar(&f.joins, "join", nil, "cluster address of an existing server to join through (repeatable)")
	fs.StringVar(&f.val.JoinSecret, "join-secret", "", "cluster join secret; visible to every local user: prefer -join-secret-file or SIGIL_JOIN_SECRET")
	fs.StringVar(&f.val.JoinSecretFile, "join-secret-file", "", "file (mode 0600) holding the cluster join secret")
	fs.BoolVar(&f.val.NoBootstrap, "no-bootstrap", false, "with no Raft state and nothing to join, wait for 'sigil cluster join' instead of bootstrapping")
	fs.DurationVar(&f.val.RaftHeartbeatTimeout, "raft-heartbeat-timeout", 0, "Raft heartbeat and election timeout (default 5s)")
	fs.BoolVar(&f.val.AllowDownstream, "allow-downstream", false, "sign the CA certificates of downstream Sigil clusters (nested) for workloads of entries marked downstream; CA keys made from then on allow one level of intermediates")
	fs.StringVar(&f.val.AdminAddress, "admin-address", "", "host:port to serve the admin API on with mutual TLS, for callers with an admin SVID (empty: the unix socket only)")
	fs.StringArrayVar(&f.adminIDs, "admin-id", nil, "SPIFFE ID allowed to call the admin API on -admin-address, besides those of entries marked admin (repeatable)")
	addLogFlags(fs, &f.val.Log)
	return f
}

// Apply copies the flags that were set explicitly on the command line
// over s.
func (f *ServerFlags) Apply(s *Server) {
	set := func(name string, dst *string, v string) {
		if f.fs.Changed(name) {
			*dst = v
		}
	}
	setD := func(name string, dst *time.Duration, v time.Duration) {
		if f.fs.Changed(name) {
			*dst = v
		}
	}
	set("trust-domain", &s.TrustDomain, f.val.TrustDomain)
	set("node-name", &s.NodeName, f.val.NodeName)
	set("data-dir", &s.DataDir, f.val.DataDir)
	set("bind-address", &s.BindAddress, f.val.BindAddress)
	set("admin-socket", &s.AdminSocket, f.val.AdminSocket)
	set("health-address", &s.HealthAddress, f.val.HealthAddress)
	set("key-manager", &s.KeyManager, f.val.KeyManager)
	setD("ca-ttl", &s.CATTL, f.val.CATTL)
	setD("x509-svid-ttl", &s.X509SVIDTTL, f.val.X509SVIDTTL)
	setD("agent-svid-ttl", &s.AgentSVIDTTL, f.val.AgentSVIDTTL)
	setD("join-token-ttl", &s.JoinTokenTTL, f.val.JoinTokenTTL)
	setD("jwt-svid-ttl", &s.JWTSVIDTTL, f.val.JWTSVIDTTL)
	setD("ca-propagation-delay", &s.CAPropagationDelay, f.val.CAPropagationDelay)
	set("cluster-address", &s.ClusterAddress, f.val.ClusterAddress)
	set("advertise-address", &s.AdvertiseAddress, f.val.AdvertiseAddress)
	set("join-secret", &s.JoinSecret, f.val.JoinSecret)
	set("join-secret-file", &s.JoinSecretFile, f.val.JoinSecretFile)
	setD("raft-heartbeat-timeout", &s.RaftHeartbeatTimeout, f.val.RaftHeartbeatTimeout)
	if f.fs.Changed("join") {
		s.RetryJoin = strings.Join(f.joins, ",")
	}
	if f.fs.Changed("no-bootstrap") {
		s.NoBootstrap = f.val.NoBootstrap
	}
	if f.fs.Changed("allow-downstream") {
		s.AllowDownstream = f.val.AllowDownstream
	}
	set("admin-address", &s.AdminAddress, f.val.AdminAddress)
	if f.fs.Changed("admin-id") {
		s.AdminIDs = strings.Join(f.adminIDs, ",")
	}
	set("log-level", &s.Log.Level, f.val.Log.Level)
	set("log-format", &s.Log.Format, f.val.Log.Format)
}

// AgentFlags are the command-line flags of `sigil agent`.
type AgentFlags struct {
	fs  *pflag.FlagSet
	val Agent
}

// NewAgentFlags registers the agent flags on fs.
func NewAgentFlags(fs *pflag.FlagSet) *AgentFlags {
	f := &AgentFlags{fs: fs}
	fs.StringVar(&f.val.TrustDomain, "trust-domain", "", "trust domain of the servers, e.g. example.org")
	fs.StringVar(&f.val.ServerAddress, "server-address", "", "address (host:port) of a server's node API")
	fs.StringVar(&f.val.DataDir, "data-dir", "", "directory for the agent's identity and cache (default ./.sigil/agent)")
	fs.StringVar(&f.val.SocketPath, "socket-path", "", "path of the Workload API unix socket (default /run/sigil/agent/public/api.sock; $XDG_RUNTIME_DIR/sigil/agent/public/api.sock for a user other than root)")
	fs.StringVar(&f.val.AdminSocket, "admin-socket", "", "path of the agent's admin API unix socket, for `sigil workload explain` (default: private/admin.sock beside socket-path's directory, or beside its parent when that directory is named public: /run/sigil/agent/private/admin.sock for the default socket-path)")
	fs.StringVar(&f.val.JoinToken, "join-token", "", "single-use join token for the first attestation; visible to every local user: prefer -join-token-file or SIGIL_JOIN_TOKEN")
	fs.StringVar(&f.val.JoinTokenFile, "join-token-file", "", "file (mode 0600) holding the single-use join token")
	fs.StringVar(&f.val.TrustBundlePath, "trust-bundle-path", "", "PEM file with the server CA certificates (the output of 'sigil bundle show')")
	fs.StringVar(&f.val.HealthAddress, "health-address", "", "listen address of the /live and /ready endpoints (empty: disabled)")
	addLogFlags(fs, &f.val.Log)
	return f
}

// Apply copies the flags that were set explicitly on the command line
// over a.
func (f *AgentFlags) Apply(a *Agent) {
	set := func(name string, dst *string, v string) {
		if f.fs.Changed(name) {
			*dst = v
		}
	}
	set("trust-domain", &a.TrustDomain, f.val.TrustDomain)
	set("server-address", &a.ServerAddress, f.val.ServerAddress)
	set("data-dir", &a.DataDir, f.val.DataDir)
	set("socket-path", &a.SocketPath, f.val.SocketPath)
	set("admin-socket", &a.AdminSocket, f.val.AdminSocket)
	set("join-token", &a.JoinToken, f.val.JoinToken)
	set("join-token-file", &a.JoinTokenFile, f.val.JoinTokenFile)
	set("trust-bundle-path", &a.TrustBundlePath, f.val.TrustBundlePath)
	set("health-address", &a.HealthAddress, f.val.HealthAddress)
	set("log-level", &a.Log.Level, f.val.Log.Level)
	set("log-format", &a.Log.Format, f.val.Log.Format)
}

func addLogFlags(fs *pflag.FlagSet, l *Log) {
	fs.StringVar(&l.Level, "log-level", "", "log level: debug, info, warn or error (default info)")
	fs.StringVar(&l.Format, "log-format", "", "log format: json or console (default json)")
}

// Validate checks the settings that the command line owns: the trust
// domain, the log settings and the bounds on lifetimes (see
// validateLifetimes). The server package checks the rest.
func (s *Server) Validate() error {
	if err := validateTrustDomain(s.TrustDomain); err != nil {
		return err
	}
	if err := s.Federation.validate(s.TrustDomain); err != nil {
		return err
	}
	if err := s.validateLifetimes(); err != nil {
		return err
	}
	if err := s.checkFlatPlugins(); err != nil {
		return err
	}
	return s.Log.Validate()
}

// Validate checks the agent settings that the command line owns.
func (a *Agent) Validate() error {
	if err := validateTrustDomain(a.TrustDomain); err != nil {
		return err
	}
	if a.ServerAddress == "" {
		return errors.New("server_address is required (set it in the config file or with -server-address)")
	}
	if err := a.checkFlatPlugins(); err != nil {
		return err
	}
	return a.Log.Validate()
}

func validateTrustDomain(td string) error {
	if td == "" {
		return errors.New("trust_domain is required (set it in the config file or with -trust-domain)")
	}
	if _, err := spiffeid.TrustDomainFromString(td); err != nil {
		return fmt.Errorf("trust_domain %q is invalid: %v", td, err)
	}
	return nil
}

// Validate checks the log level and format.
func (l Log) Validate() error {
	if _, err := parseLevel(l.Level); err != nil {
		return err
	}
	switch l.Format {
	case "", "json", "console", "text":
		return nil
	}
	return fmt.Errorf("log_format %q is invalid: want json or console", l.Format)
}
