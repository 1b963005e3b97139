package offheap

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"unsafe"
)

// Mapped memory is counted while held and returned when freed, one
// block at a time or all at once; small allocations stay on the Go heap.
func TestArenaCountsAndFrees(t *testing.T) {
	before := InUse()
	a := New()
	small := a.Bytes(100)
	if a.Size() != 0 || len(small) != 100 {
		t.Fatalf("a small allocation mapped %d bytes (len %d)", a.Size(), len(small))
	}
	b := a.Bytes(MinMapped + 1)
	c := a.Bytes(3 * MinMapped)
	if len(b) != MinMapped+1 || cap(b) != MinMapped+1 {
		t.Fatalf("len %d cap %d, want %d", len(b), cap(b), MinMapped+1)
	}
	for i := range b {
		if b[i] != 0 {
			t.Fatalf("byte %d is %d, want zero", i, b[i])
		}
	}
	b[0], b[len(b)-1], c[len(c)-1] = 1, 2, 3
	if got := a.Size(); got != 4*MinMapped+1 {
		t.Fatalf("arena holds %d bytes, want %d", got, 4*MinMapped+1)
	}
	if got := InUse() - before; got != 4*MinMapped+1 {
		t.Fatalf("process holds %d more bytes, want %d", got, 4*MinMapped+1)
	}
	a.Free(b[:10]) // any length, same first byte
	if got := a.Size(); got != 3*MinMapped {
		t.Fatalf("after Free the arena holds %d bytes, want %d", got, 3*MinMapped)
	}
	a.Free(small)                   // the Go heap's: ignored
	a.Free(make([]byte, MinMapped)) // not the arena's: ignored
	if got := a.Size(); got != 3*MinMapped {
		t.Fatalf("freeing foreign slices changed the arena to %d bytes", got)
	}
	a.FreeAll()
	if a.Size() != 0 || InUse() != before {
		t.Fatalf("after FreeAll: arena %d bytes, process %d more", a.Size(), InUse()-before)
	}
}

// The mappings really leave the process: the block's addresses are
// mapped while it is held and not after it is freed.
func TestFreeUnmaps(t *testing.T) {
	a := New()
	b := a.Bytes(1 << 20)
	b[0] = 1
	p := uintptr(unsafe.Pointer(&b[0]))
	if !mappedAt(t, p) || !mappedAt(t, p+1<<20-1) {
		t.Fatal("a held block is not among the process's mappings")
	}
	a.Free(b)
	if mappedAt(t, p) || mappedAt(t, p+1<<20-1) {
		t.Fatal("a freed block is still mapped")
	}
}

// An arena nobody holds gives back what it still has mapped.
func TestUnreachableArenaUnmaps(t *testing.T) {
	before := InUse()
	func() {
		a := New()
		_ = a.Bytes(2 * MinMapped)
	}()
	for range 20 {
		runtime.GC()
		if InUse() == before {
			return
		}
		runtime.Gosched()
	}
	t.Fatalf("%d bytes still mapped after the arena became unreachable", InUse()-before)
}

// MakeSlice hands out zeroed, pointer-free elements and refuses types
// that hold pointers; Append and Clone stay in the arena.
func TestMakeSlice(t *testing.T) {
	type rec struct {
		a, b uint32
		c    [3]uint16
	}
	a := New()
	defer a.FreeAll()
	s := MakeSlice[rec](a, MinMapped/8)
	if a.Size() == 0 {
		t.Fatal("a large slice was not mapped")
	}
	s[len(s)-1].c[2] = 7
	var u []uint32
	for i := range 100_000 {
		u = Append(a, u, uint32(i))
	}
	for i, v := range u {
		if v != uint32(i) {
			t.Fatalf("u[%d] = %d", i, v)
		}
	}
	d := Clone(a, u)
	if len(d) != len(u) || cap(d) != len(u) || d[99_999] != 99_999 {
		t.Fatalf("clone: len %d cap %d", len(d), cap(d))
	}
	want := int64(cap(s)*16 + cap(u)*4 + cap(d)*4)
	if got := a.Size(); got != want {
		t.Fatalf("arena holds %d bytes, want %d (grown slices freed)", got, want)
	}
	for _, f := range []func(){
		func() { MakeSlice[*int](a, 10) },
		func() { MakeSlice[string](a, 10) },
		func() { MakeSlice[struct{ x []byte }](a, 10) },
		func() { MakeSlice[[2]any](a, 10) },
		func() { MakeSlice[uintptr](a, 10) },
	} {
		func() {
			defer func() {
				r := recover()
				if r == nil || !strings.Contains(r.(string), "holds pointers") {
					t.Fatalf("a pointer type was accepted (%v)", r)
				}
			}()
			f()
		}()
	}
}

// A nil arena allocates on the Go heap.
func TestNilArena(t *testing.T) {
	var a *Arena
	b := a.Bytes(2 * MinMapped)
	a.Free(b)
	a.FreeAll()
	if len(b) != 2*MinMapped || a.Size() != 0 {
		t.Fatalf("len %d size %d", len(b), a.Size())
	}
	if s := MakeSlice[uint64](a, MinMapped); len(s) != MinMapped {
		t.Fatalf("len %d", len(s))
	}
}

// mappedAt reports whether /proc/self/maps has a mapping holding addr.
func mappedAt(t *testing.T, addr uintptr) bool {
	m, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(m), "\n") {
		var lo, hi uintptr
		if _, err := fmt.Sscanf(line, "%x-%x", &lo, &hi); err == nil && lo <= addr && addr < hi {
			return true
		}
	}
	return false
}

// Release drops the whole pages of a range of a mapped block, and only
// them: the bytes around them are kept, and the block is still freed
// as before.
func TestRelease(t *testing.T) {
	a := NewMin(1)
	page := pageSize()
	b := a.Bytes(8 * page)
	for i := range b {
		b[i] = 1
	}
	a.Release(b, page/2, 5*page+page/2) // pages 1-4 whole
	// (Before reading them: a read maps them again.)
	if got := residentPages(t, b); got != 4 {
		t.Fatalf("%d of 8 pages resident after releasing 4", got)
	}
	for i, v := range b {
		inside := i >= page && i < 5*page
		if inside && v != 0 || !inside && v != 1 {
			t.Fatalf("byte %d (page %d) is %d after release", i, i/page, v)
		}
	}
	s := MakeSlice[uint64](a, 4*page/8)
	for i := range s {
		s[i] = 7
	}
	ReleaseSlice(a, s, 0, page/8)
	if s[0] != 0 || s[page/8] != 7 {
		t.Fatalf("ReleaseSlice: %d %d", s[0], s[page/8])
	}
	a.Release(make([]byte, 4*page), 0, 4*page) // Go memory: nothing
	a.FreeAll()
	if a.Size() != 0 {
		t.Fatal("released blocks not freed")
	}
}

// residentPages counts the pages of b in memory (mincore).
func residentPages(t *testing.T, b []byte) int {
	page := pageSize()
	vec := make([]byte, (len(b)+page-1)/page)
	if _, _, e := syscall.Syscall(syscall.SYS_MINCORE, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
		t.Fatal(e)
	}
	n := 0
	for _, v := range vec {
		n += int(v & 1)
	}
	return n
}
