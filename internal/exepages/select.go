// Package exepages returns to the kernel the pages of the running
// executable that the process mapped but does not use.
//
// On Linux each fault on a file mapping maps, besides the page asked for,
// the neighbouring pages that are already in the page cache (the kernel's
// fault-around, 64 KiB by default). A Go daemon's initialisation touches
// a few hundred pages spread over its whole text and read-only data, so
// nearly the whole executable ends up mapped and counted in its resident
// memory, although the idle process runs a small part of it.
//
// Drop, called once the process is ready and its start-up work is done,
// selects the executable's read-only mappings that hold no private copy
// (Select), advises MADV_DONTNEED on them (their pages leave this
// process's page tables), then asks the kernel (POSIX_FADV_DONTNEED) to
// drop from the page cache the pages of those ranges of the file that no
// process maps any more. From then on a fault maps its own page and only
// the neighbours in the page cache, that is those some fault read back
// since (with its readahead): the resident executable follows the code
// the process runs, not the code its initialisation ran. Faults on the
// read-only data (type descriptors, constants, function tables), which
// the garbage collector reads a few scattered pages at a time, read no
// more than their page (MADV_RANDOM); optionally code faults do too
// (Readahead).
//
// Unmap, called once at start, takes the pages out of the process's page
// tables and nothing else: what the initialisation touched stays in the
// page cache but is not counted while the daemon's start-up work (an
// agent's first full sync) runs.
//
// It is never destructive: the pages are the file's, unchanged; a later
// access maps them again (a minor fault if they are still cached, a read
// of one page from disk otherwise). Writable mappings and mappings with
// private (anonymous) pages are never advised: MADV_DONTNEED would discard
// their contents.
package exepages

import (
	"fmt"

	"github.com/sigil-id/sigil/internal/procfs"
)

// Select returns the mappings of ms that Drop may advise: mappings of the
// file with device major:minor and inode ino that are not writable and
// hold no anonymous page (a private mapping that was ever written, such
// as a dynamically linked binary's relocated read-only data, holds copies
// that MADV_DONTNEED would throw away). A mapping without an "Anonymous:"
// line is not selected.
func Select(ms []procfs.SmapsMapping, major, minor uint32, ino uint64) []procfs.SmapsMapping {
	var out []procfs.SmapsMapping
	for _, m := range ms {
		if ino == 0 || m.Inode != ino || m.Major != major || m.Minor != minor {
			continue
		}
		if m.Write || !m.HaveAnonymous || m.Anonymous != 0 || m.End <= m.Start {
			continue
		}
		out = append(out, m)
	}
	return out
}

// Result says what one Drop did.
type Result struct {
	// Mappings is how many mappings were advised.
	Mappings int
	// Size is the bytes of address range advised.
	Size uint64
	// Resident is the bytes of those mappings that were resident
	// before (their Rss in /proc/self/smaps).
	Resident uint64
	// Random is the bytes of address range also advised MADV_RANDOM
	// (Readahead).
	Random uint64
	// Unmapped says the pages were only unmapped, the page cache kept
	// (Unmap, the step at start), not dropped.
	Unmapped bool
	// Again says the unmap is one of those repeated until the first
	// drop, not the one at start.
	Again bool
}

// Readahead says where a fault on the executable still reads ahead once
// Drop has dropped its pages. On a fault the kernel reads the pages
// around the one asked for into its cache (readahead), and maps those of
// them already cached (fault-around, 64 KiB); with MADV_RANDOM it reads
// only the page asked for, so the fault maps that page and any cached
// neighbours only.
type Readahead int

const (
	// ReadaheadCode, the default, keeps readahead on the executable's
	// code (its executable mapping) and turns it off on its read-only
	// data: type descriptors, constants and the function tables
	// (.gopclntab: each function's pc-value tables and stack maps). The
	// garbage collector reads those in every cycle, a few scattered
	// pages at a time (the type of each object it scans, the stack map
	// of each function on a goroutine's stack), and each such fault
	// brought its neighbourhood back with readahead: about 5.5 MiB of an
	// idle server's resident memory (docs/memory.md). Code run for the
	// first time after a drop still has its neighbours read ahead; the
	// data it reads comes a page at a time (about 100 reads more for an
	// agent's first Workload API fetch, 7 ms on the machine of
	// docs/memory.md).
	ReadaheadCode Readahead = iota
	// ReadaheadAll keeps the kernel's readahead everywhere.
	ReadaheadAll
	// ReadaheadNone turns readahead off on every mapping Drop advises:
	// the idle process keeps the fewest pages, but code run for the first
	// time after a drop reads its pages from disk one at a time (about
	// 240 reads for an agent's first Workload API fetch, 175 ms more on
	// the machine of docs/memory.md).
	ReadaheadNone
)

// String names r (in logs and test names).
func (r Readahead) String() string {
	switch r {
	case ReadaheadCode:
		return "code"
	case ReadaheadAll:
		return "all"
	case ReadaheadNone:
		return "none"
	}
	return fmt.Sprintf("Readahead(%d)", int(r))
}
