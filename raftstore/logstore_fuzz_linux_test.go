package raftstore

import (
	"fmt"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// FuzzParseMapsLine: any line gives either a clear error or a mapping
// whose range is ordered, whose permissions decided shared, and which
// formats back to a line that parses to the same mapping.
func FuzzParseMapsLine(f *testing.F) {
	for _, s := range []string{
		"7f2928000000-7f292a000000 r--s 00000000 08:01 1234567                    /data/raft/raft.db",
		"00400000-0133f000 r-xp 00000000 fd:1a 42 /usr/bin/a b (deleted)",
		"1dfac0400000-1dfac8000000 rw-p 00000000 00:00 0 ",
		"7ffd5e9f2000-7ffd5ea13000 rw-p 00000000 00:00 0                          [stack]",
		"7f29-7f2a r--s 0 08:01 1 /x",
		"",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		m, ok, err := parseMapsLine(line)
		if err != nil {
			if ok || m != (fileMapping{}) {
				t.Fatalf("%q: error %v with a mapping %+v", line, err, m)
			}
			if !strings.Contains(err.Error(), "unexpected line in /proc/self/maps") {
				t.Fatalf("%q: unclear error %v", line, err)
			}
			return
		}
		if !ok {
			if m != (fileMapping{}) {
				t.Fatalf("%q: not a file mapping but %+v", line, m)
			}
			return
		}
		if m.end < m.start || m.ino == 0 {
			t.Fatalf("%q: bad mapping %+v", line, m)
		}
		perms := "r--p"
		if m.shared {
			perms = "r--s"
		}
		again := fmt.Sprintf("%x-%x %s 0 %x:%x %d %s", m.start, m.end, perms,
			unix.Major(m.dev), unix.Minor(m.dev), m.ino, m.path)
		m2, ok2, err := parseMapsLine([]byte(again))
		if err != nil || !ok2 || m2 != m {
			t.Fatalf("%q: %+v formats to %q, which parses to %+v %v %v", line, m, again, m2, ok2, err)
		}
	})
}
