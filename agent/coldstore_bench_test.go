package agent

import (
	"fmt"
	"testing"

	"github.com/sigil-id/sigil/registration"
)

// coldBenchStore is a store of n entries shaped as benchEntry.
func coldBenchStore(b *testing.B, n int) (*coldStore, []packedEntry) {
	b.Helper()
	cs := newColdStore()
	pes := make([]packedEntry, n)
	for i := range pes {
		pes[i] = packEntry(benchEntry(i), noIntern)
		cs.insert(&pes[i], coldMeta{gen: uint64(i + 1)})
	}
	return &cs, pes
}

// BenchmarkColdStore times the cold store's lookups with 100,000
// entries: by ID (found, absent), by a workload's selectors (one entry
// matched), reading an entry back, and taking the entry of least ID
// (the spare queue's order).
func BenchmarkColdStore(b *testing.B) {
	const n = 100_000
	c, pes := coldBenchStore(b, n)
	b.Run("get", func(b *testing.B) {
		for i := range b.N {
			if _, ok := c.get(pes[i%n].id); !ok {
				b.Fatal("not found")
			}
		}
	})
	b.Run("get-absent", func(b *testing.B) {
		ids := make([]string, 1024)
		for i := range ids {
			ids[i] = fmt.Sprintf("%08x-1a2b-4c3d-8e9f-%012x", n+i, 1)
		}
		for i := range b.N {
			if _, ok := c.get(ids[i%len(ids)]); ok {
				b.Fatal("found")
			}
		}
	})
	b.Run("match", func(b *testing.B) {
		sets := make([]registration.SelectorSet, 1024)
		for i := range sets {
			sets[i] = registration.SelectorSet{}
			for _, s := range pes[i*97%n].sels {
				sets[i][s] = struct{}{}
			}
		}
		for i := range b.N {
			set := sets[i%len(sets)]
			found := 0
			for sel := range set {
				c.match(sel, set, func(uint32) { found++ })
			}
			if found != 1 {
				b.Fatalf("%d matched", found)
			}
		}
	})
	b.Run("packed", func(b *testing.B) {
		for i := range b.N {
			slot, _ := c.get(pes[i%n].id)
			if pe := c.packed(slot); pe.id != pes[i%n].id {
				b.Fatal("wrong entry")
			}
		}
	})
	// As the minting loop takes spare entries: the least ID, removed,
	// again and again; every 10,000 they are put back (timed too).
	b.Run("take-top", func(b *testing.B) {
		taken := make([]packedEntry, 0, 10_000)
		for range b.N {
			slot, _ := c.top()
			taken = append(taken, c.packed(slot))
			c.remove(slot)
			if len(taken) == cap(taken) {
				for i := range taken {
					c.insert(&taken[i], coldMeta{})
				}
				taken = taken[:0]
			}
		}
	})
}
