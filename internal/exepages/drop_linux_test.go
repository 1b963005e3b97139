package exepages

import (
	"bytes"
	"compress/flate"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/sigil-id/sigil/internal/procfs"
)

// dataMarker is initialised data: it lives in the executable's writable
// data mapping, whose page holds the child's own copy once written.
// MADV_DONTNEED on that mapping would throw the copy away and the file's
// value (1, 2, 3, 4) would come back.
var dataMarker = [4]uint64{1, 2, 3, 4}

// bssMarker is zero-initialised data (anonymous memory).
var bssMarker [512]uint64

// childReport is what the re-executed test binary prints.
type childReport struct {
	FileBefore, FileAfter int64  // RssFile of /proc/self/status, KiB
	ExeBefore, ExeAfter   uint64 // resident bytes of the selected mappings
	Resident              uint64
	Mappings              int
	DataIntact            bool
	CodeCorrect           bool
	Err                   string
	Random                uint64 // Result.Random
	Unmapped              bool   // Result.Unmapped
	CachedBefore          int    // pages of the selected mappings in the page cache (mincore)
	CachedAfter           int
	ExeMaps               []exeVMA // the executable's mappings after Drop
}

// exeVMA is one mapping of the executable in /proc/self/smaps.
type exeVMA struct {
	Offset, Size uint64
	Perms        string
	RandomRead   bool // VmFlags has "rr" (MADV_RANDOM)
}

// exeVMAs lists the mappings of /proc/self/exe in /proc/self/smaps with
// their VmFlags' random-read flag.
func exeVMAs() ([]exeVMA, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/exe", &st); err != nil {
		return nil, err
	}
	b, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		return nil, err
	}
	var out []exeVMA
	cur := -1
	for _, line := range strings.Split(string(b), "\n") {
		if m, err := procfs.ParseMapsLine([]byte(line)); err == nil {
			cur = -1
			if m.Inode == st.Ino && m.Major == unix.Major(st.Dev) && m.Minor == unix.Minor(st.Dev) {
				out = append(out, exeVMA{Offset: m.Offset, Size: m.End - m.Start, Perms: line[strings.IndexByte(line, ' ')+1:][:4]})
				cur = len(out) - 1
			}
			continue
		}
		if flags, ok := strings.CutPrefix(line, "VmFlags:"); ok && cur >= 0 {
			out[cur].RandomRead = slices.Contains(strings.Fields(flags), "rr")
		}
	}
	return out, nil
}

// work runs code from several corners of the binary and returns a digest
// of what it computed.
func work() string {
	var buf bytes.Buffer
	w, _ := flate.NewWriter(&buf, flate.BestCompression)
	for i := range 2000 {
		fmt.Fprintf(w, "line %d %s\n", i, strconv.Quote(strings.Repeat("x", i%17)))
	}
	w.Close()
	re := regexp.MustCompile(`^(a|b)+c{2,3}$`)
	js, _ := json.Marshal(map[string]any{"n": buf.Len(), "m": re.MatchString("ababccc")})
	sum := sha256.Sum256(append(buf.Bytes(), js...))
	return hex.EncodeToString(sum[:])
}

func rssFileKiB() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "RssFile:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return n
		}
	}
	return -1
}

// exeResident is the resident bytes of the mappings Select picks in
// /proc/self/smaps.
func exeResident() uint64 {
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/exe", &st); err != nil {
		return 0
	}
	var ms []procfs.SmapsMapping
	if err := procfs.Read("/proc/self/smaps", func(b []byte) (err error) { ms, err = procfs.ParseSmaps(b); return err }); err != nil {
		return 0
	}
	var n uint64
	for _, m := range Select(ms, unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino) {
		n += m.Rss
	}
	return n
}

// exeCached counts the pages of the mappings Select picks that are in
// the page cache (mincore), mapped by this process or not.
func exeCached() int {
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/exe", &st); err != nil {
		return -1
	}
	var ms []procfs.SmapsMapping
	if err := procfs.Read("/proc/self/smaps", func(b []byte) (err error) { ms, err = procfs.ParseSmaps(b); return err }); err != nil {
		return -1
	}
	n := 0
	for _, m := range Select(ms, unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino) {
		vec := make([]byte, (m.End-m.Start+4095)/4096)
		if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(m.Start), uintptr(m.End-m.Start), uintptr(unsafe.Pointer(&vec[0]))); errno != 0 {
			return -1
		}
		for _, v := range vec {
			n += int(v & 1)
		}
	}
	return n
}

// TestMain runs the child's part when re-executed by TestDropChild.
func TestMain(m *testing.M) {
	if os.Getenv("EXEPAGES_TEST_CHILD") == "1" {
		var rep childReport
		dataMarker[0] = 42
		for i := range bssMarker {
			bssMarker[i] = uint64(i) * 7
		}
		want := work()
		rep.FileBefore, rep.ExeBefore = rssFileKiB(), exeResident()
		ra, _ := strconv.Atoi(os.Getenv("EXEPAGES_TEST_READAHEAD"))
		rep.CachedBefore = exeCached()
		var res Result
		var err error
		if os.Getenv("EXEPAGES_TEST_UNMAP") == "1" {
			res, err = Unmap()
		} else {
			res, err = Drop(Readahead(ra))
		}
		rep.FileAfter, rep.ExeAfter = rssFileKiB(), exeResident()
		rep.CachedAfter = exeCached()
		rep.Unmapped = res.Unmapped
		if err != nil {
			rep.Err = err.Error()
		}
		rep.Random = res.Random
		if rep.ExeMaps, err = exeVMAs(); err != nil {
			rep.Err = err.Error()
		}
		rep.Resident, rep.Mappings = res.Resident, res.Mappings
		rep.DataIntact = dataMarker == [4]uint64{42, 2, 3, 4}
		for i := range bssMarker {
			rep.DataIntact = rep.DataIntact && bssMarker[i] == uint64(i)*7
		}
		rep.CodeCorrect = work() == want
		out, _ := json.Marshal(rep)
		os.Stdout.Write(out)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// A real process loses the file-backed resident pages of its executable,
// keeps its written data, and goes on running correct code.
// With ReadaheadCode the read-only data mappings, and only they, are
// advised MADV_RANDOM; with ReadaheadNone every advised mapping is; with
// ReadaheadAll none is.
func TestDropChild(t *testing.T) {
	for _, ra := range []Readahead{ReadaheadCode, ReadaheadAll, ReadaheadNone} {
		t.Run(ra.String(), func(t *testing.T) { checkRandomRead(t, ra, runChild(t, ra, false)) })
	}
}

// Unmap takes the executable's pages out of the process, as Drop does,
// but leaves them in the page cache and advises nothing else.
func TestUnmapChild(t *testing.T) {
	rep := runChild(t, ReadaheadAll, true)
	if !rep.Unmapped || rep.Random != 0 {
		t.Fatalf("Result: unmapped %v, random %d", rep.Unmapped, rep.Random)
	}
	if rep.CachedBefore <= 0 || rep.CachedAfter < rep.CachedBefore*9/10 {
		t.Fatalf("pages in the page cache: %d before, %d after; want nearly all kept", rep.CachedBefore, rep.CachedAfter)
	}
	checkRandomRead(t, ReadaheadAll, rep)
}

// runChild runs a copy of this test binary that calls Drop(ra), or Unmap
// with unmap, and checks what every drop must do: the executable's
// resident pages go, its written data stays, its code still runs.
func runChild(t *testing.T, ra Readahead, unmap bool) childReport {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// A copy written with plain writes, as an installer would: the
	// linker's output may sit in large page-cache folios, which the
	// kernel keeps whole while any page of them is mapped.
	src, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	// Synced: the kernel does not drop dirty pages from its cache.
	child := filepath.Join(t.TempDir(), "child")
	f, err := os.OpenFile(child, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o700)
	if err != nil {
		t.Fatal(err)
	}
	// Page by page: one large write may leave the file in large
	// page-cache folios, which the kernel keeps whole while any of their
	// pages is mapped.
	for off := 0; off < len(src); off += 4096 {
		if _, err := f.Write(src[off:min(off+4096, len(src))]); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(child, "-test.run=^$")
	cmd.Env = append(os.Environ(), "EXEPAGES_TEST_CHILD=1", "EXEPAGES_TEST_READAHEAD="+strconv.Itoa(int(ra)))
	if unmap {
		cmd.Env = append(cmd.Env, "EXEPAGES_TEST_UNMAP=1")
	}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("child: %v", err)
	}
	var rep childReport
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("child output %q: %v", out, err)
	}
	t.Logf("child: %+v", rep)
	if rep.Err != "" {
		t.Fatalf("Drop: %s", rep.Err)
	}
	if !rep.DataIntact || !rep.CodeCorrect {
		t.Fatalf("child's data intact %v, code correct %v", rep.DataIntact, rep.CodeCorrect)
	}
	if rep.Mappings < 2 || rep.Resident < 1<<20 {
		t.Fatalf("advised %d mappings holding %d bytes, want the text and the read-only data", rep.Mappings, rep.Resident)
	}
	// The pages read back between Drop and the second read of smaps are
	// a few hundred KiB at most, or with readahead, the neighbourhoods
	// of those.
	limit := rep.ExeBefore * 3 / 4
	if ra == ReadaheadNone {
		limit = rep.ExeBefore / 2
	}
	if rep.ExeBefore < 1<<20 || rep.ExeAfter > limit {
		t.Fatalf("executable resident %d KiB before, %d KiB after: want at most %d", rep.ExeBefore>>10, rep.ExeAfter>>10, limit>>10)
	}
	if rep.FileAfter >= rep.FileBefore {
		t.Fatalf("RssFile %d KiB before, %d KiB after", rep.FileBefore, rep.FileAfter)
	}
	return rep
}

// checkRandomRead checks which of the child's executable mappings carry
// MADV_RANDOM after Drop(ra).
func checkRandomRead(t *testing.T, ra Readahead, rep childReport) {
	t.Helper()
	var code, data, randomCode, randomData uint64
	for _, m := range rep.ExeMaps {
		switch {
		case m.Perms[1] == 'w':
			if m.RandomRead {
				t.Errorf("writable mapping %+v advised MADV_RANDOM", m)
			}
			continue
		case m.Perms[2] == 'x':
			code += m.Size
			if m.RandomRead {
				randomCode += m.Size
			}
		default:
			data += m.Size
			if m.RandomRead {
				randomData += m.Size
			}
		}
	}
	t.Logf("code %d KiB (random %d), read-only data %d KiB (random %d); Result.Random %d KiB",
		code>>10, randomCode>>10, data>>10, randomData>>10, rep.Random>>10)
	if code == 0 || data == 0 {
		t.Fatalf("want code and read-only data mappings of the executable, got %+v", rep.ExeMaps)
	}
	want := map[Readahead][2]uint64{ReadaheadCode: {0, data}, ReadaheadAll: {0, 0}, ReadaheadNone: {code, data}}[ra]
	if randomCode != want[0] || randomData != want[1] || rep.Random != want[0]+want[1] {
		t.Errorf("%s: MADV_RANDOM on %d KiB of code and %d KiB of data (Result.Random %d KiB), want %d and %d",
			ra, randomCode>>10, randomData>>10, rep.Random>>10, want[0]>>10, want[1]>>10)
	}
}
