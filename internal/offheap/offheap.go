// Package offheap allocates pointer-free memory outside the Go heap.
//
// Large tables of plain integers and bytes (the agent's cold store of
// registration entries: a million records in byte chunks and their
// index tables) cost twice their size in a Go heap: the collector lets
// the heap grow to GOGC percent beyond the live heap before it runs, and
// it counts every live byte towards that goal. Memory mapped here with
// mmap(2) (private, anonymous) is neither scanned nor counted by the
// collector, and it is returned to the kernel (munmap) as soon as it is
// freed.
//
// The contract is strict: NO GO POINTER MAY EVER BE STORED IN MEMORY
// FROM THIS PACKAGE (the collector does not see it, so what it points to
// could be freed while still referenced). MakeSlice refuses element
// types that hold pointers, and Bytes hands out bytes only. A slice must
// not be used after Free, FreeAll or the Arena's cleanup: the pages are
// unmapped and touching them faults.
//
// Allocations smaller than MinMapped come from the Go heap (a mapping
// is at least a page and costs a system call), so a small arena costs
// what a few slices do.
package offheap

import (
	"fmt"
	"reflect"
	"runtime"
	"sync/atomic"
	"unsafe"
)

// MinMapped is the size in bytes from which an allocation is mapped
// outside the Go heap; smaller ones are ordinary Go slices.
const MinMapped = 64 << 10

// inUse counts the bytes mapped by every arena of the process.
var inUse atomic.Int64

// InUse is how many bytes all arenas of the process have mapped now.
func InUse() int64 { return inUse.Load() }

// Arena is a set of mappings freed together or one by one. Its zero
// value and nil are not usable for mappings: a nil *Arena allocates
// everything on the Go heap. An Arena is not safe for concurrent use.
//
// When an Arena becomes unreachable, what it still has mapped is
// unmapped (runtime.AddCleanup): memory from an arena must therefore
// only be used while the arena is reachable (typically, the arena and
// the slices are fields of the same struct).
type Arena struct {
	m   *mappings
	min int // MinMapped, or less for tests
}

// mappings are an arena's live mappings, apart from the Arena so that
// the cleanup can hold them without keeping the Arena reachable.
type mappings struct {
	blocks map[*byte]int // first byte -> mapped length
	bytes  int64
}

// New returns an empty arena.
func New() *Arena { return NewMin(MinMapped) }

// NewMin returns an empty arena that maps every allocation of at least
// min bytes (at least 1): a small min makes tests touch mapped memory
// (a use after free faults) with small tables.
func NewMin(min int) *Arena {
	a := &Arena{m: &mappings{blocks: make(map[*byte]int)}, min: max(min, 1)}
	runtime.AddCleanup(a, func(m *mappings) { m.freeAll() }, a.m)
	return a
}

// Size is how many bytes a has mapped now.
func (a *Arena) Size() int64 {
	if a == nil {
		return 0
	}
	return a.m.bytes
}

// Bytes returns n zero bytes (len and cap n), mapped when n is at least
// MinMapped.
func (a *Arena) Bytes(n int) []byte {
	if n < 0 {
		panic(fmt.Sprintf("offheap: negative size %d", n))
	}
	if a == nil || n < a.min || n == 0 {
		return make([]byte, n)
	}
	if !canMap {
		return make([]byte, n)
	}
	b, err := mmap(n)
	if err != nil {
		// Out of address space or memory: as the Go heap would.
		panic(fmt.Sprintf("offheap: mapping %d bytes: %v", n, err))
	}
	a.m.blocks[unsafe.SliceData(b)] = len(b)
	a.m.bytes += int64(len(b))
	inUse.Add(int64(len(b)))
	return b[:n:n]
}

// Free returns b, a slice that Bytes returned (any length, the same
// first byte), to the kernel if it is mapped; a slice of the Go heap or
// of another arena is left to the collector. b must not be used after.
func (a *Arena) Free(b []byte) {
	if a == nil || cap(b) == 0 {
		return
	}
	p := unsafe.SliceData(b)
	n, ok := a.m.blocks[p]
	if !ok {
		return
	}
	delete(a.m.blocks, p)
	a.m.unmap(p, n)
}

// Release returns to the kernel the whole pages of b[from:to], where b
// is a slice Bytes returned (any length, the same first byte), if it is
// mapped (on Linux; elsewhere it does nothing): what they held is lost
// (they read as zeros), so release only what is no longer read; they
// are resident again only when written. b stays allocated (Free it as
// before). Release does nothing to Go memory.
func (a *Arena) Release(b []byte, from, to int) {
	if a == nil || cap(b) == 0 || from >= to {
		return
	}
	n, ok := a.m.blocks[unsafe.SliceData(b)]
	if !ok {
		return
	}
	if from < 0 || to > n {
		panic(fmt.Sprintf("offheap: release of [%d:%d] of %d bytes", from, to, n))
	}
	page := pageSize()
	lo := (from + page - 1) / page * page
	hi := to / page * page
	if lo >= hi {
		return
	}
	if err := release(unsafe.Slice(unsafe.SliceData(b), n)[lo:hi]); err != nil {
		panic(fmt.Sprintf("offheap: releasing %d bytes: %v", hi-lo, err))
	}
}

// ReleaseSlice is Release for elements [from:to) of s, a slice
// MakeSlice returned (the same first element).
func ReleaseSlice[T any](a *Arena, s []T, from, to int) {
	if cap(s) == 0 {
		return
	}
	var zero T
	size := int(unsafe.Sizeof(zero))
	a.Release(unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(s))), cap(s)*size), from*size, to*size)
}

// FreeAll unmaps everything a has mapped; none of it may be used after.
func (a *Arena) FreeAll() {
	if a != nil {
		a.m.freeAll()
	}
}

func (m *mappings) freeAll() {
	for p, n := range m.blocks {
		delete(m.blocks, p)
		m.unmap(p, n)
	}
}

func (m *mappings) unmap(p *byte, n int) {
	if err := munmap(unsafe.Slice(p, n)); err != nil {
		panic(fmt.Sprintf("offheap: unmapping %d bytes: %v", n, err))
	}
	m.bytes -= int64(n)
	inUse.Add(-int64(n))
}

// MakeSlice returns a slice of n zero Ts (len and cap n) from a. T must
// hold no pointers (no pointer, string, slice, map, channel, function
// or interface, at any depth); MakeSlice panics otherwise.
func MakeSlice[T any](a *Arena, n int) []T {
	var zero T
	t := reflect.TypeOf(zero)
	if hasPointers(t) {
		panic(fmt.Sprintf("offheap: %v holds pointers", t))
	}
	size := int(t.Size())
	if size == 0 || n == 0 {
		return make([]T, n)
	}
	if n > (1<<62)/size {
		panic(fmt.Sprintf("offheap: %d elements of %d bytes", n, size))
	}
	if a == nil || n*size < a.min || !canMap {
		return make([]T, n)
	}
	b := a.Bytes(n * size)
	return unsafe.Slice((*T)(unsafe.Pointer(unsafe.SliceData(b))), n)
}

// FreeSlice returns s, a slice that MakeSlice returned (any length, the
// same first element), as Free does.
func FreeSlice[T any](a *Arena, s []T) {
	if cap(s) == 0 {
		return
	}
	var zero T
	n := cap(s) * int(unsafe.Sizeof(zero))
	a.Free(unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(s))), n))
}

// Grow returns s with room for at least need more elements: s itself
// when it has it, else a copy in a new slice of a (about twice as large)
// after s is freed.
func Grow[T any](a *Arena, s []T, need int) []T {
	if cap(s)-len(s) >= need {
		return s
	}
	out := MakeSlice[T](a, max(2*cap(s), len(s)+need, 16))[:len(s)]
	copy(out, s)
	FreeSlice(a, s)
	return out
}

// Append is append(s, v...) for a slice of a: when s is full it grows
// in a (Grow), never on the Go heap.
func Append[T any](a *Arena, s []T, v ...T) []T {
	s = Grow(a, s, len(v))
	return append(s, v...)
}

// Clone returns a copy of s in a, with cap len(s).
func Clone[T any](a *Arena, s []T) []T {
	out := MakeSlice[T](a, len(s))
	copy(out, s)
	return out
}

func hasPointers(t reflect.Type) bool {
	switch t.Kind() {
	case reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64,
		reflect.Float32, reflect.Float64, reflect.Complex64, reflect.Complex128:
		return false
	case reflect.Array:
		return t.Len() > 0 && hasPointers(t.Elem())
	case reflect.Struct:
		for i := range t.NumField() {
			if hasPointers(t.Field(i).Type) {
				return true
			}
		}
		return false
	default: // pointers, uintptr (may hide one), strings, slices, maps, ...
		return true
	}
}
