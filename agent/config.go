// Package agent is the Sigil node daemon. It attests its node to a server,
// keeps its own SVID, receives the registration entries it is authorized for
// over one long-lived push stream, generates workload keys locally (they
// never leave the node), has them signed in batches, renews them at half
// their lifetime and serves them to workloads over the SPIFFE Workload API.
package agent

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"

	"github.com/sigil-id/sigil/attestor/node"
	"github.com/sigil-id/sigil/attestor/workload"
	"github.com/sigil-id/sigil/audit"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/internal/unixsock"
	"github.com/sigil-id/sigil/workloadapi"
)

// Defaults.
const (
	DefaultSocketPath    = "/run/sigil/agent/public/api.sock" // root's; others': unixsock.DefaultWorkloadSocket
	DefaultSyncBatchSize = 500
	// MaxSyncBatchSize bounds one BatchNewX509SVID call: servers refuse
	// larger batches (server.MaxBatchSize), and a request stays well under
	// the node API's 4 MiB message limit.
	MaxSyncBatchSize = 2000
)

// Config configures an Agent.
type Config struct {
	TrustDomain spiffeid.TrustDomain
	// ServerAddress is host:port of a server's node API, or several
	// separated by commas. A host name that resolves to several addresses
	// reaches all of them. The agent keeps its sync stream to one server
	// and moves to another when that one fails.
	ServerAddress string
	// ServerAddresses are more node API addresses, tried like those of
	// ServerAddress.
	ServerAddresses []string
	// DataDir holds the agent's state; it is created with mode 0700.
	DataDir string
	// SocketPath is the Workload API socket; unixsock.DefaultWorkloadSocket
	// (DefaultSocketPath for root) when empty.
	SocketPath string
	// AdminSocket is the agent's admin API socket (sigil workload
	// explain), in a 0700 directory; DefaultAdminSocketFor(SocketPath)
	// when empty.
	AdminSocket string
	// NodeAttestor proves the node to a server when the agent has no
	// valid saved identity (cmd/sigil builds it from the node_attestor
	// plugin block, by default join_token with the configured token).
	// Required: there is no default, since agent/ imports no concrete
	// plugin.
	NodeAttestor node.Attestor
	// WorkloadAttestors turn a Workload API caller into selectors, one
	// per name (cmd/sigil builds them from workload_attestor plugin
	// blocks, by default unix). At least one is required.
	WorkloadAttestors []workload.Attestor
	// WorkloadAttestorTimeout bounds each workload attestor's run on a
	// Workload API call; one that outlasts it leaves the caller without
	// an identity. Zero is workloadapi.DefaultAttestorTimeout.
	WorkloadAttestorTimeout time.Duration
	// TrustBundlePath is a PEM file with the server CA certificates used to
	// authenticate the server before the agent has a bundle of its own.
	TrustBundlePath string
	// TrustBundle is an alternative to TrustBundlePath; when both are set
	// the agent trusts the union.
	TrustBundle []*x509.Certificate
	// Logger receives the agent's logs; nil discards them.
	Logger *zap.Logger
	// Clock drives expiry, renewal and backoff; nil is the wall clock.
	Clock clock.Clock
	// DisableMetrics installs no meter on the Workload API (no per-call
	// metric work; the sigil_agent_workload_api_* series are absent from
	// MetricsHandler). For measuring what the metrics cost (go run ./bench
	// -metrics-only); default false.
	DisableMetrics bool
	// AuditSink receives the agent's audit events (its node attested);
	// nil writes them to Logger (audit.NewZap).
	AuditSink audit.Sink
	// SyncBatchSize is the largest number of CSRs sent in one
	// BatchNewX509SVID call; DefaultSyncBatchSize when zero.
	SyncBatchSize int
	// WorkloadAPILimits bound the connections and calls local processes
	// may hold open on the Workload API; zero fields take the defaults
	// of workloadapi.Limits.
	WorkloadAPILimits workloadapi.Limits
	// HealthReportInterval is the longest time between two rotation
	// reports to the server (report.go): with nothing to report, a
	// heartbeat is sent at this interval. A non-zero interval asked for
	// by the server overrides it. Between MinHealthReportInterval and
	// MaxHealthReportInterval; DefaultHealthReportInterval when zero.
	HealthReportInterval time.Duration

	// SDSSocket, when set, is a unix socket of its own on which Envoy's
	// Secret Discovery Service is served (then not on SocketPath), with
	// the Workload API's checks, limits and attestation. Empty: SDS is
	// served on the Workload API socket.
	SDSSocket string

	// SVIDFiles are the svid_files blocks: directories the agent keeps
	// SVID, bundle and JWT-SVID files in for software that cannot speak
	// the Workload API (svidfiles.go).
	SVIDFiles []SVIDFiles

	// SVIDCache bounds the workload X.509-SVIDs the agent holds: entries
	// no workload asked for lately are minted only while there is room
	// (svidcache.go); zero fields take the defaults.
	SVIDCache SVIDCacheConfig
}

// DefaultConfig returns a Config with every default filled in except the
// plugins (NodeAttestor, WorkloadAttestors), which have no default here:
// New refuses a configuration without them.
func DefaultConfig() Config {
	return Config{
		SocketPath:    unixsock.DefaultWorkloadSocket(),
		SyncBatchSize: DefaultSyncBatchSize,

		HealthReportInterval: DefaultHealthReportInterval,

		SVIDCache: SVIDCacheConfig{MaxSVIDs: DefaultMaxSVIDs, IdleAfter: DefaultIdleAfter},
	}
}

// serverAddresses lists every configured node API address.
func (c *Config) serverAddresses() []string {
	var out []string
	for _, a := range append(strings.Split(c.ServerAddress, ","), c.ServerAddresses...) {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}

// withDefaults fills the zero fields that have defaults.
func (c Config) withDefaults() Config {
	if c.SocketPath == "" {
		c.SocketPath = unixsock.DefaultWorkloadSocket()
	}
	if c.AdminSocket == "" {
		c.AdminSocket = DefaultAdminSocketFor(c.SocketPath)
	}
	// dial takes the one ServerAddress string: fold the list into it.
	c.ServerAddress = strings.Join(c.serverAddresses(), ",")
	c.ServerAddresses = nil
	if c.SyncBatchSize == 0 {
		c.SyncBatchSize = DefaultSyncBatchSize
	}
	if c.HealthReportInterval == 0 {
		c.HealthReportInterval = DefaultHealthReportInterval
	}
	c.SVIDCache = c.SVIDCache.withDefaults()
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	if c.Clock == nil {
		c.Clock = clock.New()
	}
	return c
}

// Validate reports the first problem with the configuration. Zero values
// that have defaults (SocketPath, SyncBatchSize, HealthReportInterval,
// Logger, Clock) are accepted.
func (c *Config) Validate() error {
	if c.TrustDomain.IsZero() {
		return errors.New("agent: trust domain is required")
	}
	addrs := c.serverAddresses()
	if len(addrs) == 0 {
		return errors.New("agent: server address is required")
	}
	for _, a := range addrs {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return fmt.Errorf("agent: server address %q: want host:port: %w", a, err)
		}
	}
	if c.DataDir == "" {
		return errors.New("agent: data directory is required")
	}
	if c.SyncBatchSize < 0 {
		return fmt.Errorf("agent: sync batch size %d is negative", c.SyncBatchSize)
	}
	if l := c.WorkloadAPILimits; l.MaxConnsPerUID < 0 || l.MaxConns < 0 || l.FirstCallTimeout < 0 || l.IdleTimeout < 0 {
		return errors.New("agent: workload API limits must not be negative")
	}
	if c.WorkloadAttestorTimeout < 0 {
		return fmt.Errorf("agent: workload attestor timeout %v is negative", c.WorkloadAttestorTimeout)
	}
	if d := c.HealthReportInterval; d != 0 && (d < MinHealthReportInterval || d > MaxHealthReportInterval) {
		return fmt.Errorf("agent: health report interval %v is outside %v..%v", d, MinHealthReportInterval, MaxHealthReportInterval)
	}
	if c.SyncBatchSize > MaxSyncBatchSize {
		return fmt.Errorf("agent: sync batch size %d exceeds the maximum of %d", c.SyncBatchSize, MaxSyncBatchSize)
	}
	if c.SDSSocket != "" && (c.SDSSocket == c.SocketPath || c.SDSSocket == c.AdminSocket) {
		return fmt.Errorf("agent: SDS socket %s is also the Workload API or admin socket; leave it empty to serve SDS on the Workload API socket", c.SDSSocket)
	}
	if c.TrustBundlePath != "" {
		if _, err := os.Stat(c.TrustBundlePath); err != nil {
			return fmt.Errorf("agent: trust bundle: %w", err)
		}
	}
	for i, cert := range c.TrustBundle {
		if cert == nil {
			return fmt.Errorf("agent: trust bundle certificate %d is nil", i)
		}
		if err := checkBundleCA(cert); err != nil {
			return fmt.Errorf("agent: trust bundle certificate %d: %w", i, err)
		}
	}
	if err := checkSVIDFiles(c.SVIDFiles); err != nil {
		return err
	}
	if err := c.SVIDCache.validate(); err != nil {
		return err
	}
	return c.checkPlugins()
}

// checkPlugins refuses a missing node attestor, no workload attestor, a
// nil one, one without a name and two with one name.
func (c *Config) checkPlugins() error {
	if c.NodeAttestor == nil {
		return errors.New("agent: no node attestor: set NodeAttestor (cmd/sigil builds it from a node_attestor plugin block, e.g. node_attestor \"join_token\" {})")
	}
	if c.NodeAttestor.Name() == "" {
		return fmt.Errorf("agent: node attestor %T has no name", c.NodeAttestor)
	}
	if len(c.WorkloadAttestors) == 0 {
		return errors.New("agent: no workload attestor: set WorkloadAttestors (cmd/sigil builds them from workload_attestor plugin blocks, e.g. workload_attestor \"unix\" {})")
	}
	seen := make(map[string]bool, len(c.WorkloadAttestors))
	for i, w := range c.WorkloadAttestors {
		if w == nil {
			return fmt.Errorf("agent: workload attestor %d is nil", i)
		}
		name := w.Name()
		if name == "" {
			return fmt.Errorf("agent: workload attestor %d (%T) has no name", i, w)
		}
		if seen[name] {
			return fmt.Errorf("agent: two workload attestors are named %q", name)
		}
		seen[name] = true
	}
	return nil
}
