package exepages

import (
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sigil-id/sigil/internal/procfs"
)

// Drop advises the executable's selected mappings (see the package
// comment) and returns what it advised. ra says where later faults still
// read ahead (Readahead): where they do not, Drop also advises
// MADV_RANDOM, so that each fault reads only its page. It fails with
// nothing changed when /proc/self/exe or /proc/self/smaps cannot be
// read, and stops at the first madvise that fails. Dropping the file's
// cached pages is best effort: its error is returned with the Result of
// what was advised.
func Drop(ra Readahead) (Result, error) {
	return drop(ra, true)
}

// Unmap advises MADV_DONTNEED on the executable's selected mappings and
// nothing else: their pages leave this process's page tables but stay in
// the page cache, so that code run afterwards maps its pages back with a
// minor fault (and the kernel's fault-around), without a disk read. It is
// the step at start (Run): the initialisation of a Go program touches
// pages all over the executable (every package's init), and the work
// that follows, such as an agent's first full sync, would otherwise run
// with all of them resident.
func Unmap() (Result, error) {
	res, err := drop(ReadaheadAll, false)
	res.Unmapped = true
	return res, err
}

// drop is Drop, and with evict false Unmap.
func drop(ra Readahead, evict bool) (Result, error) {
	var res Result
	exe, err := os.Open("/proc/self/exe")
	if err != nil {
		return res, fmt.Errorf("exepages: %w", err)
	}
	defer exe.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(exe.Fd()), &st); err != nil {
		return res, fmt.Errorf("exepages: fstat /proc/self/exe: %w", err)
	}
	var ms []procfs.SmapsMapping
	if err := procfs.Read("/proc/self/smaps", func(b []byte) error {
		ms, err = procfs.ParseSmaps(b)
		return err
	}); err != nil {
		return res, fmt.Errorf("exepages: %w", err)
	}
	sel := Select(ms, unix.Major(uint64(st.Dev)), unix.Minor(uint64(st.Dev)), st.Ino)
	var random []procfs.SmapsMapping
	for _, m := range sel {
		if ra == ReadaheadNone || (ra == ReadaheadCode && !m.Exec) {
			random = append(random, m)
		}
	}
	// MADV_RANDOM first: a fault between the two advices would otherwise
	// read ahead once more.
	for _, m := range random {
		if _, _, errno := unix.Syscall(unix.SYS_MADVISE, uintptr(m.Start), uintptr(m.End-m.Start), unix.MADV_RANDOM); errno != 0 {
			return res, fmt.Errorf("exepages: madvise random %#x-%#x: %w", m.Start, m.End, errno)
		}
		res.Random += m.End - m.Start
	}
	for _, m := range sel {
		if _, _, errno := unix.Syscall(unix.SYS_MADVISE, uintptr(m.Start), uintptr(m.End-m.Start), unix.MADV_DONTNEED); errno != 0 {
			return res, fmt.Errorf("exepages: madvise %#x-%#x: %w", m.Start, m.End, errno)
		}
		res.Mappings++
		res.Size += m.End - m.Start
		res.Resident += m.Rss
	}
	if !evict {
		return res, nil
	}
	var errs []error
	for _, m := range sel {
		if err := unix.Fadvise(int(exe.Fd()), int64(m.Offset), int64(m.End-m.Start), unix.FADV_DONTNEED); err != nil {
			errs = append(errs, fmt.Errorf("exepages: fadvise: %w", err))
			break
		}
	}
	return res, errors.Join(errs...)
}

// supported says Drop does something on this system.
const supported = true

// ProcessCPU returns the user and system CPU time the process used so
// far (0 if getrusage fails).
func ProcessCPU() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
