package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/hashicorp/raft"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/audit"
	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/internal/clusterpb"
	"github.com/sigil-id/sigil/raftstore"
)

// Defaults of DefaultConfig.
const (
	// DefaultRaftTimeout is the Raft heartbeat and election timeout a
	// server uses on the cluster port when none is configured (see the
	// package documentation, "Raft timing").
	DefaultRaftTimeout = 5 * time.Second
	// DefaultHealthInterval is how often members ask each other for their
	// status.
	DefaultHealthInterval = 2 * time.Second
	// DefaultJoinRetryMax bounds the wait between rounds of join attempts.
	DefaultJoinRetryMax = 5 * time.Second
	// DefaultForwardRetryFor bounds how long a write or a linearizable
	// read waits for a leader.
	DefaultForwardRetryFor = 10 * time.Second
	// DefaultLocalCatchUp bounds how long a forwarded write waits until
	// this server has applied it too (read-your-writes on followers).
	DefaultLocalCatchUp = 5 * time.Second
	// DefaultOldConnGrace is how long a peer connection replaced after a
	// server SVID rotation stays open for the calls already on it.
	DefaultOldConnGrace = 30 * time.Second
)

// Metrics receives what a Cluster observes. Its methods are called
// concurrently.
type Metrics interface {
	// ObserveCommit records a write's time from proposal to commit
	// (locally on the leader or forwarded), and its outcome.
	ObserveCommit(d time.Duration, err error)
	// ObserveMembers records the members' health after a round of
	// probes. self is this server's node name, applied its applied index.
	ObserveMembers(self string, applied uint64, members []raftstore.Member, health func(id string) (MemberHealth, bool))
}

// Admin carries out the admin operations a member forwards to the leader
// over the Cluster service (RemoveMember, TransferLeadership). The
// caller is an authenticated member; the implementation checks that this
// server is the leader.
type Admin interface {
	RemoveMember(ctx context.Context, req *sigilv1.RemoveMemberRequest) (*sigilv1.RemoveMemberResponse, error)
	TransferLeadership(ctx context.Context, req *sigilv1.TransferLeadershipRequest) (*sigilv1.TransferLeadershipResponse, error)
}

// Config configures a Cluster. DefaultConfig fills the tuning; the
// caller sets the identity and the dependencies.
type Config struct {
	// TrustDomain is the cluster's trust domain.
	TrustDomain spiffeid.TrustDomain
	// NodeName is this server's node name: its Raft server ID, and the
	// last segment of its SPIFFE ID spiffe://<td>/sigil/server/<node>.
	NodeName string
	// Dir holds the cluster state kept beside Raft's: bundle.pem, the
	// peer bundle saved at its last change (a restarted server trusts
	// members that joined after its last snapshot). Created if missing.
	Dir string

	// ListenAddress is the cluster port's listen address. Ignored when
	// Listener is set.
	ListenAddress string
	// Listener, if set, is the cluster port's listener, opened by the
	// caller (a server opens its ports before it writes any state, so a
	// port in use leaves a new data directory empty). Start takes it over.
	Listener net.Listener
	// AdvertiseAddress is the host:port peers reach the cluster port at;
	// "" is the listener's address.
	AdvertiseAddress string
	// RaftTransport, if set, carries Raft instead of the cluster port
	// (tests: raft.InmemTransport). Its addresses must be the members'
	// cluster port addresses, as the Raft configuration's addresses are
	// where writes are forwarded and members probed.
	RaftTransport raft.Transport

	// JoinAddresses are cluster addresses of existing members, asked in
	// turn to add this server (JoinAtStart).
	JoinAddresses []string
	// JoinKey is the key of the cluster join secret (the decoded random
	// part); nil refuses joins to this server and makes joining through
	// it impossible.
	JoinKey []byte

	// IdentityKeyManager keeps the identity CA's key (required).
	IdentityKeyManager ca.KeyManager
	// IdentityCertPath is where the identity CA certificate is kept; ""
	// keeps it in memory only (the key manager must then not persist
	// either).
	IdentityCertPath string
	// IdentityCATTL is the identity CA's lifetime; zero is ca's default.
	IdentityCATTL time.Duration
	// IdentitySVIDTTL bounds what the identity CA signs; zero is ca's
	// default.
	IdentitySVIDTTL time.Duration
	// KeyObserver, if set, is told the outcome of every operation on the
	// identity CA's key (its signatures, GenerateKey, GetKey), like the
	// server's other keys (ca.Config.KeyObserver).
	KeyObserver ca.KeyObserver

	// SVID returns the node's current server SVID: the TLS certificate
	// this server presents on the cluster port, in both directions
	// (required). It may return nil until the first one is minted. A
	// different pointer means a rotated SVID: peer connections made with
	// the previous one are replaced.
	SVID func() *tls.Certificate
	// Admin carries out forwarded admin operations (required).
	Admin Admin
	// Metrics, if set, receives commit times and member health.
	Metrics Metrics
	// AgentReports, if set, answers the AgentReports calls of other
	// members (the server's agent reports and failure counters, for the
	// leader's rotation-health evaluation); nil answers Unimplemented.
	// The caller is an authenticated member.
	AgentReports func(ctx context.Context, req *clusterpb.AgentReportsRequest) (*clusterpb.AgentReportsResponse, error)
	// Logger receives the cluster's logs; nil discards them.
	Logger *zap.Logger
	// AuditSink receives the cluster's audit events (joins, refused
	// peers and calls); nil writes them to Logger.
	AuditSink audit.Sink
	// Clock drives health probes, SVID validity checks and the join rate
	// limit; nil is the wall clock.
	Clock clock.Clock

	// HealthInterval is how often members are probed.
	HealthInterval time.Duration
	// JoinRetryMax bounds the wait between rounds of join attempts.
	JoinRetryMax time.Duration
	// ForwardRetryFor bounds how long a write waits for a leader.
	ForwardRetryFor time.Duration
	// LocalCatchUp bounds how long a forwarded write waits to be applied
	// locally.
	LocalCatchUp time.Duration
	// OldConnGrace is how long a replaced peer connection stays open.
	OldConnGrace time.Duration
}

// DefaultConfig returns a Config with the default tuning; the identity,
// addresses and dependencies are left for the caller.
func DefaultConfig() Config {
	return Config{
		HealthInterval:  DefaultHealthInterval,
		JoinRetryMax:    DefaultJoinRetryMax,
		ForwardRetryFor: DefaultForwardRetryFor,
		LocalCatchUp:    DefaultLocalCatchUp,
		OldConnGrace:    DefaultOldConnGrace,
	}
}

// Validate reports the first problem with c.
func (c *Config) Validate() error {
	switch {
	case c.TrustDomain.IsZero():
		return errors.New("cluster: trust domain is not set")
	case c.NodeName == "":
		return errors.New("cluster: node name is not set")
	case c.Dir == "":
		return errors.New("cluster: directory is not set")
	case c.Listener == nil && c.ListenAddress == "":
		return errors.New("cluster: no listen address")
	case c.IdentityKeyManager == nil:
		return errors.New("cluster: no key manager for the identity CA")
	case c.SVID == nil:
		return errors.New("cluster: no server SVID source")
	case c.Admin == nil:
		return errors.New("cluster: no admin handler")
	case c.HealthInterval <= 0, c.JoinRetryMax <= 0, c.ForwardRetryFor <= 0, c.LocalCatchUp <= 0, c.OldConnGrace < 0:
		return errors.New("cluster: timing settings must be positive (start from DefaultConfig)")
	}
	if _, err := spiffeid.FromSegments(c.TrustDomain, "sigil", "server", c.NodeName); err != nil {
		return fmt.Errorf("cluster: node name %q: %w", c.NodeName, err)
	}
	if c.AdvertiseAddress != "" {
		if _, _, err := net.SplitHostPort(c.AdvertiseAddress); err != nil {
			return fmt.Errorf("cluster: advertise address %q: %w", c.AdvertiseAddress, err)
		}
	}
	return nil
}

// MemberHealth is the outcome of a member's last status probe.
type MemberHealth struct {
	// OK: the member answered.
	OK bool
	// At is when the probe was made.
	At time.Time
	// Status is the member's answer when OK.
	Status *clusterpb.StatusResponse
	// LastErr is the probe's error otherwise.
	LastErr string
}

// nopMetrics discards observations.
type nopMetrics struct{}

func (nopMetrics) ObserveCommit(time.Duration, error) {}
func (nopMetrics) ObserveMembers(string, uint64, []raftstore.Member, func(string) (MemberHealth, bool)) {
}
