package raftstore

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/internal/storepb"
)

// bufSink is a raft.SnapshotSink over a buffer.
type bufSink struct {
	bytes.Buffer
	closed, cancelled bool
}

func (s *bufSink) ID() string    { return "test" }
func (s *bufSink) Close() error  { s.closed = true; return nil }
func (s *bufSink) Cancel() error { s.cancelled = true; return nil }

func populated(t *testing.T) *testFSM {
	tf := newTestFSM(t)
	tf.batch(createEntries(
		entry("a", "spiffe://example.org/a", agent, sel("unix", "uid:1"), sel("k8s", "ns:x")),
		entry("b", "spiffe://example.org/b", "spiffe://example.org/a"),
		entry("alias", "spiffe://example.org/eu", alias, sel("region", "eu")),
	))
	for _, c := range []*storepb.Command{
		createJoinToken(tokenHash("x"), t0.Add(time.Hour)),
		attestNode(agent, "", sel("region", "eu")),
		putAuthority("example.org", "n1", makeCert(t, true, t0.Add(time.Hour))),
	} {
		if got := tf.single(c); got != codes.OK {
			t.Fatal(got)
		}
	}
	return tf
}

func persist(t *testing.T, f *fsm) []byte {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var sink bufSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	snap.Release()
	if !sink.closed || sink.cancelled {
		t.Fatalf("sink closed=%v cancelled=%v", sink.closed, sink.cancelled)
	}
	return sink.Bytes()
}

func TestSnapshotRoundTrip(t *testing.T) {
	src := populated(t)
	data := persist(t, src.f)

	dst := newTestFSM(t)
	changed := dst.f.changedCh()
	oldWatch := dst.f.reader().WatchSet()
	if err := dst.f.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(snapshotBytes(t, dst.f), snapshotBytes(t, src.f)) {
		t.Fatal("restored state differs")
	}
	if dst.f.lastIndex.Load() != src.index || dst.f.reader().Index() != src.index {
		t.Fatalf("restored index %d/%d, want %d", dst.f.lastIndex.Load(), dst.f.reader().Index(), src.index)
	}
	select {
	case <-changed:
	default:
		t.Fatal("Changed did not fire on restore")
	}
	if oldWatch.Watch(time.After(time.Second)) {
		t.Fatal("readers of the replaced state were not woken")
	}
	// Indexes work on the restored state.
	es, err := dst.f.reader().AuthorizedEntries(agent)
	if err != nil || len(es) != 2 {
		t.Fatalf("authorized entries after restore: %v %v", ids(es), err)
	}
	// Snapshots are deterministic.
	if !bytes.Equal(persist(t, dst.f), data) {
		t.Fatal("snapshot of restored state differs from the original")
	}
}

func TestRestoreRefusesCorruptSnapshots(t *testing.T) {
	good := persist(t, populated(t).f)
	body := good[snapshotHeaderLen : len(good)-4]

	// frame wraps a body with a valid header and checksum.
	frame := func(b []byte) []byte {
		out := append([]byte{}, snapshotMagic[:]...)
		out = binary.BigEndian.AppendUint64(out, 7)
		out = binary.BigEndian.AppendUint64(out, uint64(len(b)))
		out = append(out, b...)
		return binary.BigEndian.AppendUint32(out, crc32.Checksum(b, crcTable))
	}
	withSnap := func(mut func(s *storepb.Snapshot)) []byte {
		s := &storepb.Snapshot{}
		if err := proto.Unmarshal(body, s); err != nil {
			t.Fatal(err)
		}
		mut(s)
		b, err := proto.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		return frame(b)
	}
	flipped := append([]byte{}, good...)
	flipped[snapshotHeaderLen+10] ^= 0x40

	cases := map[string][]byte{
		"empty":           {},
		"bad magic":       append([]byte("NOTSIGIL"), good[8:]...),
		"truncated":       good[:len(good)-10],
		"flipped bit":     flipped,
		"trailing data":   append(append([]byte{}, good...), 0),
		"huge length":     append(append(append([]byte{}, snapshotMagic[:]...), make([]byte, 8)...), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff),
		"garbage body":    frame([]byte{0xff, 0xff, 0xff}),
		"invalid entry":   withSnap(func(s *storepb.Snapshot) { s.Entries[0].SpiffeId = "spiffe://example.org/sigil/x" }),
		"duplicate entry": withSnap(func(s *storepb.Snapshot) { s.Entries = append(s.Entries, s.Entries[0]) }),
		"duplicate key": withSnap(func(s *storepb.Snapshot) {
			e := proto.Clone(s.Entries[0]).(*sigilv1.Entry)
			e.Id = "zzz"
			s.Entries = append(s.Entries, e)
		}),
		"invalid node":   withSnap(func(s *storepb.Snapshot) { s.Nodes[0].SpiffeId = "spiffe://example.org/web" }),
		"invalid token":  withSnap(func(s *storepb.Snapshot) { s.JoinTokens[0].Hash = "abc" }),
		"invalid bundle": withSnap(func(s *storepb.Snapshot) { s.Bundles[0].X509Authorities[0].Certificate = []byte("x") }),
		"nil bundle td":  withSnap(func(s *storepb.Snapshot) { s.Bundles[0].TrustDomain = "" }),
	}
	for name, data := range cases {
		t.Run(name, func(t *testing.T) {
			tf := populated(t)
			tf.batch(createEntries(entry("extra", "spiffe://example.org/extra", agent)))
			before := snapshotBytes(t, tf.f)
			index := tf.f.lastIndex.Load()
			if err := tf.f.Restore(io.NopCloser(bytes.NewReader(data))); err == nil {
				t.Fatal("corrupt snapshot accepted")
			}
			if !bytes.Equal(snapshotBytes(t, tf.f), before) || tf.f.lastIndex.Load() != index {
				t.Fatal("state changed by a refused snapshot")
			}
		})
	}
	// The framing helper itself produces acceptable snapshots.
	if err := newTestFSM(t).f.Restore(io.NopCloser(bytes.NewReader(frame(body)))); err != nil {
		t.Fatalf("re-framed good snapshot refused: %v", err)
	}
}

type failingSink struct{ bufSink }

func (s *failingSink) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestPersistCancelsOnWriteError(t *testing.T) {
	snap, _ := populated(t).f.Snapshot()
	var sink failingSink
	if err := snap.Persist(&sink); err == nil || !sink.cancelled || sink.closed {
		t.Fatalf("err=%v cancelled=%v closed=%v", err, sink.cancelled, sink.closed)
	}
}
