package agent

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash/maphash"
	"math/bits"
	"slices"
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
//     ID taken out (16 bytes when it is hex or a UUID), its SPIFFE ID's
//     directory (up to the last slash) taken out and interned, its
//     generation, its parent (interned too) and its selectors, appended
//     to chunks of up to coldChunkMax bytes (the layout is in
//     coldstore_rec.go). A selector is kept in the record the first time
//     the store sees it, and as a reference to a counted dictionary
//     entry (selDict) once it was seen before (selSeen, a small table of
//     hashes): the selectors many entries share (a namespace, a
//     container name, a node) cost one or two bytes per entry, and a
//     selector of one entry only (a service account) costs nothing in
//     the dictionary. A selector or the rest of the SPIFFE ID that ends
//     in a number is kept as a stem in the dictionary and the number
//     once the store saw the stem before (sa:workload-1234: two bytes
//     and the number, none when it is the SPIFFE ID's);
//   - slots: per entry, where its record is and its links in the
//     selector index (16 bytes);
//   - an open-addressing table from entry ID to slot (4 bytes per
//     entry, at most 3/4 full);
//   - the selector index: buckets (one per two entries or more) by
//     the hash of a selector, each a doubly linked list of the entries
//     filed under the selectors of its hashes (each entry is filed under
//     its least-shared selector, as in the warm index, so matching costs
//     the entries filed under a workload's selectors, and the few others
//     of their buckets);
//   - the spare window: the spareWindow entries of least IDs, in order
//     (the order in which entries no workload asked for are minted while
//     the SVID cache has room), refilled by one scan when it is empty.

// Deleting a record leaves garbage in its chunk; a chunk (other than the
// one appended to) that is half garbage has its live records moved to
// the end and is freed, so the work a deletion causes is bounded by one
// chunk. When the table of slots is mostly free it is renumbered.
//
// The chunks and the tables (slots, free slots, the ID table, the
// selector index, the seen hashes) hold no Go pointers: they are
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
	// heap is the spare window: the slots of the entries of least IDs,
	// in order (see winAdd). part: some entries are not in it (all
	// entries outside have greater IDs than those in it).
	heap []uint32
	part bool
	// parents interns parent IDs and dirs the directories of SPIFFE IDs
	// (up to their last slash), which many entries share.
	parents refTable
	dirs    refTable
	// selDict interns the selectors, and the stems of selectors and of
	// SPIFFE IDs, that more than one record held when they were added
	// (coldstore_rec.go); selSeen holds 32 bits of the hashes of those
	// added and not yet in selDict (four per entry, at most selSeenMax,
	// in sets of four by hash, one overwritten when its set is full): a
	// string whose hash is there was most likely seen before.
	selDict refTable
	selSeen []uint32
	// hold: slots must not be renumbered (a caller holds slot numbers).
	hold bool
	// scratch is where add encodes a record before placing it.
	scratch []byte
	// plain: no selector index and no spare window (a store that only
	// collects entries by ID: entryStage). drain: records are removed
	// in the order they were added, so chunks are freed as they empty
	// and never compacted, and none is looked up by ID (the ID table is
	// gone).
	plain, drain bool
	// maxChunks, when not 0, is fewer chunk indexes than
	// coldChunksMax (tests of a full store).
	maxChunks int
	// createdBase is the creation time of the first record that took
	// its creation time out of raw (createdSet); records keep theirs as
	// the difference (coldstore_rec.go).
	createdBase int64
	createdSet  bool
}

type coldChunk struct {
	b       []byte
	garbage int
}

// coldSlot is where one cold entry is, its record's chunk and offset
// in one word (coldPos; the record's length is the record's first
// bytes), and its links in the selector index: 12 bytes per entry. A
// free slot's pos is freeSlot.
type coldSlot struct {
	pos        uint32
	prev, next uint32 // in the selector index's list: slot+1, 0 none
}

// A record's position keeps its chunk's index in the high bits and its
// offset in the chunk in the low coldOffBits: records start below
// coldOffMax in their chunk (place), and a store uses fewer than
// coldChunksMax chunk indexes (the largest position is freeSlot), so it
// holds at most about coldChunksMax × coldChunkMax bytes of records
// (4 GiB, some hundred million entries; see full).
const (
	coldOffBits   = 18
	coldOffMax    = 1 << coldOffBits
	coldChunksMax = 1<<(32-coldOffBits) - 1
	// coldChunksSpare is how many chunk indexes full keeps for what
	// takes chunks without adding entries: a compaction fills some
	// before it frees one, and a renumbering starts again from small
	// chunks.
	coldChunksSpare = 16
)

// A chunk of coldChunkMax bytes has all its offsets below coldOffMax.
var _ [coldOffMax - coldChunkMax]struct{}

const freeSlot = ^uint32(0)

func coldPos(chunk, off uint32) uint32 { return chunk<<coldOffBits | off }

func (s *coldSlot) chunk() uint32 { return s.pos >> coldOffBits }

func (s *coldSlot) off() uint32 { return s.pos & (coldOffMax - 1) }

func (s *coldSlot) live() bool { return s.pos != freeSlot }

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
	if ref == 0 || int(ref) > len(t.list) {
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
	*c = coldStore{mem: c.mem, seed: c.seed, tail: -1, plain: c.plain, drain: c.drain, maxChunks: c.maxChunks}
}

// len is how many entries the store holds.
func (c *coldStore) len() int { return c.n }

// recordBytes is how many bytes the store's chunks hold, garbage
// included.
func (c *coldStore) recordBytes() int {
	n := 0
	for i := range c.chunks {
		n += len(c.chunks[i].b)
	}
	return n
}

// chunkLimit is how many chunk indexes the store may use.
func (c *coldStore) chunkLimit() int {
	if c.maxChunks > 0 {
		return c.maxChunks
	}
	return coldChunksMax
}

// full reports whether the store must take no more entries: its chunks
// use nearly every index a position can name (about 4 GiB of records),
// less the few a compaction fills before it frees one. An entry the
// cold store cannot take stays warm; a stage that is full fails its
// sync (entryStage.put).
func (c *coldStore) full() bool {
	return len(c.chunks)-len(c.freeChunks) >= c.chunkLimit()-coldChunksSpare
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

// seen reports whether the store most likely saw b before (a selector,
// a stem), noting that it did: the second time a string is seen it goes
// into the dictionary.
func (c *coldStore) seen(b []byte) bool {
	if len(c.selSeen) < selSeenMax && len(c.selSeen) < 4*(c.n+1) {
		// Grown to a power of two (what it remembered is forgotten: a
		// few strings more are kept in records).
		size := max(64, len(c.selSeen))
		for size < selSeenMax && size < 4*(c.n+1) {
			size *= 2
		}
		offheap.FreeSlice(c.mem, c.selSeen)
		c.selSeen = offheap.MakeSlice[uint32](c.mem, size)
	}
	// Four ways per set, so that strings that recur and share a set do
	// not keep evicting each other.
	h := maphash.Bytes(c.seed, b)
	set, tag := c.selSeen[h&uint64(len(c.selSeen)-4):][:4], uint32(h>>32)|1
	for k, v := range set {
		if v == tag {
			set[k] = 0 // in the dictionary from now on
			return true
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
	return false
}

// selEncode is how a record keeps sel: as a reference to the whole of
// it in the dictionary when the store saw it before, else as a prefix
// and the record's leaf (the rest of the SPIFFE ID, leaf; nil when the
// record keeps none) when sel ends in it and the prefix is empty or the
// store saw it before, else as a stem in the dictionary and a number
// when it ends in one and the store saw its stem before, else inline. A
// reference is interned now.
func (c *coldStore) selEncode(sel, leaf []byte) selEnc {
	if c.selDict.has(sel) || c.seen(sel) {
		return selEnc{kind: selDictRef, ref: c.selDict.internBytes(sel)}
	}
	if len(leaf) > 0 && bytes.HasSuffix(sel, leaf) {
		pre := sel[:len(sel)-len(leaf)]
		if len(pre) == 0 {
			return selEnc{kind: selStemLf}
		}
		if c.selDict.has(pre) || c.seen(pre) {
			return selEnc{kind: selStemLf, ref: c.selDict.internBytes(pre)}
		}
	}
	if stem, num, ok := splitNum(sel); ok && len(stem) > 0 && (c.selDict.has(stem) || c.seen(stem)) {
		return selEnc{kind: selStem, ref: c.selDict.internBytes(stem), num: num}
	}
	return selEnc{kind: selInline}
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

// at is the chunk of slot i's record from where the record starts.
func (c *coldStore) at(i uint32) []byte {
	s := &c.slots[i]
	return c.chunks[s.chunk()].b[s.off():]
}

// id is the entry ID of slot i, a view of the chunk.
func (c *coldStore) id(i uint32) []byte {
	var buf idBuf
	return bytes.Clone(c.idb(i, &buf))
}

// idb is the entry ID of slot i: a view of the chunk, or formatted in
// buf.
func (c *coldStore) idb(i uint32, buf *idBuf) []byte {
	return recID(c.at(i), buf)
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
	b := c.at(i)
	n, l := binary.Uvarint(b)
	b = b[l : l+int(n)]
	if m := b[0] & recIDMode; m != idText {
		copy(bin[:], b[1:17])
		return m, bin, nil
	}
	text = rawID(c.rec(i).raw)
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
	for i := c.idsHome(c.idHash(mode, bin[:], id)); ; i = c.idsNext(i) {
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
	out, rest := takeVarints(raw[start:])
	return c.add(rest, id, m, parent, dir, leaf, sels, out)
}

// idPart is how a record keeps the ID (packID).
type idPart struct {
	mode uint8
	bin  [16]byte
}

// add stores a record and indexes it; raw is without its ID when
// id.mode is not idText, without its SPIFFE ID when dir is not 0, the
// SPIFFE ID's directory, leaf being the rest of it, and without what
// out says was taken out (insert). It takes the references parent and
// dir.
func (c *coldStore) add(raw []byte, id idPart, m coldMeta, parent, dir uint32, leaf []byte, sels [][]byte, out takenOut) uint32 {
	var slot uint32
	if n := len(c.freeSlots); n > 0 {
		slot = c.freeSlots[n-1]
		c.freeSlots = c.freeSlots[:n-1]
	} else {
		slot = uint32(len(c.slots))
		c.slots = offheap.Append(c.mem, c.slots, coldSlot{pos: freeSlot})
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
	// The leaf as a stem and a number when it ends in one and the
	// store saw its stem before (an empty stem needs no dictionary).
	var leafNum bool
	var leafStem uint32
	var num uint64
	leafRest := leaf
	if dir != 0 {
		if stem, n, ok := splitNum(leaf); ok && (len(stem) == 0 || c.selDict.has(stem) || c.seen(stem)) {
			leafNum, num = true, n
			if len(stem) > 0 {
				leafStem = c.selDict.internBytes(stem)
			}
		} else if stem := splitTail(leaf); len(stem) > 0 && (c.selDict.has(stem) || c.seen(stem)) {
			// The stem up to its last character other than a letter
			// or digit (workload- of workload-hjkl) and the tail.
			leafStem = c.selDict.internBytes(stem)
			leafRest = leaf[len(stem):]
		}
	}
	var encBuf [8]selEnc
	encs := encBuf[:0]
	var selLeaf []byte
	if dir != 0 {
		selLeaf = leaf
	}
	for _, s := range sels {
		encs = append(encs, c.selEncode(s, selLeaf))
	}
	if out.created && !c.createdSet {
		c.createdBase, c.createdSet = out.createdAt, true
	}
	// The difference wraps around like the sum that undoes it
	// (fullRaw), so that any two times give back the same.
	out.createdAt -= c.createdBase
	c.scratch = encodeRec(c.scratch[:0], raw, id, m, parent, dir, leafRest, leafNum, leafStem, num, filed, sels, encs, out)
	if cap(c.scratch) > 64<<10 {
		defer func() { c.scratch = nil }()
	}
	chunk, off := c.place(len(c.scratch))
	ch := &c.chunks[chunk]
	ch.b = append(ch.b, c.scratch...)
	c.slots[slot].pos = coldPos(chunk, off)
	c.n++
	c.idsPut(slot)
	if c.plain {
		return slot
	}
	if len(sels) > 0 {
		c.link(slot, sels[filed])
	}
	c.winAdd(slot)
	return slot
}

// place makes room for a record of n bytes after its length at the
// end of the tail chunk and writes the length; the caller appends the n
// bytes. It returns where the record starts.
func (c *coldStore) place(n int) (uint32, uint32) {
	need := uvarintLen(uint64(n)) + n
	// A record starts below coldOffMax: a chunk made larger for one
	// record of more than coldChunkMax bytes takes no other after it.
	if t := c.tail; t < 0 || cap(c.chunks[t].b)-len(c.chunks[t].b) < need || len(c.chunks[t].b) >= coldOffMax {
		size := coldChunkMin
		if c.tail >= 0 {
			size = min(2*cap(c.chunks[c.tail].b), coldChunkMax)
		}
		size = max(size, need)
		k := len(c.freeChunks)
		if k == 0 && len(c.chunks) >= c.chunkLimit() {
			// Callers check full first; this is a bug of the store.
			panic(fmt.Sprintf("agent: cold store: chunk %d of at most %d", len(c.chunks), c.chunkLimit()))
		}
		b := c.mem.Bytes(size)[:0]
		if k > 0 {
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
		var buf [128]byte
		c.unlink(i, r.appendSel(buf[:0], r.filed))
	}
	r.eachSelRef(c.selDict.release)
	if !c.drain { // a drained store has no ID table (entryStage.drain)
		c.idsDel(i)
	}
	if !c.plain {
		c.winDel(i)
	}
	s := &c.slots[i]
	chunk := s.chunk()
	n, l := binary.Uvarint(c.at(i))
	size := uint32(l) + uint32(n)
	*s = coldSlot{pos: freeSlot}
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
			if s := &c.slots[slot]; s.pos == coldPos(i, uint32(off)) {
				chunk, noff := c.place(len(body))
				c.chunks[chunk].b = append(c.chunks[chunk].b, body...)
				s.pos = coldPos(chunk, noff)
			}
		}
		off += l + int(n)
	}
	c.freeChunk(i)
}

// renumber rebuilds the store with its entries in new, dense slots.
func (c *coldStore) renumber() {
	old := *c
	*c = coldStore{mem: offheap.New(), seed: old.seed, tail: -1, plain: old.plain, drain: old.drain, maxChunks: old.maxChunks}
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
		r.eachSel(func(_ int, s []byte) bool { sels = append(sels, bytes.Clone(s)); return true })
		id := idPart{mode: r.idMode}
		copy(id.bin[:], r.idBin)
		var leaf []byte
		if r.dir != 0 {
			leaf = r.appendLeaf(nil)
		}
		c.add(r.raw, id, r.coldMeta, parent, dir, leaf, sels, takenOut{created: r.hasCreated, createdAt: old.createdBase + r.created, rev1: r.rev1})
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

// The table's length need not be a power of two: it grows by half
// (at most 3/4 full, so from 1/2 full after growing), which keeps it
// between 1/2 and 3/4 full as it grows, where doubling would leave it
// between 3/8 and 3/4 (a million IDs: 2^21 slots, 8 MiB, 48 % full;
// grown by half, 1,347,984 slots, 5.1 MiB, 74 % full).

// idsHome is where the probe for hash h starts: h scaled to the
// table's length.
func (c *coldStore) idsHome(h uint64) int {
	hi, _ := bits.Mul64(h, uint64(len(c.ids)))
	return int(hi)
}

// idsNext is the index after i, wrapping around.
func (c *coldStore) idsNext(i int) int {
	if i++; i == len(c.ids) {
		return 0
	}
	return i
}

// idsDist is how far j is after i, wrapping around.
func (c *coldStore) idsDist(i, j int) int {
	if j >= i {
		return j - i
	}
	return j + len(c.ids) - i
}

func (c *coldStore) idsPut(slot uint32) {
	if 4*(c.n+1) > 3*len(c.ids) {
		c.idsResize(max(16, len(c.ids)+len(c.ids)/2))
	}
	c.idsInsert(slot)
}

func (c *coldStore) idsInsert(slot uint32) {
	for i := c.idsHome(c.slotHash(slot)); ; i = c.idsNext(i) {
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
	i := c.idsHome(c.slotHash(slot))
	for c.ids[i] != slot+1 {
		i = c.idsNext(i)
	}
	c.ids[i] = 0
	// Move back the entries of the run after i whose home is not
	// between i and them.
	for j := c.idsNext(i); c.ids[j] != 0; j = c.idsNext(j) {
		home := c.idsHome(c.slotHash(c.ids[j] - 1))
		if c.idsDist(home, j) >= c.idsDist(i, j) {
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
		if r.selIs(r.filed, sel) {
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
			var buf [128]byte
			i := c.selBucketOf(maphash.Bytes(c.seed, r.appendSel(buf[:0], r.filed)))
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
		if !r.selIs(r.filed, unsafe.Slice(unsafe.StringData(sel), len(sel))) {
			continue // another selector in the bucket
		}
		all := r.nsels > 0
		var buf [64]byte
		b := r.sels
		for range r.nsels {
			var s []byte
			s, b = r.nextSelBytes(b, buf[:0])
			if _, in := set[string(s)]; !in {
				all = false
				break
			}
		}
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
	var buf [64]byte
	b := r.sels
	for j := range r.nsels {
		var s []byte
		if s, b = r.nextSelBytes(b, buf[:0]); string(s) != pe.sels[j] {
			return false
		}
	}
	return true
}

// packed returns slot i's entry as a packedEntry of its own (no memory
// shared with the store), its parent and selectors not interned.
func (c *coldStore) packed(i uint32) packedEntry {
	r := c.rec(i)
	p := packedEntry{raw: string(c.fullRaw(&r)), parent: c.parents.get(r.parent)}
	p.sels = make([]string, 0, r.nsels)
	var buf [64]byte
	b := r.sels
	for range r.nsels {
		var s []byte
		s, b = r.nextSelBytes(b, buf[:0])
		p.sels = append(p.sels, string(s))
	}
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

// The spare window: the entries in order of their IDs, the order in
// which entries no workload asked for are minted while the SVID cache
// has room, needs only the entry of least ID (top), which the minting
// loop takes and warms one after the other. Instead of a heap of every
// entry (4 bytes per entry, and 4 more for its place in it), the store
// keeps the spareWindow entries of least IDs in order (c.heap) and the
// invariant that every entry outside has a greater ID than all inside.
// When the minting loop empties it, the next top scans the store once
// for the spareWindow least IDs again: one scan per spareWindow entries
// taken.

// spareWindow is the most entries the spare window holds.
const spareWindow = 1024

func (c *coldStore) less(a, b uint32) bool {
	var x, y idBuf
	return bytes.Compare(c.idb(a, &x), c.idb(b, &y)) < 0
}

// winPos is where slot's ID is, or would go, in the window.
func (c *coldStore) winPos(slot uint32) int {
	var x, y idBuf
	id := c.idb(slot, &x)
	lo, hi := 0, len(c.heap)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if bytes.Compare(c.idb(c.heap[m], &y), id) < 0 {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}

// winAdd files a new slot in the window if its ID is less than the
// window's greatest, or the window holds every entry.
func (c *coldStore) winAdd(slot uint32) {
	n := len(c.heap)
	if c.part && (n == 0 || !c.less(slot, c.heap[n-1])) {
		return
	}
	i := c.winPos(slot)
	c.heap = slices.Insert(c.heap, i, slot)
	if len(c.heap) > spareWindow {
		c.heap = c.heap[:spareWindow]
		c.part = true
	}
}

// winDel removes slot from the window if it is there.
func (c *coldStore) winDel(slot uint32) {
	n := len(c.heap)
	if n == 0 || c.less(c.heap[n-1], slot) {
		return
	}
	if i := c.winPos(slot); i < n && c.heap[i] == slot {
		c.heap = slices.Delete(c.heap, i, i+1)
	}
}

// winFill fills the empty window with the spareWindow least IDs of the
// store, in one scan (a bounded heap of the greatest first, whose
// greatest ID is kept formatted: most entries are compared with it
// only).
func (c *coldStore) winFill() {
	h := c.heap[:0]
	more := func(a, b uint32) bool { return c.less(b, a) }
	var maxBuf, buf idBuf
	var maxID []byte
	c.each(func(i uint32) {
		if len(h) == spareWindow {
			if bytes.Compare(c.idb(i, &buf), maxID) >= 0 {
				return
			}
			h[0] = i
			siftDown(h, 0, more)
			maxID = append(maxBuf[:0], c.idb(h[0], &buf)...)
			return
		}
		h = append(h, i)
		for j := len(h) - 1; j > 0; {
			p := (j - 1) / 2
			if !more(h[j], h[p]) {
				break
			}
			h[j], h[p] = h[p], h[j]
			j = p
		}
		if len(h) == spareWindow {
			maxID = append(maxBuf[:0], c.idb(h[0], &buf)...)
		}
	})
	slices.SortFunc(h, func(a, b uint32) int {
		switch {
		case a == b:
			return 0
		case c.less(a, b):
			return -1
		}
		return 1
	})
	c.heap, c.part = h, c.n > len(h)
}

// siftDown restores the heap order of h (first is greatest by before)
// below i.
func siftDown(h []uint32, i int, before func(a, b uint32) bool) {
	for {
		l := 2*i + 1
		if l >= len(h) {
			return
		}
		m := l
		if r := l + 1; r < len(h) && before(h[r], h[l]) {
			m = r
		}
		if !before(h[m], h[i]) {
			return
		}
		h[i], h[m] = h[m], h[i]
		i = m
	}
}

// top is the slot of the entry with the least ID.
func (c *coldStore) top() (uint32, bool) {
	if c.n == 0 || c.plain {
		return 0, false
	}
	if len(c.heap) == 0 {
		c.winFill()
	}
	return c.heap[0], true
}
