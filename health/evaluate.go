package health

import (
	"time"

	"github.com/sigil-id/sigil/alert"
)

// Dedupe key prefixes, one per condition; the subject follows the slash
// (an agent's SPIFFE ID, "<kind>/<server>", a trust domain name, a
// member name). A key longer than 256 bytes ends in a hash of the
// subject instead.
const (
	KeySVIDNotRenewed           = "svid_not_renewed/"
	KeySVIDExpiringSoon         = "svid_expiring/"
	KeyAgentNotReporting        = "agent_not_reporting/"
	KeyAuthorityNoSuccessor     = "authority_no_successor/"
	KeyFederatedBundleStale     = "federated_bundle_stale/"
	KeyClusterNoLeader          = "cluster_no_leader"
	KeyClusterMemberUnreachable = "cluster_member_unreachable/"
	KeyAttestationFailureBurst  = "attestation_failure_burst"
	KeySigningFailureBurst      = "signing_failure_burst"
)

// Evaluate returns the alerts that fire in s, sorted by Key. It is pure
// and deterministic: the same Config and Snapshot give the same alerts
// (StartsAt is s.Now; the caller keeps the StartsAt of an alert that was
// already firing). ClusterNoLeader is not among them: see NoLeader.
func Evaluate(cfg Config, s Snapshot) []alert.Alert {
	panic("health: Evaluate not implemented yet")
}

// NoLeader returns the ClusterNoLeader alert when a server has seen no
// leader since `since` for longer than cfg.NoLeaderAfter; ok is false
// otherwise (since zero means a leader is known).
func NoLeader(cfg Config, source string, now, since time.Time) (a alert.Alert, ok bool) {
	panic("health: NoLeader not implemented yet")
}
