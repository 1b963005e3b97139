package raftstore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/internal/storepb"
)

const (
	// defaultApplyTimeout bounds Apply when ctx has no deadline.
	defaultApplyTimeout = 30 * time.Second
	// retainSnapshots is how many snapshots stay on disk.
	retainSnapshots = 2
	// leaderPoll is how often WaitForLeader looks for a leader.
	leaderPoll = 10 * time.Millisecond
)

// Store is one server's replica of the state machine.
type Store struct {
	cfg   Config
	log   *zap.Logger
	clock clock.Clock
	fsm   *fsm
	raft  *raft.Raft

	bolt      *logStore            // nil when InMemory
	ownTrans  *raft.InmemTransport // the transport Open created, if any
	hadState  bool                 // Raft state existed when Open ran
	closeOnce sync.Once
	closeErr  error
}

// Open opens (or creates) the Raft state under cfg.DataDir, restores the
// state machine from the latest snapshot and the log, and starts Raft. With
// cfg.Bootstrap and no existing state it bootstraps a single-voter cluster.
func Open(cfg Config) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	s := &Store{cfg: cfg, log: cfg.Logger.Named("raftstore"), clock: cfg.Clock}
	s.fsm = newFSM(cfg.TrustDomain, s.log)
	hlog := newZapHCLog(cfg.Logger, "raft")

	var (
		logs   raft.LogStore
		stable raft.StableStore
		snaps  raft.SnapshotStore
	)
	if cfg.InMemory {
		mem := raft.NewInmemStore()
		logs, stable, snaps = mem, mem, raft.NewInmemSnapshotStore()
	} else {
		if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
			return nil, fmt.Errorf("raftstore: creating data directory: %w", err)
		}
		if err := RemoveRestoreSpools(cfg.DataDir); err != nil {
			return nil, err
		}
		bolt, err := openLogStore(filepath.Join(cfg.DataDir, "raft.db"), cfg.Clock)
		if err != nil {
			return nil, fmt.Errorf("raftstore: opening raft.db: %w", err)
		}
		s.bolt = bolt
		s.fsm.release.dropLog = func() {
			if _, err := bolt.dropMapped(); err != nil {
				s.log.Warn("returning the Raft log's mapped pages", zap.Error(err))
			}
		}
		fss, err := raft.NewFileSnapshotStoreWithLogger(cfg.DataDir, retainSnapshots, hlog.Named("snapshot"))
		if err != nil {
			bolt.Close()
			return nil, fmt.Errorf("raftstore: opening snapshot store: %w", err)
		}
		logs, stable, snaps = bolt, bolt, fss
	}

	trans := cfg.Transport
	rc := raft.DefaultConfig()
	if trans == nil {
		_, s.ownTrans = raft.NewInmemTransport(raft.ServerAddress("inmem-" + cfg.NodeID))
		trans = s.ownTrans
		// No peers: no reason to wait a second for an election.
		rc.HeartbeatTimeout = 50 * time.Millisecond
		rc.ElectionTimeout = 50 * time.Millisecond
		rc.LeaderLeaseTimeout = 50 * time.Millisecond
		rc.CommitTimeout = 5 * time.Millisecond
	}
	if cfg.HeartbeatTimeout > 0 {
		rc.HeartbeatTimeout = cfg.HeartbeatTimeout
		rc.ElectionTimeout = cfg.HeartbeatTimeout
		rc.LeaderLeaseTimeout = cfg.HeartbeatTimeout / 2
	}
	rc.LocalID = raft.ServerID(cfg.NodeID)
	rc.SnapshotThreshold = cfg.SnapshotThreshold
	rc.SnapshotInterval = cfg.SnapshotInterval
	rc.TrailingLogs = cfg.TrailingLogs
	rc.Logger = hlog
	if err := raft.ValidateConfig(rc); err != nil {
		s.closeStores()
		return nil, fmt.Errorf("raftstore: raft config: %w", err)
	}

	has, err := raft.HasExistingState(logs, stable, snaps)
	if err != nil {
		s.closeStores()
		return nil, fmt.Errorf("raftstore: checking existing state: %w", err)
	}
	s.hadState = has
	if cfg.Bootstrap {
		if !has {
			conf := raft.Configuration{Servers: []raft.Server{{
				Suffrage: raft.Voter,
				ID:       rc.LocalID,
				Address:  trans.LocalAddr(),
			}}}
			if err := raft.BootstrapCluster(rc, logs, stable, snaps, trans, conf); err != nil {
				s.closeStores()
				return nil, fmt.Errorf("raftstore: bootstrap: %w", err)
			}
		}
	}

	r, err := raft.NewRaft(rc, s.fsm, logs, stable, snaps, trans)
	if err != nil {
		s.closeStores()
		return nil, fmt.Errorf("raftstore: starting raft: %w", err)
	}
	s.raft = r
	return s, nil
}

func (s *Store) closeStores() error {
	var errs []error
	if s.ownTrans != nil {
		errs = append(errs, s.ownTrans.Close())
	}
	if s.bolt != nil {
		errs = append(errs, s.bolt.Close())
	}
	return errors.Join(errs...)
}

// Close shuts Raft down and closes the log store. It is safe to call more
// than once.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		var errs []error
		if s.raft != nil {
			if err := s.raft.Shutdown().Error(); err != nil {
				errs = append(errs, fmt.Errorf("raftstore: raft shutdown: %w", err))
			}
		}
		if err := s.closeStores(); err != nil {
			errs = append(errs, fmt.Errorf("raftstore: closing stores: %w", err))
		}
		s.closeErr = errors.Join(errs...)
	})
	return s.closeErr
}

// singleItem reports whether cmd is one of the commands whose refusal Apply
// returns as an error.
func singleItem(cmd *storepb.Command) bool {
	switch cmd.Op.(type) {
	case *storepb.Command_CreateEntries, *storepb.Command_UpdateEntries, *storepb.Command_DeleteEntries:
		return false
	}
	return true
}

// Apply proposes cmd to the cluster and waits until this server has applied
// it. cmd.Timestamp, when zero, is taken from the clock (cmd itself is not
// modified). Apply fails with an error wrapping raft.ErrNotLeader on a
// follower, and with an error wrapping context.DeadlineExceeded (or
// ctx.Err()) when ctx ends first; the command may still be applied later.
//
// A single-item command refused by the state machine returns a
// *CommandError. Batch commands (CreateEntries, UpdateEntries,
// DeleteEntries) return one Status per item, code 0 for success, and a nil
// error.
func (s *Store) Apply(ctx context.Context, cmd *storepb.Command) (*storepb.CommandResult, error) {
	res, _, err := s.ApplyIndexed(ctx, cmd)
	return res, err
}

// ApplyIndexed is Apply that also returns the Raft index of the command
// (0 when it never reached the log).
func (s *Store) ApplyIndexed(ctx context.Context, cmd *storepb.Command) (*storepb.CommandResult, uint64, error) {
	if cmd == nil || cmd.Op == nil {
		return nil, 0, cmdErr(codes.InvalidArgument, "command has no operation")
	}
	data, err := proto.MarshalOptions{Deterministic: true}.Marshal(cmd)
	if err != nil {
		return nil, 0, cmdErr(codes.InvalidArgument, "encoding command: %v", err)
	}
	if cmd.Timestamp == 0 {
		// A zero timestamp is not encoded; appending the field stamps a
		// copy without touching the caller's message.
		data = protowire.AppendTag(data, 1, protowire.VarintType)
		data = protowire.AppendVarint(data, uint64(s.clock.Now().UnixNano()))
	}

	timeout := defaultApplyTimeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
		if timeout <= 0 {
			return nil, 0, fmt.Errorf("raftstore: apply: %w", context.DeadlineExceeded)
		}
	}
	f := s.raft.Apply(data, timeout)
	if done := ctx.Done(); done != nil {
		finished := make(chan struct{})
		go func() {
			_ = f.Error()
			close(finished)
		}()
		select {
		case <-finished:
		case <-done:
			return nil, 0, fmt.Errorf("raftstore: apply: %w", ctx.Err())
		}
	}
	if err := f.Error(); err != nil {
		if errors.Is(err, raft.ErrEnqueueTimeout) {
			return nil, 0, fmt.Errorf("raftstore: apply timed out: %w (%w)", context.DeadlineExceeded, err)
		}
		return nil, 0, fmt.Errorf("raftstore: apply: %w", err)
	}
	switch resp := f.Response().(type) {
	case *CommandError:
		return nil, f.Index(), resp
	case *storepb.CommandResult:
		if singleItem(cmd) && len(resp.Results) == 1 && resp.Results[0].Code != 0 {
			return nil, f.Index(), &CommandError{Code: codes.Code(resp.Results[0].Code), Msg: resp.Results[0].Message}
		}
		return resp, f.Index(), nil
	default:
		return nil, 0, fmt.Errorf("raftstore: apply: unexpected state machine response %T", resp)
	}
}

// Read returns a consistent read-only view of the current state.
func (s *Store) Read() *Reader { return s.fsm.reader() }

// Changed returns a channel closed after the next applied change. It is a
// broadcast: call Changed again after each wake-up.
func (s *Store) Changed() <-chan struct{} { return s.fsm.changedCh() }

// WaitForLeader blocks until the cluster has a leader or ctx ends. When this
// server is the leader it also waits (Barrier) until every committed entry
// has been applied, so reads after WaitForLeader see the whole log.
func (s *Store) WaitForLeader(ctx context.Context) error {
	t := time.NewTicker(leaderPoll)
	defer t.Stop()
	for {
		if addr, _ := s.raft.LeaderWithID(); addr != "" {
			if s.raft.State() != raft.Leader {
				return nil
			}
			timeout := defaultApplyTimeout
			if dl, ok := ctx.Deadline(); ok {
				timeout = time.Until(dl)
			}
			if timeout > 0 {
				err := s.raft.Barrier(timeout).Error()
				if err == nil {
					return nil
				}
				if !errors.Is(err, raft.ErrNotLeader) && !errors.Is(err, raft.ErrLeadershipLost) {
					return fmt.Errorf("raftstore: waiting for leader: %w", err)
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("raftstore: waiting for leader: %w", ctx.Err())
		case <-t.C:
		}
	}
}

// IsLeader reports whether this server is the Raft leader.
func (s *Store) IsLeader() bool { return s.raft.State() == raft.Leader }

// Raft returns the underlying Raft instance (membership, stats, snapshots).
func (s *Store) Raft() *raft.Raft { return s.raft }

// LastIndex is the Raft index of the last log entry applied to the state
// machine.
func (s *Store) LastIndex() uint64 { return s.fsm.lastIndex.Load() }

// restoreSpoolPattern names the temporary files a snapshot restore spools
// an upload to (RestoreSnapshot, the server's SnapshotRestore).
const restoreSpoolPattern = "restore-*.snap"

// RemoveRestoreSpools removes from dir the files a snapshot restore spooled
// its upload to and that a crash during the restore left behind (each as
// large as a snapshot). Open calls it for its data directory; a caller
// that spools elsewhere calls it for that directory at start.
func RemoveRestoreSpools(dir string) error {
	spools, err := filepath.Glob(filepath.Join(dir, restoreSpoolPattern))
	if err != nil {
		return fmt.Errorf("raftstore: %w", err)
	}
	for _, f := range spools {
		if err := os.Remove(f); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("raftstore: removing a left-over restore spool: %w", err)
		}
	}
	return nil
}
