package agent

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"slices"
	"strings"
	"testing"
	"unsafe"

	"google.golang.org/protobuf/encoding/protowire"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/internal/offheap"
	"github.com/sigil-id/sigil/registration"
)

// coldModel is what a coldStore must hold, as plain maps.
type coldModel map[string]struct {
	pe   packedEntry
	meta coldMeta
}

// check compares c with m through every query of the store, and checks
// the store's own bookkeeping: list counts, parent references, the
// heap's order and the chunks' garbage.
func (m coldModel) check(t *testing.T, c *coldStore, probes []registration.SelectorSet) {
	t.Helper()
	if c.len() != len(m) {
		t.Fatalf("store holds %d, model %d", c.len(), len(m))
	}
	var minID string
	for id, want := range m {
		slot, ok := c.get(id)
		if !ok {
			t.Fatalf("%s not found", id)
		}
		if got := c.packed(slot); !got.equal(&want.pe) || got.id != id || got.spiffeID != want.pe.spiffeID || got.createdAt != want.pe.createdAt || got.fed != want.pe.fed {
			t.Fatalf("%s reads back as %+v, want %+v", id, got, want.pe)
		}
		if !c.equal(slot, &want.pe) {
			t.Fatalf("%s not equal to itself", id)
		}
		if got := c.meta(slot); got != want.meta {
			t.Fatalf("%s meta %+v, want %+v", id, got, want.meta)
		}
		if c.fed(slot) != want.pe.fed {
			t.Fatalf("%s fed %v", id, !want.pe.fed)
		}
		if minID == "" || id < minID {
			minID = id
		}
	}
	for _, id := range []string{"absent", "e-99999", ""} {
		if _, ok := c.get(id); ok {
			t.Fatalf("%q found", id)
		}
	}
	if top, ok := c.top(); ok != (len(m) > 0) || (ok && string(c.id(top)) != minID) {
		t.Fatalf("heap top %v %q, want %q", ok, c.id(top), minID)
	}
	n := 0
	modes := map[uint8]int{}
	c.each(func(i uint32) {
		n++
		modes[c.rec(i).idMode]++
	})
	if n != len(m) {
		t.Fatalf("each visits %d of %d", n, len(m))
	}
	if len(m) > 100 && (modes[idText] == 0 || modes[idHex] == 0 || modes[idUUID] == 0) {
		t.Fatalf("IDs kept %v: not every way is tested", modes)
	}
	for _, set := range probes {
		var got []string
		for sel := range set {
			c.match(sel, set, func(i uint32) { got = append(got, string(c.id(i))) })
		}
		var want []string
		for id, e := range m {
			if len(e.pe.sels) > 0 && registration.SelectorSet(set).Contains(e.pe.GetSelectors()) {
				want = append(want, id)
			}
		}
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Fatalf("match %v: %v, want %v", set, got, want)
		}
	}
	// Bookkeeping.
	listed := 0
	for _, b := range c.sels {
		if b.head == 0 {
			continue
		}
		k := uint32(0)
		for v := b.head; v != 0; v = c.slots[v-1].next {
			k++
		}
		if k != b.count {
			t.Fatalf("bucket lists %d, counts %d", k, b.count)
		}
		listed += int(k)
	}
	withSels := 0
	refs := map[string]int32{}
	for _, e := range m {
		if len(e.pe.sels) > 0 {
			withSels++
		}
		if e.pe.parent != "" {
			refs[e.pe.parent]++
		}
	}
	filed := map[string]bool{}
	c.each(func(i uint32) {
		if r := c.rec(i); r.nsels > 0 {
			filed[string(r.sel(int(r.filed)))] = true
		}
	})
	if len(filed) != c.nsels || listed != c.nfiled {
		t.Fatalf("selector index counts %d selectors and %d entries, holds %d and %d", c.nsels, c.nfiled, len(filed), listed)
	}
	if listed != withSels {
		t.Fatalf("selector index lists %d entries, %d have selectors", listed, withSels)
	}
	for _, p := range c.parents.list {
		if p.refs != refs[p.id] {
			t.Fatalf("parent %q has %d references, want %d", p.id, p.refs, refs[p.id])
		}
		delete(refs, p.id)
	}
	if len(refs) != 0 || len(c.parents.idx) != len(c.parents.list)-len(c.parents.free) {
		t.Fatalf("parents not interned: %v", refs)
	}
	dirs := map[string]int32{}
	for _, e := range m {
		dirs[e.pe.spiffeID[:strings.LastIndexByte(e.pe.spiffeID, '/')+1]]++
	}
	for _, d := range c.dirs.list {
		if d.refs != dirs[d.id] {
			t.Fatalf("SPIFFE ID directory %q has %d references, want %d", d.id, d.refs, dirs[d.id])
		}
		delete(dirs, d.id)
	}
	if len(dirs) != 0 || len(c.dirs.idx) != len(c.dirs.list)-len(c.dirs.free) {
		t.Fatalf("SPIFFE ID directories not interned: %v", dirs)
	}
	// Each selector in the dictionary is referenced by as many records
	// as count it, and held by them.
	selRefs := map[uint32]int32{}
	c.each(func(i uint32) {
		r := c.rec(i)
		r.eachSelRef(func(ref uint32) { selRefs[ref]++ })
	})
	for k, d := range c.selDict.list {
		if d.refs != selRefs[uint32(k)+1] {
			t.Fatalf("selector %q has %d references, records hold %d", d.id, d.refs, selRefs[uint32(k)+1])
		}
	}
	if len(c.selDict.idx) != len(c.selDict.list)-len(c.selDict.free) {
		t.Fatalf("selector dictionary: %d indexed, %d listed, %d free", len(c.selDict.idx), len(c.selDict.list), len(c.selDict.free))
	}
	if len(m) > 100 && len(selRefs) == 0 {
		t.Fatal("no selector kept in the dictionary: it is not tested")
	}
	for i := 1; i < len(c.heap); i++ {
		if c.less(c.heap[i], c.heap[(i-1)/2]) {
			t.Fatalf("heap out of order at %d", i)
		}
	}
	live := 0
	for i := range c.chunks {
		if c.chunks[i].b != nil {
			live += len(c.chunks[i].b) - c.chunks[i].garbage
		}
	}
	used := 0
	for i := range c.slots {
		if c.slots[i].live() {
			n, l := binary.Uvarint(c.at(uint32(i)))
			used += l + int(n)
		}
	}
	if live != used {
		t.Fatalf("chunks hold %d live bytes, slots %d", live, used)
	}
}

// A coldStore agrees with a map model across random inserts, changes,
// removals, holds and matches, through enough entries and deletions to
// grow and compact chunks, resize its tables and renumber its slots.
func TestColdStoreMatchesModel(t *testing.T) {
	for seed := uint64(1); seed <= 4; seed++ {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 7))
			cs := newColdStore()
			if seed%2 == 0 {
				// Every table and chunk mapped: a view of memory
				// used after it is freed faults.
				cs.mem = offheap.NewMin(1)
			}
			c := &cs
			m := coldModel{}
			mk := func(i int) packedEntry {
				// IDs kept as they are, and as 16 bytes (coldRec.idMode).
				id := []string{
					fmt.Sprintf("e-%05d", i),
					fmt.Sprintf("%032x", uint64(i)*0x9e3779b97f4a7c15),
					fmt.Sprintf("%08x-1a2b-4c3d-8e9f-%012x", i, i*7919),
					fmt.Sprintf("%032X", uint64(i)*0x9e3779b97f4a7c15),
				}[i%4]
				e := &sigilv1.Entry{
					Id:       id,
					SpiffeId: fmt.Sprintf("spiffe://example.org/w/%d/%s", i, strings.Repeat("x", rng.IntN(40))),
					ParentId: fmt.Sprintf("spiffe://example.org/agent/%d", rng.IntN(3)),
					// Creation times far apart and at both ends: the
					// records' differences wrap around.
					CreatedAt: []int64{int64(rng.IntN(1 << 40)), -int64(rng.IntN(1 << 40)), math.MinInt64, math.MaxInt64}[rng.IntN(4)],
					Revision:  int64(rng.IntN(5)),
				}
				if rng.IntN(10) == 0 {
					e.ParentId = ""
				}
				for range rng.IntN(4) {
					switch rng.IntN(3) {
					case 0:
						e.Selectors = append(e.Selectors, &sigilv1.Selector{Type: "k8s", Value: fmt.Sprintf("sa:%d", i)})
					case 1:
						e.Selectors = append(e.Selectors, &sigilv1.Selector{Type: "k8s", Value: fmt.Sprintf("ns:%d", rng.IntN(5))})
					default:
						e.Selectors = append(e.Selectors, &sigilv1.Selector{Type: "unix", Value: "uid:0"})
					}
				}
				if rng.IntN(6) == 0 {
					e.FederatesWith = []string{"other.org"}
				}
				if rng.IntN(5) == 0 {
					e.DnsNames = []string{"a.example", "b.example"}
				}
				return packEntry(e, noIntern)
			}
			meta := func() coldMeta {
				return coldMeta{gen: rng.Uint64N(1 << 40), lastReq: rng.Int64N(1<<62) - 1<<61, lastAttempt: int64(rng.IntN(2)) * rng.Int64N(1<<62)}
			}
			var probes []registration.SelectorSet
			for i := range 20 {
				set := registration.SelectorSet{fmt.Sprintf("k8s:ns:%d", i%5): {}, "unix:uid:0": {}}
				if i%2 == 0 {
					set[fmt.Sprintf("k8s:sa:%d", rng.IntN(3000))] = struct{}{}
				}
				probes = append(probes, set)
			}
			ids := func() []string {
				out := make([]string, 0, len(m))
				for id := range m {
					out = append(out, id)
				}
				slices.Sort(out)
				return out
			}
			for round := range 6 {
				// Grow, with changes among the inserts.
				for range 1500 {
					i := rng.IntN(3000)
					pe := mk(i)
					if old, ok := m[pe.id]; ok {
						slot, _ := c.get(pe.id)
						if c.equal(slot, &pe) != old.pe.equal(&pe) {
							t.Fatalf("equal disagrees for %s", pe.id)
						}
						c.remove(slot)
					}
					mt := meta()
					c.insert(&pe, mt)
					m[pe.id] = struct {
						pe   packedEntry
						meta coldMeta
					}{pe, mt}
				}
				m.check(t, c, probes)
				// Shrink: most entries go, some under a hold (slot
				// numbers kept), as x509State removes them.
				all := ids()
				hold := round%2 == 1
				if hold {
					c.hold = true
				}
				var slots []uint32
				for _, id := range all {
					if rng.IntN(10) < 8 {
						slot, _ := c.get(id)
						delete(m, id)
						if !hold {
							// Slot numbers hold only until the
							// next change.
							c.remove(slot)
							continue
						}
						slots = append(slots, slot)
					}
				}
				for _, slot := range slots {
					c.remove(slot)
				}
				if hold {
					c.release()
				}
				m.check(t, c, probes)
			}
			for _, id := range ids() {
				slot, _ := c.get(id)
				c.remove(slot)
				delete(m, id)
			}
			m.check(t, c, probes)
			if len(c.chunks) != 0 || len(c.slots) != 0 || len(c.ids) != 0 || len(c.sels) != 0 || len(c.heap) != 0 || len(c.parents.list) != 0 || len(c.dirs.list) != 0 || len(c.selDict.list) != 0 {
				t.Fatalf("an empty store keeps %d chunks, %d slots, %d ids, %d buckets, %d heap, %d parents",
					len(c.chunks), len(c.slots), len(c.ids), len(c.sels), len(c.heap), len(c.parents.list))
			}
			if n := c.mem.Size(); n != 0 {
				t.Fatalf("an empty store keeps %d bytes mapped", n)
			}
		})
	}
}

// An entryStage holds the last version of each entry put and not
// deleted, hands each out once when drained, and is empty after.
func TestEntryStage(t *testing.T) {
	s := newEntryStage()
	// Every table and chunk mapped: a view used after it is freed
	// faults; the drained slots' pages are released every 512 (a slot
	// read after its page is released reads as zeros).
	s.cs.mem = offheap.NewMin(1)
	defer func(n int) { drainReleaseEvery = n }(drainReleaseEvery)
	drainReleaseEvery = 512
	want := map[string]*sigilv1.Entry{}
	var order []string
	for i := range 3000 {
		e := benchEntry(i % 2500)
		e.Revision = int64(i)
		if _, ok := want[e.GetId()]; !ok {
			order = append(order, e.GetId())
		}
		want[e.GetId()] = e
		s.put(e)
	}
	s.put(&sigilv1.Entry{SpiffeId: "spiffe://example.org/no-id"})
	for i := 0; i < 2500; i += 3 {
		id := benchEntry(i).GetId()
		s.del(id)
		delete(want, id)
	}
	s.del("absent")
	if s.len() != len(want) {
		t.Fatalf("stage holds %d, want %d", s.len(), len(want))
	}
	var got []string
	s.drain(func(pe *packedEntry) {
		w := want[pe.id]
		if w == nil {
			t.Fatalf("drained %s, deleted or never put", pe.id)
		}
		if p := packEntry(w, noIntern); !pe.equal(&p) {
			t.Fatalf("drained %s as %+v, want %+v", pe.id, pe, p)
		}
		got = append(got, pe.id)
		delete(want, pe.id)
	})
	if len(want) != 0 {
		t.Fatalf("%d entries not drained", len(want))
	}
	// The first drained is the first put and not deleted (a replaced
	// entry keeps its place).
	if len(got) == 0 || got[0] != order[1] {
		t.Fatalf("drained first %v, want %s", got[:min(3, len(got))], order[1])
	}
	if s.len() != 0 || len(s.cs.chunks) != 0 || len(s.cs.slots) != 0 || len(s.cs.ids) != 0 {
		t.Fatalf("drained stage keeps %d entries, %d chunks, %d slots, %d ids", s.len(), len(s.cs.chunks), len(s.cs.slots), len(s.cs.ids))
	}
	if n := s.cs.mem.Size(); n != 0 {
		t.Fatalf("drained stage keeps %d bytes mapped", n)
	}
	// A drained stage collects again, by ID.
	for i := range 3 {
		s.put(benchEntry(i))
	}
	s.del(benchEntry(1).GetId())
	s.put(benchEntry(2))
	if _, ok := s.cs.get(benchEntry(1).GetId()); ok || s.len() != 2 {
		t.Fatalf("stage holds %d entries, a deleted one found %v", s.len(), ok)
	}
	got = got[:0]
	s.drain(func(pe *packedEntry) { got = append(got, pe.id) })
	if want := []string{benchEntry(0).GetId(), benchEntry(2).GetId()}; !slices.Equal(got, want) {
		t.Fatalf("drained %v after reuse, want %v", got, want)
	}
}

// A large cold store lives outside the Go heap: the collector's heap
// barely grows with it, and its memory is unmapped when its entries go.
func TestColdStoreOutsideGoHeap(t *testing.T) {
	const n = 20000
	pes := make([]packedEntry, n)
	for i := range pes {
		pes[i] = packEntry(benchEntry(i), noIntern)
	}
	cs := newColdStore()
	c := &cs
	before := goHeap()
	for i := range pes {
		c.insert(&pes[i], coldMeta{gen: uint64(i)})
	}
	grew := goHeap() - before
	mapped := c.mem.Size()
	if mapped < n*50 {
		t.Fatalf("%d entries map %d bytes", n, mapped)
	}
	if grew > mapped/10 {
		t.Fatalf("the Go heap grew by %d bytes for %d bytes mapped", grew, mapped)
	}
	for i := range pes {
		slot, ok := c.get(pes[i].id)
		if !ok || !c.equal(slot, &pes[i]) {
			t.Fatalf("entry %d reads back wrong", i)
		}
	}
	for i := range pes {
		slot, _ := c.get(pes[i].id)
		c.remove(slot)
	}
	if got := c.mem.Size(); got != 0 {
		t.Fatalf("%d bytes still mapped with no entry", got)
	}
}

func goHeap() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// Selectors many entries share are kept once, in the dictionary, and
// the selectors of one entry only stay in its record.
func TestColdStoreSelectorDictionary(t *testing.T) {
	const n = 5000
	cs := newColdStore()
	c := &cs
	pes := make([]packedEntry, n)
	for i := range pes {
		pes[i] = packEntry(benchEntry(i), noIntern)
		c.insert(&pes[i], coldMeta{})
	}
	// benchEntry: 200 namespaces, one container name, a service
	// account per entry.
	if got := len(c.selDict.idx); got < 201 || got > 210 {
		t.Fatalf("dictionary holds %d selectors, want the 201 shared ones", got)
	}
	if i, ok := c.selDict.idx["k8s:container-name:app"]; !ok || c.selDict.list[i].refs < n-10 {
		t.Fatalf("the selector every entry has is not shared (%v)", ok)
	}
	for _, sel := range []string{"k8s:sa:workload-7", "k8s:sa:workload-4999"} {
		if _, ok := c.selDict.idx[sel]; ok {
			t.Fatalf("%s, of one entry, is in the dictionary", sel)
		}
	}
	for i := range pes {
		slot, ok := c.get(pes[i].id)
		if !ok || !c.equal(slot, &pes[i]) {
			t.Fatalf("entry %d reads back wrong", i)
		}
		c.remove(slot)
	}
	if len(c.selDict.list) != 0 || c.mem.Size() != 0 {
		t.Fatalf("an empty store keeps %d dictionary entries, %d bytes", len(c.selDict.list), c.mem.Size())
	}
}

// An entry whose encoding does not start with its ID keeps the ID as
// text even when it would pack; it is found by ID all the same.
func TestColdStoreIDNotFirst(t *testing.T) {
	cs := newColdStore()
	c := &cs
	var pes []packedEntry
	for i := range 50 {
		pe := packEntry(benchEntry(i), noIntern)
		raw := []byte(pe.raw)
		_, _, l := protowire.ConsumeTag(raw)
		_, m := protowire.ConsumeBytes(raw[l:])
		// The ID field moved to the end.
		pe.raw = string(append(append([]byte{}, raw[l+m:]...), raw[:l+m]...))
		pe.fill()
		if pe.id != benchEntry(i).GetId() {
			t.Fatalf("moved ID reads %q", pe.id)
		}
		c.insert(&pe, coldMeta{})
		pes = append(pes, pe)
	}
	for i := range pes {
		slot, ok := c.get(pes[i].id)
		if !ok || !c.equal(slot, &pes[i]) {
			t.Fatalf("entry %d not found by its ID (%v)", i, ok)
		}
		if r := c.rec(slot); r.idMode != idText {
			t.Fatalf("entry %d ID kept as %d", i, r.idMode)
		}
	}
	for i := range pes {
		slot, _ := c.get(pes[i].id)
		c.remove(slot)
		if _, ok := c.get(pes[i].id); ok {
			t.Fatalf("entry %d found after removal", i)
		}
	}
}

// The same model check with entries whose SPIFFE IDs and selectors end
// in numbers (kept as stems and numbers: leading zeros, the largest
// numbers, numbers too long for 64 bits, a selector whose number is the
// SPIFFE ID's), more entries than the spare window holds, and the entry
// of least ID taken again and again as the minting loop takes them,
// among inserts and removals.
func TestColdStoreNumbersAndWindowMatchModel(t *testing.T) {
	for seed := uint64(1); seed <= 3; seed++ {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 11))
			cs := newColdStore()
			if seed == 2 {
				cs.mem = offheap.NewMin(1)
			}
			c := &cs
			m := coldModel{}
			nums := []string{"0", "7", "007", "10", "18446744073709551615", "18446744073709551616", "99999999999999999999", "1234567890123456789"}
			num := func(i int) string {
				if rng.IntN(4) == 0 {
					return nums[rng.IntN(len(nums))]
				}
				return fmt.Sprint(i)
			}
			mk := func(i int) packedEntry {
				// The three ways of keeping IDs spread over the
				// order, so that taking the least leaves each.
				h := uint64(i) * 0x9e3779b97f4a7c15
				id := []string{
					fmt.Sprintf("%x-%05d", h>>60, i),
					fmt.Sprintf("%016x%016x", h, h*3),
					fmt.Sprintf("%08x-1a2b-4c3d-8e9f-%012x", h>>32, i*7919),
				}[i%3]
				n := num(i)
				leaf := []string{"workload-" + n, n, "w" + n + "x", "pod-" + n, "web-" + n + "z"}[rng.IntN(5)]
				e := &sigilv1.Entry{
					Id:        id,
					SpiffeId:  fmt.Sprintf("spiffe://example.org/ns/team-%d/sa/%s", rng.IntN(7), leaf),
					ParentId:  "spiffe://example.org/agent/1",
					CreatedAt: int64(rng.IntN(1 << 40)),
				}
				for range rng.IntN(4) {
					switch rng.IntN(4) {
					case 0:
						e.Selectors = append(e.Selectors, &sigilv1.Selector{Type: "k8s", Value: "sa:workload-" + n})
					case 1:
						e.Selectors = append(e.Selectors, &sigilv1.Selector{Type: "k8s", Value: fmt.Sprintf("ns:team-%d", rng.IntN(7))})
					case 2:
						e.Selectors = append(e.Selectors, &sigilv1.Selector{Type: "unix", Value: "uid:" + num(rng.IntN(50))})
					default:
						e.Selectors = append(e.Selectors, &sigilv1.Selector{Type: "k8s", Value: "pod-uid:" + num(i*31)})
					}
				}
				return packEntry(e, noIntern)
			}
			var probes []registration.SelectorSet
			for i := range 20 {
				set := registration.SelectorSet{fmt.Sprintf("k8s:ns:team-%d", i%7): {}, "unix:uid:7": {}, "unix:uid:0": {}}
				set["k8s:sa:workload-"+num(rng.IntN(4000))] = struct{}{}
				probes = append(probes, set)
			}
			put := func(pe packedEntry) {
				if _, ok := m[pe.id]; ok {
					slot, _ := c.get(pe.id)
					c.remove(slot)
				}
				mt := coldMeta{gen: rng.Uint64N(1 << 30)}
				c.insert(&pe, mt)
				m[pe.id] = struct {
					pe   packedEntry
					meta coldMeta
				}{pe, mt}
			}
			for round := range 4 {
				for range 2500 {
					put(mk(rng.IntN(4000)))
				}
				m.check(t, c, probes)
				// Every way of keeping a name or a selector is used.
				kinds := map[string]int{}
				c.each(func(i uint32) {
					r := c.rec(i)
					switch {
					case r.leafNum:
						kinds["leaf number"]++
					case r.leafStem != 0:
						kinds["leaf stem and text"]++
					default:
						kinds["leaf text"]++
					}
					for b := r.sels; len(b) > 0; {
						kind, _, _, _, rest := r.nextSel(b)
						kinds[fmt.Sprint("selector kind ", kind)]++
						b = rest
					}
				})
				if len(kinds) != 7 {
					t.Fatalf("names and selectors kept %v: not every way is tested", kinds)
				}
				// Take the least ID, as the minting loop does, more
				// times than the window holds, with a few inserts.
				for k := range 1500 {
					slot, ok := c.top()
					if !ok {
						break
					}
					id := string(c.id(slot))
					for other := range m {
						if other < id {
							t.Fatalf("round %d take %d: top %s, but %s is held", round, k, id, other)
						}
					}
					c.remove(slot)
					delete(m, id)
					if k%50 == 0 {
						put(mk(rng.IntN(4000)))
					}
				}
				m.check(t, c, probes)
			}
		})
	}
}

// A cold entry shaped like a Kubernetes node's (benchEntry) keeps at
// most 48 bytes of record (76 before names and selectors ending in
// numbers were kept as stems and numbers), and the store keeps no table
// of every entry for the spare order (the window holds at most
// spareWindow).
func TestColdStoreBytesPerEntry(t *testing.T) {
	cs := newColdStore()
	c := &cs
	if per := fillBytesPerEntry(c, 20_000, benchEntry); per > 48 {
		t.Fatalf("%.1f bytes of record per entry, want at most 48", per)
	}
	if len(c.heap) > spareWindow {
		t.Fatalf("the spare order holds %d entries, at most %d", len(c.heap), spareWindow)
	}
	if top, ok := c.top(); !ok || string(c.id(top)) != benchEntry(0).GetId() {
		t.Fatalf("top %v, want %s", ok, benchEntry(0).GetId())
	}
}

// The same entries with names in letters (benchEntryLettered: no
// trailing number, so no stem and number): the service account selector
// (k8s:sa:workload-NAME) ends in the SPIFFE ID's leaf (workload-NAME)
// and is kept as its prefix and a reference to the leaf, and the leaf as
// its stem (workload-) and its tail. 69.8 bytes of record per entry
// before (the selector inline, 18 bytes; the leaf inline, 15 bytes).
func TestColdStoreBytesPerEntryLetters(t *testing.T) {
	const n = 20_000
	cs := newColdStore()
	c := &cs
	if per := fillBytesPerEntry(c, n, benchEntryLettered); per > 46 {
		t.Fatalf("%.1f bytes of record per entry, want at most 46", per)
	}
	for i := range n {
		pe := packEntry(benchEntryLettered(i), noIntern)
		slot, ok := c.get(pe.id)
		if !ok || !c.equal(slot, &pe) {
			t.Fatalf("entry %d: not found or changed", i)
		}
	}
}

// A cold entry's slot is 12 bytes, its record's chunk and offset in one
// word (16 bytes before): a million cold entries hold 12 MiB of slots.
func TestColdSlotSize(t *testing.T) {
	if n := unsafe.Sizeof(coldSlot{}); n != 12 {
		t.Fatalf("a cold slot is %d bytes, want 12", n)
	}
}

// Records start below coldOffMax in their chunk whatever their sizes:
// one larger than coldChunkMax gets a chunk of its own, and every entry
// around it reads back, before and after it is removed.
func TestColdStoreLargeRecord(t *testing.T) {
	cs := newColdStore()
	c := &cs
	big := benchEntry(1_000_000)
	for i := range 6000 {
		big.Selectors = append(big.Selectors, &sigilv1.Selector{Type: "k8s", Value: fmt.Sprintf("label:key-%04d:%s", i, strings.Repeat("v", 40))})
	}
	var want []*sigilv1.Entry
	for i := range 3000 {
		e := benchEntry(i)
		if i == 1500 {
			e = big
		}
		want = append(want, e)
		pe := packEntry(e, noIntern)
		c.insert(&pe, coldMeta{})
	}
	check := func(what string) {
		t.Helper()
		for _, e := range want {
			pe := packEntry(e, noIntern)
			slot, ok := c.get(pe.id)
			if !ok || !c.equal(slot, &pe) {
				t.Fatalf("%s: entry %s not found or changed", what, pe.id)
			}
			s := &c.slots[slot]
			if s.off() >= coldOffMax || int(s.chunk()) >= len(c.chunks) || int(s.off()) >= len(c.chunks[s.chunk()].b) {
				t.Fatalf("%s: entry %s at chunk %d offset %d of %d chunks", what, pe.id, s.chunk(), s.off(), len(c.chunks))
			}
		}
	}
	pe := packEntry(big, noIntern)
	slot, _ := c.get(pe.id)
	if n, _ := binary.Uvarint(c.at(slot)); n <= coldChunkMax {
		t.Fatalf("the large record is %d bytes, not larger than a chunk (%d)", n, coldChunkMax)
	}
	check("inserted")
	c.remove(slot)
	want = slices.DeleteFunc(want, func(e *sigilv1.Entry) bool { return e == big })
	check("large record removed")
}

// A stage that is full (coldStore.full) refuses the next entry with an
// error and keeps what it holds; the sync loop ends the stream with it.
func TestEntryStageFull(t *testing.T) {
	s := newEntryStage()
	s.cs.maxChunks = coldChunksSpare + 3
	var err error
	n := 0
	for i := 0; i < 100_000; i++ {
		if err = s.put(benchEntry(i)); err != nil {
			break
		}
		n++
	}
	if err == nil || !strings.Contains(err.Error(), "does not fit the sync stage") {
		t.Fatalf("100,000 entries in a stage of %d chunks: %v", s.cs.maxChunks, err)
	}
	if s.len() != n || n == 0 {
		t.Fatalf("stage holds %d entries after %d were put", s.len(), n)
	}
	if err := s.put(benchEntry(0)); err == nil {
		t.Fatal("a full stage replaced an entry")
	}
	got := 0
	s.drain(func(pe *packedEntry) {
		if w := packEntry(benchEntry(got), noIntern); !pe.equal(&w) {
			t.Fatalf("drained %s, want %s", pe.id, w.id)
		}
		got++
	})
	if got != n {
		t.Fatalf("drained %d of %d", got, n)
	}
}

// The ID table grows by half, not by doubling, so that it stays between
// 1/2 and 3/4 full as it grows: with 100,000 entries it is over half
// full (doubling made it 262,144 slots, 38 % full). Every entry is found
// through it, before and after most are deleted (which shrinks it).
func TestColdStoreIDTableLoad(t *testing.T) {
	const n = 100_000
	cs := newColdStore()
	c := &cs
	for i := range n {
		pe := packEntry(benchEntry(i), noIntern)
		c.insert(&pe, coldMeta{})
	}
	if load := float64(n) / float64(len(c.ids)); load <= 0.5 || load > 0.75 {
		t.Fatalf("%d entries in an ID table of %d slots: %.0f %% full, want over 50 and at most 75", n, len(c.ids), 100*load)
	}
	for i := range n {
		if _, ok := c.get(benchEntry(i).GetId()); !ok {
			t.Fatalf("entry %d not found", i)
		}
	}
	for i := range n {
		if i%10 != 0 {
			slot, _ := c.get(benchEntry(i).GetId())
			c.remove(slot)
		}
	}
	for i := range n {
		slot, ok := c.get(benchEntry(i).GetId())
		if ok != (i%10 == 0) || ok && string(c.id(slot)) != benchEntry(i).GetId() {
			t.Fatalf("entry %d after deletions: found %v", i, ok)
		}
	}
	if 4*c.len() > 3*len(c.ids) || len(c.ids) > 8*c.len() {
		t.Fatalf("%d entries in an ID table of %d slots", c.len(), len(c.ids))
	}
}

// A record keeps the entry's creation time as its difference from the
// store's first (a zigzag varint: 1 byte for the times near the first
// here, up to 10 for the negative one, instead of 6) and a revision of 1
// in a flag (instead of 2 bytes), and gives back the entry's encoding
// byte for byte, also for encodings it keeps as they are: out of order,
// repeated, in a longer form than needed.
func TestColdStoreVarintsTakenOut(t *testing.T) {
	field := func(num protowire.Number, v uint64) []byte {
		return protowire.AppendVarint(protowire.AppendTag(nil, num, protowire.VarintType), v)
	}
	id := protowire.AppendString(protowire.AppendTag(nil, fieldID, protowire.BytesType), "e-2")
	spiffe := protowire.AppendString(protowire.AppendTag(nil, fieldSPIFFEID, protowire.BytesType), "spiffe://example.org/ns/a/sa/w-2")
	hint := protowire.AppendString(protowire.AppendTag(nil, fieldHint, protowire.BytesType), "h")
	fed := protowire.AppendString(protowire.AppendTag(nil, fieldFederatesWith, protowire.BytesType), "other.org")
	cat := func(parts ...[]byte) []byte { return slices.Concat(parts...) }
	const base = 1_700_000_000
	low := int64(math.MinInt64 + 1)
	for _, tc := range []struct {
		name         string
		raw          []byte
		created, rev bool
	}{
		{"deterministic", cat(id, spiffe, hint, field(fieldCreatedAt, base+5), field(fieldRevision, 1), fed), true, true},
		{"revision 2", cat(id, spiffe, hint, field(fieldCreatedAt, base+5), field(fieldRevision, 2), fed), true, false},
		{"no creation time", cat(id, spiffe, field(fieldRevision, 1)), false, true},
		{"last field", cat(id, spiffe, field(fieldCreatedAt, base-5)), true, false},
		{"negative", cat(id, spiffe, field(fieldCreatedAt, uint64(low)), field(fieldRevision, 1)), true, true},
		{"before the ID", cat(field(fieldCreatedAt, base), field(fieldRevision, 1)), true, true},
		{"after a later field", cat(id, spiffe, field(fieldRevision, 1), field(fieldCreatedAt, base)), false, false},
		{"before an earlier field", cat(id, spiffe, field(fieldCreatedAt, base), hint), false, false},
		{"twice", cat(id, spiffe, field(fieldCreatedAt, base), field(fieldCreatedAt, base+1), field(fieldRevision, 1), field(fieldRevision, 1)), false, false},
		{"long form", cat(id, spiffe, protowire.AppendTag(nil, fieldCreatedAt, protowire.VarintType), []byte{0x81, 0x80, 0x00}, field(fieldRevision, 1)), false, true},
		{"long tag", cat(id, spiffe, []byte{0xd8, 0x00, 0x05}, []byte{0xe0, 0x00, 0x01}), false, false},
		{"not a varint", cat(id, spiffe, protowire.AppendString(protowire.AppendTag(nil, fieldCreatedAt, protowire.BytesType), "x")), false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cs := newColdStore()
			c := &cs
			first := packEntry(&sigilv1.Entry{Id: "e-1", SpiffeId: "spiffe://example.org/ns/a/sa/w-1", CreatedAt: base}, noIntern)
			c.insert(&first, coldMeta{})
			pe := packedEntry{raw: string(tc.raw)}
			pe.fill()
			slot := c.insert(&pe, coldMeta{gen: 1})
			body, err := recBody(c.at(slot))
			if err != nil {
				t.Fatal(err)
			}
			if created, rev := body[0]&recCreated != 0, body[0]&recRev1 != 0; created != tc.created || rev != tc.rev {
				t.Fatalf("taken out: creation time %v, revision %v; want %v, %v", created, rev, tc.created, tc.rev)
			}
			if got := c.packed(slot); got.raw != pe.raw || got.createdAt != pe.createdAt {
				t.Fatalf("reads back as %x (created %d), want %x (created %d)", got.raw, got.createdAt, pe.raw, pe.createdAt)
			}
			if !c.equal(slot, &pe) {
				t.Fatal("not equal to itself")
			}
		})
	}
	// The first entry's record: the difference 0 takes one byte where
	// the field took six, the revision of 1 none where it took two.
	cs := newColdStore()
	e := benchEntry(0)
	pe := packEntry(e, noIntern)
	slot := cs.insert(&pe, coldMeta{})
	r := cs.rec(slot)
	if !r.hasCreated || r.created != 0 || !r.rev1 {
		t.Fatalf("creation time kept as %v %d, revision 1 %v", r.hasCreated, r.created, r.rev1)
	}
	if raw := string(r.raw); strings.Contains(raw, string(field(fieldCreatedAt, uint64(e.GetCreatedAt())))) || strings.Contains(raw, string(field(fieldRevision, 1))) {
		t.Fatalf("raw %x still holds them", r.raw)
	}
}

// 20,000 entries created within 20 s of each other (a batch), revision
// 1: a record of 33.4 bytes each, 40.4 with the creation time and the
// revision kept whole.
func TestColdStoreBytesPerEntryBatch(t *testing.T) {
	cs := newColdStore()
	batch := func(i int) *sigilv1.Entry {
		e := benchEntry(i)
		e.CreatedAt = int64(1_700_000_000 + i/1000)
		return e
	}
	if per := fillBytesPerEntry(&cs, 20_000, batch); per > 34 {
		t.Fatalf("%.1f bytes of record per entry, want at most 34", per)
	}
}

// fillBytesPerEntry inserts entries mk(0) to mk(n-1) into c and returns
// the bytes of record (with their lengths) per entry.
func fillBytesPerEntry(c *coldStore, n int, mk func(int) *sigilv1.Entry) float64 {
	for i := range n {
		pe := packEntry(mk(i), noIntern)
		c.insert(&pe, coldMeta{gen: uint64(n + i)})
	}
	used := 0
	c.each(func(i uint32) {
		l, k := binary.Uvarint(c.at(i))
		used += k + int(l)
	})
	return float64(used) / float64(n)
}
