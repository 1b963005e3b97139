package agent

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"hash/maphash"
	"unsafe"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/sigil-id/sigil/internal/offheap"
	"github.com/sigil-id/sigil/registration"
)

// This file holds the agent's cold tier: the registration entries that
// no workload asked for, that are not eager and that hold no SVID and no
// minting state (with a bounded SVID cache and a million entries
// parented to the agent, nearly all of them). A warm entry is an
// entryState with its packed entry, its heaps and its index slot, about
// 0.8 KB; a cold entry is only its record in an arena of large byte
// chunks and a few fixed-size integers in tables without pointers, which
// the garbage collector does not scan:
//
//   - records: the entry's packed encoding (packedEntry.raw) with its
//     SPIFFE ID's directory (up to the last slash) taken out and
//     interned, its generation, its parent (interned too) and its
//     selectors, appended to chunks of up to coldChunkMax bytes. A
//     selector is kept in the record the first time the store sees it,
//     and as a reference to a counted dictionary entry (selDict) once it
//     was seen before (selSeen, a small table of selector hashes): the
//     selectors many entries share (a namespace, a container name, a
//     node) cost one or two bytes per entry, and a selector of one entry
//     only (a service account) costs nothing in the dictionary;
//   - slots: per entry, where its record is, its links in the selector
//     index and its place in the spare heap (20 bytes);
//   - an open-addressing table from entry ID to slot (4 bytes per
//     entry, at most 3/4 full);
//   - the selector index: buckets (one per two entries or more) by
//     the hash of a selector, each a doubly linked list of the entries
//     filed under the selectors of its hashes (each entry is filed under
//     its least-shared selector, as in the warm index, so matching costs
//     the entries filed under a workload's selectors, and the few others
//     of their buckets);
//   - the spare heap: the slots in order of their entry IDs, the order
//     in which entries no workload asked for are minted while the SVID
//     cache has room.
//
// Deleting a record leaves garbage in its chunk; a chunk (other than the
// one appended to) that is half garbage has its live records moved to
// the end and is freed, so the work a deletion causes is bounded by one
// chunk. When the table of slots is mostly free it is renumbered.
//
// The chunks and the tables (slots, free slots, the ID table, the
// selector index and the spare heap) hold no Go pointers: they are
// allocated from an offheap.Arena, outside the Go heap once they are
// large (offheap.MinMapped), so that the collector neither scans them
// nor counts them towards its heap goal (a million cold entries would
// otherwise let the heap grow by as much again before a collection), and
// a chunk or table that is freed is unmapped at once. Only the slices
// that reference them (c.chunks, c.slots...) and the intern tables are
// Go memory. No Go pointer may ever be stored in them.

// selSeenMax is the largest size of coldStore.selSeen: 256 KiB, outside
// the Go heap.
const selSeenMax = 1 << 16

// Bounds of the arena's chunks: they start small (an agent with a few
// entries holds a few KiB) and grow to coldChunkMax.
const (
	coldChunkMin = 4 << 10
	coldChunkMax = 256 << 10
)

// coldStore is the cold tier. Its zero value is not ready: use
// newColdStore. It is not safe for concurrent use (x509State's lock
// guards it).
type coldStore struct {
	// mem holds the chunks and tables (nil: the Go heap).
	mem    *offheap.Arena
	seed   maphash.Seed
	chunks []coldChunk
	// freeChunks are indexes of chunks that were freed, for reuse.
	freeChunks []uint32
	tail       int // the chunk records are appended to; -1 when none
	slots      []coldSlot
	freeSlots  []uint32
	n          int
	ids        []uint32 // slot+1; 0 is empty
	sels       []selBucket
	nfiled     int // entries in the selector index
	nsels      int // selectors entries are filed under
	heap       []uint32
	// parents interns parent IDs and dirs the directories of SPIFFE IDs
	// (up to their last slash), which many entries share.
	parents refTable
	dirs    refTable
	// selDict interns the selectors that more than one record held
	// when they were added; selSeen holds 32 bits of the hashes of
	// selectors added and not yet in selDict (four per entry, at most
	// selSeenMax, in sets of four by hash, one overwritten when its
	// set is full): a
	// selector whose hash is there was most likely seen before.
	selDict refTable
	selSeen []uint32
	// hold: slots must not be renumbered (a caller holds slot numbers).
	hold bool
	// plain: no selector index and no spare heap (a store that only
	// collects entries by ID: entryStage). drain: records are removed
	// in the order they were added, so chunks are freed as they empty
	// and never compacted, and none is looked up by ID (the ID table is
	// gone).
	plain, drain bool
}

type coldChunk struct {
	b       []byte
	garbage int
}

// coldSlot is where one cold entry is (its record's length is the
// record's first bytes). A free slot's chunk is freeSlot.
type coldSlot struct {
	chunk, off uint32
	prev, next uint32 // in the selector index's list: slot+1, 0 none
	hpos       uint32 // position in the spare heap + 1
}

const freeSlot = ^uint32(0)

func (s *coldSlot) live() bool { return s.chunk != freeSlot }

// selBucket is one list of the selector index: the entries filed under
// the selectors whose hashes fall in it, which matching tells apart.
type selBucket struct {
	head  uint32 // slot+1; 0: the bucket is empty
	count uint32
}

// coldMeta is what a cold entry keeps of its state besides the entry:
// its generation, and when a workload last asked for it and a mint for
// it last started (unix nanoseconds, 0 for never), so that an entry that
// goes cold and is warmed again is evicted and reported as before.
type coldMeta struct {
	gen         uint64
	lastReq     int64
	lastAttempt int64
}

// refTable interns strings that many cold entries share, counting their
// holders: a record holds 1 + an index into list (0: none).
type refTable struct {
	list []coldParent
	idx  map[string]uint32
	free []uint32
}

type coldParent struct {
	id   string
	refs int32
}

// internBytes is intern for a selector given as bytes: only a new
// entry copies them.
func (t *refTable) internBytes(b []byte) uint32 {
	if i, ok := t.idx[string(b)]; ok {
		t.list[i].refs++
		return i + 1
	}
	return t.intern(string(b))
}

// has reports whether the table holds b.
func (t *refTable) has(b []byte) bool {
	_, ok := t.idx[string(b)]
	return ok
}

func (t *refTable) intern(id string) uint32 {
	if i, ok := t.idx[id]; ok {
		t.list[i].refs++
		return i + 1
	}
	if t.idx == nil {
		t.idx = make(map[string]uint32)
	}
	var i uint32
	if n := len(t.free); n > 0 {
		i = t.free[n-1]
		t.free = t.free[:n-1]
		t.list[i] = coldParent{id: id, refs: 1}
	} else {
		i = uint32(len(t.list))
		t.list = append(t.list, coldParent{id: id, refs: 1})
	}
	t.idx[id] = i
	return i + 1
}

func (t *refTable) release(ref uint32) {
	if ref == 0 {
		return
	}
	p := &t.list[ref-1]
	if p.refs--; p.refs == 0 {
		delete(t.idx, p.id)
		*p = coldParent{}
		t.free = append(t.free, ref-1)
	}
}

// get is the string ref names, "" for none.
func (t *refTable) get(ref uint32) string {
	if ref == 0 {
		return ""
	}
	return t.list[ref-1].id
}

func newColdStore() coldStore {
	return coldStore{mem: offheap.New(), seed: maphash.MakeSeed(), tail: -1}
}

// reset empties the store, unmapping its chunks and tables.
func (c *coldStore) reset() {
	c.mem.FreeAll()
	*c = coldStore{mem: c.mem, seed: c.seed, tail: -1, plain: c.plain, drain: c.drain}
}

// len is how many entries the store holds.
func (c *coldStore) len() int { return c.n }

// coldRec is a decoded record header; its byte slices are views of the
// chunk, valid until the store changes.
type coldRec struct {
	coldMeta
	parent uint32
	filed  uint8
	// filedAt is the offset of the filed byte in the chunk.
	filedAt uint32
	// sels are nsels selectors, each a uvarint v: when v is even, the
	// selector's v/2 bytes follow; when odd, it is entry v/2 of dict.
	sels  []byte
	nsels int
	dict  *refTable
	// idMode says whether the ID was taken out of raw and kept as 16
	// bytes (idBin): an ID of 32 hex digits (the servers' own) or a UUID,
	// lower case. dir is the reference of the SPIFFE ID's directory when
	// the SPIFFE ID was taken out of raw (0: it was not); leaf is the
	// rest of it. Both go back in place in fullRaw.
	idMode uint8
	idBin  []byte
	dir    uint32
	leaf   []byte
	raw    []byte
}

// Ways a cold record keeps the entry's ID.
const (
	idText uint8 = iota // in raw, as it is
	idHex               // 32 lower-case hex digits, as 16 bytes
	idUUID              // a lower-case UUID (8-4-4-4-12 hex digits), as 16 bytes
)

// packID returns how id can be kept (idText: as it is) and its 16 bytes.
func packID(id []byte) (uint8, [16]byte) {
	var out [16]byte
	var digits [32]byte
	switch {
	case len(id) == 32:
		copy(digits[:], id)
	case len(id) == 36 && id[8] == '-' && id[13] == '-' && id[18] == '-' && id[23] == '-':
		n := 0
		for i, c := range id {
			if i != 8 && i != 13 && i != 18 && i != 23 {
				digits[n] = c
				n++
			}
		}
	default:
		return idText, out
	}
	for _, c := range digits {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return idText, out
		}
	}
	hex.Decode(out[:], digits[:])
	if len(id) == 32 {
		return idHex, out
	}
	return idUUID, out
}

// idBuf holds an ID formatted from its 16 bytes.
type idBuf [36]byte

// unpackID formats an ID kept as 16 bytes into buf.
func unpackID(mode uint8, bin []byte, buf *idBuf) []byte {
	if mode == idHex {
		hex.Encode(buf[:32], bin)
		return buf[:32]
	}
	hex.Encode(buf[0:8], bin[0:4])
	buf[8] = '-'
	hex.Encode(buf[9:13], bin[4:6])
	buf[13] = '-'
	hex.Encode(buf[14:18], bin[6:8])
	buf[18] = '-'
	hex.Encode(buf[19:23], bin[8:10])
	buf[23] = '-'
	hex.Encode(buf[24:36], bin[10:16])
	return buf[:36]
}

// rec decodes the record of slot i.
func (c *coldStore) rec(i uint32) coldRec {
	s := &c.slots[i]
	b := c.chunks[s.chunk].b[s.off:]
	n, l := binary.Uvarint(b)
	b = b[:l+int(n)]
	// raw's length and the packed ID (for id) first.
	p := l
	_, l = binary.Uvarint(b[p:])
	p += l
	var r coldRec
	r.idMode = b[p]
	p++
	if r.idMode != idText {
		r.idBin = b[p : p+16]
		p += 16
	}
	r.gen, l = binary.Uvarint(b[p:])
	p += l
	r.lastReq, l = binary.Varint(b[p:])
	p += l
	r.lastAttempt, l = binary.Varint(b[p:])
	p += l
	parent, l := binary.Uvarint(b[p:])
	r.parent = uint32(parent)
	p += l
	r.filed = b[p]
	r.filedAt = s.off + uint32(p)
	p++
	nsels, l := binary.Uvarint(b[p:])
	r.nsels = int(nsels)
	p += l
	start := p
	for range r.nsels {
		v, l := binary.Uvarint(b[p:])
		p += l
		if v&1 == 0 {
			p += int(v >> 1)
		}
	}
	r.sels = b[start:p]
	r.dict = &c.selDict
	dir, l := binary.Uvarint(b[p:])
	r.dir = uint32(dir)
	p += l
	if r.dir != 0 {
		n, l := binary.Uvarint(b[p:])
		r.leaf = b[p+l : p+l+int(n)]
		p += l + int(n)
	}
	r.raw = b[p:]
	return r
}

// splitSPIFFE finds, in an entry's encoding that starts with its ID
// (field 1) followed by its SPIFFE ID (field 2), the length of the first
// field, that of the second and the SPIFFE ID; ok is false for any other
// layout.
func splitSPIFFE(raw []byte) (f1, f2 int, val []byte, ok bool) {
	num, typ, l := protowire.ConsumeTag(raw)
	if l < 0 || num != fieldID || typ != protowire.BytesType {
		return 0, 0, nil, false
	}
	if m := protowire.ConsumeFieldValue(num, typ, raw[l:]); m < 0 {
		return 0, 0, nil, false
	} else {
		f1 = l + m
	}
	num, typ, l = protowire.ConsumeTag(raw[f1:])
	if l < 0 || num != fieldSPIFFEID || typ != protowire.BytesType {
		return 0, 0, nil, false
	}
	v, m := protowire.ConsumeBytes(raw[f1+l:])
	if m < 0 {
		return 0, 0, nil, false
	}
	return f1, l + m, v, true
}

// fullRaw is the entry's encoding with its SPIFFE ID back in place.
func (c *coldStore) fullRaw(r *coldRec) []byte {
	if r.dir == 0 && r.idMode == idText {
		return r.raw
	}
	dir := c.dirs.get(r.dir)
	out := make([]byte, 0, len(r.raw)+2*(2+binary.MaxVarintLen64)+36+len(dir)+len(r.leaf))
	rest := r.raw
	if r.idMode != idText {
		var buf idBuf
		out = protowire.AppendTag(out, fieldID, protowire.BytesType)
		out = protowire.AppendBytes(out, unpackID(r.idMode, r.idBin, &buf))
	} else {
		_, _, l := protowire.ConsumeTag(r.raw)
		_, m := protowire.ConsumeBytes(r.raw[l:])
		out = append(out, r.raw[:l+m]...)
		rest = r.raw[l+m:]
	}
	if r.dir != 0 {
		out = protowire.AppendTag(out, fieldSPIFFEID, protowire.BytesType)
		out = protowire.AppendVarint(out, uint64(len(dir)+len(r.leaf)))
		out = append(out, dir...)
		out = append(out, r.leaf...)
	}
	return append(out, rest...)
}

// eachSel calls f with each selector of r (a view of the chunk or of
// the dictionary's string: f must not change it) until f returns false.
func (r *coldRec) eachSel(f func(i int, sel []byte) bool) {
	b := r.sels
	for i := range r.nsels {
		v, l := binary.Uvarint(b)
		b = b[l:]
		var sel []byte
		if v&1 == 0 {
			sel, b = b[:v>>1], b[v>>1:]
		} else {
			d := r.dict.get(uint32(v >> 1))
			sel = unsafe.Slice(unsafe.StringData(d), len(d))
		}
		if !f(i, sel) {
			return
		}
	}
}

// eachSelRef calls f with the dictionary reference of each selector of
// r kept in the dictionary.
func (r *coldRec) eachSelRef(f func(ref uint32)) {
	b := r.sels
	for range r.nsels {
		v, l := binary.Uvarint(b)
		b = b[l:]
		if v&1 == 0 {
			b = b[v>>1:]
		} else {
			f(uint32(v >> 1))
		}
	}
}

// selRef is how a record keeps sel (a uvarint): its dictionary
// reference (interned now) when the store has seen it before, else 0
// (the bytes follow), noting that it was seen.
func (c *coldStore) selRef(sel []byte) uint32 {
	if c.selDict.has(sel) {
		return c.selDict.internBytes(sel)
	}
	if len(c.selSeen) < selSeenMax && len(c.selSeen) < 4*(c.n+1) {
		// Grown to a power of two (what it remembered is forgotten: a
		// few selectors more are kept in records).
		size := max(64, len(c.selSeen))
		for size < selSeenMax && size < 4*(c.n+1) {
			size *= 2
		}
		offheap.FreeSlice(c.mem, c.selSeen)
		c.selSeen = offheap.MakeSlice[uint32](c.mem, size)
	}
	// Four ways per set, so that selectors that recur and share a set
	// do not keep evicting each other.
	h := maphash.Bytes(c.seed, sel)
	set, tag := c.selSeen[h&uint64(len(c.selSeen)-4):][:4], uint32(h>>32)|1
	for k, v := range set {
		if v == tag {
			set[k] = 0 // in the dictionary from now on
			return c.selDict.internBytes(sel)
		}
	}
	k := int(h>>28) & 3
	for j, v := range set {
		if v == 0 {
			k = j
			break
		}
	}
	set[k] = tag
	return 0
}

// sel is r's i-th selector.
func (r *coldRec) sel(i int) []byte {
	var out []byte
	r.eachSel(func(j int, s []byte) bool {
		if j == i {
			out = s
			return false
		}
		return true
	})
	return out
}

// rawID is the entry ID in an entry encoding: its first field when the
// encoding is deterministic (fields in order), else looked for.
func rawID(raw []byte) []byte {
	if len(raw) > 1 && raw[0] == byte(fieldID<<3|protowire.BytesType) {
		n, l := protowire.ConsumeVarint(raw[1:])
		if l > 0 && uint64(len(raw)-1-l) >= n {
			return raw[1+l : 1+l+int(n)]
		}
	}
	var out []byte
	for rest := raw; len(rest) > 0; {
		num, typ, l := protowire.ConsumeTag(rest)
		if l < 0 {
			break
		}
		m := protowire.ConsumeFieldValue(num, typ, rest[l:])
		if m < 0 {
			break
		}
		if num == fieldID && typ == protowire.BytesType {
			v, _ := protowire.ConsumeBytes(rest[l:])
			out = v
		}
		rest = rest[l+m:]
	}
	return out
}

// id is the entry ID of slot i, a view of the chunk.
func (c *coldStore) id(i uint32) []byte {
	var buf idBuf
	return bytes.Clone(c.idb(i, &buf))
}

// idb is the entry ID of slot i: a view of the chunk, or formatted in
// buf.
func (c *coldStore) idb(i uint32, buf *idBuf) []byte {
	s := &c.slots[i]
	return recID(c.chunks[s.chunk].b[s.off:], buf)
}

// recID is the entry ID of the record at the start of b: a view of b, or
// formatted in buf.
func recID(b []byte, buf *idBuf) []byte {
	n, l := binary.Uvarint(b)
	b = b[:l+int(n)]
	raw, k := binary.Uvarint(b[l:])
	if p := l + k; b[p] != idText {
		return unpackID(b[p], b[p+1:p+17], buf)
	}
	return rawID(b[len(b)-int(raw):])
}

// The ID table files an ID by the hash of its key: the way it is kept
// and its 16 bytes when it packs (packID), else its text; probing
// compares keys, so that no ID is formatted to be found.

// idHash is the hash of the key of an ID kept as mode with bin, or as
// text.
func (c *coldStore) idHash(mode uint8, bin, text []byte) uint64 {
	if mode == idText {
		return maphash.Bytes(c.seed, text)
	}
	var k [17]byte
	k[0] = mode
	copy(k[1:], bin)
	return maphash.Bytes(c.seed, k[:])
}

// recKey is the key of slot i's ID: its way and 16 bytes, or its text
// (a view of the chunk). An ID kept as text that packs (in a record
// whose encoding did not start with it) has the key it would have
// packed.
func (c *coldStore) recKey(i uint32) (mode uint8, bin [16]byte, text []byte) {
	s := &c.slots[i]
	b := c.chunks[s.chunk].b[s.off:]
	n, l := binary.Uvarint(b)
	b = b[:l+int(n)]
	raw, k := binary.Uvarint(b[l:])
	if p := l + k; b[p] != idText {
		copy(bin[:], b[p+1:p+17])
		return b[p], bin, nil
	}
	text = rawID(b[len(b)-int(raw):])
	mode, bin = packID(text)
	return mode, bin, text
}

// slotHash is idHash of slot i's ID.
func (c *coldStore) slotHash(i uint32) uint64 {
	mode, bin, text := c.recKey(i)
	return c.idHash(mode, bin[:], text)
}

// get returns the slot of the entry with ID id.
func (c *coldStore) get(id string) (uint32, bool) {
	return c.getb(unsafe.Slice(unsafe.StringData(id), len(id)))
}

// getb is get for an ID given as bytes (not changed).
func (c *coldStore) getb(id []byte) (uint32, bool) {
	if c.n == 0 {
		return 0, false
	}
	mode, bin := packID(id)
	mask := uint64(len(c.ids) - 1)
	for i := c.idHash(mode, bin[:], id) & mask; ; i = (i + 1) & mask {
		v := c.ids[i]
		if v == 0 {
			return 0, false
		}
		m, b, t := c.recKey(v - 1)
		if m == mode && (mode == idText && bytes.Equal(t, id) || mode != idText && b == bin) {
			return v - 1, true
		}
	}
}

// meta is what slot i's entry keeps of its state.
func (c *coldStore) meta(i uint32) coldMeta { return c.rec(i).coldMeta }

// insert adds pe with m; no entry with its ID may be held. It returns
// its slot.
func (c *coldStore) insert(pe *packedEntry, m coldMeta) uint32 {
	var parent uint32
	if pe.parent != "" {
		parent = c.parents.intern(pe.parent)
	}
	sels := make([][]byte, len(pe.sels))
	for i, s := range pe.sels {
		sels[i] = []byte(s)
	}
	raw := []byte(pe.raw)
	var dir uint32
	var leaf []byte
	// The ID leaves raw when it packs in 16 bytes, the SPIFFE ID when
	// it follows the ID (deterministic encodings, as packEntry's).
	var id idPart
	start := 0
	if num, typ, l := protowire.ConsumeTag(raw); l > 0 && num == fieldID && typ == protowire.BytesType {
		if v, m := protowire.ConsumeBytes(raw[l:]); m > 0 {
			if id.mode, id.bin = packID(v); id.mode != idText {
				start = l + m
			}
		}
	}
	if f1, f2, v, ok := splitSPIFFE(raw); ok {
		if k := bytes.LastIndexByte(v, '/'); k >= 0 {
			dir = c.dirs.intern(string(v[:k+1]))
			leaf = bytes.Clone(v[k+1:])
			raw = append(raw[:f1], raw[f1+f2:]...)
		}
	}
	return c.add(raw[start:], id, m, parent, dir, leaf, sels)
}

// idPart is how a record keeps the ID (packID).
type idPart struct {
	mode uint8
	bin  [16]byte
}

// add stores a record and indexes it; raw is without its ID when
// id.mode is not idText and without its SPIFFE ID when dir is not 0
// (insert).
func (c *coldStore) add(raw []byte, id idPart, m coldMeta, parent, dir uint32, leaf []byte, sels [][]byte) uint32 {
	var slot uint32
	if n := len(c.freeSlots); n > 0 {
		slot = c.freeSlots[n-1]
		c.freeSlots = c.freeSlots[:n-1]
	} else {
		slot = uint32(len(c.slots))
		c.slots = offheap.Append(c.mem, c.slots, coldSlot{chunk: freeSlot})
	}
	// The selector it is filed under: the least shared.
	filed := 0
	if len(sels) > 0 {
		best := c.selCount(sels[0])
		for i := 1; i < len(sels); i++ {
			if n := c.selCount(sels[i]); n < best {
				filed, best = i, n
			}
		}
	}
	n := uvarintLen(uint64(len(raw))) + 1 + uvarintLen(m.gen) + varintLen(m.lastReq) + varintLen(m.lastAttempt) + uvarintLen(uint64(parent)) + 1 + uvarintLen(uint64(len(sels))) + len(raw)
	var refBuf [8]uint32
	refs := refBuf[:0]
	for _, s := range sels {
		ref := c.selRef(s)
		refs = append(refs, ref)
		if ref != 0 {
			n += uvarintLen(uint64(ref)<<1 | 1)
		} else {
			n += uvarintLen(uint64(len(s))<<1) + len(s)
		}
	}
	n += uvarintLen(uint64(dir))
	if id.mode != idText {
		n += 16
	}
	if dir != 0 {
		n += uvarintLen(uint64(len(leaf))) + len(leaf)
	}
	chunk, off := c.place(n)
	ch := &c.chunks[chunk]
	b := ch.b
	b = binary.AppendUvarint(b, uint64(len(raw)))
	b = append(b, id.mode)
	if id.mode != idText {
		b = append(b, id.bin[:]...)
	}
	b = binary.AppendUvarint(b, m.gen)
	b = binary.AppendVarint(b, m.lastReq)
	b = binary.AppendVarint(b, m.lastAttempt)
	b = binary.AppendUvarint(b, uint64(parent))
	b = append(b, uint8(filed))
	b = binary.AppendUvarint(b, uint64(len(sels)))
	for i, s := range sels {
		if refs[i] != 0 {
			b = binary.AppendUvarint(b, uint64(refs[i])<<1|1)
			continue
		}
		b = binary.AppendUvarint(b, uint64(len(s))<<1)
		b = append(b, s...)
	}
	b = binary.AppendUvarint(b, uint64(dir))
	if dir != 0 {
		b = binary.AppendUvarint(b, uint64(len(leaf)))
		b = append(b, leaf...)
	}
	b = append(b, raw...)
	if cap(b) != cap(ch.b) {
		// The record outgrew the room place made: append moved it to
		// the Go heap. A bug, never input.
		panic("agent: cold record larger than its size")
	}
	ch.b = b
	s := &c.slots[slot]
	s.chunk, s.off = chunk, off
	c.n++
	c.idsPut(slot)
	if c.plain {
		return slot
	}
	if len(sels) > 0 {
		c.link(slot, sels[filed])
	}
	c.heapPush(slot)
	return slot
}

// place makes room for a record of n bytes after its length at the
// end of the tail chunk and writes the length; the caller appends the n
// bytes. It returns where the record starts.
func (c *coldStore) place(n int) (uint32, uint32) {
	need := uvarintLen(uint64(n)) + n
	if c.tail < 0 || cap(c.chunks[c.tail].b)-len(c.chunks[c.tail].b) < need {
		size := coldChunkMin
		if c.tail >= 0 {
			size = min(2*cap(c.chunks[c.tail].b), coldChunkMax)
		}
		size = max(size, need)
		b := c.mem.Bytes(size)[:0]
		if k := len(c.freeChunks); k > 0 {
			c.tail = int(c.freeChunks[k-1])
			c.freeChunks = c.freeChunks[:k-1]
			c.chunks[c.tail] = coldChunk{b: b}
		} else {
			c.tail = len(c.chunks)
			c.chunks = append(c.chunks, coldChunk{b: b})
		}
	}
	ch := &c.chunks[c.tail]
	off := uint32(len(ch.b))
	ch.b = binary.AppendUvarint(ch.b, uint64(n))
	return uint32(c.tail), off
}

func varintLen(v int64) int {
	u := uint64(v) << 1
	if v < 0 {
		u = ^u
	}
	return uvarintLen(u)
}

func uvarintLen(v uint64) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
}

// remove forgets slot i's entry.
func (c *coldStore) remove(i uint32) {
	r := c.rec(i)
	c.parents.release(r.parent)
	c.dirs.release(r.dir)
	if r.nsels > 0 && !c.plain {
		c.unlink(i, r.sel(int(r.filed)))
	}
	r.eachSelRef(c.selDict.release)
	if !c.drain { // a drained store has no ID table (entryStage.drain)
		c.idsDel(i)
	}
	c.heapRemove(i)
	s := &c.slots[i]
	chunk := s.chunk
	n, l := binary.Uvarint(c.chunks[chunk].b[s.off:])
	size := uint32(l) + uint32(n)
	*s = coldSlot{chunk: freeSlot}
	if !c.drain { // a drained store reuses no slot
		c.freeSlots = offheap.Append(c.mem, c.freeSlots, i)
	}
	c.n--
	ch := &c.chunks[chunk]
	ch.garbage += int(size)
	switch {
	case ch.garbage >= len(ch.b) && int(chunk) == c.tail:
		ch.b, ch.garbage = ch.b[:0], 0
	case ch.garbage >= len(ch.b):
		c.freeChunk(chunk)
	case int(chunk) != c.tail && 2*ch.garbage >= len(ch.b) && !c.drain:
		c.compact(chunk)
	}
	if c.n == 0 && !c.hold {
		c.reset()
		return
	}
	if !c.hold && len(c.slots) > 1024 && c.n < len(c.slots)/4 {
		c.renumber()
	}
}

func (c *coldStore) freeChunk(i uint32) {
	c.mem.Free(c.chunks[i].b)
	c.chunks[i] = coldChunk{}
	c.freeChunks = append(c.freeChunks, i)
}

// compact moves the live records of chunk i to the tail and frees it.
// A record is live when the slot of its ID (records do not keep their
// slot) is where it is.
func (c *coldStore) compact(i uint32) {
	b := c.chunks[i].b
	var buf idBuf
	for off := 0; off < len(b); {
		n, l := binary.Uvarint(b[off:])
		body := b[off+l : off+l+int(n)]
		if slot, ok := c.getb(recID(b[off:], &buf)); ok {
			if s := &c.slots[slot]; s.chunk == i && int(s.off) == off {
				chunk, noff := c.place(len(body))
				c.chunks[chunk].b = append(c.chunks[chunk].b, body...)
				s.chunk, s.off = chunk, noff
			}
		}
		off += l + int(n)
	}
	c.freeChunk(i)
}

// renumber rebuilds the store with its entries in new, dense slots.
func (c *coldStore) renumber() {
	old := *c
	*c = coldStore{mem: offheap.New(), seed: old.seed, tail: -1, plain: old.plain, drain: old.drain}
	defer old.mem.FreeAll()
	for i := range old.slots {
		if !old.slots[i].live() {
			continue
		}
		r := old.rec(uint32(i))
		var parent, dir uint32
		if r.parent != 0 {
			parent = c.parents.intern(old.parents.get(r.parent))
		}
		if r.dir != 0 {
			dir = c.dirs.intern(old.dirs.get(r.dir))
		}
		sels := make([][]byte, 0, r.nsels)
		r.eachSel(func(_ int, s []byte) bool { sels = append(sels, s); return true })
		id := idPart{mode: r.idMode}
		copy(id.bin[:], r.idBin)
		c.add(r.raw, id, r.coldMeta, parent, dir, r.leaf, sels)
	}
}

// release ends a hold (see hold) and renumbers if it was put off.
func (c *coldStore) release() {
	c.hold = false
	if c.n == 0 {
		c.reset()
	} else if len(c.slots) > 1024 && c.n < len(c.slots)/4 {
		c.renumber()
	}
}

// The ID table: linear probing, deletion by backward shift.

func (c *coldStore) idsPut(slot uint32) {
	if 4*(c.n+1) > 3*len(c.ids) {
		c.idsResize(max(16, 2*len(c.ids)))
	}
	c.idsInsert(slot)
}

func (c *coldStore) idsInsert(slot uint32) {
	mask := uint64(len(c.ids) - 1)
	for i := c.slotHash(slot) & mask; ; i = (i + 1) & mask {
		if c.ids[i] == 0 {
			c.ids[i] = slot + 1
			return
		}
	}
}

func (c *coldStore) idsResize(n int) {
	old := c.ids
	c.ids = offheap.MakeSlice[uint32](c.mem, n)
	for _, v := range old {
		if v != 0 {
			c.idsInsert(v - 1)
		}
	}
	offheap.FreeSlice(c.mem, old)
}

func (c *coldStore) idsDel(slot uint32) {
	mask := uint64(len(c.ids) - 1)
	i := c.slotHash(slot) & mask
	for c.ids[i] != slot+1 {
		i = (i + 1) & mask
	}
	c.ids[i] = 0
	// Move back the entries of the run after i whose home is not
	// between i and them.
	for j := (i + 1) & mask; c.ids[j] != 0; j = (j + 1) & mask {
		home := c.slotHash(c.ids[j]-1) & mask
		if (j-home)&mask >= (j-i)&mask {
			c.ids[i], c.ids[j] = c.ids[j], 0
			i = j
		}
	}
	if len(c.ids) > 64 && 8*(c.n-1) < len(c.ids) {
		c.idsResize(len(c.ids) / 2)
	}
}

// The selector index: a power of two of buckets, each the doubly linked
// list of the entries filed under the selectors whose hashes fall in it,
// at most two entries per bucket on average (so about 4 bytes per
// entry). Different selectors share buckets; matching checks each
// entry's filed selector. Entries filed under one selector are in one
// list in the order they were filed (newest first), which resizing
// keeps.

// selBucketOf is the bucket of the selector whose hash is h.
func (c *coldStore) selBucketOf(h uint64) int { return int(h & uint64(len(c.sels)-1)) }

// selCount is how many entries are filed in sel's bucket: the entries
// filed under sel, and rarely others.
func (c *coldStore) selCount(sel []byte) uint32 {
	if len(c.sels) == 0 {
		return 0
	}
	return c.sels[c.selBucketOf(maphash.Bytes(c.seed, sel))].count
}

// filedUnder reports whether bucket i lists an entry filed under sel
// other than skip (slot+1; 0: none). It reads the bucket's entries until
// one is: one or two entries for most selectors, the first for a
// selector many entries are filed under. (A selector of few entries
// whose hash falls in the bucket of a selector of many reads that
// bucket: rare, with as many buckets as half the entries and a seeded
// hash.)
func (c *coldStore) filedUnder(i int, sel []byte, skip uint32) bool {
	for v := c.sels[i].head; v != 0; v = c.slots[v-1].next {
		if v == skip {
			continue
		}
		r := c.rec(v - 1)
		if bytes.Equal(r.sel(int(r.filed)), sel) {
			return true
		}
	}
	return false
}

func (c *coldStore) link(slot uint32, sel []byte) {
	if 2*len(c.sels) < c.nfiled+1 {
		c.selsResize(max(16, 2*len(c.sels)))
	}
	i := c.selBucketOf(maphash.Bytes(c.seed, sel))
	if !c.filedUnder(i, sel, 0) {
		c.nsels++
	}
	b := &c.sels[i]
	s := &c.slots[slot]
	s.prev, s.next = 0, b.head
	if b.head != 0 {
		c.slots[b.head-1].prev = slot + 1
	}
	b.head = slot + 1
	b.count++
	c.nfiled++
}

func (c *coldStore) unlink(slot uint32, sel []byte) {
	if len(c.sels) == 0 {
		return
	}
	i := c.selBucketOf(maphash.Bytes(c.seed, sel))
	if !c.filedUnder(i, sel, slot+1) {
		c.nsels--
	}
	b := &c.sels[i]
	s := &c.slots[slot]
	if s.prev != 0 {
		c.slots[s.prev-1].next = s.next
	} else {
		b.head = s.next
	}
	if s.next != 0 {
		c.slots[s.next-1].prev = s.prev
	}
	s.prev, s.next = 0, 0
	b.count--
	c.nfiled--
	if len(c.sels) > 64 && 8*c.nfiled < len(c.sels) {
		c.selsResize(len(c.sels) / 2)
	}
}

// selsResize moves the lists to n buckets, each list's entries in the
// order they had.
func (c *coldStore) selsResize(n int) {
	old := c.sels
	c.sels = offheap.MakeSlice[selBucket](c.mem, n)
	defer offheap.FreeSlice(c.mem, old)
	if c.nfiled == 0 {
		return
	}
	tails := offheap.MakeSlice[uint32](c.mem, n)
	defer offheap.FreeSlice(c.mem, tails)
	for _, b := range old {
		for v := b.head; v != 0; {
			s := &c.slots[v-1]
			next := s.next
			r := c.rec(v - 1)
			i := c.selBucketOf(maphash.Bytes(c.seed, r.sel(int(r.filed))))
			nb := &c.sels[i]
			s.prev, s.next = tails[i], 0
			if tails[i] != 0 {
				c.slots[tails[i]-1].next = v
			} else {
				nb.head = v
			}
			tails[i] = v
			nb.count++
			v = next
		}
	}
}

// match calls f with the slot of each entry filed under sel all of
// whose selectors are in set. Each entry is filed under one selector,
// so calling match with each selector of set finds each matching entry
// once. f must not change the store.
func (c *coldStore) match(sel string, set registration.SelectorSet, f func(uint32)) {
	if len(c.sels) == 0 {
		return
	}
	i := c.selBucketOf(maphash.String(c.seed, sel))
	for v := c.sels[i].head; v != 0; v = c.slots[v-1].next {
		slot := v - 1
		r := c.rec(slot)
		if string(r.sel(int(r.filed))) != sel {
			continue // another selector in the bucket
		}
		all := r.nsels > 0
		r.eachSel(func(_ int, s []byte) bool {
			if _, in := set[string(s)]; !in {
				all = false
			}
			return all
		})
		if all {
			f(slot)
		}
	}
}

// equal reports whether slot i holds pe.
func (c *coldStore) equal(i uint32, pe *packedEntry) bool {
	r := c.rec(i)
	if r.nsels != len(pe.sels) || c.parents.get(r.parent) != pe.parent || string(c.fullRaw(&r)) != pe.raw {
		return false
	}
	same := true
	r.eachSel(func(j int, s []byte) bool {
		same = string(s) == pe.sels[j]
		return same
	})
	return same
}

// packed returns slot i's entry as a packedEntry of its own (no memory
// shared with the store), its parent and selectors not interned.
func (c *coldStore) packed(i uint32) packedEntry {
	r := c.rec(i)
	p := packedEntry{raw: string(c.fullRaw(&r)), parent: c.parents.get(r.parent)}
	p.sels = make([]string, 0, r.nsels)
	r.eachSel(func(_ int, s []byte) bool { p.sels = append(p.sels, string(s)); return true })
	p.fill()
	return p
}

// each calls f with every slot held, in no order. f must not change the
// store.
func (c *coldStore) each(f func(uint32)) {
	for i := range c.slots {
		if c.slots[i].live() {
			f(uint32(i))
		}
	}
}

// The spare heap: slots by entry ID.

func (c *coldStore) less(a, b uint32) bool {
	var x, y idBuf
	return bytes.Compare(c.idb(a, &x), c.idb(b, &y)) < 0
}

func (c *coldStore) heapSwap(i, j int) {
	c.heap[i], c.heap[j] = c.heap[j], c.heap[i]
	c.slots[c.heap[i]].hpos = uint32(i + 1)
	c.slots[c.heap[j]].hpos = uint32(j + 1)
}

func (c *coldStore) heapUp(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if !c.less(c.heap[i], c.heap[p]) {
			return
		}
		c.heapSwap(i, p)
		i = p
	}
}

func (c *coldStore) heapDown(i int) bool {
	moved := false
	n := len(c.heap)
	for {
		l := 2*i + 1
		if l >= n {
			return moved
		}
		m := l
		if r := l + 1; r < n && c.less(c.heap[r], c.heap[l]) {
			m = r
		}
		if !c.less(c.heap[m], c.heap[i]) {
			return moved
		}
		c.heapSwap(i, m)
		i, moved = m, true
	}
}

func (c *coldStore) heapPush(slot uint32) {
	c.heap = offheap.Append(c.mem, c.heap, slot)
	c.slots[slot].hpos = uint32(len(c.heap))
	c.heapUp(len(c.heap) - 1)
}

func (c *coldStore) heapRemove(slot uint32) {
	p := c.slots[slot].hpos
	if p == 0 {
		return
	}
	i, last := int(p-1), len(c.heap)-1
	if i != last {
		c.heapSwap(i, last)
	}
	c.heap = c.heap[:last]
	c.slots[slot].hpos = 0
	if i != last && !c.heapDown(i) {
		c.heapUp(i)
	}
	if cp := cap(c.heap); cp > 1024 && len(c.heap) < cp/4 {
		h := offheap.Clone(c.mem, c.heap)
		offheap.FreeSlice(c.mem, c.heap)
		c.heap = h
	}
}

// top is the slot of the entry with the least ID.
func (c *coldStore) top() (uint32, bool) {
	if len(c.heap) == 0 {
		return 0, false
	}
	return c.heap[0], true
}
