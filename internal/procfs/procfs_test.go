package procfs

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

func TestReadMatchesReadFile(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789abcdef"), 2000) // larger than the pooled buffer
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, big, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/proc/self/status", "/proc/self/stat", p} {
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var got []byte
		if err := Read(path, func(b []byte) error { got = append([]byte(nil), b...); return nil }); err != nil {
			t.Fatal(err)
		}
		// /proc/self/stat changes between reads (times); compare lengths
		// loosely there and bytes elsewhere.
		if path == p && !bytes.Equal(got, want) {
			t.Fatalf("%s: read %d bytes, want %d", path, len(got), len(want))
		}
		if len(got) == 0 {
			t.Fatalf("%s: empty read", path)
		}
	}
	if err := Read(filepath.Join(t.TempDir(), "missing"), func([]byte) error { return nil }); !os.IsNotExist(err) {
		t.Fatalf("missing file: %v", err)
	}
}

func BenchmarkReadStatus(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if err := Read("/proc/self/status", func([]byte) error { return nil }); err != nil {
			b.Fatal(err)
		}
	}
}
