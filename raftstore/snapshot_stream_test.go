package raftstore

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"math/rand"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/hashicorp/go-memdb"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/internal/storepb"
)

// buildSnapshot collects every table of txn into one storepb.Snapshot, in
// index order, as the store built its snapshots before they were
// streamed: the reference the streamed writer is held to, and a typed view
// of a state for tests.
func buildSnapshot(txn *memdb.Txn) (*storepb.Snapshot, error) {
	snap := &storepb.Snapshot{}
	if err := eachEntry(txn, func(e *sigilv1.Entry) error { snap.Entries = append(snap.Entries, e); return nil }); err != nil {
		return nil, err
	}
	each := func(table string, fn func(raw interface{})) error {
		it, err := txn.Get(table, indexID)
		if err != nil {
			return err
		}
		for raw := it.Next(); raw != nil; raw = it.Next() {
			fn(raw)
		}
		return nil
	}
	for _, err := range []error{
		each(tableNodes, func(raw interface{}) { snap.Nodes = append(snap.Nodes, raw.(*sigilv1.AttestedNode)) }),
		each(tableJoinTokens, func(raw interface{}) { snap.JoinTokens = append(snap.JoinTokens, raw.(*sigilv1.JoinToken)) }),
		each(tableBundles, func(raw interface{}) { snap.Bundles = append(snap.Bundles, raw.(*sigilv1.Bundle)) }),
		each(tableRevoked, func(raw interface{}) {
			snap.RevokedAuthorities = append(snap.RevokedAuthorities, raw.(*revokedRow).A)
		}),
		each(tableRemovedServers, func(raw interface{}) {
			snap.RemovedServers = append(snap.RemovedServers, raw.(*storepb.RemovedServer))
		}),
		each(tableUsedCredentials, func(raw interface{}) {
			snap.UsedCredentials = append(snap.UsedCredentials, raw.(*usedRow).C)
		}),
		each(tableFederationRelationships, func(raw interface{}) {
			snap.FederationRelationships = append(snap.FederationRelationships, raw.(*sigilv1.FederationRelationship))
		}),
		each(tableFederationStatuses, func(raw interface{}) {
			snap.FederationStatuses = append(snap.FederationStatuses, raw.(*sigilv1.FederationStatus))
		}),
		each(tablePartnerFetches, func(raw interface{}) {
			snap.PartnerFetches = append(snap.PartnerFetches, raw.(*sigilv1.PartnerFetch))
		}),
		each(tableAlerts, func(raw interface{}) { snap.Alerts = append(snap.Alerts, raw.(*storepb.AlertRecord)) }),
	} {
		if err != nil {
			return nil, err
		}
	}
	return snap, nil
}

// wholeSnapshot is a snapshot as the store wrote it before snapshots were
// streamed: the deterministic encoding of buildSnapshot, framed.
func wholeSnapshot(t testing.TB, f *fsm) []byte {
	t.Helper()
	snap, err := buildSnapshot(f.state.Load().db.Txn(false))
	if err != nil {
		t.Fatal(err)
	}
	body, err := proto.MarshalOptions{Deterministic: true}.Marshal(snap)
	if err != nil {
		t.Fatal(err)
	}
	return frameSnapshot(f.lastIndex.Load(), body)
}

// randomState is an FSM brought to a random state by rng: the fuzz
// fixture's base state (a row in every table), some of its other commands
// in a random order, and random entries of every shape.
func randomState(t testing.TB, fx *fuzzFixture, rng *rand.Rand) *fsm {
	a := fx.newFuzzApplier(t, true)
	for _, i := range rng.Perm(len(fx.seeds))[:rng.Intn(len(fx.seeds))] {
		a.apply(fx.seeds[i])
	}
	n := rng.Intn(300)
	es := make([]*sigilv1.Entry, 0, n)
	for i := 0; i < n; i++ {
		e := realisticEntry(rng.Int())
		switch rng.Intn(4) {
		case 0:
			e.DnsNames = []string{fmt.Sprintf("svc-%d.example.org", i), "a.example.org"}
			e.X509SvidTtl = int32(rng.Intn(3600) + 60)
		case 1:
			e.Hint, e.Admin, e.Downstream = "hint", true, rng.Intn(2) == 0
			e.JwtSvidTtl = int32(rng.Intn(600) + 60)
		case 2:
			e.Selectors = append(e.Selectors, sel("k8s", fmt.Sprintf("pod-label:app:%d", rng.Intn(10))))
		}
		es = append(es, e)
	}
	if len(es) > 0 {
		a.apply(fuzzCmd(t, t0, createEntries(es...)))
	}
	return a.f
}

// TestStreamedSnapshotIsTheWholeEncoding: the streamed writer's output is
// byte for byte the deterministic encoding of the whole state, framed as
// before, for random states and the empty one.
func TestStreamedSnapshotIsTheWholeEncoding(t *testing.T) {
	fx := newFuzzFixture(t)
	if got, want := persistBytes(t, newFSM(td, nil)), wholeSnapshot(t, newFSM(td, nil)); !bytes.Equal(got, want) {
		t.Fatalf("empty state: streamed %x, whole %x", got, want)
	}
	for seed := int64(1); seed <= 12; seed++ {
		f := randomState(t, fx, rand.New(rand.NewSource(seed)))
		got, want := persistBytes(t, f), wholeSnapshot(t, f)
		if !bytes.Equal(got, want) {
			t.Fatalf("seed %d: streamed snapshot (%d bytes) differs from the whole encoding (%d bytes)", seed, len(got), len(want))
		}
		if len(got) < 2000 {
			t.Fatalf("seed %d: a %d-byte snapshot is too small to hold the state", seed, len(got))
		}
	}
}

// restoreRefused restores data into a populated FSM and checks that it is
// refused with an error containing want, and leaves the state, the index
// and the watchers untouched.
func restoreRefused(t *testing.T, tf *testFSM, data []byte, want string) {
	t.Helper()
	before := snapshotBytes(t, tf.f)
	index := tf.f.lastIndex.Load()
	changed := tf.f.changedCh()
	err := tf.f.Restore(io.NopCloser(bytes.NewReader(data)))
	if err == nil {
		t.Fatal("broken snapshot accepted")
	}
	if !strings.Contains(err.Error(), want) || strings.Count(err.Error(), "raftstore:") != 1 {
		t.Fatalf("error %q, want one that says %q (with one package prefix)", err, want)
	}
	if !bytes.Equal(snapshotBytes(t, tf.f), before) || tf.f.lastIndex.Load() != index {
		t.Fatal("state changed by a refused snapshot")
	}
	select {
	case <-changed:
		t.Fatal("a refused snapshot woke watchers")
	default:
	}
}

// TestRestoreRefusesEveryTruncationAndCorruption: a snapshot cut at any
// length is refused as truncated, and any one corrupt byte of its body as
// a checksum mismatch (even where it makes a record malformed or
// invalid), leaving the state untouched.
func TestRestoreRefusesEveryTruncationAndCorruption(t *testing.T) {
	tf := populated(t)
	createRealistic(t, tf, 0, 20)
	good := persist(t, tf.f)
	dst := populated(t)
	for n := 0; n < len(good); n++ {
		want := "truncated"
		if n < snapshotHeaderLen {
			want = "snapshot header"
		}
		restoreRefused(t, dst, good[:n], want)
	}
	for i := snapshotHeaderLen; i < len(good); i++ {
		bad := append([]byte{}, good...)
		bad[i] ^= byte(1 << (i % 8))
		restoreRefused(t, dst, bad, "checksum mismatch")
	}
	// The good snapshot is accepted by the same FSM afterwards.
	if err := dst.f.Restore(io.NopCloser(bytes.NewReader(good))); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(snapshotBytes(t, dst.f), snapshotBytes(t, tf.f)) {
		t.Fatal("restored state differs")
	}
}

// zeros is an endless reader of zero bytes.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// TestRestoreRefusesOversizedRecords: a record longer than
// maxSnapshotRecord is refused by its length, with its size and the limit
// in the error, without being held: the body is a stream of 64 MiB that
// the test never holds either. A length that runs past the body, or a
// body longer than maxSnapshotBody, is refused too.
func TestRestoreRefusesOversizedRecords(t *testing.T) {
	tf := populated(t)
	size := uint64(maxSnapshotRecord + 1)
	rec := protowire.AppendTag(nil, 1, protowire.BytesType)
	rec = protowire.AppendVarint(rec, size)
	n := uint64(len(rec)) + size
	hdr := append([]byte{}, snapshotMagic[:]...)
	hdr = binary.BigEndian.AppendUint64(hdr, 9)
	hdr = binary.BigEndian.AppendUint64(hdr, n)
	crc := crc32.Update(0, crcTable, rec)
	chunk := make([]byte, 1<<20)
	for left := size; left > 0; left -= min(left, uint64(len(chunk))) {
		crc = crc32.Update(crc, crcTable, chunk[:min(left, uint64(len(chunk)))])
	}
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	in := io.MultiReader(bytes.NewReader(hdr), bytes.NewReader(rec), io.LimitReader(zeros{}, int64(size)),
		bytes.NewReader(binary.BigEndian.AppendUint32(nil, crc)))
	err := tf.f.Restore(io.NopCloser(in))
	runtime.ReadMemStats(&m1)
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("is %d bytes, more than the limit of %d", size, maxSnapshotRecord)) {
		t.Fatalf("oversized record: %v", err)
	}
	if alloc := m1.TotalAlloc - m0.TotalAlloc; alloc > 8<<20 {
		t.Fatalf("refusing a %d-byte record allocated %d bytes", size, alloc)
	}

	past := frameSnapshot(3, protowire.AppendVarint(protowire.AppendTag(nil, 2, protowire.BytesType), 1000))
	restoreRefused(t, tf, past, "runs past the end of the body")
	huge := append([]byte{}, snapshotMagic[:]...)
	huge = binary.BigEndian.AppendUint64(huge, 1)
	huge = binary.BigEndian.AppendUint64(huge, maxSnapshotBody+1)
	restoreRefused(t, tf, huge, "too large")
}

// TestRestoreRefusesGarbage: bodies that are not a storepb.Snapshot, with
// a valid frame, are refused with a decoding error; a record the store
// refuses is refused with the store's reason; neither changes anything.
func TestRestoreRefusesGarbage(t *testing.T) {
	tf := populated(t)
	good := persist(t, tf.f)
	body := good[snapshotHeaderLen : len(good)-4]
	entryRec := protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), []byte{0xff})
	for name, c := range map[string]struct {
		body []byte
		want string
	}{
		"field zero":        {[]byte{0x00}, "invalid field number 0"},
		"cut varint":        {[]byte{0x80}, "ends in the middle of a field"},
		"varint overflow":   {[]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f}, "overflow"},
		"reserved type":     {[]byte{0x0e}, "reserved wire type"},
		"end group":         {[]byte{0x0c}, "unmatched end of group"},
		"open group":        {[]byte{0x0b}, "ends in the middle of a field"},
		"bad entry":         {entryRec, "snapshot: decoding:"},
		"cut record":        {body[:len(body)-1], "runs past the end of the body"},
		"invalid entry":     {protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), mustMarshal(t, &sigilv1.Entry{Id: "x"})), "snapshot: entry"},
		"duplicate node":    {append(append([]byte{}, body...), nodeRecord(t, body)...), "duplicate node"},
		"duplicate entry":   {append(append([]byte{}, body...), firstRecord(t, body)...), "duplicate entry id"},
		"status, no rel":    {protowire.AppendBytes(protowire.AppendTag(nil, 9, protowire.BytesType), mustMarshal(t, &sigilv1.FederationStatus{TrustDomain: "gcp.example"})), "has no relationship"},
		"fetch, no partner": {protowire.AppendBytes(protowire.AppendTag(nil, 10, protowire.BytesType), mustMarshal(t, &sigilv1.PartnerFetch{TrustDomain: "gcp.example"})), "no federation relationship or bundle"},
	} {
		t.Run(name, func(t *testing.T) {
			restoreRefused(t, tf, frameSnapshot(5, c.body), c.want)
		})
	}
}

func mustMarshal(t testing.TB, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// records splits a snapshot body into its top-level fields, each with its
// tag.
func records(t testing.TB, body []byte) (nums []protowire.Number, recs [][]byte) {
	t.Helper()
	for len(body) > 0 {
		num, typ, n := protowire.ConsumeTag(body)
		if n < 0 {
			t.Fatal(protowire.ParseError(n))
		}
		m := protowire.ConsumeFieldValue(num, typ, body[n:])
		if m < 0 {
			t.Fatal(protowire.ParseError(m))
		}
		nums, recs = append(nums, num), append(recs, body[:n+m])
		body = body[n+m:]
	}
	return nums, recs
}

func firstRecord(t testing.TB, body []byte) []byte {
	_, recs := records(t, body)
	return recs[0]
}

func nodeRecord(t testing.TB, body []byte) []byte {
	nums, recs := records(t, body)
	for i, n := range nums {
		if n == 2 {
			return recs[i]
		}
	}
	t.Fatal("no node in the snapshot")
	return nil
}

// TestRestoreAcceptsRecordsInAnyOrder: a storepb.Snapshot may hold its
// fields in any order, interleaved, with unknown fields among them (as
// proto.Unmarshal reads it); the streamed reader restores the same state
// from the records in reverse order, with unknown fields added, as from
// the snapshot the store wrote.
func TestRestoreAcceptsRecordsInAnyOrder(t *testing.T) {
	fx := newFuzzFixture(t)
	src := randomState(t, fx, rand.New(rand.NewSource(7)))
	good := persistBytes(t, src)
	_, recs := records(t, good[snapshotHeaderLen:len(good)-4])
	var body []byte
	for i := len(recs) - 1; i >= 0; i-- {
		body = append(body, recs[i]...)
		if i%5 == 0 {
			body = protowire.AppendTag(body, 99, protowire.VarintType)
			body = protowire.AppendVarint(body, 12345)
			body = protowire.AppendTag(body, 1, protowire.Fixed32Type) // a known field of another type
			body = append(body, 1, 2, 3, 4)
			body = protowire.AppendTag(body, 12, protowire.StartGroupType)
			body = protowire.AppendTag(body, 3, protowire.BytesType)
			body = protowire.AppendBytes(body, []byte("skipped"))
			body = protowire.AppendTag(body, 12, protowire.EndGroupType)
		}
	}
	dst := newFSM(td, nil)
	if err := dst.Restore(io.NopCloser(bytes.NewReader(frameSnapshot(src.lastIndex.Load(), body)))); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(persistBytes(t, dst), good) {
		t.Fatal("records in another order restored another state")
	}
}

// decodeStreamed collects the records decodeSnapshotBody finds in body
// into a storepb.Snapshot.
func decodeStreamed(body []byte) (*storepb.Snapshot, error) {
	snap := &storepb.Snapshot{}
	fields := snap.ProtoReflect()
	b := &bodyReader{r: bytes.NewReader(body), left: uint64(len(body))}
	b.br = bufio.NewReaderSize(b, snapshotBufferSize)
	err := decodeSnapshotBody(b, func(num protowire.Number, rec []byte) error {
		fd := fields.Descriptor().Fields().ByNumber(num)
		list := fields.Mutable(fd).List()
		m := list.NewElement()
		if err := proto.Unmarshal(rec, m.Message().Interface()); err != nil {
			return err
		}
		list.Append(m)
		return nil
	})
	return snap, err
}

// checkDecodeMatchesProto holds the streamed decoder to proto.Unmarshal
// over one body: both accept it or both refuse it, and when they accept
// it they find the same records.
func checkDecodeMatchesProto(t *testing.T, body []byte) {
	t.Helper()
	got, err := decodeStreamed(body)
	want := &storepb.Snapshot{}
	werr := proto.Unmarshal(body, want)
	if (err == nil) != (werr == nil) {
		t.Fatalf("streamed decoder: %v; proto.Unmarshal: %v", err, werr)
	}
	if err != nil {
		return
	}
	want.ProtoReflect().SetUnknown(nil)
	if !proto.Equal(got, want) {
		t.Fatal("streamed decoder found other records than proto.Unmarshal")
	}
}

// snapshotBodySeeds are bodies for the decoder tests: a real one, its
// records reordered, and malformed and unusual encodings.
func snapshotBodySeeds(t testing.TB) [][]byte {
	fx := newFuzzFixture(t)
	good := persistBytes(t, randomState(t, fx, rand.New(rand.NewSource(3))))
	body := good[snapshotHeaderLen : len(good)-4]
	_, recs := records(t, body)
	seeds := [][]byte{body, {}, {0x00}, {0x80}, {0x0e}, {0x0c}, {0x0b}, {0x0b, 0x0c}, {0x0b, 0x14}, {0x08, 0x01}, {0x0d, 1, 2, 3, 4},
		{0x09, 1, 2, 3, 4, 5, 6, 7, 8}, {0x0a, 0x00}, {0x0a, 0x01, 0xff}, {0x0a, 0x05}, {0xfa, 0xff, 0xff, 0xff, 0x0f, 0x00},
		{0xf8, 0xff, 0xff, 0xff, 0x07, 0x01}, {0xa3, 0x06, 0x0b, 0x0c, 0xa4, 0x06}, {0x5a, 0x00, 0x52, 0x00}}
	var rev []byte
	for i := len(recs) - 1; i >= 0; i-- {
		rev = append(rev, recs[i]...)
	}
	return append(seeds, rev, body[:len(body)/2])
}

// TestSnapshotDecodeMatchesProto: the streamed decoder accepts and refuses
// what proto.Unmarshal does, record for record, over every seed (run over
// arbitrary bodies by FuzzSnapshotBodyDecode).
func TestSnapshotDecodeMatchesProto(t *testing.T) {
	for i, body := range snapshotBodySeeds(t) {
		t.Run(fmt.Sprint(i), func(t *testing.T) { checkDecodeMatchesProto(t, body) })
	}
}

// FuzzSnapshotBodyDecode holds the streaming reader of snapshot bodies to
// proto.Unmarshal of a whole storepb.Snapshot over arbitrary bodies (the
// record-size limit aside, which no input of a fuzzer's size reaches).
func FuzzSnapshotBodyDecode(f *testing.F) {
	for _, s := range snapshotBodySeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		checkDecodeMatchesProto(t, body)
	})
}

// TestPersistDoesNotHoldTheSnapshot: writing a snapshot of 20,000 entries
// allocates a small part of its size (the old writer allocated the whole
// body and a list of every row).
func TestPersistDoesNotHoldTheSnapshot(t *testing.T) {
	tf := newTestFSM(t)
	createRealistic(t, tf, 0, 20000)
	snap, err := tf.f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var sink discardSink
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&m1)
	alloc := m1.TotalAlloc - m0.TotalAlloc
	t.Logf("a %d-byte snapshot allocated %d bytes", sink.n, alloc)
	if sink.n < 20000*100 || alloc > uint64(sink.n)/8 {
		t.Fatalf("a %d-byte snapshot allocated %d bytes", sink.n, alloc)
	}
}

// TestRestoreReadsInSmallPieces: a restore reads its input through a
// bounded buffer, not ahead of what it decodes: the reader never asks
// for more than the buffer's size at once, and the state restored from a
// reader giving one byte at a time is the same.
func TestRestoreReadsInSmallPieces(t *testing.T) {
	tf := populated(t)
	createRealistic(t, tf, 0, 3000)
	good := persist(t, tf.f)
	r := &pieceReader{data: good, piece: 1}
	dst := newFSM(td, nil)
	if err := dst.Restore(io.NopCloser(r)); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(persistBytes(t, dst), good) {
		t.Fatal("restored state differs")
	}
	r = &pieceReader{data: good, piece: 1 << 30}
	if err := newFSM(td, nil).Restore(io.NopCloser(r)); err != nil {
		t.Fatal(err)
	}
	if r.largest > snapshotBufferSize {
		t.Fatalf("restore asked for %d bytes at once", r.largest)
	}
}

// pieceReader gives data at most piece bytes per Read, and records the
// largest read asked for.
type pieceReader struct {
	data    []byte
	piece   int
	largest int
}

func (r *pieceReader) Read(p []byte) (int, error) {
	r.largest = max(r.largest, len(p))
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), r.piece)], r.data)
	r.data = r.data[n:]
	return n, nil
}

// TestStoreRestoreSnapshotFromAStream: Store.RestoreSnapshot restores a
// snapshot read from a reader that cannot seek (spooled to the data
// directory) as from a file; a corrupt one is refused without a change;
// the spooled copy is removed either way; and the state survives a
// restart from the Raft snapshot the restore wrote.
func TestStoreRestoreSnapshotFromAStream(t *testing.T) {
	dir := t.TempDir()
	s := openDisk(t, dir, func(c *Config) { c.Clock = clock.NewFake(t0) })
	ctx := context.Background()
	create := func(id string) {
		t.Helper()
		if _, err := s.Apply(ctx, createEntries(entry(id, "spiffe://example.org/"+id, agent))); err != nil {
			t.Fatal(err)
		}
	}
	create("a")
	var saved bytes.Buffer
	if _, err := s.SaveSnapshot(ctx, &saved); err != nil {
		t.Fatal(err)
	}
	create("b")
	noSpool := func() {
		t.Helper()
		err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err == nil && strings.HasPrefix(d.Name(), "restore-") {
				t.Fatalf("spooled snapshot left behind: %s", path)
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	bad := append([]byte{}, saved.Bytes()...)
	bad[len(bad)-5] ^= 1
	if _, err := s.RestoreSnapshot(ctx, io.MultiReader(bytes.NewReader(bad))); err == nil || !strings.Contains(err.Error(), "checksum mismatch") {
		t.Fatalf("corrupt snapshot: %v", err)
	}
	if _, err := s.Read().Entry("b"); err != nil {
		t.Fatalf("a refused restore changed the state: %v", err)
	}
	noSpool()
	info, err := s.RestoreSnapshot(ctx, io.MultiReader(bytes.NewReader(saved.Bytes())))
	if err != nil {
		t.Fatal(err)
	}
	if info.Entries != 1 || info.Size != int64(saved.Len()) {
		t.Fatalf("restored %+v from %d bytes", info, saved.Len())
	}
	noSpool()
	if _, err := s.Read().Entry("b"); err == nil {
		t.Fatal("entry b survived the restore")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openDisk(t, dir)
	defer s.Close()
	if _, err := s.Read().Entry("a"); err != nil {
		t.Fatalf("after a restart: %v", err)
	}
	if _, err := s.Read().Entry("b"); err == nil {
		t.Fatal("entry b is back after a restart")
	}
}

// eachEntry calls fn with every entry of txn in id order, decoded, until
// fn fails.
func eachEntry(txn *memdb.Txn, fn func(e *sigilv1.Entry) error) error {
	var err error
	loadEntryTable(txn, nil).byID.Ascend(func(e entryRec) bool {
		err = fn(e.entry())
		return err == nil
	})
	return err
}
