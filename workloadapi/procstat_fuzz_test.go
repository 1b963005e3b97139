//go:build linux

package workloadapi

import (
	"bytes"
	"os"
	"strconv"
	"strings"
	"testing"
)

// statLine is a /proc/<pid>/stat line of a process named comm in state
// state that started at start (field 22).
func statLine(comm []byte, state string, start uint64) []byte {
	var b bytes.Buffer
	b.WriteString("4242 (")
	b.Write(comm)
	b.WriteString(") " + state + " 1 4242 4242 0 -1 4194304 101 0 0 0 0 0 0 0 20 0 1 0 ")
	b.WriteString(strconv.FormatUint(start, 10))
	b.WriteString(" 3133440 411 18446744073709551615 94109503614976 94109503634857 140736426284000 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0\n")
	return b.Bytes()
}

// FuzzParseStat checks parseStat, which reads the start time that pins a
// Workload API caller's pid, in two ways. Arbitrary bytes: it never
// panics, and a start time it returns is the 20th field after the last
// ')', with a live state. A well-formed line whose command name (which any
// process sets for itself, up to 15 bytes, with spaces, parentheses and
// newlines) is fuzzed: it always yields the true start time, and always
// refuses a zombie, whatever the name imitates.
func FuzzParseStat(f *testing.F) {
	if self, err := os.ReadFile("/proc/self/stat"); err == nil {
		f.Add(self, "go", uint64(1))
	}
	f.Add([]byte("1234 (we(ird) )name) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100\n"), "a) Z 1 2 3", uint64(987654))
	f.Add([]byte("1234 (x) Z 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100\n"), ") R 9 9 9 9", uint64(0))
	f.Add([]byte("1234 (x) S 1"), "\n)\n", uint64(18446744073709551615))
	f.Add([]byte("1234 (x) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 -5 20"), "((((((((((((((((", uint64(42))
	f.Add([]byte("no parenthesis"), "", uint64(7))
	f.Add([]byte{}, " ", uint64(7))

	f.Fuzz(func(t *testing.T, raw []byte, comm string, start uint64) {
		if st, err := parseStat(raw); err == nil {
			i := bytes.LastIndexByte(raw, ')')
			if i < 0 {
				t.Fatalf("accepted %q without a ')'", raw)
			}
			fields := strings.Fields(string(raw[i+1:]))
			if len(fields) < 20 {
				t.Fatalf("accepted %q with %d fields after the name", raw, len(fields))
			}
			if s := fields[0]; s == "Z" || s == "X" || s == "x" {
				t.Fatalf("accepted state %q", s)
			}
			if want, err := strconv.ParseUint(fields[19], 10, 64); err != nil || want != st {
				t.Fatalf("start time %d, field 22 is %q", st, fields[19])
			}
		}

		// The kernel keeps 15 bytes of the name, without NUL.
		name := []byte(strings.ReplaceAll(comm, "\x00", ""))
		if len(name) > 15 {
			name = name[:15]
		}
		if got, err := parseStat(statLine(name, "S", start)); err != nil || got != start {
			t.Fatalf("process named %q: start time %d, %v; want %d", name, got, err, start)
		}
		if _, err := parseStat(statLine(name, "Z", start)); err == nil {
			t.Fatalf("zombie named %q accepted", name)
		}
	})
}
