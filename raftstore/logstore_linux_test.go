package raftstore

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"golang.org/x/sys/unix"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/clock"
)

// residentMapped returns the bytes of the file at path resident in this
// process's shared mappings of it (the Rss lines of /proc/self/smaps).
func residentMapped(t *testing.T, path string) int64 {
	t.Helper()
	abs, err := filepath.EvalSymlinks(path)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	in := false
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := sc.Text()
		if m, ok, err := parseMapsLine(sc.Bytes()); err == nil {
			in = ok && m.path == abs
			continue
		} else if !strings.Contains(line, ":") || strings.Contains(strings.Fields(line)[0], "-") {
			t.Fatal(err) // a header line that did not parse
		}
		if in && strings.HasPrefix(line, "Rss:") {
			kb, err := strconv.ParseInt(strings.Fields(line)[1], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			total += kb << 10
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return total
}

// bigLog is record i of the tests: size bytes that depend on i.
func bigLog(i, size int) *raft.Log {
	data := bytes.Repeat([]byte{byte(i), byte(i >> 8), 0x5a}, size/3)
	return &raft.Log{Index: uint64(i), Term: 1, Type: raft.LogCommand, Data: data}
}

func checkLogs(t *testing.T, s *logStore, from, to, size int) {
	t.Helper()
	for i := from; i <= to; i++ {
		var l raft.Log
		if err := s.GetLog(uint64(i), &l); err != nil {
			t.Fatalf("log %d: %v", i, err)
		}
		if want := bigLog(i, size); l.Index != want.Index || !bytes.Equal(l.Data, want.Data) {
			t.Fatalf("log %d differs after the pages were dropped", i)
		}
	}
}

func TestParseMapsLine(t *testing.T) {
	for _, tc := range []struct {
		line string
		want fileMapping
		ok   bool
	}{
		{"7f2928000000-7f292a000000 r--s 00000000 08:01 1234567                    /data/raft/raft.db",
			fileMapping{start: 0x7f2928000000, end: 0x7f292a000000, shared: true, dev: unix.Mkdev(8, 1), ino: 1234567, path: "/data/raft/raft.db"}, true},
		{"00400000-0133f000 r-xp 00000000 fd:1a 42 /usr/bin/a b (deleted)",
			fileMapping{start: 0x400000, end: 0x133f000, dev: unix.Mkdev(0xfd, 0x1a), ino: 42, path: "/usr/bin/a b (deleted)"}, true},
		{"1dfac0400000-1dfac8000000 rw-p 00000000 00:00 0 ", fileMapping{}, false},
		{"7ffd5e9f2000-7ffd5ea13000 rw-p 00000000 00:00 0                          [stack]", fileMapping{}, false},
	} {
		got, ok, err := parseMapsLine([]byte(tc.line))
		if err != nil || ok != tc.ok || got != tc.want {
			t.Errorf("%q: got %+v %v %v, want %+v %v", tc.line, got, ok, err, tc.want, tc.ok)
		}
	}
	for _, bad := range []string{"", "7f29-7f2a r--s", "7f29 r--s 0 08:01 1 /x", "7f29-zz r--s 0 08:01 1 /x",
		"7f29-7f2a r--s 0 0801 1 /x", "7f29-7f2a r--s 0 08:01 x /x", "7f2a-7f29 r--s 0 08:01 1 /x", "7f29-7f2a rs 0 08:01 1 /x"} {
		if _, _, err := parseMapsLine([]byte(bad)); err == nil || !strings.Contains(err.Error(), "unexpected line in /proc/self/maps") {
			t.Errorf("%q: error %v", bad, err)
		}
	}
}

// TestLogStoreDropsMappedPages: the pages of raft.db that reads mapped
// into the process are gone from it after dropMapped, and after a
// compaction (DeleteRange); every record reads back the same afterwards.
func TestLogStoreDropsMappedPages(t *testing.T) {
	path := filepath.Join(t.TempDir(), "raft.db")
	s, err := openLogStore(path, clock.New())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const n, size = 64, 64 << 10
	for i := 1; i <= n; i += 4 {
		if err := s.StoreLogs([]*raft.Log{bigLog(i, size), bigLog(i+1, size), bigLog(i+2, size), bigLog(i+3, size)}); err != nil {
			t.Fatal(err)
		}
	}
	checkLogs(t, s, 1, n, size) // maps every record's pages
	if r := residentMapped(t, path); r < n*size/2 {
		t.Fatalf("%d bytes of raft.db resident after reading %d records of %d bytes; the test reads nothing", r, n, size)
	}
	advised, err := s.dropMapped()
	if err != nil || advised < n*size {
		t.Fatalf("dropMapped: %d bytes advised, %v", advised, err)
	}
	if r := residentMapped(t, path); r != 0 {
		t.Fatalf("%d bytes of raft.db still resident after dropMapped", r)
	}
	checkLogs(t, s, 1, n, size)

	if err := s.DeleteRange(1, n/2); err != nil {
		t.Fatal(err)
	}
	if r := residentMapped(t, path); r != 0 {
		t.Fatalf("%d bytes of raft.db resident after a compaction", r)
	}
	checkLogs(t, s, n/2+1, n, size)
	var l raft.Log
	if err := s.GetLog(uint64(n/2), &l); err != raft.ErrLogNotFound {
		t.Fatalf("deleted log: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if advised, err := s.dropMapped(); advised != 0 || err != nil {
		t.Fatalf("dropMapped after Close: %d, %v", advised, err)
	}
}

// TestLogStoreDropWhileGrowing: pages dropped while writes grow the file
// (bbolt replaces its mapping then) and reads run lose nothing.
func TestLogStoreDropWhileGrowing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "raft.db")
	s, err := openLogStore(path, clock.New())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const n, size = 400, 16 << 10 // past bbolt's first mappings (32 KiB doubling up to 1 GiB)
	var wg sync.WaitGroup
	done := make(chan struct{})
	wg.Add(2)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			default:
			}
			if _, err := s.dropMapped(); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	go func() {
		defer wg.Done()
		var l raft.Log
		for {
			select {
			case <-done:
				return
			default:
			}
			if last, err := s.LastIndex(); err == nil && last > 0 {
				if err := s.GetLog(last, &l); err != nil || !bytes.Equal(l.Data, bigLog(int(last), size).Data) {
					t.Errorf("log %d while dropping: %v", last, err)
					return
				}
			}
		}
	}()
	for i := 1; i <= n; i++ {
		if err := s.StoreLog(bigLog(i, size)); err != nil {
			t.Fatal(err)
		}
		if i%100 == 0 {
			if err := s.DeleteRange(uint64(i-99), uint64(i-50)); err != nil {
				t.Fatal(err)
			}
		}
	}
	close(done)
	wg.Wait()
	for i := 1; i <= n; i++ {
		if i%100 == 0 || (i-1)%100 >= 50 {
			checkLogs(t, s, i, i, size)
		}
	}
	if st, err := os.Stat(path); err != nil || st.Size() < n/2*size {
		t.Fatalf("raft.db: %v %v: the file did not grow", st.Size(), err)
	}
}

// TestStoreReleaseDropsLogPages: the memory release after large deletions
// (memRelease) also drops the Raft log's mapped pages.
func TestStoreReleaseDropsLogPages(t *testing.T) {
	dir := t.TempDir()
	s := openDisk(t, dir)
	defer s.Close()
	createBatches(t, s, 8)
	path := filepath.Join(dir, "raft.db")
	last, err := s.bolt.LastIndex()
	if err != nil {
		t.Fatal(err)
	}
	first, _ := s.bolt.FirstIndex()
	for i := first; i <= last; i++ { // what a follower catching up would read
		var l raft.Log
		if err := s.bolt.GetLog(i, &l); err != nil {
			t.Fatal(err)
		}
	}
	if r := residentMapped(t, path); r < 256<<10 {
		t.Fatalf("%d bytes of raft.db resident after reading the log: the test reads nothing", r)
	}
	s.fsm.release.release()
	if r := residentMapped(t, path); r != 0 {
		t.Fatalf("%d bytes of raft.db resident after a release", r)
	}
	// The store goes on working.
	mustCreate(t, s, numbered(0, 3)...)
	if _, err := s.Read().Entry("e001"); err != nil {
		t.Fatal(err)
	}
	if err := s.raft.Barrier(0).Error(); err != nil {
		t.Fatal(err)
	}
}

// TestLogStoreDropsWhenQuiet: after logDropAfter bytes of records
// appended, the mapped pages are dropped at the first check, every quiet
// time, that finds fewer than that many appended or read since the one
// before, not while the log is busy; an occasional small record does not
// keep them.
func TestLogStoreDropsWhenQuiet(t *testing.T) {
	path := filepath.Join(t.TempDir(), "raft.db")
	fake := clock.NewFake(time.Unix(1_700_000_000, 0))
	s, err := openLogStore(path, fake)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const size = 64 << 10
	n := logDropAfter/size + 1 // records of size-1 bytes: the n-th crosses logDropAfter
	for i := 1; i < n; i++ {
		if err := s.StoreLog(bigLog(i, size)); err != nil {
			t.Fatal(err)
		}
	}
	if w := fake.Waiters(); w != 0 {
		t.Fatalf("%d waiters below logDropAfter bytes", w)
	}
	if err := s.StoreLog(bigLog(n, size)); err != nil {
		t.Fatal(err)
	}
	waitWaiters(t, fake, 1)
	checkLogs(t, s, 1, n, size) // as many bytes read: busy
	resident := func() int64 { return residentMapped(t, path) }
	if r := resident(); r < int64(n*size/2) {
		t.Fatalf("%d bytes resident after reading the log: the test reads nothing", r)
	}
	fake.Add(s.quiet) // the first check finds the log busy and waits again
	waitWaiters(t, fake, 1)
	if r := resident(); r < int64(n*size/2) {
		t.Fatalf("%d bytes resident: pages dropped while the log was busy", r)
	}
	if err := s.StoreLog(bigLog(n+1, size)); err != nil { // one small record
		t.Fatal(err)
	}
	quietDropped(t, s, fake, path)
	checkLogs(t, s, 1, n+1, size)
}

// TestLogStoreDropsWhenReadQuiet: a store that only reads its records
// (a restarted server replaying its log) maps their pages too; after
// logDropAfter bytes read, they are dropped once a quiet time passes
// with fewer read, not while reads go on.
func TestLogStoreDropsWhenReadQuiet(t *testing.T) {
	path := filepath.Join(t.TempDir(), "raft.db")
	const size = 64 << 10
	n := logDropAfter/size + 1 // records of size-1 bytes: reading the n-th crosses logDropAfter
	w, err := openLogStore(path, clock.NewFake(time.Unix(1_700_000_000, 0)))
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= n+1; i++ {
		if err := w.StoreLog(bigLog(i, size)); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}

	fake := clock.NewFake(time.Unix(1_700_000_000, 0))
	s, err := openLogStore(path, fake)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	resident := func() int64 { return residentMapped(t, path) }
	checkLogs(t, s, 1, n-1, size)
	if w := fake.Waiters(); w != 0 {
		t.Fatalf("%d waiters below logDropAfter bytes read", w)
	}
	checkLogs(t, s, n, n, size)
	waitWaiters(t, fake, 1)
	if r := resident(); r < int64(n*size/2) {
		t.Fatalf("%d bytes resident after reading the log: the test reads nothing", r)
	}
	checkLogs(t, s, 1, n, size) // reads go on
	fake.Add(s.quiet)
	waitWaiters(t, fake, 1)
	if r := resident(); r < int64(n*size/2) {
		t.Fatalf("%d bytes resident: pages dropped while records were still read", r)
	}
	checkLogs(t, s, n+1, n+1, size) // one record: quiet enough
	quietDropped(t, s, fake, path)
	checkLogs(t, s, 1, n+1, size)
}

// TestStoreRestartDropsReplayedLogPages: a restarted store reads its log
// (Raft scans it for configurations, then applies it), which maps the
// pages of raft.db; they are dropped once the log has been quiet for the
// quiet time.
func TestStoreRestartDropsReplayedLogPages(t *testing.T) {
	dir := t.TempDir()
	s := openDisk(t, dir)
	createBatches(t, s, 16)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	fake := clock.NewFake(time.Now())
	s = openDisk(t, dir, func(c *Config) { c.Clock = fake })
	defer s.Close()
	if err := s.raft.Barrier(0).Error(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Read().Entry("e15-499"); err != nil {
		t.Fatalf("the log was not replayed: %v", err)
	}
	path := filepath.Join(dir, "raft.db")
	if r := residentMapped(t, path); r < 1<<20 {
		t.Fatalf("%d bytes of raft.db resident after the replay: the test reads too little", r)
	}
	deadline := time.Now().Add(10 * time.Second)
	for residentMapped(t, path) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d bytes of raft.db resident after the log was quiet", residentMapped(t, path))
		}
		fake.Add(logQuiet)
		time.Sleep(5 * time.Millisecond)
	}
	if _, err := s.Read().Entry("e00-000"); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, s, numbered(0, 3)...)
}

// quietDropped lets one quiet time pass on fake and waits until the check
// it runs has dropped every page of path that s mapped.
func quietDropped(t *testing.T, s *logStore, fake *clock.Fake, path string) {
	t.Helper()
	fake.Add(s.quiet)
	waitWaiters(t, fake, 0)
	deadline := time.Now().Add(10 * time.Second)
	for residentMapped(t, path) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d bytes of raft.db resident after a quiet time", residentMapped(t, path))
		}
		time.Sleep(time.Millisecond)
	}
}

// createBatches creates n batches of 500 entries in s, ids e00-000 on.
func createBatches(t *testing.T, s *Store, n int) {
	t.Helper()
	for b := range n {
		var es []*sigilv1.Entry
		for i := range 500 {
			es = append(es, entry(fmt.Sprintf("e%02d-%03d", b, i), fmt.Sprintf("spiffe://example.org/batch-%d/workload-%d", b, i), agent,
				sel("k8s", fmt.Sprintf("ns:ns-%d", i%7)), sel("k8s", fmt.Sprintf("sa:workload-service-account-%d", i))))
		}
		mustCreate(t, s, es...)
	}
}
