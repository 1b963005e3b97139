package exepages

import (
	"testing"

	"github.com/sigil-id/sigil/internal/procfs"
)

func TestSelect(t *testing.T) {
	const maj, min, ino = 0xfe, 1, 4242
	exe := func(perms string, anon uint64, haveAnon bool) procfs.SmapsMapping {
		return procfs.SmapsMapping{
			Mapping: procfs.Mapping{Start: 0x1000, End: 0x9000, Read: perms[0] == 'r', Write: perms[1] == 'w',
				Exec: perms[2] == 'x', Shared: perms[3] == 's', Major: maj, Minor: min, Inode: ino, Path: "/usr/bin/sigil"},
			Rss: 0x8000, Anonymous: anon, HaveAnonymous: haveAnon,
		}
	}
	other := exe("r-xp", 0, true)
	other.Inode = ino + 1
	otherDev := exe("r-xp", 0, true)
	otherDev.Minor = min + 1
	empty := exe("r--p", 0, true)
	empty.End = empty.Start
	for _, tc := range []struct {
		name string
		m    procfs.SmapsMapping
		want bool
	}{
		{"text", exe("r-xp", 0, true), true},
		{"rodata", exe("r--p", 0, true), true},
		{"read-only shared", exe("r--s", 0, true), true},
		{"no access", exe("---p", 0, true), true},
		{"relro with copied pages", exe("r--p", 4096, true), false},
		{"text with copied pages (a debugger's breakpoint)", exe("r-xp", 4096, true), false},
		{"anonymous unknown", exe("r-xp", 0, false), false},
		{"data", exe("rw-p", 0, true), false},
		{"data, never written", exe("rw-p", 0, true), false},
		{"writable shared", exe("rw-s", 0, true), false},
		{"writable text", exe("rwxp", 0, true), false},
		{"another file", other, false},
		{"same inode, another device", otherDev, false},
		{"empty range", empty, false},
	} {
		got := Select([]procfs.SmapsMapping{tc.m}, maj, min, ino)
		if (len(got) == 1) != tc.want || len(got) > 1 {
			t.Errorf("%s: selected %d, want %v", tc.name, len(got), tc.want)
		}
	}
	// Inode 0 (anonymous memory) is never the executable.
	anon := exe("r--p", 0, true)
	anon.Inode, anon.Major, anon.Minor = 0, 0, 0
	if got := Select([]procfs.SmapsMapping{anon}, 0, 0, 0); len(got) != 0 {
		t.Errorf("anonymous memory selected: %+v", got)
	}
	// Order and several mappings.
	ms := []procfs.SmapsMapping{exe("r--p", 0, true), exe("rw-p", 0, true), exe("r-xp", 0, true), exe("r--p", 8192, true)}
	ms[2].Start, ms[2].End = 0x9000, 0x10000
	got := Select(ms, maj, min, ino)
	if len(got) != 2 || got[0] != ms[0] || got[1] != ms[2] {
		t.Fatalf("selected %+v", got)
	}
}
