package main

import (
	"os"
	"path/filepath"
	"testing"
)

// TestReadProcMem: this process's memory as read from /proc: resident,
// split into anonymous and file-backed pages, with a proportional share
// no larger than the whole.
func TestReadProcMem(t *testing.T) {
	m, err := readProcMem(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if m.RSS <= 0 || m.Anon <= 0 || m.File <= 0 || m.PSS <= 0 || m.Priv <= 0 {
		t.Fatalf("missing fields: %+v", m)
	}
	// status is read in one pass; smaps_rollup a moment later, while
	// this process may still allocate.
	const slack = 1 << 20
	if m.Anon+m.File > m.RSS || m.PSS > m.RSS+slack || m.Priv > m.Anon+slack || m.HWM < m.RSS {
		t.Fatalf("inconsistent: %#v", m)
	}
	if _, err := readProcMem(-1); err == nil {
		t.Fatal("no error for a process that does not exist")
	}
}

// TestReadKB: sizes in kB become bytes; a malformed size is an error
// naming the field.
func TestReadKB(t *testing.T) {
	path := filepath.Join(t.TempDir(), "status")
	if err := os.WriteFile(path, []byte("Name:\tsigil\nVmRSS:\t   1024 kB\nRssAnon:\t  12 kB\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var rss, anon, file int64
	if err := readKB(path, map[string]*int64{"VmRSS:": &rss, "RssAnon:": &anon, "RssFile:": &file}); err != nil {
		t.Fatal(err)
	}
	if rss != 1024<<10 || anon != 12<<10 || file != 0 {
		t.Fatalf("rss %d anon %d file %d", rss, anon, file)
	}
	if err := os.WriteFile(path, []byte("VmRSS:\tlots kB\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := readKB(path, map[string]*int64{"VmRSS:": &rss}); err == nil {
		t.Fatal("no error for a malformed size")
	}
}

// TestSummarizeWindow: each part's least, mean and largest value is taken
// on its own (the sample with the largest RSS need not hold the largest
// file-backed part), and an empty window is zero.
func TestSummarizeWindow(t *testing.T) {
	if w := summarizeWindow(nil); w != (memWindow{}) {
		t.Fatalf("empty window: %+v", w)
	}
	w := summarizeWindow([]procMem{
		{RSS: 20, Anon: 11, File: 9},
		{RSS: 16, Anon: 12, File: 4},
		{RSS: 27, Anon: 11, File: 16},
		{RSS: 17, Anon: 10, File: 7},
	})
	want := memWindow{
		Samples: 4,
		Min:     procMem{RSS: 16, Anon: 10, File: 4},
		Mean:    procMem{RSS: 20, Anon: 11, File: 9},
		Max:     procMem{RSS: 27, Anon: 12, File: 16},
	}
	if w != want {
		t.Fatalf("window %+v, want %+v", w, want)
	}
}
