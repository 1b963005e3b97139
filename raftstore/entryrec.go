package raftstore

import (
	"unsafe"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/registration"
)

// entryRec is one stored registration entry: its deterministic protobuf
// encoding (modify_index included), as a string. It is one allocation
// per entry, without pointers, so the collector never scans it, and it
// is what a sync stream and a snapshot send (Wire, eachEntry). The keys
// of the entry table (id, spiffe_id, parent_id) are read from it in
// place; readers that need the whole entry decode it (entry), each into
// a copy of their own.
//
// A record is immutable; the zero value "" is no entry. Records are
// written only by encodeEntry, from an entry the store validated, so a
// record that does not parse is a bug in this package.
type entryRec string

// Field numbers of sigilv1.Entry read from records.
const (
	entryFieldID            protowire.Number = 1
	entryFieldSPIFFEID      protowire.Number = 2
	entryFieldParentID      protowire.Number = 3
	entryFieldSelectors     protowire.Number = 4
	entryFieldX509TTL       protowire.Number = 5
	entryFieldJWTTTL        protowire.Number = 6
	entryFieldDNSNames      protowire.Number = 7
	entryFieldModifyIndex   protowire.Number = 13
	entryFieldFederatesWith protowire.Number = 14

	selectorFieldType  protowire.Number = 1
	selectorFieldValue protowire.Number = 2
)

var recMarshal = proto.MarshalOptions{Deterministic: true}

// encodeEntry returns the record of e. It fails only for an entry that
// proto cannot encode (a string that is not UTF-8), which validation and
// decoding both refuse before.
func encodeEntry(e *sigilv1.Entry) (entryRec, error) {
	b, err := recMarshal.Marshal(e)
	if err != nil {
		return "", errorf("encoding entry %q: %v", e.GetId(), err)
	}
	if len(b) == 0 {
		// The empty entry: stored as a record with an empty id, so that
		// "" keeps meaning no entry.
		b = protowire.AppendTag(b, entryFieldID, protowire.BytesType)
		b = protowire.AppendVarint(b, 0)
	}
	return entryRec(unsafe.String(unsafe.SliceData(b), len(b))), nil
}

// bytes is r's encoding, which the caller must not modify.
func (r entryRec) bytes() []byte {
	return unsafe.Slice(unsafe.StringData(string(r)), len(r))
}

// scan calls fn with each field of b in order until fn returns false: a
// length-delimited field's contents as v, a varint's value as u. It
// panics on bytes that do not parse (see entryRec).
func scanFields(b []byte, fn func(num protowire.Number, typ protowire.Type, v []byte, u uint64) bool) {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			panic(errorf("entry record: bad tag: %v", protowire.ParseError(n)))
		}
		b = b[n:]
		var (
			v []byte
			u uint64
		)
		switch typ {
		case protowire.BytesType:
			v, n = protowire.ConsumeBytes(b)
		case protowire.VarintType:
			u, n = protowire.ConsumeVarint(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			panic(errorf("entry record: bad field %d: %v", num, protowire.ParseError(n)))
		}
		b = b[n:]
		if !fn(num, typ, v, u) {
			return
		}
	}
}

// key returns the contents of field num, one of the first three fields
// (id, spiffe_id, parent_id): the record's fields are in field number
// order, so the scan stops at the first field past num. It is what the
// trees compare, so it reads one-byte tags and lengths of up to two
// bytes in place and leaves anything else to keyAny.
func (r entryRec) key(num protowire.Number) string {
	s := string(r)
	for i := 0; i < len(s); {
		tag := s[i]
		if tag >= 0x80 || tag&7 != byte(protowire.BytesType) || i+1 >= len(s) {
			return r.keyAny(num)
		}
		n := protowire.Number(tag >> 3)
		if n > num {
			return ""
		}
		l, j := int(s[i+1]), i+2
		if l >= 0x80 {
			if j >= len(s) || s[j] >= 0x80 {
				return r.keyAny(num)
			}
			l, j = l&0x7f|int(s[j])<<7, j+1
		}
		if l > len(s)-j {
			return r.keyAny(num)
		}
		if n == num {
			return s[j : j+l]
		}
		i = j + l
	}
	return ""
}

// keyAny is key for any encoding.
func (r entryRec) keyAny(num protowire.Number) string {
	var s []byte
	scanFields(r.bytes(), func(n protowire.Number, typ protowire.Type, v []byte, _ uint64) bool {
		if n == num && typ == protowire.BytesType {
			s = v
		}
		return n <= num
	})
	return unsafe.String(unsafe.SliceData(s), len(s))
}

func (r entryRec) id() string       { return r.key(entryFieldID) }
func (r entryRec) spiffeID() string { return r.key(entryFieldSPIFFEID) }
func (r entryRec) parentID() string { return r.key(entryFieldParentID) }

// modifyIndex is the entry's modify_index.
func (r entryRec) modifyIndex() uint64 {
	var u uint64
	scanFields(r.bytes(), func(n protowire.Number, typ protowire.Type, _ []byte, v uint64) bool {
		if n == entryFieldModifyIndex && typ == protowire.VarintType {
			u = v
		}
		return true
	})
	return u
}

// eachSelector calls fn with the type and value of each of r's
// selectors, in order, until fn returns false.
func (r entryRec) eachSelector(fn func(typ, value string) bool) {
	scanFields(r.bytes(), func(n protowire.Number, wt protowire.Type, v []byte, _ uint64) bool {
		if n != entryFieldSelectors || wt != protowire.BytesType {
			return true
		}
		var t, val []byte
		scanFields(v, func(n protowire.Number, wt protowire.Type, v []byte, _ uint64) bool {
			if wt == protowire.BytesType {
				switch n {
				case selectorFieldType:
					t = v
				case selectorFieldValue:
					val = v
				}
			}
			return true
		})
		return fn(unsafe.String(unsafe.SliceData(t), len(t)), unsafe.String(unsafe.SliceData(val), len(val)))
	})
}

// selectorsIn reports whether r has selectors and all of them are in
// set (registration.SelectorSet.Contains of its selectors).
func (r entryRec) selectorsIn(set registration.SelectorSet) bool {
	n, all := 0, true
	r.eachSelector(func(typ, value string) bool {
		n++
		if _, ok := set[typ+":"+value]; !ok {
			all = false
		}
		return all
	})
	return all && n > 0
}

// federatesWith returns copies of the entry's federates_with (nil for
// none, as for most entries).
func (r entryRec) federatesWith() []string {
	var out []string
	scanFields(r.bytes(), func(n protowire.Number, wt protowire.Type, v []byte, _ uint64) bool {
		if n == entryFieldFederatesWith && wt == protowire.BytesType {
			out = append(out, string(v))
		}
		return true
	})
	return out
}

// entry decodes r into a new entry, owned by the caller.
func (r entryRec) entry() *sigilv1.Entry {
	e := new(sigilv1.Entry)
	if err := proto.Unmarshal(r.bytes(), e); err != nil {
		panic(errorf("entry record: %v", err))
	}
	return e
}
