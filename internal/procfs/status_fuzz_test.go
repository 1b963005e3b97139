package procfs

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
)

// statusLines returns the value parts of the lines of b whose key is key.
func statusLines(b []byte, key string) [][]byte {
	var vals [][]byte
	for _, line := range bytes.Split(b, []byte{'\n'}) {
		k, v, ok := bytes.Cut(line, []byte{':'})
		if ok && string(k) == key {
			vals = append(vals, v)
		}
	}
	return vals
}

// renderStatus writes st back in the status file format.
func renderStatus(st Status) []byte {
	var b bytes.Buffer
	u, g := strconv.FormatUint(uint64(st.EUID), 10), strconv.FormatUint(uint64(st.EGID), 10)
	b.WriteString("Name:\tx\nUid:\t0\t" + u + "\t0\t" + u + "\nGid:\t0\t" + g + "\t0\t" + g + "\nGroups:\t")
	for _, id := range st.Groups {
		b.WriteString(strconv.FormatUint(uint64(id), 10) + " ")
	}
	b.WriteString("\n")
	return b.Bytes()
}

// FuzzParseStatus parses arbitrary bytes as a /proc/<pid>/status file. It
// checks that the parser never panics; refuses with ErrMalformedStatus;
// takes the effective ids from the second field of a Uid and a Gid line
// (never from elsewhere) and every group from a Groups line; gives the same
// answer when the file is read from disk through Read's pooled buffer; and
// parses its own output back to the same value.
func FuzzParseStatus(f *testing.F) {
	if self, err := os.ReadFile("/proc/self/status"); err == nil {
		f.Add(self)
	}
	f.Add([]byte("Name:\tsh\nUid:\t1000\t1001\t1002\t1003\nGid:\t100\t101\t102\t103\nGroups:\t4 24 27 \n"))
	f.Add([]byte("Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t\n"))
	f.Add([]byte("Uid:\t0\t4294967295\nGid:\t0\t4294967296\n"))
	f.Add([]byte("Uid:\t0\t-1\nGid:\t0\t0\n"))
	f.Add([]byte("Uid:\t0\nGid:\t0\t0\n"))
	f.Add([]byte("Uid:\t0\t1\nGid:\t0\t1\nGroups:\tabc\n"))
	f.Add([]byte("Uid:\t0\t1\nUid:\t0\t2\nGid:\t0\t1\nGroups:\t5\nGroups:\t6\n"))
	f.Add([]byte("Name:\tUid:\t0\t7\nGid:\t0\t1\n"))
	f.Add([]byte("Uid:\t0\t+1\nGid:\t0\t0x1\n"))
	f.Add([]byte{})

	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		st, err := ParseStatus(data)

		// Read through a file: the pooled buffer must not change the
		// answer, even right after a read of a different file.
		path := filepath.Join(dir, "status")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		other := filepath.Join(dir, "other")
		if err := os.WriteFile(other, bytes.Repeat([]byte("Uid:\t0\t9\nGid:\t0\t9\nGroups:\t9\n"), 300), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := ReadStatus(other); err != nil {
			t.Fatal(err)
		}
		fst, ferr := ReadStatus(path)
		if len(data) <= MaxSize && (!errors.Is(ferr, err) || !slices.Equal(fst.Groups, st.Groups) || fst.EUID != st.EUID || fst.EGID != st.EGID) {
			t.Fatalf("ReadStatus = %+v, %v; ParseStatus = %+v, %v", fst, ferr, st, err)
		}

		if err != nil {
			if !errors.Is(err, ErrMalformedStatus) {
				t.Fatalf("error %v is not ErrMalformedStatus", err)
			}
			if st.EUID != 0 || st.EGID != 0 || st.Groups != nil {
				t.Fatalf("refusal returned a value %+v", st)
			}
			return
		}
		if st.Groups == nil {
			t.Fatal("Groups is nil, want empty")
		}
		// Each id must be the second field of a line with that key.
		fromLine := func(key string, id uint32) {
			want := strconv.FormatUint(uint64(id), 10)
			for _, v := range statusLines(data, key) {
				if fs := bytes.Fields(v); len(fs) >= 2 {
					if n, err := strconv.ParseUint(string(fs[1]), 10, 32); err == nil && strconv.FormatUint(n, 10) == want {
						return
					}
				}
			}
			t.Fatalf("%s %d is not the effective id of any %s line", key, id, key)
		}
		fromLine("Uid", st.EUID)
		fromLine("Gid", st.EGID)
		var groups []uint32
		for _, v := range statusLines(data, "Groups") {
			for _, g := range bytes.Fields(v) {
				n, err := strconv.ParseUint(string(g), 10, 32)
				if err != nil {
					t.Fatalf("accepted a Groups line with %q", g)
				}
				groups = append(groups, uint32(n))
			}
		}
		if !slices.Equal(groups, st.Groups) && !(len(groups) == 0 && len(st.Groups) == 0) {
			t.Fatalf("groups %v, want %v", st.Groups, groups)
		}
		again, err := ParseStatus(renderStatus(st))
		if err != nil || again.EUID != st.EUID || again.EGID != st.EGID || !slices.Equal(again.Groups, st.Groups) {
			t.Fatalf("re-parse of %+v gave %+v, %v", st, again, err)
		}
	})
}
