package server

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"

	"github.com/sigil-id/sigil/alert"
	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/attestor/node"
	"github.com/sigil-id/sigil/audit"
	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/federation"
	"github.com/sigil-id/sigil/health"
	"github.com/sigil-id/sigil/internal/unixsock"
	"github.com/sigil-id/sigil/raftstore"
)

// Default locations and lifetimes.
const (
	DefaultBindAddress  = ":8081"
	DefaultAdminSocket  = "/run/sigil/server/private/admin.sock" // root's; others': unixsock.DefaultAdminSocket
	DefaultDataDir      = "./.sigil/server"
	DefaultCATTL        = 24 * time.Hour
	DefaultX509SVIDTTL  = time.Hour
	DefaultAgentSVIDTTL = time.Hour
	DefaultJoinTokenTTL = 10 * time.Minute
	DefaultJWTSVIDTTL   = 5 * time.Minute
)

// Config configures a server node.
type Config struct {
	TrustDomain spiffeid.TrustDomain
	// NodeName names this server in the cluster and in its SPIFFE ID
	// spiffe://<td>/sigil/server/<NodeName>. Default: the hostname.
	NodeName string
	// DataDir holds the Raft log, snapshots, the state of the CA key slots
	// and, for the disk key manager by default, the CA keys.
	DataDir string
	// BindAddress is the node API's listen address.
	BindAddress string
	// AdminSocket is the admin API's unix socket; its directory is created
	// 0700 and is the admin API's access control.
	AdminSocket string
	// HealthAddress is served by cmd/sigil; "" disables it.
	HealthAddress string

	// AdminAddress, when not empty, serves the admin API also on this TCP
	// address (host:port) with mutual TLS (see adminremote.go): the
	// server presents its server SVID, and a caller must present an
	// X.509-SVID of the trust domain whose SPIFFE ID is in AdminIDs or is
	// the spiffe_id of a registration entry marked admin. Empty (the
	// default): the admin API is only on AdminSocket.
	AdminAddress string
	// AdminIDs are the SPIFFE IDs (of this trust domain) allowed to call
	// the admin API on AdminAddress, besides those of entries marked
	// admin. The IDs of agents and servers are admins only when listed
	// here.
	AdminIDs []spiffeid.ID
	// DisableMetrics leaves out the instruments of the SVID issuance,
	// sync and Raft apply paths (metrics_issuance.go): their series are
	// absent from MetricsHandler and those paths do no metric work. For
	// measuring what the metrics cost (go run ./bench -metrics-only);
	// default false.
	DisableMetrics bool
	// NodeVerifiers are the node attestors agents may attest with, one
	// per name (cmd/sigil builds them from node_attestor plugin blocks).
	// At least one is required: there is no default, since server/ imports
	// no concrete plugin.
	NodeVerifiers []node.Verifier
	// KeyStore keeps this node's CA, JWT and cluster identity keys
	// (cmd/sigil builds it from the key_manager plugin block, by default
	// disk under DataDir). Required: there is no default.
	KeyStore ca.KeyStore
	// UpstreamAuthority, when not nil, signs this server's CA
	// certificates (cmd/sigil builds it from an upstream_authority plugin
	// block): they become intermediates under its roots, which the bundle
	// lists instead of them. Nil: self-signed CA certificates, each a
	// root of the bundle.
	UpstreamAuthority ca.UpstreamAuthority
	// AllowDownstream makes this server sign the CA certificates of
	// downstream Sigil clusters of its trust domain (the Downstream
	// service on the node API port, for callers whose SVID is the
	// spiffe_id of an entry marked downstream). Its own CA certificates,
	// self-signed, then allow one level of intermediates (path length 1
	// instead of 0), from the next key on.
	AllowDownstream bool
	CATTL           time.Duration
	X509SVIDTTL     time.Duration
	AgentSVIDTTL    time.Duration
	JoinTokenTTL    time.Duration
	// JWTSVIDTTL is the default lifetime of JWT-SVIDs.
	JWTSVIDTTL time.Duration
	// CAPropagationDelay is how long a new CA or JWT key is in the
	// committed bundle before it signs anything; 0 means a sixth of
	// CATTL.
	CAPropagationDelay time.Duration
	// RemovedServerGrace is how long the keys of a server removed from the
	// cluster stay in the bundle, tainted, before they are revoked
	// (removed for good): long enough for agents to replace what those
	// keys signed (at once when connected; after a short outage on
	// reconnecting) and for JWT-SVIDs they signed to expire. 0 means
	// DefaultRemovedServerGrace(JWTSVIDTTL): twice the JWT-SVID lifetime,
	// at least 5 minutes.
	RemovedServerGrace time.Duration

	// X509SVIDTemplate and CATemplate, when not nil, are the operator's
	// certificate templates (ca.ParseX509SVIDTemplate, ca.ParseCATemplate:
	// validated when parsed) for the X.509-SVIDs this server signs and
	// for its CA certificates; nil: Sigil's certificates as they are.
	X509SVIDTemplate *ca.X509SVIDTemplate
	CATemplate       *ca.CATemplate

	// ClusterAddress is the listen address of the cluster port (Raft and
	// server-to-server RPCs over mutual TLS). Empty runs a single server
	// with no network Raft transport, which can never gain peers.
	ClusterAddress string
	// AdvertiseAddress is the host:port peers reach the cluster port at;
	// default: the cluster listener's address (so ClusterAddress then
	// needs a host).
	AdvertiseAddress string
	// JoinAddresses are cluster addresses of existing servers. A server
	// with no Raft state joins through them (retrying until one accepts)
	// instead of bootstrapping a new cluster. Validate drops the entries
	// equal to AdvertiseAddress (a server never joins through itself), so
	// every server may be given the same list: one whose list names only
	// itself bootstraps (the first pod of deploy/kubernetes does).
	JoinAddresses []string
	// JoinSecret is the cluster join secret, the same on every server. It
	// authenticates a joining server once; after that servers
	// authenticate with their SVIDs. Empty refuses joins.
	JoinSecret string
	// NoBootstrap makes a server with no Raft state and no JoinAddresses
	// wait for `sigil cluster join` instead of bootstrapping.
	NoBootstrap bool
	// RaftHeartbeatTimeout is Raft's heartbeat and election timeout on
	// the network; zero is cluster.DefaultRaftTimeout (5s).
	RaftHeartbeatTimeout time.Duration

	Logger *zap.Logger
	Clock  clock.Clock
	// Federation configures the bundle endpoint and the refresh of
	// federated bundles; the zero value serves no endpoint and refreshes
	// the relationships created through the admin API with the defaults.
	Federation FederationConfig

	// AuditSink receives the server's audit events (identities issued
	// and refused, attestations, admin and cluster changes); nil writes
	// them to Logger (audit.NewZap). A sink that adds to the log, for
	// example an alert feed, is combined with the log with audit.Multi.
	AuditSink audit.Sink

	// Notifiers carry the server's alerts to on-call (the notifier
	// plugins); none is valid: alerts are then only listed
	// (AlertAdmin.List). Their names must be unique.
	Notifiers []alert.Notifier

	// Health holds the thresholds of the alert conditions; the zero
	// value means health.DefaultConfig().
	Health health.Config
	// EvaluateInterval is how often the leader evaluates the alert
	// conditions (and every server checks that it knows a leader); 0
	// means DefaultEvaluateInterval.
	EvaluateInterval time.Duration
	// AlertRepeatInterval is how often a firing alert is sent again to
	// the notifiers while it fires unchanged; 0 means the dispatcher's
	// default (alert.DefaultDispatcherConfig).
	AlertRepeatInterval time.Duration
	// AgentReportInterval is the heartbeat interval of agent reports the
	// server asks agents for (ReportResponse.interval_seconds, whole
	// seconds): 0 leaves each agent's own; otherwise 5s to 10m.
	AgentReportInterval time.Duration
}

// DefaultConfig returns a configuration with every default filled in
// except the trust domain and the plugins (NodeVerifiers, KeyStore), which
// have no default here: New refuses a configuration without them.
func DefaultConfig() Config {
	host, _ := os.Hostname()
	if host == "" {
		host = "server"
	}
	return Config{
		NodeName:     host,
		DataDir:      DefaultDataDir,
		BindAddress:  DefaultBindAddress,
		AdminSocket:  unixsock.DefaultAdminSocket(),
		CATTL:        DefaultCATTL,
		X509SVIDTTL:  DefaultX509SVIDTTL,
		AgentSVIDTTL: DefaultAgentSVIDTTL,
		JoinTokenTTL: DefaultJoinTokenTTL,
		JWTSVIDTTL:   DefaultJWTSVIDTTL,
	}
}

// Validate checks the configuration and fills in the logger and clock.
func (c *Config) Validate() error {
	if c.TrustDomain.IsZero() {
		return errors.New("server: trust_domain is required")
	}
	if c.NodeName == "" {
		return errors.New("server: node_name is required")
	}
	if _, err := spiffeid.FromSegments(c.TrustDomain, "sigil", "server", c.NodeName); err != nil {
		return fmt.Errorf("server: node_name %q is not a valid SPIFFE ID path segment: %w", c.NodeName, err)
	}
	if c.DataDir == "" {
		return errors.New("server: data_dir is required")
	}
	if c.BindAddress == "" {
		return errors.New("server: bind_address is required")
	}
	if c.AdminSocket == "" {
		return errors.New("server: admin_socket is required")
	}
	if err := checkAdminRemote(c.TrustDomain, c.AdminAddress, c.AdminIDs); err != nil {
		return err
	}
	if c.KeyStore == nil {
		return errors.New("server: no key manager: set KeyStore (cmd/sigil builds it from a key_manager plugin block, e.g. disk.NewStore(disk.DefaultDirs(dataDir)))")
	}
	if err := checkVerifiers(c.NodeVerifiers); err != nil {
		return err
	}
	for name, d := range map[string]*time.Duration{
		"ca_ttl": &c.CATTL, "x509_svid_ttl": &c.X509SVIDTTL, "agent_svid_ttl": &c.AgentSVIDTTL, "join_token_ttl": &c.JoinTokenTTL,
		"jwt_svid_ttl": &c.JWTSVIDTTL, "ca_propagation_delay": &c.CAPropagationDelay,
		"removed_server_grace": &c.RemovedServerGrace,
	} {
		if *d < 0 {
			return fmt.Errorf("server: %s must not be negative", name)
		}
	}
	if c.CATTL == 0 {
		c.CATTL = DefaultCATTL
	}
	if c.X509SVIDTTL == 0 {
		c.X509SVIDTTL = DefaultX509SVIDTTL
	}
	if c.AgentSVIDTTL == 0 {
		c.AgentSVIDTTL = DefaultAgentSVIDTTL
	}
	if c.JoinTokenTTL == 0 {
		c.JoinTokenTTL = DefaultJoinTokenTTL
	}
	if c.JWTSVIDTTL == 0 {
		c.JWTSVIDTTL = DefaultJWTSVIDTTL
	}
	if c.RemovedServerGrace == 0 {
		c.RemovedServerGrace = DefaultRemovedServerGrace(c.JWTSVIDTTL)
	}
	if c.AgentReportInterval != 0 && (c.AgentReportInterval < MinAgentReportInterval || c.AgentReportInterval > MaxAgentReportInterval) {
		return fmt.Errorf("server: report_interval: must be 0 (the agents' own) or %v to %v, got %v",
			MinAgentReportInterval, MaxAgentReportInterval, c.AgentReportInterval)
	}
	if c.ClusterAddress == "" && len(c.JoinAddresses) > 0 {
		return errors.New("server: join addresses need a cluster_address")
	}
	if c.AdvertiseAddress != "" {
		if _, _, err := net.SplitHostPort(c.AdvertiseAddress); err != nil {
			return fmt.Errorf("server: advertise_address %q: %w", c.AdvertiseAddress, err)
		}
	}
	for _, a := range c.JoinAddresses {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return fmt.Errorf("server: join address %q: %w", a, err)
		}
	}
	c.JoinAddresses = withoutSelf(c.JoinAddresses, c.AdvertiseAddress)
	if c.JoinSecret != "" {
		if _, err := ParseJoinSecret(c.JoinSecret); err != nil {
			return err
		}
	}
	if c.RaftHeartbeatTimeout < 0 {
		return errors.New("server: raft_heartbeat_timeout must not be negative")
	}
	if c.X509SVIDTTL >= c.CATTL || c.AgentSVIDTTL >= c.CATTL || c.JWTSVIDTTL >= c.CATTL {
		return errors.New("server: SVID lifetimes must be shorter than ca_ttl")
	}
	if c.CAPropagationDelay >= c.CATTL/2 {
		return fmt.Errorf("server: ca_propagation_delay %v must be shorter than half of ca_ttl %v", c.CAPropagationDelay, c.CATTL)
	}
	if err := c.validateFederation(); err != nil {
		return err
	}
	if err := c.validateAlerts(); err != nil {
		return err
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	if c.Clock == nil {
		c.Clock = clock.New()
	}
	return nil
}

// checkVerifiers refuses no verifier, a nil one, one without a name and
// two with one name.
func checkVerifiers(vs []node.Verifier) error {
	if len(vs) == 0 {
		return errors.New("server: no node verifier: set NodeVerifiers (cmd/sigil builds them from node_attestor plugin blocks, e.g. node_attestor \"join_token\" {})")
	}
	seen := make(map[string]bool, len(vs))
	for i, v := range vs {
		if v == nil {
			return fmt.Errorf("server: node verifier %d is nil", i)
		}
		name := v.Name()
		if name == "" {
			return fmt.Errorf("server: node verifier %d (%T) has no name", i, v)
		}
		if seen[name] {
			return fmt.Errorf("server: two node verifiers are named %q", name)
		}
		seen[name] = true
	}
	return nil
}

// FederationConfig is the server's `federation` block.
type FederationConfig struct {
	// BundleEndpoint, when Address is set, serves the trust domain's
	// bundle on its own listener.
	BundleEndpoint BundleEndpointConfig
	// MinRefresh and MaxRefresh bound the refresh hints of foreign
	// bundles; 0 means federation.DefaultMinRefresh / DefaultMaxRefresh.
	MinRefresh, MaxRefresh time.Duration
	// FetchTimeout bounds one fetch of a foreign bundle; 0 means
	// federation.DefaultFetchTimeout.
	FetchTimeout time.Duration
	// PartnerRefreshBound is how long federated partners may take to
	// fetch a new bundle: while a bundle endpoint is served, a new CA or
	// JWT key is in the published bundle at least this long before it
	// signs anything (the rotation's propagation delay is raised to it).
	// It must not be shorter than the bundle endpoint's refresh hint,
	// at which partners poll. 0 means twice the refresh hint, at least
	// DefaultPartnerRefreshBound.
	PartnerRefreshBound time.Duration
	// Relationships are declared in the configuration file (GitOps): the
	// leader writes each one (and its bootstrap bundle when no bundle of
	// that trust domain exists) when it takes office. Relationships made
	// with the admin API are left alone; one removed from the file stays
	// until `sigil federation delete`.
	Relationships []ConfigRelationship
}

// DefaultPartnerRefreshBound is the least default of
// FederationConfig.PartnerRefreshBound.
const DefaultPartnerRefreshBound = 5 * time.Minute

// BundleEndpointConfig is the `federation { bundle_endpoint { … } }`
// block.
type BundleEndpointConfig struct {
	// Address is the listen address ("" serves no endpoint).
	Address string
	// Profile is "https_spiffe" (default; served with an X.509-SVID
	// spiffe://<td>/sigil/server minted by this server's CA) or
	// "https_web" (CertFile and KeyFile, re-read when they change).
	Profile           string
	CertFile, KeyFile string
	// RefreshHint is published in the bundle; 0 means
	// federation.DefaultRefreshHint.
	RefreshHint time.Duration
}

// ConfigRelationship is one `federates_with "<td>" { … }` block.
type ConfigRelationship struct {
	Relationship *sigilv1.FederationRelationship
	// BootstrapBundle is the SPIFFE bundle document read from the
	// block's bundle_file (nil when none).
	BootstrapBundle []byte
}

// validateFederation checks the federation block and fills in the bundle
// endpoint's default profile.
func (c *Config) validateFederation() error {
	f := &c.Federation
	for name, d := range map[string]time.Duration{
		"min_refresh": f.MinRefresh, "max_refresh": f.MaxRefresh, "fetch_timeout": f.FetchTimeout,
		"partner_refresh_bound": f.PartnerRefreshBound, "bundle_endpoint refresh_hint": f.BundleEndpoint.RefreshHint,
	} {
		if d < 0 {
			return fmt.Errorf("server: federation %s must not be negative", name)
		}
	}
	minR, maxR := f.MinRefresh, f.MaxRefresh
	if minR == 0 {
		minR = federation.DefaultMinRefresh
	}
	if maxR == 0 {
		maxR = federation.DefaultMaxRefresh
	}
	if minR > maxR {
		return fmt.Errorf("server: federation min_refresh %v must not exceed max_refresh %v", minR, maxR)
	}
	ep := &f.BundleEndpoint
	if ep.Address == "" {
		if ep.Profile != "" || ep.CertFile != "" || ep.KeyFile != "" || ep.RefreshHint != 0 {
			return errors.New("server: federation bundle_endpoint: address is required")
		}
	} else {
		if _, _, err := net.SplitHostPort(ep.Address); err != nil {
			return fmt.Errorf("server: federation bundle_endpoint address %q: %w", ep.Address, err)
		}
		if ep.Profile == "" {
			ep.Profile = federation.ProfileHTTPSSPIFFE
		}
		switch ep.Profile {
		case federation.ProfileHTTPSSPIFFE:
			if ep.CertFile != "" || ep.KeyFile != "" {
				return errors.New("server: federation bundle_endpoint: cert_file and key_file are for profile https_web (https_spiffe serves the server's SVID)")
			}
		case federation.ProfileHTTPSWeb:
			if ep.CertFile == "" || ep.KeyFile == "" {
				return errors.New("server: federation bundle_endpoint: profile https_web needs cert_file and key_file")
			}
		default:
			return fmt.Errorf("server: federation bundle_endpoint profile %q: must be %s or %s", ep.Profile, federation.ProfileHTTPSSPIFFE, federation.ProfileHTTPSWeb)
		}
		// The propagation delay is raised to the partners' refresh bound,
		// and must stay under half of the key lifetime.
		if b, h := f.partnerRefreshBound(), ep.refreshHint(); b < h {
			return fmt.Errorf("server: federation partner_refresh_bound %v is shorter than the bundle endpoint's refresh_hint %v: partners fetch at the refresh hint, so a new key could sign before they have it", b, h)
		}
		if b := f.partnerRefreshBound(); b >= c.CATTL/2 {
			return fmt.Errorf("server: federation partner_refresh_bound %v must be shorter than half of ca_ttl %v", b, c.CATTL)
		}
	}
	if len(f.Relationships) > raftstore.MaxFederationRelationships {
		return fmt.Errorf("server: %d federation relationships exceed the limit of %d", len(f.Relationships), raftstore.MaxFederationRelationships)
	}
	seen := make(map[string]bool, len(f.Relationships))
	for i, cr := range f.Relationships {
		rel := cr.Relationship
		if rel == nil {
			return fmt.Errorf("server: federation relationship %d is empty", i)
		}
		if err := federation.ValidateRelationship(c.TrustDomain, rel); err != nil {
			return fmt.Errorf("server: federates_with %q: %w", rel.TrustDomain, err)
		}
		if seen[rel.TrustDomain] {
			return fmt.Errorf("server: federates_with %q is declared twice", rel.TrustDomain)
		}
		seen[rel.TrustDomain] = true
		if len(cr.BootstrapBundle) > 0 {
			td, err := spiffeid.TrustDomainFromString(rel.TrustDomain)
			if err != nil {
				return fmt.Errorf("server: federates_with %q: %w", rel.TrustDomain, err)
			}
			if _, err := federation.Decode(td, cr.BootstrapBundle); err != nil {
				return fmt.Errorf("server: federates_with %q: bundle_file: %w", rel.TrustDomain, err)
			}
		}
	}
	return nil
}

// validateAlerts checks the alert settings and fills in their defaults.
func (c *Config) validateAlerts() error {
	if c.Health == (health.Config{}) {
		c.Health = health.DefaultConfig()
	} else if err := c.Health.Validate(); err != nil {
		return fmt.Errorf("server: alerts: %w", err)
	}
	for name, d := range map[string]time.Duration{
		"evaluate_interval": c.EvaluateInterval, "repeat_interval": c.AlertRepeatInterval, "report_interval": c.AgentReportInterval,
	} {
		if d < 0 {
			return fmt.Errorf("server: alerts %s must not be negative", name)
		}
	}
	if c.EvaluateInterval == 0 {
		c.EvaluateInterval = DefaultEvaluateInterval
	}
	// A successor key is prepared at half a key's life: a warning window
	// of half the CA TTL or more would fire on every healthy key. The
	// default shrinks to a quarter of a short ca_ttl; a window set that
	// long is an error.
	if c.Health.AuthorityWarn >= c.CATTL/2 {
		if c.Health.AuthorityWarn != health.DefaultConfig().AuthorityWarn {
			return fmt.Errorf("server: alerts authority_warn %v must be shorter than half of ca_ttl %v (a successor key is prepared at half a key's life)", c.Health.AuthorityWarn, c.CATTL)
		}
		c.Health.AuthorityWarn = c.CATTL / 4
	}
	return nil
}

// withoutSelf returns addrs without the entries equal to self (this
// server's advertise address; host names compared case-insensitively).
func withoutSelf(addrs []string, self string) []string {
	if self == "" {
		return addrs
	}
	var out []string
	for _, a := range addrs {
		if !strings.EqualFold(a, self) {
			out = append(out, a)
		}
	}
	return out
}
