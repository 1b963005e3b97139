package raftstore

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"

	"github.com/sigil-id/sigil/clock"
)

// The Raft log store, and the pages of it the process keeps mapped.
//
// bbolt reads raft.db through a read-only shared memory mapping of the
// whole file and writes it with pwrite. Appending a record rewrites the
// last leaf of the log's B+tree, which copies the records already in that
// leaf out of the mapping; with large records (an admin batch is one
// record of several hundred KiB) most of the log ends up read through the
// mapping once, and every page read stays mapped, counted in the process's
// RSS (RssFile), until the process exits: 7.5 MiB after 100,000 entries
// were created and deleted in batches of 5,000, for a 22 MiB log. The
// process does not read those pages again unless a follower needs records
// it lacks, or an append rewrites the leaf they are in.
//
// Reads map pages the same way: bbolt decodes a record from the mapping,
// so a restarted server that replays its log (everything since its last
// snapshot: about 210 MB with a million entries created in admin
// batches) or a leader that sends a lagging follower its records ends up
// with those pages mapped, and nothing was appended that would drop them.
//
// logStore therefore drops its mapped pages (madvise(MADV_DONTNEED), see
// dropMapped) after each log compaction, whenever the store returns memory
// after large deletions (memRelease), and once the log is quiet again
// after logDropAfter bytes of records were appended or read: checked
// every logQuiet from then on, quiet meaning fewer than logDropAfter
// bytes appended or read since the last check. (With "nothing appended
// or read for logQuiet" as the rule instead, a restarted server still
// held its replayed log 45 s later: something in a running server
// appends or reads a few small records every so often; what was not
// traced.) For a shared file mapping
// that only removes the pages from this process's page tables: the file's
// pages stay in the kernel's page cache, where bbolt's own writes put them
// anyway, and the next read of any of them maps the same bytes again (a
// minor fault). No data changes and nothing is lost; the process just no
// longer holds pages it does not use.
//
// bbolt replaces its mapping (munmap, then mmap) only inside a write
// transaction, when the file grows, and when it closes. logStore runs
// every write (StoreLog, StoreLogs, DeleteRange, Set, SetUint64) and Close
// under mu, and drops pages under mu too, so the ranges it reads from
// /proc/self/maps are still bbolt's mapping when it advises them.
type logStore struct {
	*raftboltdb.BoltStore

	path  string
	clock clock.Clock
	quiet time.Duration // logQuiet, shorter in tests

	mu sync.Mutex
	// closed is set by Close; dropMapped does nothing after it.
	closed bool
	// appended and read count the bytes of records appended and read
	// (GetLog) since the last drop; mark is their sum when the drop was
	// scheduled or last checked. They are atomic: reads do not take mu,
	// which an append holds through its fsync.
	appended, read, mark atomic.Int64
	// quietDrop is set while a quiet-time drop is scheduled (by an
	// append or a read): one at a time.
	quietDrop atomic.Bool
}

const (
	// logDropAfter is how many bytes of records must have been appended
	// or read since the last drop for a drop to be scheduled once the
	// log is quiet: small records map few pages.
	logDropAfter = 1 << 20
	// logQuiet is how often a scheduled drop checks whether the log is
	// quiet.
	logQuiet = 30 * time.Second
)

var (
	_ raft.LogStore    = (*logStore)(nil)
	_ raft.StableStore = (*logStore)(nil)
)

// openLogStore opens (or creates) the bbolt file at path as Raft's log
// and stable store; clk times the quiet-time drops.
func openLogStore(path string, clk clock.Clock) (*logStore, error) {
	b, err := raftboltdb.New(raftboltdb.Options{Path: path})
	if err != nil {
		return nil, err
	}
	return &logStore{BoltStore: b, path: path, clock: clk, quiet: logQuiet}, nil
}

// StoreLog stores one Raft log record.
func (s *logStore) StoreLog(l *raft.Log) error {
	return s.StoreLogs([]*raft.Log{l})
}

// StoreLogs stores Raft log records.
func (s *logStore) StoreLogs(logs []*raft.Log) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.BoltStore.StoreLogs(logs); err != nil {
		return err
	}
	var n int64
	for _, l := range logs {
		n += int64(len(l.Data) + len(l.Extensions))
	}
	s.counted(s.appended.Add(n) + s.read.Load())
	return nil
}

// counted schedules a quiet-time drop when total, the bytes appended and
// read since the last drop, reaches logDropAfter and none is scheduled.
func (s *logStore) counted(total int64) {
	if total >= logDropAfter && s.quietDrop.CompareAndSwap(false, true) {
		s.mark.Store(total)
		s.scheduleQuietDrop(s.quiet)
	}
}

// GetLog reads one Raft log record. Reading maps the record's pages
// (see above): enough bytes read schedule a quiet-time drop, as appends
// do.
func (s *logStore) GetLog(idx uint64, l *raft.Log) error {
	if err := s.BoltStore.GetLog(idx, l); err != nil {
		return err
	}
	s.counted(s.read.Add(int64(len(l.Data)+len(l.Extensions))) + s.appended.Load())
	return nil
}

// scheduleQuietDrop runs dropIfQuiet after d on the store's clock.
func (s *logStore) scheduleQuietDrop(d time.Duration) {
	ch := s.clock.After(d)
	go func() {
		<-ch
		s.dropIfQuiet()
	}()
}

// dropIfQuiet drops the mapped pages when fewer than logDropAfter bytes
// of records were appended or read since it was scheduled or last
// checked, or checks again after the quiet time.
func (s *logStore) dropIfQuiet() {
	s.mu.Lock()
	defer s.mu.Unlock()
	total := s.appended.Load() + s.read.Load()
	if total-s.mark.Load() >= logDropAfter && !s.closed {
		s.mark.Store(total)
		s.scheduleQuietDrop(s.quiet)
		return
	}
	// Cleared before the drop: bytes counted after it schedule the next.
	s.quietDrop.Store(false)
	_, _ = s.dropMappedLocked() // best effort, as after a compaction
}

// DeleteRange deletes the records from min to max inclusive (a log
// compaction after a snapshot) and then drops the pages of the log the
// process has mapped: those of the deleted records are free pages in the
// file now.
func (s *logStore) DeleteRange(min, max uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.BoltStore.DeleteRange(min, max); err != nil {
		return err
	}
	_, _ = s.dropMappedLocked() // best effort: the deletion succeeded
	return nil
}

// Set stores a key of the stable store.
func (s *logStore) Set(k, v []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.BoltStore.Set(k, v)
}

// SetUint64 stores a uint64 key of the stable store.
func (s *logStore) SetUint64(key []byte, val uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.BoltStore.SetUint64(key, val)
}

// Close closes the bbolt file.
func (s *logStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	return s.BoltStore.Close()
}

// dropMapped removes from the process the pages of raft.db it has mapped,
// and returns how many bytes of mapping it advised (not how many were
// resident). It is safe to call at any time, concurrently with reads and
// writes of the store.
func (s *logStore) dropMapped() (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dropMappedLocked()
}

func (s *logStore) dropMappedLocked() (int64, error) {
	if s.closed {
		return 0, nil
	}
	s.appended.Store(0)
	s.read.Store(0)
	s.mark.Store(0)
	n, err := dropFileMappings(s.path)
	if err != nil {
		return n, fmt.Errorf("raftstore: dropping mapped pages of %s: %w", s.path, err)
	}
	return n, nil
}
