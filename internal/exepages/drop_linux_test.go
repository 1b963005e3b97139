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
	"strconv"
	"strings"
	"testing"

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
		res, err := Drop(os.Getenv("EXEPAGES_TEST_RANDOM") == "1")
		rep.FileAfter, rep.ExeAfter = rssFileKiB(), exeResident()
		if err != nil {
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
func TestDropChild(t *testing.T) {
	for _, random := range []string{"0", "1"} {
		t.Run("random="+random, func(t *testing.T) { testDropChild(t, random) })
	}
}

func testDropChild(t *testing.T, random string) {
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
	cmd.Env = append(os.Environ(), "EXEPAGES_TEST_CHILD=1", "EXEPAGES_TEST_RANDOM="+random)
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
	if random == "1" {
		limit = rep.ExeBefore / 2
	}
	if rep.ExeBefore < 1<<20 || rep.ExeAfter > limit {
		t.Fatalf("executable resident %d KiB before, %d KiB after: want at most %d", rep.ExeBefore>>10, rep.ExeAfter>>10, limit>>10)
	}
	if rep.FileAfter >= rep.FileBefore {
		t.Fatalf("RssFile %d KiB before, %d KiB after", rep.FileBefore, rep.FileAfter)
	}
}
