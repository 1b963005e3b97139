// Package heapsite reports the heap memory still in use that was
// allocated under given functions, read from the runtime's memory
// profile. It is for tests that pin where long-lived memory comes from:
// that a server keeps no buffer of some kind per connection, say, which
// a total of the heap cannot tell apart from everything else a
// connection holds.
package heapsite

import (
	"runtime"
	"slices"
)

// RecordAll makes the runtime record every allocation in its memory
// profile from now on (runtime.MemProfileRate = 1) and returns a function
// that restores the previous rate. Allocations made before it are in the
// profile only as sampled at the previous rate. It is not safe to call
// from parallel tests.
func RecordAll() (restore func()) {
	old := runtime.MemProfileRate
	runtime.MemProfileRate = 1
	return func() { runtime.MemProfileRate = old }
}

// InUse runs two garbage collections, so that the profile holds what was
// freed up to now, and returns the bytes and objects in use that were
// allocated with every one of frames on the call stack. A frame is a
// function's full name as runtime.Frame.Function reports it (for example
// "bufio.NewReaderSize" or "google.golang.org/grpc.(*Server).Serve"),
// inlined calls included; it matches whole.
func InUse(frames ...string) (bytes, objects int64) {
	runtime.GC()
	runtime.GC()
	var recs []runtime.MemProfileRecord
	for {
		n, ok := runtime.MemProfile(recs, false)
		if ok {
			recs = recs[:n]
			break
		}
		recs = make([]runtime.MemProfileRecord, n+64)
	}
	for i := range recs {
		r := &recs[i]
		if r.InUseObjects() == 0 || !hasAll(r.Stack(), frames) {
			continue
		}
		bytes += r.InUseBytes()
		objects += r.InUseObjects()
	}
	return bytes, objects
}

// hasAll reports whether every one of frames is a function of stack.
func hasAll(stack []uintptr, frames []string) bool {
	seen := make([]bool, len(frames))
	it := runtime.CallersFrames(stack)
	for {
		f, more := it.Next()
		if i := slices.Index(frames, f.Function); i >= 0 {
			seen[i] = true
		}
		if !more {
			break
		}
	}
	return !slices.Contains(seen, false)
}
