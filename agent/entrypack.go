package agent

import (
	"fmt"
	"strings"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/internal/offheap"
)

// packedEntry is a registration entry as the agent holds it: with a
// million entries parented to an agent, a decoded *sigilv1.Entry per
// entry (a dozen allocations, each selector a message of its own) would
// outweigh everything else. It keeps the entry's protobuf encoding
// without the parent ID and the selectors (raw), the parent ID interned
// (every entry of an agent shares a few), and, as substrings of raw (no
// copy), what minting and matching read all the time: the ID and the
// SPIFFE ID. The selectors are held by the entry's state, formatted and
// interned (entryState.sels). Anything else is decoded from raw when
// asked for (hint, DNS names, federates_with: when a snapshot or a JWT is
// built, or the admin API explains an entry).
//
// Its getters mirror those of *sigilv1.Entry.
type packedEntry struct {
	raw       string
	id        string
	spiffeID  string
	parent    string
	createdAt int64
	// fed: the entry federates with at least one trust domain.
	fed bool
	// sels are the entry's selectors, formatted ("type:value") and
	// interned, in the entry's order (shared with entryState.sels).
	sels []string
}

// Field numbers of sigilv1.Entry read from raw.
const (
	fieldID            = 1
	fieldSPIFFEID      = 2
	fieldParentID      = 3
	fieldSelectors     = 4
	fieldX509SVIDTTL   = 5
	fieldDNSNames      = 7
	fieldHint          = 10
	fieldCreatedAt     = 11
	fieldRevision      = 12
	fieldFederatesWith = 14
)

// packEntry packs e. Strings shared by many entries (the parent ID, the
// selectors) go through intern.
func packEntry(e *sigilv1.Entry, intern func(string) string) packedEntry {
	// Deterministic, so that equal entries have equal encodings; the
	// parent and the selectors are left out (held apart).
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(e)
	if err != nil {
		// An Entry always encodes; keep the fields that matter.
		b, _ = proto.Marshal(&sigilv1.Entry{Id: e.GetId(), SpiffeId: e.GetSpiffeId()})
	}
	b = withoutFields(b, fieldParentID, fieldSelectors)
	parent, sels := e.GetParentId(), e.GetSelectors()
	p := packedEntry{raw: string(b), createdAt: e.GetCreatedAt(), fed: len(e.GetFederatesWith()) > 0}
	p.id = p.str(fieldID)
	p.spiffeID = p.str(fieldSPIFFEID)
	if parent != "" {
		p.parent = intern(parent)
	}
	p.sels = make([]string, len(sels))
	for i, s := range sels {
		p.sels[i] = intern(s.GetType() + ":" + s.GetValue())
	}
	return p
}

// fill sets the fields of p read from raw: the ID, the SPIFFE ID, the
// creation time and whether it federates.
func (p *packedEntry) fill() {
	p.id, p.spiffeID, p.createdAt, p.fed = "", "", 0, false
	p.fields(func(n protowire.Number, v string, x uint64) bool {
		switch n {
		case fieldID:
			p.id = v
		case fieldSPIFFEID:
			p.spiffeID = v
		case fieldCreatedAt:
			p.createdAt = int64(x)
		case fieldFederatesWith:
			p.fed = true
		}
		return true
	})
}

// withoutFields returns b, a protobuf encoding, without the fields
// numbered a and b (in place).
func withoutFields(buf []byte, a, b protowire.Number) []byte {
	out := buf[:0]
	for rest := buf; len(rest) > 0; {
		num, typ, l := protowire.ConsumeTag(rest)
		if l < 0 {
			return append(out, rest...)
		}
		m := protowire.ConsumeFieldValue(num, typ, rest[l:])
		if m < 0 {
			return append(out, rest...)
		}
		if num != a && num != b {
			out = append(out, rest[:l+m]...)
		}
		rest = rest[l+m:]
	}
	return out
}

// equal reports whether p and q hold the same entry.
func (p *packedEntry) equal(q *packedEntry) bool {
	if p.raw != q.raw || p.parent != q.parent || len(p.sels) != len(q.sels) {
		return false
	}
	for i := range p.sels {
		if p.sels[i] != q.sels[i] {
			return false
		}
	}
	return true
}

// fields calls f with each field of raw until f returns false; v is the
// field's bytes (a substring of raw) for length-delimited fields and n
// its value for varints.
func (p *packedEntry) fields(f func(num protowire.Number, v string, n uint64) bool) {
	b := p.raw
	for len(b) > 0 {
		num, typ, l := protowire.ConsumeTag([]byte(b[:min(len(b), 10)]))
		if l < 0 {
			return
		}
		b = b[l:]
		switch typ {
		case protowire.BytesType:
			n, l := protowire.ConsumeVarint([]byte(b[:min(len(b), 10)]))
			if l < 0 || uint64(len(b)-l) < n {
				return
			}
			if !f(num, b[l:l+int(n)], 0) {
				return
			}
			b = b[l+int(n):]
		case protowire.VarintType:
			n, l := protowire.ConsumeVarint([]byte(b[:min(len(b), 10)]))
			if l < 0 {
				return
			}
			if !f(num, "", n) {
				return
			}
			b = b[l:]
		default:
			l := protowire.ConsumeFieldValue(num, typ, []byte(b))
			if l < 0 {
				return
			}
			b = b[l:]
		}
	}
}

// str is the last value of string field num ("" when absent), a
// substring of raw.
func (p *packedEntry) str(num protowire.Number) string {
	var out string
	p.fields(func(n protowire.Number, v string, _ uint64) bool {
		if n == num {
			out = v
		}
		return true
	})
	return out
}

// strs are the values of repeated string field num.
func (p *packedEntry) strs(num protowire.Number) []string {
	var out []string
	p.fields(func(n protowire.Number, v string, _ uint64) bool {
		if n == num {
			out = append(out, strings.Clone(v))
		}
		return true
	})
	return out
}

// GetId is the entry's ID.
func (p *packedEntry) GetId() string { return p.id }

// GetSpiffeId is the entry's SPIFFE ID.
func (p *packedEntry) GetSpiffeId() string { return p.spiffeID }

// GetParentId is the entry's parent ID.
func (p *packedEntry) GetParentId() string { return p.parent }

// GetCreatedAt is when the entry was created.
func (p *packedEntry) GetCreatedAt() int64 { return p.createdAt }

// GetHint is the entry's hint, decoded from raw.
func (p *packedEntry) GetHint() string { return strings.Clone(p.str(fieldHint)) }

// GetDnsNames are the entry's DNS names, decoded from raw.
func (p *packedEntry) GetDnsNames() []string { return p.strs(fieldDNSNames) }

// GetFederatesWith are the trust domains the entry federates with,
// decoded from raw (nil without decoding when there are none).
func (p *packedEntry) GetFederatesWith() []string {
	if p == nil || !p.fed {
		return nil
	}
	return p.strs(fieldFederatesWith)
}

// GetSelectors are the entry's selectors, decoded.
func (p *packedEntry) GetSelectors() []*sigilv1.Selector {
	out := make([]*sigilv1.Selector, len(p.sels))
	for i, s := range p.sels {
		typ, value, _ := strings.Cut(s, ":")
		out[i] = &sigilv1.Selector{Type: typ, Value: value}
	}
	return out
}

// identity returns a new message with the entry's ID, SPIFFE ID, parent
// ID and selectors only: what explaining an entry needs, without
// decoding the rest.
func (p *packedEntry) identity() *sigilv1.Entry {
	return &sigilv1.Entry{Id: p.id, SpiffeId: p.spiffeID, ParentId: p.parent, Selectors: p.GetSelectors()}
}

// decode returns the whole entry as a new message.
func (p *packedEntry) decode() *sigilv1.Entry {
	e := &sigilv1.Entry{}
	if err := proto.Unmarshal([]byte(p.raw), e); err != nil {
		e = &sigilv1.Entry{Id: p.id, SpiffeId: p.spiffeID}
	}
	e.ParentId = p.parent
	e.Selectors = p.GetSelectors()
	return e
}

// drainReleaseEvery is how many slots entryStage.drain passes between
// releases of their pages (a variable for tests).
var drainReleaseEvery = 1 << 14

// entryStage collects a full set of entries as it arrives from the
// server, message by message, until the set ends: packed into the cold
// store's records (coldstore.go), so that a million entries in flight
// weigh about 70 B each, outside the Go heap, instead of a packed
// entry and a map slot each (about 0.5 KB). x509State.ReplaceStaged
// drains it.
type entryStage struct {
	cs coldStore
}

func newEntryStage() *entryStage {
	cs := newColdStore()
	cs.plain = true
	return &entryStage{cs: cs}
}

// put adds e, replacing an entry with its ID; an entry without an ID is
// left out. It fails with nothing changed when the stage is full (about
// 4 GiB of records: coldStore.full).
func (s *entryStage) put(e *sigilv1.Entry) error {
	if e.GetId() == "" {
		return nil
	}
	if s.cs.full() {
		return fmt.Errorf("agent: the full entry set does not fit the sync stage: more than %d entries, %d bytes of records", s.cs.len(), s.cs.recordBytes())
	}
	pe := packEntry(e, noIntern)
	if slot, ok := s.cs.get(pe.id); ok {
		s.cs.remove(slot)
	}
	s.cs.insert(&pe, coldMeta{})
	return nil
}

// del removes the entry with ID id, if any.
func (s *entryStage) del(id string) {
	if slot, ok := s.cs.get(id); ok {
		s.cs.remove(slot)
	}
}

// len is how many entries the stage holds.
func (s *entryStage) len() int { return s.cs.len() }

// drain calls f with each entry, in the order of their slots (about the
// order they were added, which the chunks follow), removing each from
// the stage after f returns, so that the chunks are freed as the entries
// move on. The stage is empty after.
func (s *entryStage) drain(f func(pe *packedEntry)) {
	s.cs.hold, s.cs.drain = true, true
	// Nothing is looked up by ID or added while draining: the tables
	// for that go first, which lowers the peak of a full sync (the
	// stage and the state it fills are held together).
	offheap.FreeSlice(s.cs.mem, s.cs.ids)
	offheap.FreeSlice(s.cs.mem, s.cs.selSeen)
	offheap.FreeSlice(s.cs.mem, s.cs.freeSlots)
	s.cs.ids, s.cs.selSeen, s.cs.freeSlots = nil, nil, nil
	// The slots already drained are not read again: their pages go
	// back to the kernel as the drain passes them.
	every := drainReleaseEvery
	for i := range s.cs.slots {
		if i%every == 0 && i > 0 {
			offheap.ReleaseSlice(s.cs.mem, s.cs.slots, i-every, i)
		}
		if !s.cs.slots[i].live() {
			continue
		}
		pe := s.cs.packed(uint32(i))
		f(&pe)
		s.cs.remove(uint32(i))
	}
	s.cs.hold, s.cs.drain = false, false
	s.cs.reset()
}
