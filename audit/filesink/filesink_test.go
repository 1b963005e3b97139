package filesink

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/sigil-id/sigil/audit"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/plugin"
)

var t0 = time.Date(2026, 11, 30, 15, 4, 5, 123456789, time.FixedZone("CET", 3600))

// The line format is fixed: keys in order, times in UTC, every field
// type encoded the same way each time.
func TestEncodeGolden(t *testing.T) {
	ev := audit.Event{
		What:    "jwt_svid_issued",
		Who:     "spiffe://example.org/sigil/agent/join_token/n1",
		Subject: "spiffe://example.org/web",
		Message: "jwt-svid <issued>",
		Fields: []audit.Field{
			audit.String("entry_id", "e1"),
			audit.Strings("audience", []string{"a", "b\"c"}),
			audit.Int("slot", -3),
			audit.Uint64("index", 7),
			audit.Bool("tainted", false),
			audit.Time("expires_at", t0),
			audit.Duration("ttl", 90*time.Second+500*time.Millisecond),
			audit.Err(errors.New("boom")),
			{Key: "nil_error", Value: nil},
			{Key: "int64", Value: int64(1) << 40},
			audit.String("odd", "é\n\x00\xff\\"),
		},
	}
	got := string(Encode(t0, ev))
	want := `{"time":"2026-11-30T14:04:05.123456789Z","what":"jwt_svid_issued","who":"spiffe://example.org/sigil/agent/join_token/n1",` +
		`"subject":"spiffe://example.org/web","outcome":"success","message":"jwt-svid <issued>","fields":{"entry_id":"e1",` +
		`"audience":["a","b\"c"],"slot":-3,"index":7,"tainted":false,"expires_at":"2026-11-30T14:04:05.123456789Z","ttl":90.5,` +
		`"error":"boom","nil_error":null,"int64":1099511627776,"odd":"é\n\u0000\ufffd\\"}}` + "\n"
	if got != want {
		t.Fatalf("Encode =\n%s\nwant\n%s", got, want)
	}
	if Encode(t0, ev) == nil || string(Encode(t0, ev)) != got {
		t.Error("Encode is not deterministic")
	}
	var rec map[string]any
	if err := json.Unmarshal([]byte(got), &rec); err != nil {
		t.Fatalf("not JSON: %v", err)
	}
	// Defaults: outcome success, message What, empty who/subject and
	// fields still present.
	got = string(Encode(t0, audit.Event{What: "bundle_pruned", Outcome: audit.Denied}))
	want = `{"time":"2026-11-30T14:04:05.123456789Z","what":"bundle_pruned","who":"","subject":"","outcome":"denied","message":"bundle_pruned","fields":{}}` + "\n"
	if got != want {
		t.Fatalf("Encode =\n%s\nwant\n%s", got, want)
	}
}

func readLines(t *testing.T, path string) []map[string]any {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []map[string]any
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var rec map[string]any
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatalf("%s: line %d is not JSON: %v: %q", path, len(out)+1, err, sc.Text())
		}
		out = append(out, rec)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func seqEvent(i int) audit.Event {
	return audit.Event{What: "entry_created", Who: audit.Admin, Subject: "entry-" + strconv.Itoa(i), Message: "entry created",
		Fields: []audit.Field{audit.Int("seq", i), audit.String("spiffe_id", "spiffe://example.org/workload/"+strconv.Itoa(i))}}
}

func TestSinkWritesLinesWithModes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "log", "sigil")
	path := filepath.Join(dir, "audit.log")
	clk := clock.NewFake(t0)
	s, err := New(Config{Path: path, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		s.Audit(seqEvent(i))
		clk.Add(time.Second)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	s.Audit(seqEvent(99)) // after Close: dropped, no panic
	if st := s.Stats(); st.Written != 3 || st.Dropped != 1 || st.WriteErrors != 0 {
		t.Errorf("stats %+v, want 3 written, 1 dropped (after Close)", st)
	}
	lines := readLines(t, path)
	if len(lines) != 3 {
		t.Fatalf("%d lines, want 3", len(lines))
	}
	for i, rec := range lines {
		wantTime := t0.Add(time.Duration(i) * time.Second).UTC().Format(time.RFC3339Nano)
		if rec["time"] != wantTime || rec["what"] != "entry_created" || rec["who"] != "admin" || rec["subject"] != "entry-"+strconv.Itoa(i) ||
			rec["outcome"] != "success" || !reflect.DeepEqual(rec["fields"], map[string]any{"seq": float64(i), "spiffe_id": "spiffe://example.org/workload/" + strconv.Itoa(i)}) {
			t.Errorf("line %d = %v", i, rec)
		}
	}
	for p, want := range map[string]os.FileMode{dir: 0o700, path: 0o600} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != want {
			t.Errorf("%s mode %v, want %v", p, st.Mode().Perm(), want)
		}
	}
	// Reopening appends, and tightens a file left readable.
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	s, err = New(Config{Path: path, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	s.Audit(seqEvent(3))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if n := len(readLines(t, path)); n != 4 {
		t.Errorf("%d lines after reopening, want 4 (appended)", n)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Errorf("reopened file mode %v, want 0600", st.Mode().Perm())
	}
}

// files returns the lines of path.N … path.1, path, oldest first, and
// checks each file's size.
func rotatedLines(t *testing.T, path string, maxFiles int, maxSize int64) (lines []map[string]any, files int) {
	t.Helper()
	for i := maxFiles + 1; i >= 0; i-- {
		p := path
		if i > 0 {
			p += "." + strconv.Itoa(i)
		}
		st, err := os.Stat(p)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if i > maxFiles {
			t.Errorf("%s kept beyond max files %d", p, maxFiles)
		}
		if st.Size() > maxSize {
			t.Errorf("%s is %d bytes, above max size %d", p, st.Size(), maxSize)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v", p, st.Mode().Perm())
		}
		files++
		lines = append(lines, readLines(t, p)...)
	}
	return lines, files
}

func checkSeq(t *testing.T, lines []map[string]any, from, to int) {
	t.Helper()
	if len(lines) != to-from {
		t.Fatalf("%d lines, want %d (seq %d to %d)", len(lines), to-from, from, to-1)
	}
	for i, rec := range lines {
		if got := rec["fields"].(map[string]any)["seq"]; got != float64(from+i) {
			t.Fatalf("line %d has seq %v, want %d", i, got, from+i)
		}
	}
}

func TestRotationKeepsEveryLine(t *testing.T) {
	const n, maxSize = 500, 2000
	path := filepath.Join(t.TempDir(), "audit.log")
	s, err := New(Config{Path: path, MaxSize: maxSize, MaxFiles: 1000, QueueSize: n})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		s.Audit(seqEvent(i))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	st := s.Stats()
	if st.Written != n || st.Dropped != 0 || st.WriteErrors != 0 || st.Rotations == 0 {
		t.Fatalf("stats %+v", st)
	}
	lines, files := rotatedLines(t, path, 1000, maxSize)
	if files != int(st.Rotations)+1 {
		t.Errorf("%d files after %d rotations", files, st.Rotations)
	}
	checkSeq(t, lines, 0, n)
}

func TestRotationKeepsMaxFiles(t *testing.T) {
	const n, maxSize, maxFiles = 500, 2000, 3
	path := filepath.Join(t.TempDir(), "audit.log")
	s, err := New(Config{Path: path, MaxSize: maxSize, MaxFiles: maxFiles, QueueSize: n})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		s.Audit(seqEvent(i))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	lines, files := rotatedLines(t, path, maxFiles, maxSize)
	if files != maxFiles+1 {
		t.Fatalf("%d files, want the file and %d rotated", files, maxFiles)
	}
	// The newest lines, contiguous up to the last one.
	checkSeq(t, lines, n-len(lines), n)
	if len(lines) < 3*maxFiles {
		t.Errorf("only %d lines kept", len(lines))
	}
}

// A line larger than MaxSize gets a file of its own and is not lost.
func TestOversizedLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	s, err := New(Config{Path: path, MaxSize: 100, MaxFiles: 5})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		s.Audit(seqEvent(i)) // each > 100 bytes
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	lines, files := rotatedLines(t, path, 5, 1000)
	if files != 3 {
		t.Errorf("%d files, want one per oversized line", files)
	}
	checkSeq(t, lines, 0, 3)
}

func TestConcurrentWriters(t *testing.T) {
	const writers, each = 8, 300
	path := filepath.Join(t.TempDir(), "audit.log")
	s, err := New(Config{Path: path, MaxSize: 16 << 10, MaxFiles: 1000, QueueSize: writers * each})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				s.Audit(seqEvent(w*each + i))
			}
		}()
	}
	wg.Wait()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	lines, _ := rotatedLines(t, path, 1000, 16<<10)
	seen := map[float64]bool{}
	for _, rec := range lines {
		seq := rec["fields"].(map[string]any)["seq"].(float64)
		if seen[seq] {
			t.Fatalf("seq %v written twice", seq)
		}
		seen[seq] = true
	}
	if len(seen) != writers*each || s.Stats().Dropped != 0 {
		t.Fatalf("%d distinct lines, stats %+v; want %d, none dropped", len(seen), s.Stats(), writers*each)
	}
}

// When the queue is full, Audit returns at once, counts the drop, and
// the file records the gap.
func TestFullQueueDropsAndRecordsGap(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	core, logs := observer.New(zap.WarnLevel)
	s, err := newSink(Config{Path: path, QueueSize: 2, Clock: clock.NewFake(t0), Logger: zap.New(core)}.withDefaults())
	if err != nil {
		t.Fatal(err)
	}
	// No writer yet: the queue fills.
	for i := 0; i < 5; i++ {
		s.Audit(seqEvent(i))
	}
	if st := s.Stats(); st.Dropped != 3 {
		t.Fatalf("stats %+v, want 3 dropped", st)
	}
	go s.run()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	lines := readLines(t, path)
	if len(lines) != 3 {
		t.Fatalf("%d lines, want the 2 queued events and the gap: %v", len(lines), lines)
	}
	checkSeq(t, lines[:2], 0, 2)
	gap := lines[2]
	if gap["what"] != "audit_events_dropped" || gap["outcome"] != "failure" || !reflect.DeepEqual(gap["fields"], map[string]any{"count": float64(3)}) {
		t.Errorf("gap line %v", gap)
	}
	if logs.FilterMessageSnippet("dropped").Len() != 1 {
		t.Errorf("drops not logged once: %v", logs.All())
	}
}

// Write errors are counted and logged at most once a minute; the caller
// never sees them.
func TestWriteErrorsCountedAndRateLimited(t *testing.T) {
	if _, err := os.Stat("/dev/full"); err != nil {
		t.Fatalf("this test writes to /dev/full: %v", err)
	}
	core, logs := observer.New(zap.ErrorLevel)
	clk := clock.NewFake(t0)
	s, err := newSink(Config{Path: "/dev/full", QueueSize: 10, Clock: clk, Logger: zap.New(core)}.withDefaults())
	if err != nil {
		t.Fatal(err)
	}
	// Drive the writer by hand: each batch's flush fails.
	for i := 0; i < 3; i++ {
		s.write(Encode(t0, seqEvent(i)))
		s.sync()
	}
	if st := s.Stats(); st.WriteErrors != 3 {
		t.Fatalf("stats %+v, want 3 write errors", st)
	}
	if n := logs.Len(); n != 1 {
		t.Fatalf("%d error logs within a minute, want 1", n)
	}
	clk.Add(errorLogInterval)
	s.write(Encode(t0, seqEvent(3)))
	s.sync()
	if n := logs.Len(); n != 2 {
		t.Fatalf("%d error logs after a minute, want 2", n)
	}
	last := logs.All()[1].ContextMap()
	if last["errors"] != uint64(3) || !strings.Contains(fmt.Sprint(last["error"]), "no space left") {
		t.Errorf("log %v, want 3 errors (this one and 2 unlogged) and the cause", last)
	}
	go s.run()
	if err := s.Close(); err == nil {
		t.Error("Close on a full device returned nil")
	}
}

func TestNewRefusesBadPaths(t *testing.T) {
	dir := t.TempDir()
	notDir := filepath.Join(dir, "file")
	if err := os.WriteFile(notDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no path", Config{}, "filesink: path is required"},
		{"negative size", Config{Path: "x", MaxSize: -1}, "max size -1 must not be negative"},
		{"negative files", Config{Path: "x", MaxFiles: -1}, "max files -1 must not be negative"},
		{"parent is a file", Config{Path: filepath.Join(notDir, "audit.log")}, "filesink: mkdir " + notDir + ": not a directory"},
		{"path is a directory", Config{Path: dir}, "filesink: open " + dir + ": is a directory"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s, err := New(c.cfg)
			if err == nil {
				s.Close()
				t.Fatalf("New = nil error, want %q", c.want)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("New = %v, want %q", err, c.want)
			}
		})
	}
	if os.Getuid() != 0 { // root writes anywhere
		ro := filepath.Join(dir, "ro")
		if err := os.Mkdir(ro, 0o500); err != nil {
			t.Fatal(err)
		}
		if _, err := New(Config{Path: filepath.Join(ro, "audit.log")}); err == nil || !strings.Contains(err.Error(), "permission denied") {
			t.Fatalf("New in a read-only directory = %v", err)
		}
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"100MiB": 100 << 20, "4096": 4096, "64 KiB": 64 << 10, "2GiB": 2 << 30, "10B": 10} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "MiB", "-1", "0", "1.5MiB", "10MB", "1e3", "99999999999GiB"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) accepted", in)
		}
	}
}

func parseBlocks(t *testing.T, src string) []plugin.Block {
	t.Helper()
	f, diags := hclsyntax.ParseConfig([]byte(src), "p.hcl", hcl.Pos{Line: 1, Column: 1})
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	blocks, err := plugin.ParseBlocks(f.Body)
	if err != nil {
		t.Fatal(err)
	}
	return blocks
}

// buildPlugin builds the blocks of src with plugin.Build. This package's
// tests register no node attestor, which Build reports after every
// block was built: that error means the audit sinks were accepted.
func buildPlugin(t *testing.T, src string, role plugin.Role) error {
	t.Helper()
	_, err := plugin.Build(parseBlocks(t, src), hcl.Range{Filename: "p.hcl"}, plugin.Env{Role: role})
	if err != nil && strings.Contains(err.Error(), "plugins: no node_attestor: the "+string(role)) {
		return nil
	}
	return err
}

func TestPluginConfigErrors(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct{ name, src, want string }{
		{"no path", "audit_sink \"file\" {\n}", `p.hcl:1: audit_sink "file": Missing required argument; The argument "path" is required`},
		{"empty path", "audit_sink \"file\" {\n  path = \"\"\n}", `p.hcl:2: audit_sink "file": path: must not be empty`},
		{"unknown key", "audit_sink \"file\" {\n  path = \"a\"\n  max_szie = 1\n}", `p.hcl:3: audit_sink "file": Unsupported argument; An argument named "max_szie" is not expected here. Did you mean "max_size"?`},
		{"bad size", "audit_sink \"file\" {\n  path = \"a\"\n  max_size = \"100MB\"\n}", `p.hcl:3: audit_sink "file": max_size: "100MB" is not a size`},
		{"small size", "audit_sink \"file\" {\n  path = \"a\"\n  max_size = 100\n}", `p.hcl:3: audit_sink "file": max_size: "100" is below the minimum of 4KiB`},
		{"bad files", "audit_sink \"file\" {\n  path = \"a\"\n\n  max_files = 0\n}", `p.hcl:4: audit_sink "file": max_files: 0: want 1 to 1000 rotated files`},
		{"unwritable", "audit_sink \"file\" {\n  path = \"" + dir + "\"\n}", `p.hcl:1: audit_sink "file": filesink: open ` + dir + `: is a directory`},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := buildPlugin(t, c.src, plugin.RoleServer)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Build = %v\nwant %s", err, c.want)
			}
		})
	}
}

func TestPluginBuildsForBothRoles(t *testing.T) {
	for _, role := range []plugin.Role{plugin.RoleServer, plugin.RoleAgent} {
		dir := t.TempDir()
		path := filepath.Join(dir, "a", "audit.log")
		src := fmt.Sprintf("audit_sink \"file\" {\n  path = %q\n  max_size = \"1MiB\"\n  max_files = 2\n}", path)
		if err := buildPlugin(t, src, role); err != nil {
			t.Fatalf("%s: %v", role, err)
		}
		v, err := newPlugin(parseBlocks(t, src)[0].Body, plugin.Env{Role: role, Clock: clock.NewFake(t0), Logger: zap.NewNop()})
		if err != nil {
			t.Fatal(err)
		}
		s := v.(*Sink)
		if s.cfg.MaxSize != 1<<20 || s.cfg.MaxFiles != 2 || s.Path() != path {
			t.Errorf("%s: config %+v", role, s.cfg)
		}
		s.Audit(seqEvent(0))
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		checkSeq(t, readLines(t, path), 0, 1)
	}
}

// BenchmarkAudit is the cost of Audit to the caller: encoding and
// queueing (the writer runs concurrently).
func BenchmarkAudit(b *testing.B) {
	s, err := New(Config{Path: filepath.Join(b.TempDir(), "audit.log"), QueueSize: 1 << 16})
	if err != nil {
		b.Fatal(err)
	}
	ev := audit.Event{What: "x509_svid_issued", Who: "spiffe://example.org/sigil/agent/join_token/n1", Subject: "spiffe://example.org/web",
		Message: "x509-svid issued", Fields: []audit.Field{audit.String("agent_id", "spiffe://example.org/sigil/agent/join_token/n1"),
			audit.String("entry_id", "0b6c3a4e-5a4e-4d53-8f3e-8a1f3f0e2b1c"), audit.String("spiffe_id", "spiffe://example.org/web"),
			audit.String("serial", "1f2e3d4c5b6a"), audit.Time("not_after", t0)}}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s.Audit(ev)
	}
	b.StopTimer()
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(s.Stats().Dropped), "dropped")
}
