// Package health decides, from the agents' rotation reports and the
// cluster's state, which rotation-health alerts fire: an SVID past its
// renewal point and not renewed, an SVID close to expiry, an agent that
// stopped reporting while its SVID is still valid, a CA or JWT key close
// to expiry with no prepared successor, a federated bundle not refreshed
// for several refresh hints, a cluster member unreachable, a cluster
// without a leader, a server whose key manager fails (an HSM unplugged,
// a KMS throttling), and a burst of attestation or signing failures.
//
// Evaluate is a pure function of a Snapshot and a Config: the server
// builds the snapshot (the leader gathers every server's reports) and
// hands the alerts to an alert.Dispatcher. Each alert's Key is stable
// for its condition and subject, so the same condition raised by another
// leader, or again after a restart, is the same alert to a receiver.
package health

import (
	"errors"
	"fmt"
	"time"
)

// Alert names (Alertmanager's alertname), one per condition.
const (
	NameSVIDNotRenewed           = "SigilSVIDNotRenewed"
	NameSVIDExpiringSoon         = "SigilSVIDExpiringSoon"
	NameAgentNotReporting        = "SigilAgentNotReporting"
	NameAuthorityNoSuccessor     = "SigilAuthorityNoSuccessor"
	NameFederatedBundleStale     = "SigilFederatedBundleStale"
	NameClusterNoLeader          = "SigilClusterNoLeader"
	NameClusterMemberUnreachable = "SigilClusterMemberUnreachable"
	NameAttestationFailureBurst  = "SigilAttestationFailureBurst"
	NameSigningFailureBurst      = "SigilSigningFailureBurst"
	NameKeyManagerFailing        = "SigilKeyManagerFailing"
	NameUpstreamFailing          = "SigilUpstreamAuthorityFailing"
)

// Config holds the thresholds of the conditions. The zero value is not
// valid: start from DefaultConfig.
type Config struct {
	// RenewGrace is how long past its renewal point an SVID may go
	// unrenewed before SVIDNotRenewed (warning) fires: an agent renews
	// at the renewal point, and a report made just before it must not
	// raise an alert.
	RenewGrace time.Duration
	// ExpiryCritical: an SVID that expires within it fires
	// SVIDExpiringSoon (critical).
	ExpiryCritical time.Duration
	// ReportTimeout: an agent whose last report (on any server) is older
	// fires AgentNotReporting while its own SVID is valid and it is not
	// banned. A new leader waits ReportTimeout after its term starts
	// before raising it for agents it has no report of.
	ReportTimeout time.Duration
	// AuthorityWarn: an active CA or JWT key that expires within it with
	// no prepared successor fires AuthorityNoSuccessor. A successor is
	// prepared at half the key's life, so the window must be shorter
	// than half the CA TTL (the server uses a quarter of it when the
	// default is too long for its ca_ttl).
	AuthorityWarn time.Duration
	// FederationStaleHints: a federated bundle whose last successful
	// refresh is older than this many refresh hints fires
	// FederatedBundleStale.
	FederationStaleHints int
	// NoLeaderAfter: a server that has seen no leader for longer fires
	// ClusterNoLeader (raised by every server itself, not the leader).
	NoLeaderAfter time.Duration
	// MemberUnreachableAfter: a member the leader has not reached for
	// longer fires ClusterMemberUnreachable.
	MemberUnreachableAfter time.Duration
	// FailureBurst failures of one kind (attestation, signing) within
	// FailureWindow, cluster-wide, fire the burst alert of that kind.
	FailureBurst  uint64
	FailureWindow time.Duration
	// KeyManagerFailingAfter: a server whose key manager has failed
	// every key operation (signature, key generation or load) for longer
	// fires KeyManagerFailing (critical); its next successful operation
	// resolves it.
	KeyManagerFailingAfter time.Duration
	// UpstreamFailingAfter: a server whose upstream authority has failed
	// for longer (getting a new CA certificate signed, or reading its
	// roots) fires UpstreamAuthorityFailing (warning): the server's next
	// CA key waits for it, the active key keeps signing. The next
	// success resolves it.
	UpstreamFailingAfter time.Duration
	// MaxIDs bounds how many SPIFFE IDs one alert names in its details
	// (the count is always given).
	MaxIDs int
}

// DefaultConfig returns the thresholds Sigil runs with when the
// configuration gives none.
func DefaultConfig() Config {
	return Config{
		RenewGrace:             time.Minute,
		ExpiryCritical:         10 * time.Minute,
		ReportTimeout:          2 * time.Minute,
		AuthorityWarn:          6 * time.Hour,
		FederationStaleHints:   3,
		NoLeaderAfter:          time.Minute,
		MemberUnreachableAfter: time.Minute,
		FailureBurst:           20,
		FailureWindow:          5 * time.Minute,
		KeyManagerFailingAfter: 30 * time.Second,
		UpstreamFailingAfter:   5 * time.Minute,
		MaxIDs:                 20,
	}
}

// Validate reports whether c can be used; it is pure.
func (c Config) Validate() error {
	var errs []error
	pos := func(name string, d time.Duration) {
		if d <= 0 {
			errs = append(errs, fmt.Errorf("%s: must be positive, got %v", name, d))
		}
	}
	pos("renew_grace", c.RenewGrace)
	pos("expiry_critical", c.ExpiryCritical)
	pos("report_timeout", c.ReportTimeout)
	pos("authority_warn", c.AuthorityWarn)
	pos("no_leader_after", c.NoLeaderAfter)
	pos("member_unreachable_after", c.MemberUnreachableAfter)
	pos("failure_window", c.FailureWindow)
	pos("key_manager_failing_after", c.KeyManagerFailingAfter)
	pos("upstream_failing_after", c.UpstreamFailingAfter)
	if c.FederationStaleHints < 1 || c.FederationStaleHints > 1000 {
		errs = append(errs, fmt.Errorf("federation_stale_hints: must be 1..1000, got %d", c.FederationStaleHints))
	}
	if c.FailureBurst < 1 {
		errs = append(errs, errors.New("failure_burst: must be at least 1"))
	}
	if c.MaxIDs < 1 || c.MaxIDs > 100 {
		errs = append(errs, fmt.Errorf("max_ids: must be 1..100, got %d", c.MaxIDs))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("health: %w", err)
	}
	return nil
}

// SVID is the rotation state of one SVID an agent holds, as reported.
type SVID struct {
	// EntryID is empty for the agent's own SVID.
	EntryID  string
	SPIFFEID string
	// Serial is empty, and ExpiresAt/RenewAt zero, when none is held.
	Serial             string
	ExpiresAt, RenewAt time.Time
	// LastAttempt is zero when the agent never had to mint or renew it.
	LastAttempt time.Time
	LastError   string
	Failures    uint32
}

// AgentReport is the last report of one agent, as the cluster holds it.
type AgentReport struct {
	AgentID string
	// Server is the server that holds the report (the one the agent
	// talks to).
	Server string
	// ReceivedAt is when that server last heard from the agent.
	ReceivedAt time.Time
	AgentSVID  SVID
	SVIDs      []SVID
	// Held is how many workload SVIDs the agent holds (more than
	// len(SVIDs) when Truncated).
	Held      int
	Truncated bool
}

// Agent is an attested agent as the replicated state knows it.
type Agent struct {
	ID         string
	AttestedAt time.Time
	// ExpiresAt is when its current SVID expires.
	ExpiresAt time.Time
	Banned    bool
}

// Authority is one CA (kind "x509") or JWT (kind "jwt") signing key of
// one server.
type Authority struct {
	Kind string
	// Server is the node name of the server that holds the key.
	Server string
	// ID is the key's authority ID (subject key ID or JWT key ID).
	ID string
	// State is "active", "prepared", "retired" or "tainted".
	State     string
	ExpiresAt time.Time
}

// FederatedBundle is the refresh state of one federation relationship.
type FederatedBundle struct {
	TrustDomain string
	// LastSuccess is the last successful refresh; zero when none yet.
	LastSuccess time.Time
	// RefreshHint is the hint in force (the partner's, or the default).
	RefreshHint time.Duration
	// CreatedAt is when the relationship was made (a relationship that
	// never refreshed is stale FederationStaleHints hints after it).
	CreatedAt time.Time
	LastError string
}

// Member is one cluster member as the leader sees it.
type Member struct {
	Name    string
	Address string
	// Reachable is false when the leader's last probe or report gather
	// failed; UnreachableSince is then when that began.
	Reachable        bool
	UnreachableSince time.Time
	LastError        string
}

// Server is one server's key manager state, as the leader gathered it.
type Server struct {
	// Name is the server's node name.
	Name string
	// KeyManagerFailingSince is when the server's key manager began to
	// fail (its first failed operation after a success); zero while it
	// works. KeyManagerError is the last failure's error.
	KeyManagerFailingSince time.Time
	KeyManagerError        string
	// UpstreamFailingSince is when the server's upstream authority began
	// to fail; zero while it works or when there is none. UpstreamError
	// is the last failure's error.
	UpstreamFailingSince time.Time
	UpstreamError        string
}

// Failures are cluster-wide failure counts within the failure window.
type Failures struct {
	Attestation, Signing uint64
}

// Snapshot is everything Evaluate looks at, taken at Now.
type Snapshot struct {
	Now time.Time
	// Source names the server evaluating (Alert.Source).
	Source string
	// TermStart is when this server became leader.
	TermStart   time.Time
	Reports     []AgentReport
	Agents      []Agent
	Authorities []Authority
	Federation  []FederatedBundle
	Members     []Member
	// Servers: one per server the leader reached (itself included).
	Servers []Server
	// Failures within Config.FailureWindow before Now (see Window).
	Failures Failures
}
