package server

import (
	"runtime"
	"sync/atomic"
	"testing"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// TestEntryWireCacheDoesNotKeepEntries: the encoding cache does not keep
// the entries it encoded alive, so a deleted entry's memory is freed
// while its encoding is still cached; an entry that is still held still
// gets its cached encoding. Bounded in collections, not timed.
func TestEntryWireCacheDoesNotKeepEntries(t *testing.T) {
	var c entryWireCache
	var freed atomic.Int32
	const n = 100
	for i := range n {
		e := &sigilv1.Entry{Id: "e" + string(rune('a'+i%26)) + string(rune('a'+i/26)), SpiffeId: "spiffe://example.org/w", ModifyIndex: uint64(i)}
		if _, err := c.get(e); err != nil {
			t.Fatal(err)
		}
		runtime.AddCleanup(e, func(int) { freed.Add(1) }, 0)
	}
	kept := &sigilv1.Entry{Id: "kept", SpiffeId: "spiffe://example.org/k", ModifyIndex: 1}
	b1, _ := c.get(kept)
	for i := 0; i < 50 && freed.Load() < n; i++ {
		runtime.GC()
		runtime.Gosched()
	}
	if got := freed.Load(); got < n {
		t.Fatalf("%d of %d entries encoded and dropped were freed: the cache keeps them", got, n)
	}
	if len(c.m) != n+1 {
		t.Fatalf("the cache holds %d encodings, want %d", len(c.m), n+1)
	}
	if b2, _ := c.get(kept); &b1[0] != &b2[0] {
		t.Fatal("an entry still held was encoded again")
	}
	runtime.KeepAlive(kept)
}
