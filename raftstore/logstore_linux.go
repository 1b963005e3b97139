package raftstore

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/sigil-id/sigil/internal/procfs"
)

// fileMapping is one range of /proc/self/maps.
type fileMapping struct {
	start, end uintptr
	shared     bool   // perms end in 's': MAP_SHARED
	dev        uint64 // device, as unix.Mkdev(major, minor)
	ino        uint64
	path       string
}

// dropFileMappings advises MADV_DONTNEED on every shared mapping of the
// file at path in this process, and returns the bytes of mapping advised.
// On a shared file mapping that is never destructive: it removes the
// pages from the process's page tables, and the next access maps the
// file's current bytes again from the page cache (or the disk). Private
// mappings, whose pages may be private copies, are left alone.
func dropFileMappings(path string) (int64, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return 0, err
	}
	if real, err := filepath.EvalSymlinks(abs); err == nil {
		abs = real
	}
	var st unix.Stat_t
	if err := unix.Stat(abs, &st); err != nil {
		return 0, err
	}
	maps, err := readFileMappings()
	if err != nil {
		return 0, err
	}
	var n int64
	for _, m := range maps {
		if !m.shared || !(m.path == abs || (m.ino == st.Ino && m.dev == st.Dev)) {
			continue
		}
		if _, _, errno := unix.Syscall(unix.SYS_MADVISE, m.start, m.end-m.start, unix.MADV_DONTNEED); errno != 0 {
			return n, fmt.Errorf("madvise %#x-%#x: %w", m.start, m.end, errno)
		}
		n += int64(m.end - m.start)
	}
	return n, nil
}

// readFileMappings parses /proc/self/maps, keeping the file mappings.
func readFileMappings() ([]fileMapping, error) {
	data, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return nil, err
	}
	var out []fileMapping
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		m, ok, err := parseMapsLine(sc.Bytes())
		if err != nil {
			return nil, err
		}
		if ok {
			out = append(out, m)
		}
	}
	return out, sc.Err()
}

// parseMapsLine parses one line of /proc/PID/maps (procfs.ParseMapsLine).
// ok is false for anonymous mappings (inode 0).
func parseMapsLine(line []byte) (m fileMapping, ok bool, err error) {
	pm, err := procfs.ParseMapsLine(line)
	if err != nil {
		if len(line) > 120 {
			line = line[:120]
		}
		return fileMapping{}, false, fmt.Errorf("unexpected line in /proc/self/maps: %q", line)
	}
	if pm.Inode == 0 {
		return fileMapping{}, false, nil
	}
	return fileMapping{
		start:  uintptr(pm.Start),
		end:    uintptr(pm.End),
		shared: pm.Shared,
		dev:    unix.Mkdev(pm.Major, pm.Minor),
		ino:    pm.Inode,
		path:   pm.Path,
	}, true, nil
}
