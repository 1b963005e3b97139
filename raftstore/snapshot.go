package raftstore

import (
	"bufio"
	"bytes"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"math"
	"slices"

	"github.com/hashicorp/go-memdb"
	"github.com/hashicorp/raft"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/internal/storepb"
)

// Snapshot format: the 8-byte magic, the Raft index of the state (uint64,
// big endian), the length of the body (uint64, big endian), the body (a
// deterministic storepb.Snapshot), and the CRC-32C of the body (uint32, big
// endian).
//
// A snapshot is written and read one record (one row of a table, one
// element of a repeated field of storepb.Snapshot) at a time: neither the
// body nor a storepb.Snapshot holding every row is ever built, so writing
// one costs a buffer and reading one the state it builds.
var snapshotMagic = [8]byte{'S', 'I', 'G', 'I', 'L', 'S', 'N', '1'}

const (
	snapshotHeaderLen = 8 + 8 + 8
	// maxSnapshotBody bounds the body we are willing to read.
	maxSnapshotBody = 1 << 34
	// maxSnapshotRecord bounds one record of the body (an entry, a node,
	// a bundle...). Every record was written by a Raft command, itself a
	// gRPC message of a few MiB at most, so this is far above any record
	// a store writes; it only stops a corrupt length from being followed.
	maxSnapshotRecord = 64 << 20
	// snapshotBufferSize is the size of the buffers between a snapshot
	// and its writer or reader.
	snapshotBufferSize = 64 << 10
	// snapshotBatch is the number of rows a snapshot's writer takes from a
	// table at a time.
	snapshotBatch = 1024
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

type fsmSnapshot struct {
	txn   *memdb.Txn
	index uint64
}

// Snapshot captures the current state. memdb read transactions are
// immutable, so Persist may run concurrently with later Applies.
func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	return &fsmSnapshot{txn: f.state.Load().db.Txn(false), index: f.lastIndex.Load()}, nil
}

// Persist writes the snapshot to sink as it is encoded (writeSnapshot) and
// closes it, or cancels it on any error.
func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := writeSnapshot(sink, s.txn, s.index); err != nil {
		_ = sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s *fsmSnapshot) Release() {}

// snapshotTable is a table of the state as a repeated field of
// storepb.Snapshot: each calls fn with its rows, as they are encoded, in
// the order of its id index.
type snapshotTable struct {
	field protowire.Number
	name  string
	each  func(txn *memdb.Txn, fn func(snapRow) error) error
}

// snapRow is one row of a snapshot table: a message to encode, or, when
// raw is not nil, the row's encoding already made (an entry's record,
// which is the entry's deterministic encoding).
type snapRow struct {
	m   proto.Message
	raw []byte
}

// snapshotTables are the tables of a snapshot in field order, the order in
// which they are written.
var snapshotTables = []snapshotTable{
	{1, "entries", func(txn *memdb.Txn, fn func(snapRow) error) error {
		var err error
		loadEntryTable(txn, nil).byID.Ascend(func(e entryRec) bool {
			err = fn(snapRow{raw: e.bytes()})
			return err == nil
		})
		return err
	}},
	{2, tableNodes, eachRowOf(tableNodes, func(raw any) proto.Message { return raw.(*sigilv1.AttestedNode) })},
	{3, tableJoinTokens, eachRowOf(tableJoinTokens, func(raw any) proto.Message { return raw.(*sigilv1.JoinToken) })},
	{4, tableBundles, eachRowOf(tableBundles, func(raw any) proto.Message { return raw.(*sigilv1.Bundle) })},
	{5, tableRevoked, eachRowOf(tableRevoked, func(raw any) proto.Message { return raw.(*revokedRow).A })},
	{6, tableRemovedServers, eachRowOf(tableRemovedServers, func(raw any) proto.Message { return raw.(*storepb.RemovedServer) })},
	{7, tableUsedCredentials, eachRowOf(tableUsedCredentials, func(raw any) proto.Message { return raw.(*usedRow).C })},
	{8, tableFederationRelationships, eachRowOf(tableFederationRelationships, func(raw any) proto.Message { return raw.(*sigilv1.FederationRelationship) })},
	{9, tableFederationStatuses, eachRowOf(tableFederationStatuses, func(raw any) proto.Message { return raw.(*sigilv1.FederationStatus) })},
	{10, tablePartnerFetches, eachRowOf(tablePartnerFetches, func(raw any) proto.Message { return raw.(*sigilv1.PartnerFetch) })},
	{11, tableAlerts, eachRowOf(tableAlerts, func(raw any) proto.Message { return raw.(*storepb.AlertRecord) })},
}

// eachRowOf walks table in id order, each row as msg encodes it.
func eachRowOf(table string, msg func(raw any) proto.Message) func(*memdb.Txn, func(snapRow) error) error {
	return func(txn *memdb.Txn, fn func(snapRow) error) error {
		it, err := txn.Get(table, indexID)
		if err != nil {
			return errorf("snapshot of %s: %v", table, err)
		}
		for raw := it.Next(); raw != nil; raw = it.Next() {
			if err := fn(snapRow{m: msg(raw)}); err != nil {
				return err
			}
		}
		return nil
	}
}

// writeSnapshot writes the state of txn at index in the snapshot format,
// the same bytes as the deterministic encoding of a storepb.Snapshot of
// every row, one row at a time: a first pass sums the size of the body
// for the header, a second encodes each row and writes it through a
// buffer, with the checksum kept as it goes. txn must be a read
// transaction (its rows do not change between the passes).
func writeSnapshot(w io.Writer, txn *memdb.Txn, index uint64) error {
	// Rows are taken from the tables in batches, so that walking an index
	// is not slowed by the encoding between two rows.
	batch := make([]snapRow, 0, snapshotBatch)
	eachBatch := func(t snapshotTable, fn func([]snapRow) error) error {
		batch = batch[:0]
		if err := t.each(txn, func(m snapRow) error {
			if batch = append(batch, m); len(batch) < cap(batch) {
				return nil
			}
			err := fn(batch)
			batch = batch[:0]
			return err
		}); err != nil {
			return err
		}
		if len(batch) == 0 {
			return nil
		}
		return fn(batch)
	}
	var n uint64
	for _, t := range snapshotTables {
		tag := uint64(protowire.SizeTag(t.field))
		if err := eachBatch(t, func(ms []snapRow) error {
			for _, m := range ms {
				size := len(m.raw)
				if m.raw == nil {
					size = proto.Size(m.m)
				}
				n += tag + uint64(protowire.SizeBytes(size))
			}
			return nil
		}); err != nil {
			return err
		}
	}
	bw := bufio.NewWriterSize(w, snapshotBufferSize)
	var hdr [snapshotHeaderLen]byte
	copy(hdr[:8], snapshotMagic[:])
	binary.BigEndian.PutUint64(hdr[8:16], index)
	binary.BigEndian.PutUint64(hdr[16:24], n)
	if _, err := bw.Write(hdr[:]); err != nil {
		return errorf("writing snapshot: %v", err)
	}
	var (
		crc     uint32
		written uint64
		rec     []byte
		prefix  [2 * binary.MaxVarintLen64]byte
	)
	// The first pass left each row's size in its size cache: rows are
	// never modified once stored, so the second reuses it instead of
	// computing every size again (the check of written against n below
	// would catch a size that changed).
	marshal := proto.MarshalOptions{Deterministic: true, UseCachedSize: true}
	for _, t := range snapshotTables {
		if err := eachBatch(t, func(ms []snapRow) error {
			for _, m := range ms {
				row := m.raw
				if row == nil {
					var err error
					if rec, err = marshal.MarshalAppend(rec[:0], m.m); err != nil {
						return errorf("encoding snapshot: %s: %v", t.name, err)
					}
					row = rec
				}
				p := protowire.AppendTag(prefix[:0], t.field, protowire.BytesType)
				p = protowire.AppendVarint(p, uint64(len(row)))
				for _, b := range [][]byte{p, row} {
					crc = crc32.Update(crc, crcTable, b)
					written += uint64(len(b))
					if _, err := bw.Write(b); err != nil {
						return errorf("writing snapshot: %v", err)
					}
				}
			}
			return nil
		}); err != nil {
			return err
		}
	}
	if written != n {
		// Only if a row changed between the passes.
		return errorf("writing snapshot: body is %d bytes, its header says %d", written, n)
	}
	var sum [4]byte
	binary.BigEndian.PutUint32(sum[:], crc)
	if _, err := bw.Write(sum[:]); err != nil {
		return errorf("writing snapshot: %v", err)
	}
	if err := bw.Flush(); err != nil {
		return errorf("writing snapshot: %v", err)
	}
	return nil
}

// Restore replaces the whole state with a snapshot. Every record is checked
// first; on any error the current state is left untouched.
func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	db, info, err := f.readState(rc)
	if err != nil {
		return err
	}
	old := f.state.Swap(&dbState{db: db, abandon: make(chan struct{})})
	close(old.abandon)
	f.lastIndex.Store(info.Index)
	f.broadcast()
	return nil
}

// SnapshotInfo describes a snapshot that was read.
type SnapshotInfo struct {
	// Index is the Raft index of the state it holds.
	Index uint64
	// Size is its length in bytes.
	Size int64
	// Entries and Nodes count its registration entries and attested
	// nodes.
	Entries, Nodes int
}

// readState reads a snapshot from r and builds a fresh database from it,
// one record at a time: the framing, every record (as the commands check
// it) and, at the end, the checksum of the body and that nothing follows
// it. The snapshot's body is never held whole: the memory it costs is the
// database it builds and one record. On a record's error, the rest of the
// body is read to tell a corrupt or truncated snapshot (reported as such)
// from a well-formed one holding a record the store refuses.
func (f *fsm) readState(r io.Reader) (*memdb.MemDB, SnapshotInfo, error) {
	var hdr [snapshotHeaderLen]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, SnapshotInfo{}, errorf("snapshot header: %v", err)
	}
	if !bytes.Equal(hdr[:8], snapshotMagic[:]) {
		return nil, SnapshotInfo{}, errorf("snapshot: not a Sigil snapshot (bad magic)")
	}
	info := SnapshotInfo{Index: binary.BigEndian.Uint64(hdr[8:16])}
	n := binary.BigEndian.Uint64(hdr[16:24])
	if n > maxSnapshotBody {
		return nil, SnapshotInfo{}, errorf("snapshot: body length %d is too large", n)
	}
	body := &bodyReader{r: r, left: n}
	body.br = bufio.NewReaderSize(body, snapshotBufferSize)
	l := f.newSnapshotLoader(info.Index)
	defer l.txn.Abort()
	err := decodeSnapshotBody(body, l.load)
	if err == nil {
		err = l.finish()
	}
	if err != nil {
		// A record that does not decode or is refused may be the
		// corruption of a good one: say so if the body is corrupt.
		if cerr := body.check(); cerr != nil {
			return nil, SnapshotInfo{}, cerr
		}
		return nil, SnapshotInfo{}, err
	}
	if err := body.check(); err != nil {
		return nil, SnapshotInfo{}, err
	}
	l.txn.Commit()
	info.Size, info.Entries, info.Nodes = snapshotHeaderLen+int64(n)+4, l.entries, l.nodes
	return l.db, info, nil
}

// bodyReader reads the body of a snapshot from r, at most left bytes,
// keeping its checksum, through br.
type bodyReader struct {
	r    io.Reader
	br   *bufio.Reader
	left uint64
	crc  uint32
	// err is the error of r, kept to tell a truncated snapshot.
	err error
}

func (b *bodyReader) Read(p []byte) (int, error) {
	if b.left == 0 {
		return 0, io.EOF
	}
	if uint64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.r.Read(p)
	b.crc = crc32.Update(b.crc, crcTable, p[:n])
	b.left -= uint64(n)
	if err == io.EOF && b.left > 0 {
		err = io.ErrUnexpectedEOF
	}
	if err != nil && err != io.EOF {
		b.err = err
	}
	return n, err
}

// atEnd reports whether every byte of the body was read.
func (b *bodyReader) atEnd() bool { return b.left == 0 && b.br.Buffered() == 0 }

// check reads what is left of the body, then its checksum, and checks
// both and that nothing follows.
func (b *bodyReader) check() error {
	_, err := io.Copy(io.Discard, b.br)
	if b.err != nil {
		err = b.err
	}
	if err != nil || b.left > 0 {
		return errorf("snapshot body truncated: %v", err)
	}
	var sum [4]byte
	if _, err := io.ReadFull(b.r, sum[:]); err != nil {
		return errorf("snapshot body truncated: checksum: %v", err)
	}
	if extra, _ := io.ReadFull(b.r, make([]byte, 1)); extra != 0 {
		return errorf("snapshot: trailing data after checksum")
	}
	if b.crc != binary.BigEndian.Uint32(sum[:]) {
		return errorf("snapshot: checksum mismatch")
	}
	return nil
}

// decodeSnapshotBody reads the fields of a storepb.Snapshot from body one
// at a time, and calls record with each element of a repeated message
// field (the known ones, 1 to 11) in the order they come. It accepts what
// proto.Unmarshal accepts of a storepb.Snapshot, in the same way: other
// fields, and known fields of another wire type, are skipped as unknown
// fields. It refuses a record longer than maxSnapshotRecord. The bytes
// given to record are reused after it returns.
func decodeSnapshotBody(body *bodyReader, record func(field protowire.Number, b []byte) error) error {
	br := body.br
	var buf []byte
	for !body.atEnd() {
		num, typ, err := readTag(br, protowire.MaxValidNumber)
		if err != nil {
			return err
		}
		if num <= 11 && typ == protowire.BytesType {
			size, err := readLength(body)
			if err != nil {
				return err
			}
			if size > maxSnapshotRecord {
				return errorf("snapshot: a record of field %d is %d bytes, more than the limit of %d", num, size, maxSnapshotRecord)
			}
			if buf, err = readRecord(br, buf, int(size)); err != nil {
				return err
			}
			if err := record(num, buf); err != nil {
				return err
			}
			continue
		}
		if err := skipField(body, num, typ); err != nil {
			return err
		}
	}
	return nil
}

// readTag reads a field's tag, with a field number of at most limit.
func readTag(br *bufio.Reader, limit protowire.Number) (protowire.Number, protowire.Type, error) {
	v, err := binary.ReadUvarint(br)
	if err != nil {
		return 0, 0, decodeError(err)
	}
	if n := v >> 3; n < uint64(protowire.MinValidNumber) || n > uint64(limit) {
		return 0, 0, errorf("snapshot: decoding: invalid field number %d", n)
	}
	return protowire.Number(v >> 3), protowire.Type(v & 7), nil
}

// readLength reads the length of a bytes field, which must fit in what is
// left of the body.
func readLength(body *bodyReader) (uint64, error) {
	size, err := binary.ReadUvarint(body.br)
	if err != nil {
		return 0, decodeError(err)
	}
	if size > body.left+uint64(body.br.Buffered()) {
		return 0, errorf("snapshot: decoding: a field of %d bytes runs past the end of the body", size)
	}
	return size, nil
}

// readRecord reads n bytes into buf, which grows only as the bytes come,
// so that a corrupt length costs no more memory than the input.
func readRecord(br *bufio.Reader, buf []byte, n int) ([]byte, error) {
	buf = buf[:0]
	for len(buf) < n {
		chunk := min(n-len(buf), 1<<20)
		buf = slices.Grow(buf, chunk)
		got, err := io.ReadFull(br, buf[len(buf):len(buf)+chunk])
		buf = buf[:len(buf)+got]
		if err != nil {
			return buf, decodeError(err)
		}
	}
	return buf, nil
}

// skipField skips the value of an unknown field, as proto.Unmarshal does;
// a group is skipped to its end, at most protowire.DefaultRecursionLimit
// groups deep.
func skipField(body *bodyReader, num protowire.Number, typ protowire.Type) error {
	var groups []protowire.Number
	for {
		switch typ {
		case protowire.VarintType:
			if _, err := binary.ReadUvarint(body.br); err != nil {
				return decodeError(err)
			}
		case protowire.Fixed32Type, protowire.Fixed64Type, protowire.BytesType:
			var size uint64 = 4
			if typ == protowire.Fixed64Type {
				size = 8
			} else if typ == protowire.BytesType {
				var err error
				if size, err = readLength(body); err != nil {
					return err
				}
			}
			if _, err := io.CopyN(io.Discard, body.br, int64(size)); err != nil {
				return decodeError(err)
			}
		case protowire.StartGroupType:
			if len(groups) > protowire.DefaultRecursionLimit {
				return errorf("snapshot: decoding: groups nested too deep")
			}
			groups = append(groups, num)
		case protowire.EndGroupType:
			if len(groups) == 0 || groups[len(groups)-1] != num {
				return errorf("snapshot: decoding: unmatched end of group %d", num)
			}
			groups = groups[:len(groups)-1]
		default:
			return errorf("snapshot: decoding: reserved wire type %d", typ)
		}
		if len(groups) == 0 {
			return nil
		}
		var err error
		if num, typ, err = readTag(body.br, math.MaxInt32); err != nil {
			return err
		}
	}
}

// decodeError is the error of a body that ends in the middle of a field,
// or of a malformed varint.
func decodeError(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return errorf("snapshot: decoding: the body ends in the middle of a field")
	}
	return errorf("snapshot: decoding: %v", err)
}

// snapshotLoader checks the records of a snapshot and inserts them into a
// fresh database, one at a time, as the commands that wrote them would
// check them. What involves several records (duplicate entries, a
// federation status and its relationship, a partner fetch and its
// relationship or bundle) is checked by finish, so that records may come
// in any order, as in a storepb.Snapshot.
type snapshotLoader struct {
	f     *fsm
	index uint64
	db    *memdb.MemDB
	txn   *memdb.Txn

	entries, nodes, relationships, alerts int
	// pending are checked entries not yet added to ents.
	pending []*sigilv1.Entry
	// ents builds the entry table, stored by finish.
	ents *entryRestore
}

// insertEntries inserts the pending entries.
func (l *snapshotLoader) insertEntries() error {
	for _, e := range l.pending {
		if err := l.ents.add(e); err != nil {
			return err
		}
	}
	l.entries += len(l.pending)
	clear(l.pending)
	l.pending = l.pending[:0]
	return nil
}

func (f *fsm) newSnapshotLoader(index uint64) *snapshotLoader {
	db := newMemDB(f.serversID)
	return &snapshotLoader{f: f, index: index, db: db, txn: db.Txn(true), ents: newEntryRestore(f.serversID)}
}

// load decodes, checks and inserts the record b of field.
func (l *snapshotLoader) load(field protowire.Number, b []byte) error {
	var m proto.Message
	switch field {
	case 1:
		m = &sigilv1.Entry{}
	case 2:
		m = &sigilv1.AttestedNode{}
	case 3:
		m = &sigilv1.JoinToken{}
	case 4:
		m = &sigilv1.Bundle{}
	case 5:
		m = &storepb.RevokedAuthority{}
	case 6:
		m = &storepb.RemovedServer{}
	case 7:
		m = &storepb.UsedCredential{}
	case 8:
		m = &sigilv1.FederationRelationship{}
	case 9:
		m = &sigilv1.FederationStatus{}
	case 10:
		m = &sigilv1.PartnerFetch{}
	case 11:
		m = &storepb.AlertRecord{}
	default:
		return errorf("snapshot: unknown table field %d", field)
	}
	if err := proto.Unmarshal(b, m); err != nil {
		return errorf("snapshot: decoding: %v", err)
	}
	txn, f := l.txn, l.f
	switch r := m.(type) {
	case *sigilv1.Entry:
		// Duplicates are looked for by finish, once every entry is in:
		// a read of an index between two inserts would make memdb clone
		// its radix transaction, and every later insert copy its whole
		// path again.
		if err := f.validateEntry(r); err != nil {
			return errorf("snapshot: %v", err.Msg)
		}
		// Inserted in batches: inserting each as it is decoded leaves
		// the index's nodes out of the cache between two inserts.
		if l.pending = append(l.pending, r); len(l.pending) == snapshotBatch {
			return l.insertEntries()
		}
	case *sigilv1.AttestedNode:
		if err := f.validateNode(r); err != nil {
			return errorf("snapshot: %v", err.Msg)
		}
		if raw, _ := txn.First(tableNodes, indexID, r.SpiffeId); raw != nil {
			return errorf("snapshot: duplicate node %q", r.SpiffeId)
		}
		if err := txn.Insert(tableNodes, r); err != nil {
			return errorf("snapshot: node %q: %v", r.SpiffeId, err)
		}
		l.nodes++
	case *sigilv1.JoinToken:
		if err := validateTokenHash(r.Hash); err != nil {
			return errorf("snapshot: %v", err.Msg)
		}
		if raw, _ := txn.First(tableJoinTokens, indexID, r.Hash); raw != nil {
			return errorf("snapshot: duplicate join token")
		}
		if err := txn.Insert(tableJoinTokens, r); err != nil {
			return errorf("snapshot: join token: %v", err)
		}
	case *sigilv1.Bundle:
		return l.loadBundle(r)
	case *storepb.RevokedAuthority:
		if r.Kind != AuthorityKindX509 && r.Kind != AuthorityKindJWT {
			return errorf("snapshot: revoked authority has no valid kind")
		}
		if err := validateAuthorityID(r.Id); err != nil {
			return errorf("snapshot: revoked authority: %v", err.Msg)
		}
		key := revokedKey(r.Kind, r.Id)
		if raw, _ := txn.First(tableRevoked, indexID, key); raw != nil {
			return errorf("snapshot: duplicate revoked authority %s", key)
		}
		if err := txn.Insert(tableRevoked, &revokedRow{Key: key, A: r}); err != nil {
			return errorf("snapshot: revoked authority %s: %v", key, err)
		}
	case *storepb.RemovedServer:
		if err := validateServerName(r.ServerId); err != nil {
			return errorf("snapshot: removed server: %v", err.Msg)
		}
		if raw, _ := txn.First(tableRemovedServers, indexID, r.ServerId); raw != nil {
			return errorf("snapshot: duplicate removed server %q", r.ServerId)
		}
		if err := txn.Insert(tableRemovedServers, r); err != nil {
			return errorf("snapshot: removed server %q: %v", r.ServerId, err)
		}
	case *storepb.UsedCredential:
		// Checked at its own time: a record restored after it expired
		// is pruned by a later command.
		if err := validateUseOnce(r.Kind, r.Id, r.ExpiresAt, r.UsedAt); err != nil {
			return errorf("snapshot: used credential: %v", err.Msg)
		}
		key := usedKey(r.Kind, r.Id)
		if raw, _ := txn.First(tableUsedCredentials, indexID, key); raw != nil {
			return errorf("snapshot: duplicate used credential of kind %q", r.Kind)
		}
		if err := txn.Insert(tableUsedCredentials, &usedRow{Key: key, ExpiresAt: r.ExpiresAt, C: r}); err != nil {
			return errorf("snapshot: used credential of kind %q: %v", r.Kind, err)
		}
	case *sigilv1.FederationRelationship:
		if l.relationships++; l.relationships > MaxFederationRelationships {
			return errorf("snapshot: more than %d federation relationships", MaxFederationRelationships)
		}
		if err := f.validateRelationship(r); err != nil {
			return errorf("snapshot: %v", err.Msg)
		}
		if raw, _ := txn.First(tableFederationRelationships, indexID, r.TrustDomain); raw != nil {
			return errorf("snapshot: duplicate federation relationship %q", r.TrustDomain)
		}
		if err := txn.Insert(tableFederationRelationships, r); err != nil {
			return errorf("snapshot: federation relationship %q: %v", r.TrustDomain, err)
		}
	case *sigilv1.FederationStatus:
		// Its relationship is looked for by finish.
		norm, err := f.normalStatus(r)
		if err != nil {
			return errorf("snapshot: %v", err.Msg)
		}
		if !proto.Equal(norm, r) {
			return errorf("snapshot: federation status of %q is not in the form the store writes", r.TrustDomain)
		}
		if raw, _ := txn.First(tableFederationStatuses, indexID, r.TrustDomain); raw != nil {
			return errorf("snapshot: duplicate federation status %q", r.TrustDomain)
		}
		if err := txn.Insert(tableFederationStatuses, r); err != nil {
			return errorf("snapshot: federation status %q: %v", r.TrustDomain, err)
		}
	case *sigilv1.PartnerFetch:
		// Its relationship or bundle is looked for by finish.
		if err := f.checkForeignTrustDomain(r.TrustDomain); err != nil {
			return errorf("snapshot: partner fetch: %v", err.Msg)
		}
		if raw, _ := txn.First(tablePartnerFetches, indexID, r.TrustDomain); raw != nil {
			return errorf("snapshot: duplicate partner fetch %q", r.TrustDomain)
		}
		if err := txn.Insert(tablePartnerFetches, r); err != nil {
			return errorf("snapshot: partner fetch %q: %v", r.TrustDomain, err)
		}
	case *storepb.AlertRecord:
		if l.alerts++; l.alerts > MaxAlerts {
			return errorf("snapshot: more than %d alerts", MaxAlerts)
		}
		if err := validateAlert(r); err != nil {
			return errorf("snapshot: %v", err.Msg)
		}
		if raw, _ := txn.First(tableAlerts, indexID, r.Key); raw != nil {
			return errorf("snapshot: duplicate alert %q", r.Key)
		}
		if err := txn.Insert(tableAlerts, r); err != nil {
			return errorf("snapshot: alert %q: %v", r.Key, err)
		}
	}
	return nil
}

// loadBundle checks and inserts a bundle: a federated one as
// SetFederatedBundle stores it; the local one with CA certificates and JWT
// authorities as PutJWTAuthority accepts them.
func (l *snapshotLoader) loadBundle(b *sigilv1.Bundle) error {
	f, txn := l.f, l.txn
	if _, err := spiffeid.TrustDomainFromString(b.TrustDomain); err != nil || b.TrustDomain == "" {
		return errorf("snapshot: bundle has invalid trust domain %q", b.TrustDomain)
	}
	if b.TrustDomain != f.td.Name() {
		norm, err := f.normalFederatedBundle(b)
		if err != nil {
			return errorf("snapshot: %v", err.Msg)
		}
		if !proto.Equal(norm, b) {
			return errorf("snapshot: bundle of %q is not in the form the store writes", b.TrustDomain)
		}
	} else {
		for _, a := range b.X509Authorities {
			if a == nil {
				return errorf("snapshot: bundle %q: authority is missing", b.TrustDomain)
			}
			if _, err := parseCACert(a.Certificate); err != nil {
				return errorf("snapshot: bundle %q: %v", b.TrustDomain, err.Msg)
			}
		}
		if err := checkSnapshotJWTAuthorities(b); err != nil {
			return err
		}
	}
	if raw, _ := txn.First(tableBundles, indexID, b.TrustDomain); raw != nil {
		return errorf("snapshot: duplicate bundle %q", b.TrustDomain)
	}
	if err := txn.Insert(tableBundles, b); err != nil {
		return errorf("snapshot: bundle %q: %v", b.TrustDomain, err)
	}
	return nil
}

// finish checks what involves several records, once every record is in,
// and records the index.
func (l *snapshotLoader) finish() error {
	if err := l.insertEntries(); err != nil {
		return err
	}
	txn := l.txn
	// Every id once, no two entries with the same spiffe_id, parent_id
	// and selectors; then the table is stored.
	if err := l.ents.finish(txn); err != nil {
		return err
	}
	it, err := txn.Get(tableFederationStatuses, indexID)
	if err != nil {
		return errorf("snapshot: %v", err)
	}
	for raw := it.Next(); raw != nil; raw = it.Next() {
		st := raw.(*sigilv1.FederationStatus)
		if rel, _ := txn.First(tableFederationRelationships, indexID, st.TrustDomain); rel == nil {
			return errorf("snapshot: federation status of %q has no relationship", st.TrustDomain)
		}
	}
	if it, err = txn.Get(tablePartnerFetches, indexID); err != nil {
		return errorf("snapshot: %v", err)
	}
	for raw := it.Next(); raw != nil; raw = it.Next() {
		pf := raw.(*sigilv1.PartnerFetch)
		rel, _ := txn.First(tableFederationRelationships, indexID, pf.TrustDomain)
		b, _ := txn.First(tableBundles, indexID, pf.TrustDomain)
		if rel == nil && b == nil {
			return errorf("snapshot: partner fetch of %q, which has no federation relationship or bundle", pf.TrustDomain)
		}
	}
	if err := txn.Insert(tableMeta, &metaRow{Key: metaIndexKey, Index: l.index}); err != nil {
		return errorf("snapshot: %v", err)
	}
	return nil
}

// checkSnapshotJWTAuthorities holds the JWT authorities of a restored bundle
// to what PutJWTAuthority accepts: a key ID that is set, bounded and unique
// in the bundle, and a public key that parses.
func checkSnapshotJWTAuthorities(b *sigilv1.Bundle) error {
	kids := make(map[string]bool, len(b.JwtAuthorities))
	for _, a := range b.JwtAuthorities {
		switch {
		case a == nil:
			return errorf("snapshot: bundle %q: JWT authority is missing", b.TrustDomain)
		case a.KeyId == "":
			return errorf("snapshot: bundle %q: JWT authority key_id is empty", b.TrustDomain)
		case len(a.KeyId) > maxKeyIDLen:
			return errorf("snapshot: bundle %q: JWT authority key_id is longer than %d bytes", b.TrustDomain, maxKeyIDLen)
		case kids[a.KeyId]:
			return errorf("snapshot: bundle %q: duplicate JWT authority key_id %q", b.TrustDomain, a.KeyId)
		}
		kids[a.KeyId] = true
		if _, err := x509.ParsePKIXPublicKey(a.PublicKey); err != nil {
			return errorf("snapshot: bundle %q: JWT authority %q: public key does not parse: %v", b.TrustDomain, a.KeyId, err)
		}
	}
	return nil
}
