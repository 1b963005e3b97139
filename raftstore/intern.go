package raftstore

import (
	"unsafe"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// interner shares the parent IDs and selectors of stored entries: every
// entry with a given parent ID holds the same string, every entry with a
// given selector the same *sigilv1.Selector (stored entries are never
// modified, so their selectors can be shared). Each shared value is
// counted, and forgotten when no stored entry of the writer's version
// holds it any more; a map is rebuilt smaller once a quarter of what it
// held at its largest is gone, since Go maps do not shrink.
//
// The interner only ever saves memory: a value it lost count of (a write
// transaction that was aborted after interning, a table restored from
// another lineage) is at worst held twice, never changed. It is used by
// the one goroutine that writes the table lineage it belongs to (the FSM's
// apply goroutine, or a snapshot being loaded), never by readers.
type interner struct {
	strs     map[string]strRef
	sels     map[string]selRef // by selector value
	peakStrs int               // the largest len(strs) since strs was last rebuilt
	peakSels int
}

type strRef struct {
	s string // the shared copy
	n int32  // stored entries holding it
}

type selRef struct {
	sel *sigilv1.Selector // the shared selector
	n   int32
}

// internShrinkMin is the map size below which a map is never rebuilt.
const internShrinkMin = 1024

func newInterner() *interner {
	return &interner{strs: make(map[string]strRef), sels: make(map[string]selRef)}
}

// internEntry replaces e's parent ID and selectors by their shared copies
// and counts them. e must not be stored yet.
func (in *interner) internEntry(e *sigilv1.Entry) {
	e.ParentId = in.str(e.ParentId)
	for i, s := range e.Selectors {
		if s != nil {
			e.Selectors[i] = in.sel(s)
		}
	}
}

// releaseEntry uncounts the shared values of e, an entry leaving the
// table.
func (in *interner) releaseEntry(e *sigilv1.Entry) {
	in.dropStr(e.ParentId)
	for _, s := range e.Selectors {
		if s != nil {
			in.dropSel(s)
		}
	}
}

func (in *interner) str(s string) string {
	if s == "" {
		return ""
	}
	r, ok := in.strs[s]
	if !ok {
		r.s = s
	}
	r.n++
	in.strs[r.s] = r // keyed by the shared copy (see sel)
	in.peakStrs = max(in.peakStrs, len(in.strs))
	return r.s
}

func (in *interner) dropStr(s string) {
	r, ok := in.strs[s]
	if !ok || unsafe.StringData(r.s) != unsafe.StringData(s) {
		return // not the shared copy: nothing of it is counted
	}
	if r.n--; r.n > 0 {
		in.strs[s] = r
		return
	}
	delete(in.strs, s)
	if in.peakStrs > internShrinkMin && len(in.strs) < in.peakStrs/4*3 {
		m := make(map[string]strRef, len(in.strs))
		for k, v := range in.strs {
			m[k] = v
		}
		in.strs, in.peakStrs = m, len(m)
	}
}

func (in *interner) sel(s *sigilv1.Selector) *sigilv1.Selector {
	if len(s.ProtoReflect().GetUnknown()) != 0 {
		// Fields of a later version: kept as they are, not shared.
		return s
	}
	r, ok := in.sels[s.Value]
	switch {
	case !ok:
		r.sel = s // owned by the table from now on, like its entry
	case r.sel.Type != s.Type:
		// Keyed by value alone (a smaller map): a selector of another
		// type with the same value is not shared.
		return s
	}
	r.n++
	// Keyed by the shared string: assigning to a string key replaces the
	// stored key, which must not hold on to the caller's copy.
	in.sels[r.sel.Value] = r
	in.peakSels = max(in.peakSels, len(in.sels))
	return r.sel
}

func (in *interner) dropSel(s *sigilv1.Selector) {
	r, ok := in.sels[s.Value]
	if !ok || r.sel != s {
		return // not the shared selector: nothing of it is counted
	}
	if r.n--; r.n > 0 {
		in.sels[s.Value] = r
		return
	}
	delete(in.sels, s.Value)
	if in.peakSels > internShrinkMin && len(in.sels) < in.peakSels/4*3 {
		m := make(map[string]selRef, len(in.sels))
		for k, v := range in.sels {
			m[k] = v
		}
		in.sels, in.peakSels = m, len(m)
	}
}
