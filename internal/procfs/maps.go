package procfs

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
)

// Mapping is one memory mapping, as a line of /proc/PID/maps (and the
// first line of each mapping in /proc/PID/smaps) describes it:
//
//	start-end perms offset major:minor inode   pathname
type Mapping struct {
	Start, End uint64 // the virtual address range, End exclusive
	// Read, Write, Exec and Shared are the four permission letters
	// (rwx, then s for MAP_SHARED or p for private).
	Read, Write, Exec, Shared bool
	Offset                    uint64 // offset in the file of Start
	Major, Minor              uint32 // the file's device
	Inode                     uint64 // the file's inode; 0 for anonymous memory
	Path                      string // may be empty, or [heap], [stack]…
}

// ErrMalformedMaps is returned (wrapped, with the line) for a maps or
// smaps line that is not in the kernel's format.
var ErrMalformedMaps = errors.New("procfs: malformed maps line")

// maxMapsLine bounds one line; the kernel's lines are a path (PATH_MAX,
// 4096) plus about 75 bytes.
const maxMapsLine = 8192

// ParseMapsLine parses one line of /proc/PID/maps. It never keeps a
// reference to line.
func ParseMapsLine(line []byte) (Mapping, error) {
	bad := func() (Mapping, error) {
		if len(line) > 120 {
			line = line[:120]
		}
		return Mapping{}, fmt.Errorf("%w: %q", ErrMalformedMaps, line)
	}
	if len(line) > maxMapsLine {
		return bad()
	}
	var f [5][]byte
	rest := line
	for i := range f {
		rest = bytes.TrimLeft(rest, " ")
		end := bytes.IndexByte(rest, ' ')
		if end < 0 {
			if i < 4 {
				return bad()
			}
			end = len(rest)
		}
		f[i], rest = rest[:end], rest[end:]
	}
	lo, hi, found := bytes.Cut(f[0], []byte("-"))
	if !found {
		return bad()
	}
	start, err1 := strconv.ParseUint(string(lo), 16, 64)
	end, err2 := strconv.ParseUint(string(hi), 16, 64)
	major, minor, found := bytes.Cut(f[3], []byte(":"))
	if !found {
		return bad()
	}
	maj, err3 := strconv.ParseUint(string(major), 16, 32)
	min, err4 := strconv.ParseUint(string(minor), 16, 32)
	ino, err5 := strconv.ParseUint(string(f[4]), 10, 64)
	off, err6 := strconv.ParseUint(string(f[2]), 16, 64)
	if errors.Join(err1, err2, err3, err4, err5, err6) != nil || end < start || len(f[1]) != 4 {
		return bad()
	}
	p := f[1]
	if !(p[0] == 'r' || p[0] == '-') || !(p[1] == 'w' || p[1] == '-') || !(p[2] == 'x' || p[2] == '-') ||
		!(p[3] == 's' || p[3] == 'p') {
		return bad()
	}
	return Mapping{
		Start: start, End: end,
		Read: p[0] == 'r', Write: p[1] == 'w', Exec: p[2] == 'x', Shared: p[3] == 's',
		Offset: off,
		Major:  uint32(maj), Minor: uint32(min),
		Inode: ino,
		Path:  string(bytes.TrimLeft(rest, " ")),
	}, nil
}

// SmapsMapping is one mapping of /proc/PID/smaps with the sizes this
// package's users need, in bytes.
type SmapsMapping struct {
	Mapping
	Rss       uint64 // resident pages of the mapping ("Rss:")
	Anonymous uint64 // of which private copies or anonymous pages ("Anonymous:")
	// HaveAnonymous says the mapping had an "Anonymous:" line: without
	// it, Anonymous is unknown, not 0.
	HaveAnonymous bool
}

// maxSmapsMappings bounds the mappings ParseSmaps returns; a Go process
// has a few dozen (the kernel's own limit, vm.max_map_count, is 65530).
const maxSmapsMappings = 1 << 16

// ParseSmaps parses the contents of a /proc/PID/smaps file: each mapping's
// header line (as ParseMapsLine) and its "Rss:" and "Anonymous:" lines;
// other lines of a mapping ("Key: value…") are skipped. A size line
// before any header, a size line repeated within a mapping, a size that is
// not "N kB" or overflows, or more than 65536 mappings is an error
// wrapping ErrMalformedMaps.
func ParseSmaps(b []byte) ([]SmapsMapping, error) {
	var out []SmapsMapping
	var haveRss, haveAnon bool
	for len(b) > 0 {
		var line []byte
		line, b, _ = bytes.Cut(b, []byte{'\n'})
		if len(line) == 0 {
			continue
		}
		key, val, isField := fieldLine(line)
		if !isField {
			m, err := ParseMapsLine(line)
			if err != nil {
				return nil, err
			}
			if len(out) == maxSmapsMappings {
				return nil, fmt.Errorf("%w: more than %d mappings", ErrMalformedMaps, maxSmapsMappings)
			}
			out = append(out, SmapsMapping{Mapping: m})
			haveRss, haveAnon = false, false
			continue
		}
		if len(out) == 0 {
			if string(key) == "Rss" || string(key) == "Anonymous" {
				return nil, fmt.Errorf("%w: %s before any mapping", ErrMalformedMaps, key)
			}
			continue
		}
		last := &out[len(out)-1]
		var dst *uint64
		var seen *bool
		switch string(key) {
		case "Rss":
			dst, seen = &last.Rss, &haveRss
		case "Anonymous":
			dst, seen = &last.Anonymous, &haveAnon
		default:
			continue
		}
		if *seen {
			return nil, fmt.Errorf("%w: %s repeated", ErrMalformedMaps, key)
		}
		n, err := parseKB(val)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrMalformedMaps, key, err)
		}
		*dst, *seen = n, true
		last.HaveAnonymous = haveAnon
	}
	return out, nil
}

// fieldLine splits a "Key:   value" line of smaps. A header line's first
// token (an address range) holds no colon, a field's key no space.
func fieldLine(line []byte) (key, val []byte, ok bool) {
	i := bytes.IndexAny(line, ": ")
	if i <= 0 || line[i] != ':' {
		return nil, nil, false
	}
	return line[:i], line[i+1:], true
}

// parseKB parses "   123 kB" into bytes.
func parseKB(val []byte) (uint64, error) {
	num, ok := bytes.CutSuffix(bytes.TrimSpace(val), []byte(" kB"))
	if !ok {
		return 0, errors.New("not in kB")
	}
	n, err := strconv.ParseUint(string(bytes.TrimSpace(num)), 10, 64)
	if err != nil || n > 1<<53 {
		return 0, errors.New("bad size")
	}
	return n << 10, nil
}
