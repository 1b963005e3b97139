package raftstore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/internal/storepb"
)

func mustCreate(t *testing.T, s *Store, es ...*sigilv1.Entry) {
	t.Helper()
	res, err := s.Apply(context.Background(), createEntries(es...))
	if err != nil {
		t.Fatal(err)
	}
	for i, st := range res.Results {
		if st.Code != 0 {
			t.Fatalf("entry %s: %v %s", es[i].Id, codes.Code(st.Code), st.Message)
		}
	}
}

func assertEntries(t *testing.T, s *Store, n int) {
	t.Helper()
	r := s.Read()
	for i := range n {
		id := fmt.Sprintf("e%03d", i)
		e, err := r.Entry(id)
		if err != nil {
			t.Fatalf("entry %s after reopen: %v", id, err)
		}
		if e.SpiffeId != fmt.Sprintf("spiffe://example.org/w%d", i) {
			t.Fatalf("entry %s: %v", id, e)
		}
	}
	all, _, err := r.ListEntries(EntryFilter{}, "", 0)
	if err != nil || len(all) != n {
		t.Fatalf("%d entries (%v), want %d", len(all), err, n)
	}
}

func numbered(from, to int) []*sigilv1.Entry {
	var es []*sigilv1.Entry
	for i := from; i < to; i++ {
		es = append(es, entry(fmt.Sprintf("e%03d", i), fmt.Sprintf("spiffe://example.org/w%d", i), agent))
	}
	return es
}

func TestRestartFromDisk(t *testing.T) {
	dir := t.TempDir()
	s := openDisk(t, dir)
	mustCreate(t, s, numbered(0, 10)...)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "raft.db")); err != nil {
		t.Fatal(err)
	}

	// Restart from the log alone.
	s = openDisk(t, dir)
	assertEntries(t, s, 10)
	if s.Read().Index() == 0 || s.LastIndex() < s.Read().Index() {
		t.Fatalf("index after reopen: read %d last %d", s.Read().Index(), s.LastIndex())
	}
	if err := s.Raft().Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, s, numbered(10, 20)...)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	snaps, _ := os.ReadDir(filepath.Join(dir, "snapshots"))
	if len(snaps) == 0 {
		t.Fatal("no snapshot on disk")
	}

	// Restart from snapshot plus log.
	s = openDisk(t, dir)
	assertEntries(t, s, 20)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// Keep almost no log after a snapshot, so the next start must rely on
	// the snapshot for everything before it.
	short := func(c *Config) { c.TrailingLogs = 1 }
	s = openDisk(t, dir, short)
	mustCreate(t, s, numbered(20, 25)...)
	if err := s.Raft().Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	first, err := s.bolt.FirstIndex()
	if err != nil {
		t.Fatal(err)
	}
	if last := s.LastIndex(); first+2 < last || first <= 2 {
		t.Fatalf("log was not compacted: first index %d, last applied %d", first, last)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openDisk(t, dir, short)
	defer s.Close()
	assertEntries(t, s, 25)
	// Updates keep working on restored state.
	upd := entry("e000", "spiffe://example.org/renamed", agent)
	res, err := s.Apply(context.Background(), updateEntries(upd))
	if err != nil || res.Results[0].Code != 0 {
		t.Fatalf("update after restore: %v %v", res, err)
	}
	if e, _ := s.Read().Entry("e000"); e.Revision != 1 {
		t.Fatalf("revision %d", e.Revision)
	}
}

func TestApplyErrors(t *testing.T) {
	clk := clock.NewFake(t0)
	s := openMem(t, clk)
	ctx := context.Background()

	// Single-item refusals come back as *CommandError, also as gRPC status.
	_, err := s.Apply(ctx, evictNode(agent))
	var ce *CommandError
	if !errors.As(err, &ce) || ce.Code != codes.NotFound {
		t.Fatalf("evict unknown: %v", err)
	}
	if status.Code(err) != codes.NotFound {
		t.Fatalf("grpc status code %v", status.Code(err))
	}
	if _, err := s.Apply(ctx, &storepb.Command{}); !errors.As(err, &ce) || ce.Code != codes.InvalidArgument {
		t.Fatalf("empty command: %v", err)
	}
	if _, err := s.Apply(ctx, nil); !errors.As(err, &ce) || ce.Code != codes.InvalidArgument {
		t.Fatalf("nil command: %v", err)
	}

	// Success of a single-item command: one OK status.
	cmd := attestNode(agent, "")
	res, err := s.Apply(ctx, cmd)
	if err != nil || len(res.Results) != 1 || res.Results[0].Code != 0 {
		t.Fatalf("attest: %v %v", res, err)
	}
	if cmd.Timestamp != 0 {
		t.Fatal("Apply modified the caller's command")
	}
	n, _ := s.Read().Node(agent)
	if n.CreatedAt != t0.Unix() {
		t.Fatalf("timestamp not from the clock: created_at %d", n.CreatedAt)
	}

	// A join token expires by the clock of the proposer.
	h := tokenHash("tok")
	if _, err := s.Apply(ctx, createJoinToken(h, t0.Add(time.Minute))); err != nil {
		t.Fatal(err)
	}
	clk.Add(2 * time.Minute)
	_, err = s.Apply(ctx, attestNode("spiffe://example.org/sigil/agent/join_token/t", h))
	if !errors.As(err, &ce) || ce.Code != codes.PermissionDenied || !strings.Contains(ce.Msg, "invalid or expired") {
		t.Fatalf("expired token: %v", err)
	}

	// Batch commands report items, never an error.
	res, err = s.Apply(ctx, deleteEntries("nope"))
	if err != nil || codes.Code(res.Results[0].Code) != codes.NotFound {
		t.Fatalf("batch: %v %v", res, err)
	}

	// A deadline already passed.
	dctx, cancel := context.WithDeadline(ctx, time.Now().Add(-time.Second))
	defer cancel()
	if _, err := s.Apply(dctx, deleteEntries("x")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("expired ctx: %v", err)
	}
}

func TestApplyNotLeader(t *testing.T) {
	cfg := DefaultConfig()
	cfg.TrustDomain = td
	cfg.NodeID = "follower"
	cfg.InMemory = true
	cfg.Bootstrap = false
	s, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := s.Apply(ctx, deleteEntries("x")); !errors.Is(err, raft.ErrNotLeader) {
		t.Fatalf("got %v, want ErrNotLeader", err)
	}
	if s.IsLeader() {
		t.Fatal("unbootstrapped node is leader")
	}
	wctx, wcancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer wcancel()
	if err := s.WaitForLeader(wctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitForLeader without a cluster: %v", err)
	}
}

func TestChanged(t *testing.T) {
	s := openMem(t, nil)
	if !s.IsLeader() {
		t.Fatal("single node is not leader")
	}
	ch := s.Changed()
	before := s.LastIndex()
	mustCreate(t, s, entry("a", "spiffe://example.org/a", agent))
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatal("Changed did not fire")
	}
	if s.LastIndex() <= before || s.Read().Index() != s.LastIndex() {
		t.Fatalf("indexes: before %d last %d read %d", before, s.LastIndex(), s.Read().Index())
	}
	select {
	case <-s.Changed():
		t.Fatal("new Changed channel already closed")
	default:
	}
}

func TestCloseIdempotent(t *testing.T) {
	s := openDisk(t, t.TempDir())
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestConfigValidate(t *testing.T) {
	cases := []struct {
		name string
		mut  func(*Config)
		want string // "" = valid
	}{
		{"ok", func(*Config) {}, ""},
		{"in memory without dir", func(c *Config) { c.DataDir = ""; c.InMemory = true }, ""},
		{"no trust domain", func(c *Config) { c.TrustDomain = spiffeid.TrustDomain{} }, "trust domain"},
		{"no node id", func(c *Config) { c.NodeID = "" }, "node ID"},
		{"node id with space", func(c *Config) { c.NodeID = "a b" }, "node ID"},
		{"no data dir", func(c *Config) { c.DataDir = "" }, "data directory"},
		{"negative interval", func(c *Config) { c.SnapshotInterval = -time.Second }, "negative"},
		{"tiny interval", func(c *Config) { c.SnapshotInterval = time.Millisecond }, "below 5ms"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.TrustDomain = td
			cfg.NodeID = "n1"
			cfg.DataDir = "/nonexistent"
			c.mut(&cfg)
			err := cfg.Validate()
			if c.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), "raftstore: ") {
				t.Fatalf("got %v, want error containing %q", err, c.want)
			}
			if _, err := Open(cfg); err == nil {
				t.Fatal("Open accepted an invalid config")
			}
		})
	}
	d := DefaultConfig()
	if d.SnapshotThreshold != 8192 || d.SnapshotInterval != 2*time.Minute || d.TrailingLogs != 10240 || !d.Bootstrap {
		t.Fatalf("defaults %+v", d)
	}
}

func TestRaftLogsGoToZap(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	cfg := DefaultConfig()
	cfg.TrustDomain = td
	cfg.NodeID = "n1"
	cfg.InMemory = true
	cfg.Logger = zap.New(core)
	s, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	waitLeader(t, s)
	s.Close()
	info := logs.FilterLoggerName("raft").FilterLevelExact(zapcore.InfoLevel).Len()
	if info == 0 {
		t.Fatalf("no raft info logs routed to zap (%d logs total)", logs.Len())
	}
	found := false
	for _, e := range logs.FilterLoggerName("raft").All() {
		if strings.Contains(e.Message, "entering leader state") {
			found = true
		}
	}
	if !found {
		t.Fatal("leader election not logged")
	}
}

func BenchmarkApplyCreateEntry(b *testing.B) {
	s := openDisk(b, b.TempDir())
	defer s.Close()
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		res, err := s.Apply(ctx, createEntries(entry(fmt.Sprintf("b%09d", i), fmt.Sprintf("spiffe://example.org/b%d", i), agent)))
		if err != nil || res.Results[0].Code != 0 {
			b.Fatal(res, err)
		}
	}
}

// A restore spool left in the data directory by a crash is removed when
// the store opens; other files are kept.
func TestOpenRemovesRestoreSpools(t *testing.T) {
	dir := t.TempDir()
	spool := filepath.Join(dir, "restore-12345.snap")
	other := filepath.Join(dir, "restore-notes.txt")
	for _, f := range []string{spool, other} {
		if err := os.WriteFile(f, []byte("left over"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	s := openDisk(t, dir)
	defer s.Close()
	if _, err := os.Stat(spool); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("spool still there after Open: %v", err)
	}
	if _, err := os.Stat(other); err != nil {
		t.Fatalf("another file was removed: %v", err)
	}
}
