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
// comment) and returns what it advised. With random set it also advises
// MADV_RANDOM, which turns off the kernel's readahead on later faults on
// them: each fault then reads only its page, so fewer pages come back,
// but code run for the first time afterwards waits for one disk read per
// page (Config.Random). It fails with nothing changed
// when /proc/self/exe or /proc/self/smaps cannot be read, and stops at the
// first madvise that fails. Dropping the file's cached pages is best
// effort: its error is returned with the Result of what was advised.
func Drop(random bool) (Result, error) {
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
	for _, m := range sel {
		size := uintptr(m.End - m.Start)
		advice := []int{unix.MADV_DONTNEED}
		if random {
			advice = []int{unix.MADV_RANDOM, unix.MADV_DONTNEED}
		}
		for _, advice := range advice {
			if _, _, errno := unix.Syscall(unix.SYS_MADVISE, uintptr(m.Start), size, uintptr(advice)); errno != 0 {
				return res, fmt.Errorf("exepages: madvise %#x-%#x: %w", m.Start, m.End, errno)
			}
		}
		res.Mappings++
		res.Size += m.End - m.Start
		res.Resident += m.Rss
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
