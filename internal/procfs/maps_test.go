package procfs

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
)

func TestParseMapsLine(t *testing.T) {
	for _, tc := range []struct {
		line string
		want Mapping
	}{
		{"00400000-0133f000 r-xp 00001000 fd:1a 42                 /usr/bin/a b (deleted)",
			Mapping{Start: 0x400000, End: 0x133f000, Read: true, Exec: true, Offset: 0x1000, Major: 0xfd, Minor: 0x1a, Inode: 42, Path: "/usr/bin/a b (deleted)"}},
		{"7f2928000000-7f292a000000 rw-s 00000000 08:01 1234567 /data/raft.db",
			Mapping{Start: 0x7f2928000000, End: 0x7f292a000000, Read: true, Write: true, Shared: true, Major: 8, Minor: 1, Inode: 1234567, Path: "/data/raft.db"}},
		{"1dfac0400000-1dfac8000000 ---p 00000000 00:00 0 ",
			Mapping{Start: 0x1dfac0400000, End: 0x1dfac8000000}},
		{"7ffd5e9f2000-7ffd5ea13000 rw-p 00000000 00:00 0                          [stack]",
			Mapping{Start: 0x7ffd5e9f2000, End: 0x7ffd5ea13000, Read: true, Write: true, Path: "[stack]"}},
	} {
		got, err := ParseMapsLine([]byte(tc.line))
		if err != nil || got != tc.want {
			t.Errorf("%q: %+v, %v; want %+v", tc.line, got, err, tc.want)
		}
	}
	for _, bad := range []string{
		"", "00400000-0133f000 r-xp 00000000 fd:1a", "00400000 r-xp 00000000 fd:1a 42",
		"2000-1000 r-xp 00000000 fd:1a 42", "1000-2000 rwxq 0 fd:1a 42", "1000-2000 r-x 0 fd:1a 42",
		"1000-2000 r-xp 0 fd1a 42", "1000-2000 r-xp zz fd:1a 42", "1000-2000 r-xp 0 fd:1a -1",
		"1000-2000 xr-p 0 fd:1a 42", "1000-2000 r-xp 0 fd:1a 42 " + strings.Repeat("a", maxMapsLine),
	} {
		if m, err := ParseMapsLine([]byte(bad)); !errors.Is(err, ErrMalformedMaps) || m != (Mapping{}) {
			t.Errorf("%q: %+v, %v; want ErrMalformedMaps", bad, m, err)
		}
	}
}

const smapsSample = `55c9ebb1a000-55c9ebb1c000 r--p 00000000 fe:00 247278                     /usr/bin/sigil
Size:                  8 kB
Rss:                   8 kB
Pss:                   8 kB
Anonymous:             0 kB
VmFlags: rd mr mw me 
55c9ebb1c000-55c9ebb22000 r-xp 00002000 fe:00 247278                     /usr/bin/sigil
Rss:                  24 kB
Anonymous:             4 kB
THPeligible:           0
55c9ebb22000-55c9ebb23000 rw-p 00008000 fe:00 247278                     /usr/bin/with: colon
Rss:                   4 kB
`

func TestParseSmaps(t *testing.T) {
	ms, err := ParseSmaps([]byte(smapsSample))
	if err != nil {
		t.Fatal(err)
	}
	want := []SmapsMapping{
		{Mapping: Mapping{Start: 0x55c9ebb1a000, End: 0x55c9ebb1c000, Read: true, Major: 0xfe, Inode: 247278, Path: "/usr/bin/sigil"},
			Rss: 8 << 10, HaveAnonymous: true},
		{Mapping: Mapping{Start: 0x55c9ebb1c000, End: 0x55c9ebb22000, Read: true, Exec: true, Offset: 0x2000, Major: 0xfe, Inode: 247278, Path: "/usr/bin/sigil"},
			Rss: 24 << 10, Anonymous: 4 << 10, HaveAnonymous: true},
		{Mapping: Mapping{Start: 0x55c9ebb22000, End: 0x55c9ebb23000, Read: true, Write: true, Offset: 0x8000, Major: 0xfe, Inode: 247278, Path: "/usr/bin/with: colon"},
			Rss: 4 << 10},
	}
	if fmt.Sprint(ms) != fmt.Sprint(want) {
		t.Fatalf("got  %+v\nwant %+v", ms, want)
	}
	for _, bad := range []string{
		"Rss: 4 kB\n",
		"1000-2000 r-xp 0 fd:1a 42 /x\nRss: 4 kB\nRss: 4 kB\n",
		"1000-2000 r-xp 0 fd:1a 42 /x\nAnonymous: 4 kB\nAnonymous: 0 kB\n",
		"1000-2000 r-xp 0 fd:1a 42 /x\nAnonymous: 4 MB\n",
		"1000-2000 r-xp 0 fd:1a 42 /x\nAnonymous: -4 kB\n",
		"1000-2000 r-xp 0 fd:1a 42 /x\nRss: 99999999999999999999 kB\n",
		"1000-2000 r-xp 0 fd:1a 42 /x\ngarbage line\n",
	} {
		if ms, err := ParseSmaps([]byte(bad)); !errors.Is(err, ErrMalformedMaps) || ms != nil {
			t.Errorf("%q: %+v, %v; want ErrMalformedMaps", bad, ms, err)
		}
	}
}

// The running process's own smaps parses, and its executable is in it.
func TestParseSmapsSelf(t *testing.T) {
	if _, err := os.Stat("/proc/self/smaps"); err != nil {
		t.Skip("no /proc/self/smaps")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	var ms []SmapsMapping
	if err := Read("/proc/self/smaps", func(b []byte) (err error) { ms, err = ParseSmaps(b); return err }); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, m := range ms {
		if m.Path == exe && m.Exec && m.HaveAnonymous && m.Rss > 0 {
			found = true
		}
	}
	if !found {
		t.Fatalf("no resident executable mapping of %s among %d mappings", exe, len(ms))
	}
}

// FuzzParseSmaps: any input gives a clear error and no mappings, or
// mappings whose ranges are ordered and whose sizes are whole KiB, each
// of which formats back to a file that parses to the same.
func FuzzParseSmaps(f *testing.F) {
	f.Add([]byte(smapsSample))
	f.Add([]byte("1000-2000 r-xp 0 fd:1a 42 /x\nRss: 4 kB\n"))
	f.Add([]byte("Rss: 4 kB\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		ms, err := ParseSmaps(b)
		if err != nil {
			if ms != nil || !errors.Is(err, ErrMalformedMaps) {
				t.Fatalf("error %v with %d mappings", err, len(ms))
			}
			return
		}
		var again strings.Builder
		for _, m := range ms {
			if m.End < m.Start || m.Rss%1024 != 0 || m.Anonymous%1024 != 0 || (!m.HaveAnonymous && m.Anonymous != 0) {
				t.Fatalf("bad mapping %+v", m)
			}
			perms := []byte("---p")
			for i, on := range []bool{m.Read, m.Write, m.Exec} {
				if on {
					perms[i] = "rwx"[i]
				}
			}
			if m.Shared {
				perms[3] = 's'
			}
			fmt.Fprintf(&again, "%x-%x %s %x %x:%x %d %s\nRss: %d kB\n", m.Start, m.End, perms, m.Offset, m.Major, m.Minor, m.Inode, m.Path, m.Rss>>10)
			if m.HaveAnonymous {
				fmt.Fprintf(&again, "Anonymous: %d kB\n", m.Anonymous>>10)
			}
		}
		ms2, err := ParseSmaps([]byte(again.String()))
		if err != nil || len(ms2) != len(ms) {
			t.Fatalf("%q: %v, %d mappings, want %d", again.String(), err, len(ms2), len(ms))
		}
		for i := range ms {
			// A mapping without an Rss line reads back with "Rss: 0 kB".
			if ms2[i] != ms[i] {
				t.Fatalf("mapping %d: %+v, want %+v", i, ms2[i], ms[i])
			}
		}
	})
}
