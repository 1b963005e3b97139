package agent

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// fuzzStore is a store with entries whose names and selectors end in
// numbers or letters, so that its dictionary holds stems and prefixes a
// fuzzed record may name.
func fuzzStore() *coldStore {
	cs := newColdStore()
	for i := range 8 {
		pe := packEntry(benchEntry(i), noIntern)
		cs.insert(&pe, coldMeta{gen: uint64(i), lastReq: int64(i)})
	}
	// And names in letters: selectors kept as a prefix and the leaf's
	// text.
	for i := range 4 {
		pe := packEntry(benchEntryLettered(100+i), noIntern)
		cs.insert(&pe, coldMeta{gen: uint64(i)})
	}
	return &cs
}

// recordsOf returns the record bodies c holds.
func recordsOf(c *coldStore) [][]byte {
	var out [][]byte
	c.each(func(i uint32) {
		b, err := recBody(c.at(i))
		if err != nil {
			panic(err)
		}
		out = append(out, bytes.Clone(b))
	})
	return out
}

// The record decoder refuses corrupt bytes with an error and never reads
// outside them; what it accepts reads back consistently through every
// accessor.
func FuzzColdRecord(f *testing.F) {
	c := fuzzStore()
	for _, b := range recordsOf(c) {
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte{0x0b, 1})
	f.Add([]byte{0x08, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, 0x7f})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parseRec(b)
		if err != nil {
			return
		}
		r.dict = &c.selDict
		if r.nsels > len(b) || r.filed < 0 || (r.nsels > 0 && r.filed >= r.nsels) {
			t.Fatalf("nsels %d filed %d for %d bytes", r.nsels, r.filed, len(b))
		}
		n := 0
		r.eachSel(func(i int, sel []byte) bool {
			if !r.selIs(i, sel) {
				t.Fatalf("selector %d %q is not itself", i, sel)
			}
			if got := r.sel(i); !bytes.Equal(got, sel) {
				t.Fatalf("selector %d reads %q and %q", i, got, sel)
			}
			n++
			return true
		})
		if n != r.nsels {
			t.Fatalf("%d of %d selectors", n, r.nsels)
		}
		r.eachSelRef(func(uint32) {})
		_ = r.appendLeaf(nil)
		_ = c.fullRaw(&r)
		_ = rawID(r.raw)
	})
}

// Entries of any names and selectors read back as they were put, and
// leave nothing behind once removed.
func FuzzColdStoreRoundTrip(f *testing.F) {
	f.Add("e-1", "spiffe://example.org/ns/a/sa/w-7", "k8s:sa:w-7\nk8s:ns:a", uint64(3), int64(0), int64(1_700_000_000))
	f.Add("0b1f8e2c-5d9a-4f5e-9c3b-7a6d5e4f3a2b", "spiffe://example.org/x/0007", "unix:uid:0\nunix:uid:00\nu:99999999999999999999", uint64(1<<63), int64(-5), int64(-1<<63))
	f.Add("0123456789abcdef0123456789abcdef", "spiffe://example.org/18446744073709551615", "a:18446744073709551615\n:1", uint64(0), int64(1), int64(1<<63-1))
	f.Add("e-2", "spiffe://example.org/ns/a/sa/web-abc", "k8s:sa:web-abc\nweb-abc\nk8s:pod:web-abcweb-abc", uint64(2), int64(0), int64(0))
	f.Fuzz(func(t *testing.T, id, spiffeID, sels string, gen uint64, last, created int64) {
		if id == "" {
			return
		}
		c := fuzzStore()
		before := len(c.selDict.idx)
		e := &sigilv1.Entry{Id: id, SpiffeId: spiffeID, ParentId: "spiffe://example.org/agent", CreatedAt: created, Revision: 2}
		for _, s := range strings.Split(sels, "\n") {
			typ, value, _ := strings.Cut(s, ":")
			e.Selectors = append(e.Selectors, &sigilv1.Selector{Type: typ, Value: value})
		}
		var pes []packedEntry
		// Twice, with a number changed: the second time stems are in
		// the dictionary.
		for k := range 3 {
			pe := packEntry(e, noIntern)
			if _, ok := c.get(pe.id); ok {
				break
			}
			slot := c.insert(&pe, coldMeta{gen: gen, lastReq: last})
			// The creation time as raw holds it (an entry that does not
			// encode, such as one with names not in UTF-8, keeps its ID
			// and SPIFFE ID only).
			want := pe
			want.fill()
			if got := c.packed(slot); !got.equal(&pe) || got.id != pe.id || got.spiffeID != pe.spiffeID || got.createdAt != want.createdAt {
				t.Fatalf("round %d: %+v reads back as %+v", k, pe, got)
			}
			if m := c.meta(slot); m.gen != gen || m.lastReq != last {
				t.Fatalf("meta %+v", m)
			}
			pes = append(pes, pe)
			e.Id = fmt.Sprintf("%s-%d", id, k)
			e.SpiffeId = spiffeID + "1"
		}
		for _, pe := range pes {
			slot, ok := c.get(pe.id)
			if !ok || !c.equal(slot, &pe) {
				t.Fatalf("%q not found or changed", pe.id)
			}
			c.remove(slot)
		}
		if len(c.selDict.idx) != before {
			t.Fatalf("dictionary holds %d, held %d before", len(c.selDict.idx), before)
		}
	})
}

// takeVarints takes out only what putVarint puts back as it was: any
// bytes come back whole.
func FuzzColdVarints(f *testing.F) {
	pe := packEntry(benchEntry(3), noIntern)
	f.Add([]byte(pe.raw))
	f.Add([]byte{0x58, 0x01, 0x60, 0x01})
	f.Add([]byte{0x60, 0x01, 0x58, 0x01})
	f.Add([]byte{0x58, 0x01, 0x60, 0x02, 0x70, 0x00})
	f.Add([]byte{0x58, 0x81, 0x00})
	f.Add([]byte{0x58, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Fuzz(func(t *testing.T, raw []byte) {
		orig := bytes.Clone(raw)
		out, rest := takeVarints(raw)
		back := bytes.Clone(rest)
		if out.rev1 {
			back = putVarint(back, fieldRevision, 1)
		}
		if out.created {
			back = putVarint(back, fieldCreatedAt, uint64(out.createdAt))
		}
		if !bytes.Equal(back, orig) {
			t.Fatalf("%x: taken out %+v, leaving %x, put back %x", orig, out, rest, back)
		}
		if (out.created || out.rev1) != (len(rest) < len(orig)) {
			t.Fatalf("%x: taken out %+v, %d bytes of %d left", orig, out, len(rest), len(orig))
		}
	})
}
