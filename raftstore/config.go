package raftstore

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/raft"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"

	"github.com/sigil-id/sigil/clock"
)

// Defaults of DefaultConfig.
const (
	DefaultSnapshotThreshold = 8192
	DefaultSnapshotInterval  = 2 * time.Minute
	DefaultTrailingLogs      = 10240
)

// Config configures a Store.
type Config struct {
	// TrustDomain is the cluster's trust domain; entries, nodes and
	// authorities outside it are refused.
	TrustDomain spiffeid.TrustDomain
	// NodeID is this server's Raft server ID.
	NodeID string
	// DataDir holds raft.db (the bolt log and stable store) and snapshots/.
	// Ignored when InMemory.
	DataDir string
	// InMemory keeps the log, stable store and snapshots in memory (tests).
	InMemory bool
	// Transport carries Raft traffic. nil means an in-memory transport: a
	// single node with no network listener at all. With a nil Transport
	// Raft's timeouts are shortened, as there are no peers to wait for.
	Transport raft.Transport
	// Bootstrap bootstraps a single-node cluster (this node as the only
	// voter) if there is no existing Raft state.
	Bootstrap bool
	// HeartbeatTimeout, when set, is Raft's heartbeat and election timeout
	// (the leader lease is half of it) with a network Transport; zero
	// keeps Raft's defaults (1s).
	HeartbeatTimeout time.Duration
	// Snapshot tuning; zero values take the defaults above.
	SnapshotThreshold uint64
	SnapshotInterval  time.Duration
	TrailingLogs      uint64
	// Logger receives Raft's and the store's logs; nil discards them.
	Logger *zap.Logger
	// Clock stamps Command.Timestamp; nil is the wall clock.
	Clock clock.Clock
}

// DefaultConfig returns a Config with the default snapshot tuning and
// Bootstrap set. TrustDomain, NodeID and DataDir (or InMemory) are left
// for the caller.
func DefaultConfig() Config {
	return Config{
		Bootstrap:         true,
		SnapshotThreshold: DefaultSnapshotThreshold,
		SnapshotInterval:  DefaultSnapshotInterval,
		TrailingLogs:      DefaultTrailingLogs,
	}
}

// Validate reports the first problem with c.
func (c *Config) Validate() error {
	if c.TrustDomain.IsZero() {
		return errors.New("raftstore: trust domain is not set")
	}
	if c.NodeID == "" {
		return errors.New("raftstore: node ID is empty")
	}
	if len(c.NodeID) > 128 || strings.ContainsAny(c.NodeID, " \t\r\n\x00") {
		return fmt.Errorf("raftstore: node ID %q must be at most 128 characters without whitespace", c.NodeID)
	}
	if !c.InMemory && c.DataDir == "" {
		return errors.New("raftstore: data directory is not set (or set InMemory)")
	}
	if c.HeartbeatTimeout < 0 || (c.HeartbeatTimeout > 0 && c.HeartbeatTimeout < 20*time.Millisecond) {
		return fmt.Errorf("raftstore: heartbeat timeout %v must be zero or at least 20ms", c.HeartbeatTimeout)
	}
	if c.SnapshotInterval < 0 {
		return fmt.Errorf("raftstore: snapshot interval %v is negative", c.SnapshotInterval)
	}
	if c.SnapshotInterval > 0 && c.SnapshotInterval < 5*time.Millisecond {
		return fmt.Errorf("raftstore: snapshot interval %v is below 5ms", c.SnapshotInterval)
	}
	return nil
}

// withDefaults fills zero values.
func (c Config) withDefaults() Config {
	if c.SnapshotThreshold == 0 {
		c.SnapshotThreshold = DefaultSnapshotThreshold
	}
	if c.SnapshotInterval == 0 {
		c.SnapshotInterval = DefaultSnapshotInterval
	}
	if c.TrailingLogs == 0 {
		c.TrailingLogs = DefaultTrailingLogs
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	if c.Clock == nil {
		c.Clock = clock.New()
	}
	return c
}
