package heapsite_test

import (
	"testing"

	"github.com/sigil-id/sigil/internal/heapsite"
)

var kept [][]byte

//go:noinline
func allocKept(n int) []byte { return make([]byte, n) }

//go:noinline
func allocDropped(n int) []byte { return make([]byte, n) }

// What is kept is counted under the function that allocated it; what was
// dropped is not; a frame that is not on the stack matches nothing.
func TestInUse(t *testing.T) {
	defer heapsite.RecordAll()()
	for i := 0; i < 10; i++ {
		kept = append(kept, allocKept(10_000))
		_ = allocDropped(10_000)
	}
	self := "github.com/sigil-id/sigil/internal/heapsite_test.allocKept"
	bytes, objects := heapsite.InUse(self)
	if objects != 10 || bytes < 10*10_000 || bytes > 10*12_288 {
		t.Fatalf("kept: %d bytes in %d objects, want 10 objects of 10,000 bytes (size classes round up)", bytes, objects)
	}
	if b, o := heapsite.InUse("github.com/sigil-id/sigil/internal/heapsite_test.allocDropped"); o != 0 {
		t.Fatalf("dropped: %d bytes in %d objects still in use", b, o)
	}
	if _, o := heapsite.InUse(self, "no/such.function"); o != 0 {
		t.Fatalf("a frame not on the stack matched %d objects", o)
	}
	kept = nil
	if b, o := heapsite.InUse(self); o != 0 {
		t.Fatalf("after dropping them: %d bytes in %d objects", b, o)
	}
}
