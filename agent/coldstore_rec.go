package agent

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"unsafe"

	"google.golang.org/protobuf/encoding/protowire"
)

// This file holds the layout of a cold record (coldstore.go), its
// encoder and its decoder. A record is, after its length (a uvarint
// written by place):
//
//	flags        1 byte: the way the ID is kept (bits 0-1, idText...),
//	             recTimes (bit 2), recDir (bit 3); other bits are 0
//	id           16 bytes, unless the ID is kept as text (in raw)
//	gen          uvarint
//	lastReq      varint, lastAttempt varint: only with recTimes
//	parent       uvarint, a reference into coldStore.parents (0: none)
//	dir, leaf    only with recDir (the SPIFFE ID was taken out of raw):
//	             dir, a uvarint reference into coldStore.dirs (the
//	             SPIFFE ID up to its last slash); then the rest of it,
//	             the leaf, as a uvarint v, by v&3: 0, the v/4 bytes of
//	             the leaf follow; 1, the leaf is a stem (dictionary entry
//	             v/4, none when 0) followed by a decimal number, a
//	             uvarint that follows; 2, the leaf is a stem (dictionary
//	             entry v/4, not 0) followed by a tail of letters and
//	             digits, its length (a uvarint) and bytes that follow
//	nsels        uvarint; then filed, a uvarint, when nsels > 1
//	sels         nsels selectors, each a uvarint v, by v&3 (selKind):
//	             0: v/4 bytes follow; 1: dictionary entry v/4;
//	             2: a stem (dictionary entry v/4) and a decimal number,
//	             a uvarint that follows; 3: a prefix (dictionary entry
//	             v/4, none when 0) and the leaf, the whole rest of the
//	             SPIFFE ID (only with recDir)
//	created      only with recCreated (the creation time was taken out of
//	             raw): a varint (zigzag), the creation time less the
//	             store's coldStore.createdBase, wrapping around
//	raw          the rest: the entry's encoding without what was taken
//	             out
//
// Names and selectors often end in a number (workload-1234, sa:web-17,
// uid:1000): the part before it, the stem, is shared by many entries and
// kept once in the dictionary (coldStore.selDict), and the number takes
// one to three bytes. A stem is used from the second time the store sees
// it (coldStore.seen), so that names of one entry each add nothing to the
// dictionary. A number is kept only when it prints back the same: at
// most 19 digits, no leading zero (leading zeros stay in the stem).
//
// A selector that ends in the leaf (k8s:sa:NAME with a SPIFFE ID ending
// in /sa/NAME, as Kubernetes agents name service accounts) is kept as
// its prefix (k8s:sa:, in the dictionary) and a reference to the leaf:
// one or two bytes whether NAME ends in a number or not. A leaf that
// does not end in a number (workload-hjkl) is kept as its stem up to its
// last character other than a letter or a digit (workload-, in the
// dictionary from the second time the store sees it) and the tail
// (hjkl).

// Bits of a record's flags byte.
const (
	recIDMode = 0x03 // idText, idHex, idUUID
	recTimes  = 0x04 // lastReq and lastAttempt follow gen
	recDir    = 0x08 // the SPIFFE ID is taken out of raw
	// recCreated: the creation time is taken out of raw; recRev1: so is
	// a revision of 1 (takeVarints). Each goes back before the first
	// field numbered above its own.
	recCreated = 0x10
	recRev1    = 0x20
	recKnown   = recIDMode | recTimes | recDir | recCreated | recRev1
)

// Ways a record keeps its leaf (the low two bits of its uvarint).
const (
	leafText     = 0
	leafStemNum  = 1
	leafStemText = 2
)

// Kinds of a selector in a record (the low two bits of its uvarint).
const (
	selInline  = 0
	selDictRef = 1
	selStem    = 2
	selStemLf  = 3
)

// errColdRec is the error of a record that does not decode.
var errColdRec = errors.New("agent: corrupt cold record")

// coldRec is a decoded record; its byte slices are views of the chunk,
// valid until the store changes.
type coldRec struct {
	coldMeta
	parent uint32
	filed  int
	// sels are the nsels encoded selectors (see the layout above).
	sels  []byte
	nsels int
	dict  *refTable
	// idMode says whether the ID was taken out of raw and kept as 16
	// bytes (idBin): an ID of 32 hex digits (the servers' own) or a UUID,
	// lower case. dir is the reference of the SPIFFE ID's directory when
	// the SPIFFE ID was taken out of raw (0: it was not); the rest of it
	// is leaf (text) or, with leafNum set, the stem leafStem (a
	// dictionary reference, 0: none) and the number num, or without
	// leafNum and with leafStem not 0, the stem leafStem and the tail
	// leaf. They go back in place in fullRaw.
	idMode   uint8
	idBin    []byte
	dir      uint32
	leaf     []byte
	leafNum  bool
	leafStem uint32
	num      uint64
	// hasCreated: the creation time was taken out of raw; created is
	// it less the store's createdBase. rev1: so was a revision of 1.
	hasCreated bool
	created    int64
	rev1       bool
	raw        []byte
}

// recBody returns the record at the start of b without its length.
func recBody(b []byte) ([]byte, error) {
	n, l := binary.Uvarint(b)
	if l <= 0 || n > uint64(len(b)-l) {
		return nil, errColdRec
	}
	return b[l : l+int(n)], nil
}

// uvar reads a uvarint at b[*p:], advancing *p.
func uvar(b []byte, p *int) (uint64, error) {
	v, l := binary.Uvarint(b[*p:])
	if l <= 0 {
		return 0, errColdRec
	}
	*p += l
	return v, nil
}

// ref32 reads a uvarint that must fit a table reference.
func ref32(b []byte, p *int) (uint32, error) {
	v, err := uvar(b, p)
	if err != nil || v > 1<<32-1 {
		return 0, errColdRec
	}
	return uint32(v), nil
}

// parseRec decodes a record body (recBody), checking every length
// against b: corrupt bytes are an error, never a read out of b. The
// references it holds are not checked against the store's tables
// (refTable.get answers "" for one it does not hold).
func parseRec(b []byte) (coldRec, error) {
	var r coldRec
	if len(b) < 1 || b[0]&^recKnown != 0 || b[0]&recIDMode > idUUID {
		return r, errColdRec
	}
	flags := b[0]
	p := 1
	r.idMode = flags & recIDMode
	if r.idMode != idText {
		if len(b)-p < 16 {
			return r, errColdRec
		}
		r.idBin = b[p : p+16]
		p += 16
	}
	var err error
	if r.gen, err = uvar(b, &p); err != nil {
		return r, err
	}
	if flags&recTimes != 0 {
		v, l := binary.Varint(b[p:])
		if l <= 0 {
			return r, errColdRec
		}
		r.lastReq, p = v, p+l
		if v, l = binary.Varint(b[p:]); l <= 0 {
			return r, errColdRec
		}
		r.lastAttempt, p = v, p+l
	}
	if r.parent, err = ref32(b, &p); err != nil {
		return r, err
	}
	if flags&recDir != 0 {
		if r.dir, err = ref32(b, &p); err != nil || r.dir == 0 {
			return r, errColdRec
		}
		v, err := uvar(b, &p)
		if err != nil {
			return r, err
		}
		switch v & 3 {
		case leafText:
			if v>>2 > uint64(len(b)-p) {
				return r, errColdRec
			}
			r.leaf = b[p : p+int(v>>2)]
			p += int(v >> 2)
		case leafStemNum:
			if v>>2 > 1<<32-1 {
				return r, errColdRec
			}
			r.leafNum, r.leafStem = true, uint32(v>>2)
			if r.num, err = uvar(b, &p); err != nil {
				return r, err
			}
		case leafStemText:
			if v>>2 > 1<<32-1 || v>>2 == 0 {
				return r, errColdRec
			}
			r.leafStem = uint32(v >> 2)
			n, err := uvar(b, &p)
			if err != nil || n > uint64(len(b)-p) {
				return r, errColdRec
			}
			r.leaf = b[p : p+int(n)]
			p += int(n)
		default:
			return r, errColdRec
		}
	}
	nsels, err := uvar(b, &p)
	if err != nil || nsels > uint64(len(b)-p) {
		// Each selector takes a byte at least.
		return r, errColdRec
	}
	r.nsels = int(nsels)
	if nsels > 1 {
		filed, err := uvar(b, &p)
		if err != nil || filed >= nsels {
			return r, errColdRec
		}
		r.filed = int(filed)
	}
	start := p
	for range r.nsels {
		v, err := uvar(b, &p)
		if err != nil {
			return r, err
		}
		switch v & 3 {
		case selInline:
			if v>>2 > uint64(len(b)-p) {
				return r, errColdRec
			}
			p += int(v >> 2)
		case selStem:
			if _, err := uvar(b, &p); err != nil {
				return r, err
			}
		case selStemLf:
			if r.dir == 0 {
				return r, errColdRec
			}
		}
		if v&3 != selInline && v>>2 > 1<<32-1 {
			return r, errColdRec
		}
	}
	r.sels = b[start:p]
	if flags&recCreated != 0 {
		v, l := binary.Varint(b[p:])
		if l <= 0 {
			return r, errColdRec
		}
		r.hasCreated, r.created, p = true, v, p+l
	}
	r.rev1 = flags&recRev1 != 0
	r.raw = b[p:]
	return r, nil
}

// rec decodes the record of slot i. Records are written only by add, so
// one that does not decode is a bug of the store, never input.
func (c *coldStore) rec(i uint32) coldRec {
	b, err := recBody(c.at(i))
	var r coldRec
	if err == nil {
		r, err = parseRec(b)
	}
	if err != nil {
		panic(fmt.Sprintf("agent: cold record of slot %d: %v", i, err))
	}
	r.dict = &c.selDict
	return r
}

// splitNum splits s into a stem and a decimal number that prints back as
// the rest: at most 19 digits, the first not 0 unless it is the only one
// (leading zeros stay in the stem). ok is false when s does not end in a
// digit.
func splitNum(s []byte) (stem []byte, num uint64, ok bool) {
	k := len(s)
	for k > 0 && len(s)-k < 19 && s[k-1] >= '0' && s[k-1] <= '9' {
		k--
	}
	if k == len(s) {
		return s, 0, false
	}
	for k < len(s)-1 && s[k] == '0' {
		k++
	}
	for _, d := range s[k:] {
		num = num*10 + uint64(d-'0')
	}
	return s[:k], num, true
}

// appendLeaf appends the rest of the SPIFFE ID after its directory.
func (r *coldRec) appendLeaf(dst []byte) []byte {
	if !r.leafNum {
		if r.leafStem != 0 {
			dst = append(dst, r.dict.get(r.leafStem)...)
		}
		return append(dst, r.leaf...)
	}
	dst = append(dst, r.dict.get(r.leafStem)...)
	return strconv.AppendUint(dst, r.num, 10)
}

// nextSel decodes the selector at the start of b: its kind, its
// dictionary reference (none for selInline), its inline bytes or its
// number, and what follows it. b was checked by parseRec.
func (r *coldRec) nextSel(b []byte) (kind uint8, ref uint32, inline []byte, num uint64, rest []byte) {
	v, l := binary.Uvarint(b)
	b = b[l:]
	kind = uint8(v & 3)
	switch kind {
	case selInline:
		return kind, 0, b[:v>>2], 0, b[v>>2:]
	case selStem:
		n, l := binary.Uvarint(b)
		return kind, uint32(v >> 2), nil, n, b[l:]
	}
	return kind, uint32(v >> 2), nil, 0, b
}

// appendSel returns selector i of r: a view of the chunk or of the
// dictionary's string when it is kept whole, else appended to dst.
func (r *coldRec) appendSel(dst []byte, i int) []byte {
	b := r.sels
	for j := 0; ; j++ {
		kind, ref, inline, num, rest := r.nextSel(b)
		if j < i {
			b = rest
			continue
		}
		return r.selBytes(dst, kind, ref, inline, num)
	}
}

// selBytes is the selector nextSel decoded (see appendSel).
func (r *coldRec) selBytes(dst []byte, kind uint8, ref uint32, inline []byte, num uint64) []byte {
	switch kind {
	case selInline:
		return inline
	case selDictRef:
		d := r.dict.get(ref)
		return unsafe.Slice(unsafe.StringData(d), len(d))
	case selStemLf:
		return r.appendLeaf(append(dst[:0], r.dict.get(ref)...))
	}
	dst = append(dst[:0], r.dict.get(ref)...)
	return strconv.AppendUint(dst, num, 10)
}

// selIs reports whether selector i of r is sel, without building it.
func (r *coldRec) selIs(i int, sel []byte) bool {
	var buf [24]byte
	b := r.sels
	for j := 0; ; j++ {
		kind, ref, inline, num, rest := r.nextSel(b)
		if j < i {
			b = rest
			continue
		}
		switch kind {
		case selInline:
			return bytes.Equal(inline, sel)
		case selDictRef:
			return r.dict.get(ref) == string(sel)
		}
		stem := r.dict.get(ref)
		if len(sel) < len(stem) || string(sel[:len(stem)]) != stem {
			return false
		}
		if kind == selStemLf {
			return r.leafIs(sel[len(stem):])
		}
		return len(sel) > len(stem) && bytes.Equal(sel[len(stem):], strconv.AppendUint(buf[:0], num, 10))
	}
}

// leafIs reports whether s is the rest of the SPIFFE ID after its
// directory (appendLeaf), without building it.
func (r *coldRec) leafIs(s []byte) bool {
	stem := r.dict.get(r.leafStem)
	if !r.leafNum {
		return len(s) == len(stem)+len(r.leaf) && string(s[:len(stem)]) == stem && bytes.Equal(s[len(stem):], r.leaf)
	}
	var buf [24]byte
	return len(s) > len(stem) && string(s[:len(stem)]) == stem &&
		bytes.Equal(s[len(stem):], strconv.AppendUint(buf[:0], r.num, 10))
}

// eachSel calls f with each selector of r until f returns false; sel is
// a view (of the chunk, of the dictionary's string, or of a buffer the
// next selector reuses) valid during the call only, which f must not
// change.
func (r *coldRec) eachSel(f func(i int, sel []byte) bool) {
	var buf []byte
	b := r.sels
	for i := range r.nsels {
		kind, ref, inline, num, rest := r.nextSel(b)
		b = rest
		sel := r.selBytes(buf, kind, ref, inline, num)
		if kind == selStem || kind == selStemLf {
			buf = sel[:0] // built there: reused by the next
		}
		if !f(i, sel) {
			return
		}
	}
}

// nextSelBytes decodes the selector at the start of b (nextSel) and
// returns it as selBytes does, built in buf when it must be, and what
// follows it.
func (r *coldRec) nextSelBytes(b, buf []byte) (sel, rest []byte) {
	kind, ref, inline, num, rest := r.nextSel(b)
	return r.selBytes(buf, kind, ref, inline, num), rest
}

// eachSelRef calls f with each dictionary reference r holds: its
// selectors kept in the dictionary, their stems and its leaf's stem.
func (r *coldRec) eachSelRef(f func(ref uint32)) {
	if r.leafStem != 0 {
		f(r.leafStem)
	}
	b := r.sels
	for range r.nsels {
		kind, ref, _, _, rest := r.nextSel(b)
		b = rest
		if kind != selInline {
			f(ref)
		}
	}
}

// sel is r's i-th selector (a view, or a copy of its own).
func (r *coldRec) sel(i int) []byte { return r.appendSel(nil, i) }

// fullRaw is the entry's encoding with its ID, SPIFFE ID, creation
// time and revision back in place.
func (c *coldStore) fullRaw(r *coldRec) []byte {
	if r.dir == 0 && r.idMode == idText && !r.hasCreated && !r.rev1 {
		return r.raw
	}
	out := c.fullRawNoVarints(r)
	// In the reverse order of insert's.
	if r.rev1 {
		out = putVarint(out, fieldRevision, 1)
	}
	if r.hasCreated {
		out = putVarint(out, fieldCreatedAt, uint64(c.createdBase+r.created))
	}
	return out
}

// fullRawNoVarints is fullRaw without the creation time and revision
// when they were taken out.
func (c *coldStore) fullRawNoVarints(r *coldRec) []byte {
	// Room for the two varint fields putVarint inserts.
	const varints = 2 * (1 + binary.MaxVarintLen64)
	if r.dir == 0 && r.idMode == idText {
		// A copy: putVarint inserts into it.
		return append(make([]byte, 0, len(r.raw)+varints), r.raw...)
	}
	dir := c.dirs.get(r.dir)
	out := make([]byte, 0, len(r.raw)+varints+2*(2+binary.MaxVarintLen64)+36+len(dir)+len(c.selDict.get(r.leafStem))+len(r.leaf)+40)
	rest := r.raw
	if r.idMode != idText {
		var buf idBuf
		out = protowire.AppendTag(out, fieldID, protowire.BytesType)
		out = protowire.AppendBytes(out, unpackID(r.idMode, r.idBin, &buf))
	} else if _, _, l := protowire.ConsumeTag(r.raw); l > 0 {
		if _, m := protowire.ConsumeBytes(r.raw[l:]); m > 0 {
			out = append(out, r.raw[:l+m]...)
			rest = r.raw[l+m:]
		}
	}
	if r.dir != 0 {
		var buf [64]byte
		leaf := r.appendLeaf(buf[:0])
		out = protowire.AppendTag(out, fieldSPIFFEID, protowire.BytesType)
		out = protowire.AppendVarint(out, uint64(len(dir)+len(leaf)))
		out = append(out, dir...)
		out = append(out, leaf...)
	}
	return append(out, rest...)
}

// takenOut is what insert took out of an entry's encoding besides its
// ID and SPIFFE ID: the creation time (created, its value createdAt)
// and a revision of 1 (rev1).
type takenOut struct {
	created   bool
	createdAt int64
	rev1      bool
}

// takeVarints takes the creation time, then a revision of 1, out of
// raw, an entry's encoding, each when putVarint gives raw back as it
// was (findVarint). raw is changed in place.
func takeVarints(raw []byte) (takenOut, []byte) {
	var t takenOut
	if p, q, v, ok := findVarint(raw, fieldCreatedAt); ok {
		t.created, t.createdAt = true, int64(v)
		raw = append(raw[:p], raw[q:]...)
	}
	if p, q, v, ok := findVarint(raw, fieldRevision); ok && v == 1 {
		t.rev1 = true
		raw = append(raw[:p], raw[q:]...)
	}
	return t, raw
}

// findVarint finds field num, a varint, in raw, an entry's encoding, at
// raw[p:q] with its value v, when putVarint(raw[:p]+raw[q:], num, v)
// gives raw back: a single byte tag, the value in its shortest form,
// only fields numbered below num before it and one numbered above num
// (or nothing) right after it. Deterministic encodings (the servers')
// always qualify.
func findVarint(raw []byte, num protowire.Number) (p, q int, v uint64, ok bool) {
	for p < len(raw) {
		n, typ, l := protowire.ConsumeTag(raw[p:])
		if l < 0 || n > num {
			return 0, 0, 0, false
		}
		m := protowire.ConsumeFieldValue(n, typ, raw[p+l:])
		if m < 0 {
			return 0, 0, 0, false
		}
		if n < num {
			p += l + m
			continue
		}
		v, k := protowire.ConsumeVarint(raw[p+l:])
		if typ != protowire.VarintType || l != 1 || k != protowire.SizeVarint(v) {
			return 0, 0, 0, false
		}
		q = p + l + m
		if q < len(raw) {
			if next, _, nl := protowire.ConsumeTag(raw[q:]); nl < 0 || next <= num {
				return 0, 0, 0, false
			}
		}
		return p, q, v, true
	}
	return 0, 0, 0, false
}

// putVarint puts field num, the varint v, into b, an entry's encoding,
// before its first field numbered above num (at the end when there is
// none, or when b does not parse, which findVarint rules out).
func putVarint(b []byte, num protowire.Number, v uint64) []byte {
	p := 0
	for p < len(b) {
		n, typ, l := protowire.ConsumeTag(b[p:])
		if l < 0 || n > num {
			break
		}
		m := protowire.ConsumeFieldValue(n, typ, b[p+l:])
		if m < 0 {
			p = len(b)
			break
		}
		p += l + m
	}
	var f [1 + binary.MaxVarintLen64]byte
	field := protowire.AppendVarint(protowire.AppendTag(f[:0], num, protowire.VarintType), v)
	k := len(field)
	b = append(b, field...)
	copy(b[p+k:], b[p:len(b)-k])
	copy(b[p:], field)
	return b
}

// recID is the entry ID of the record at the start of b: a view of b, or
// formatted in buf.
func recID(b []byte, buf *idBuf) []byte {
	body, err := recBody(b)
	if err != nil {
		panic(fmt.Sprintf("agent: cold record: %v", err))
	}
	if len(body) > 17 && body[0]&recIDMode != idText {
		return unpackID(body[0]&recIDMode, body[1:17], buf)
	}
	r, err := parseRec(body)
	if err != nil {
		panic(fmt.Sprintf("agent: cold record: %v", err))
	}
	return rawID(r.raw)
}

// selEnc is how add keeps one selector.
type selEnc struct {
	kind uint8
	ref  uint32
	num  uint64
}

// encodeRec appends the record body of an entry to dst. With leafNum
// the leaf is the stem leafStem and num; else with leafStem not 0 it is
// the stem leafStem followed by leaf; else leaf.
func encodeRec(dst []byte, raw []byte, id idPart, m coldMeta, parent, dir uint32, leaf []byte, leafNum bool, leafStem uint32, num uint64, filed int, sels [][]byte, encs []selEnc, out takenOut) []byte {
	flags := id.mode
	if out.created {
		flags |= recCreated
	}
	if out.rev1 {
		flags |= recRev1
	}
	if m.lastReq != 0 || m.lastAttempt != 0 {
		flags |= recTimes
	}
	if dir != 0 {
		flags |= recDir
	}
	dst = append(dst, flags)
	if id.mode != idText {
		dst = append(dst, id.bin[:]...)
	}
	dst = binary.AppendUvarint(dst, m.gen)
	if flags&recTimes != 0 {
		dst = binary.AppendVarint(dst, m.lastReq)
		dst = binary.AppendVarint(dst, m.lastAttempt)
	}
	dst = binary.AppendUvarint(dst, uint64(parent))
	if dir != 0 {
		dst = binary.AppendUvarint(dst, uint64(dir))
		switch {
		case leafNum:
			dst = binary.AppendUvarint(dst, uint64(leafStem)<<2|leafStemNum)
			dst = binary.AppendUvarint(dst, num)
		case leafStem != 0:
			// leaf is the tail after the stem.
			dst = binary.AppendUvarint(dst, uint64(leafStem)<<2|leafStemText)
			dst = binary.AppendUvarint(dst, uint64(len(leaf)))
			dst = append(dst, leaf...)
		default:
			dst = binary.AppendUvarint(dst, uint64(len(leaf))<<2|leafText)
			dst = append(dst, leaf...)
		}
	}
	dst = binary.AppendUvarint(dst, uint64(len(sels)))
	if len(sels) > 1 {
		dst = binary.AppendUvarint(dst, uint64(filed))
	}
	for i, s := range sels {
		e := encs[i]
		if e.kind == selInline {
			dst = binary.AppendUvarint(dst, uint64(len(s))<<2)
			dst = append(dst, s...)
			continue
		}
		dst = binary.AppendUvarint(dst, uint64(e.ref)<<2|uint64(e.kind))
		if e.kind == selStem {
			dst = binary.AppendUvarint(dst, e.num)
		}
	}
	if out.created {
		// The difference from the store's createdBase (add).
		dst = binary.AppendVarint(dst, out.createdAt)
	}
	return append(dst, raw...)
}

// splitTail is the stem of a leaf that does not end in a number: s up to
// and with its last byte other than an ASCII letter or digit, when a
// tail follows it (nil when there is none, or no such byte).
func splitTail(s []byte) []byte {
	for k := len(s) - 1; k >= 0; k-- {
		c := s[k]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' {
			continue
		}
		if k == len(s)-1 {
			return nil
		}
		return s[:k+1]
	}
	return nil
}
