package raftstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/hashicorp/raft"
)

// Member is one server of the Raft configuration.
type Member struct {
	ID       string
	Address  string
	Suffrage string // voter, nonvoter or staging
	Leader   bool
}

// HadState reports whether Raft state existed on disk when the store was
// opened (a restart, as opposed to a first start).
func (s *Store) HadState() bool { return s.hadState }

// Leader returns the current leader's address and ID, or empty strings
// when there is none known.
func (s *Store) Leader() (addr, id string) {
	a, i := s.raft.LeaderWithID()
	return string(a), string(i)
}

// Members returns the latest Raft configuration (committed or not).
func (s *Store) Members() ([]Member, error) {
	f := s.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, fmt.Errorf("raftstore: configuration: %w", err)
	}
	_, leader := s.raft.LeaderWithID()
	var out []Member
	for _, srv := range f.Configuration().Servers {
		m := Member{ID: string(srv.ID), Address: string(srv.Address), Leader: srv.ID == leader}
		switch srv.Suffrage {
		case raft.Voter:
			m.Suffrage = "voter"
		case raft.Nonvoter:
			m.Suffrage = "nonvoter"
		default:
			m.Suffrage = "staging"
		}
		out = append(out, m)
	}
	return out, nil
}

// IsMember reports whether id is in the latest configuration. An empty
// configuration (a server that has not joined yet) has no members.
func (s *Store) IsMember(id string) bool {
	f := s.raft.GetConfiguration()
	if f.Error() != nil {
		return false
	}
	for _, srv := range f.Configuration().Servers {
		if string(srv.ID) == id {
			return true
		}
	}
	return false
}

// HasConfiguration reports whether this server knows any configuration.
func (s *Store) HasConfiguration() bool {
	f := s.raft.GetConfiguration()
	return f.Error() == nil && len(f.Configuration().Servers) > 0
}

func timeoutOf(ctx context.Context) time.Duration {
	if dl, ok := ctx.Deadline(); ok {
		if d := time.Until(dl); d > 0 {
			return d
		}
		return time.Millisecond
	}
	return defaultApplyTimeout
}

// AddVoter adds (or re-addresses) a voting member. Leader only.
func (s *Store) AddVoter(ctx context.Context, id, addr string) error {
	if err := s.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(addr), 0, timeoutOf(ctx)).Error(); err != nil {
		return fmt.Errorf("raftstore: adding %s: %w", id, err)
	}
	return nil
}

// RemoveServer removes a member. Leader only. A removed server's Raft
// traffic is refused by the members from then on.
func (s *Store) RemoveServer(ctx context.Context, id string) error {
	if err := s.raft.RemoveServer(raft.ServerID(id), 0, timeoutOf(ctx)).Error(); err != nil {
		return fmt.Errorf("raftstore: removing %s: %w", id, err)
	}
	return nil
}

// TransferLeadership hands leadership to id, or to the most up-to-date
// voter when id is empty. Leader only.
func (s *Store) TransferLeadership(id string) error {
	var f raft.Future
	if id == "" {
		f = s.raft.LeadershipTransfer()
	} else {
		var addr raft.ServerAddress
		ms, err := s.Members()
		if err != nil {
			return err
		}
		for _, m := range ms {
			if m.ID == id {
				addr = raft.ServerAddress(m.Address)
			}
		}
		if addr == "" {
			return fmt.Errorf("raftstore: %q is not a member", id)
		}
		f = s.raft.LeadershipTransferToServer(raft.ServerID(id), addr)
	}
	if err := f.Error(); err != nil {
		return fmt.Errorf("raftstore: leadership transfer: %w", err)
	}
	return nil
}

// ReadIndex confirms that this server is still the leader (a quorum
// answers) and that every entry committed before the call is applied, and
// returns the index a follower must have applied to serve a linearizable
// read.
func (s *Store) ReadIndex(ctx context.Context) (uint64, error) {
	if err := s.raft.VerifyLeader().Error(); err != nil {
		return 0, fmt.Errorf("raftstore: read index: %w", err)
	}
	if err := s.raft.Barrier(timeoutOf(ctx)).Error(); err != nil {
		return 0, fmt.Errorf("raftstore: read index: %w", err)
	}
	return s.fsm.lastIndex.Load(), nil
}

// WaitApplied blocks until the state machine has applied index (the index
// of a command or one returned by ReadIndex) or ctx ends.
func (s *Store) WaitApplied(ctx context.Context, index uint64) error {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for s.fsm.lastIndex.Load() < index {
		select {
		case <-ctx.Done():
			return fmt.Errorf("raftstore: waiting for index %d (at %d): %w", index, s.fsm.lastIndex.Load(), ctx.Err())
		case <-s.fsm.changedCh():
		case <-t.C:
		}
	}
	return nil
}

// Stats is Raft's view of this server, for metrics and status.
type Stats struct {
	State        string
	Term         uint64
	LastIndex    uint64
	CommitIndex  uint64
	AppliedIndex uint64 // applied to the state machine
	LastContact  time.Time
}

// Stats returns this server's Raft counters.
func (s *Store) Stats() Stats {
	return Stats{
		State:        s.raft.State().String(),
		Term:         s.raft.CurrentTerm(),
		LastIndex:    s.raft.LastIndex(),
		CommitIndex:  s.raft.CommitIndex(),
		AppliedIndex: s.raft.AppliedIndex(),
		LastContact:  s.raft.LastContact(),
	}
}

// LeaderObservations registers ch for leader changes; the returned
// function unregisters it.
func (s *Store) LeaderObservations(ch chan raft.Observation) func() {
	o := raft.NewObserver(ch, false, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.LeaderObservation)
		return ok
	})
	s.raft.RegisterObserver(o)
	return func() { s.raft.DeregisterObserver(o) }
}

// SaveSnapshot writes the whole state to w in the snapshot format and
// returns the index it reflects. On the leader it first waits (Barrier)
// until everything committed is applied.
func (s *Store) SaveSnapshot(ctx context.Context, w io.Writer) (uint64, error) {
	if s.IsLeader() {
		if err := s.raft.Barrier(timeoutOf(ctx)).Error(); err != nil {
			return 0, fmt.Errorf("raftstore: snapshot: %w", err)
		}
	}
	index := s.fsm.lastIndex.Load()
	txn := s.fsm.state.Load().db.Txn(false)
	if err := writeSnapshot(w, txn, index); err != nil {
		return 0, err
	}
	return index, nil
}

// maxRestoreSize bounds a snapshot given to RestoreSnapshot.
const maxRestoreSize = 1 << 30

// RestoreSnapshot replaces the cluster's whole state with a snapshot
// written by SaveSnapshot, read from r to its end. Leader only. The
// snapshot is checked in full (framing, checksum, every record) before
// anything changes; the current Raft configuration is kept. It is read
// one record at a time, never held in memory whole: from r itself when r
// is an io.ReadSeeker (a file), which is read from its start, or else
// from a copy spooled to a temporary file (in the data directory, or the
// system's temporary directory for an in-memory store).
func (s *Store) RestoreSnapshot(ctx context.Context, r io.Reader) (SnapshotInfo, error) {
	rs, ok := r.(io.ReadSeeker)
	if !ok {
		dir := s.cfg.DataDir
		if s.cfg.InMemory {
			dir = ""
		}
		tmp, err := os.CreateTemp(dir, restoreSpoolPattern)
		if err != nil {
			return SnapshotInfo{}, fmt.Errorf("raftstore: restore: %w", err)
		}
		defer os.Remove(tmp.Name())
		defer tmp.Close()
		if _, err := io.Copy(tmp, io.LimitReader(r, maxRestoreSize+1)); err != nil {
			return SnapshotInfo{}, fmt.Errorf("raftstore: restore: reading: %w", err)
		}
		rs = tmp
	}
	n, err := rs.Seek(0, io.SeekEnd)
	if err != nil {
		return SnapshotInfo{}, fmt.Errorf("raftstore: restore: %w", err)
	}
	if n > maxRestoreSize {
		return SnapshotInfo{}, errors.New("raftstore: restore: snapshot is larger than 1 GiB")
	}
	if _, err := rs.Seek(0, io.SeekStart); err != nil {
		return SnapshotInfo{}, fmt.Errorf("raftstore: restore: %w", err)
	}
	_, info, err := s.fsm.readState(rs)
	if err != nil {
		return SnapshotInfo{}, err
	}
	if !s.IsLeader() {
		return SnapshotInfo{}, fmt.Errorf("raftstore: restore: %w", raft.ErrNotLeader)
	}
	if _, err := rs.Seek(0, io.SeekStart); err != nil {
		return SnapshotInfo{}, fmt.Errorf("raftstore: restore: %w", err)
	}
	meta := &raft.SnapshotMeta{Version: raft.SnapshotVersionMax, Index: info.Index, Size: n}
	if err := s.raft.Restore(meta, rs, timeoutOf(ctx)); err != nil {
		return SnapshotInfo{}, fmt.Errorf("raftstore: restore: %w", err)
	}
	return info, nil
}
