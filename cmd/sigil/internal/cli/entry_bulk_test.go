package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// countingAdmin is fakeAdmin that records the size of every batch and
// can fail a call outright.
type countingAdmin struct {
	*fakeAdmin
	mu        sync.Mutex
	creates   []int
	deletes   []int
	failAfter int // calls that succeed before every call fails; 0: never fail
}

func (c *countingAdmin) fail() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.failAfter > 0 && len(c.creates) >= c.failAfter
}

func (c *countingAdmin) BatchCreateEntry(ctx context.Context, req *sigilv1.BatchCreateEntryRequest) (*sigilv1.BatchCreateEntryResponse, error) {
	if c.fail() {
		return nil, status.Error(codes.Unavailable, "leader lost")
	}
	c.mu.Lock()
	c.creates = append(c.creates, len(req.Entries))
	c.mu.Unlock()
	return c.fakeAdmin.BatchCreateEntry(ctx, req)
}

func (c *countingAdmin) BatchDeleteEntry(ctx context.Context, req *sigilv1.BatchDeleteEntryRequest) (*sigilv1.BatchDeleteEntryResponse, error) {
	c.mu.Lock()
	c.deletes = append(c.deletes, len(req.Ids))
	c.mu.Unlock()
	return c.fakeAdmin.BatchDeleteEntry(ctx, req)
}

func entryJSON(i int) string {
	return fmt.Sprintf(`{"spiffe_id": "spiffe://example.org/w/%d", "parent_id": %q, "selectors": [{"type": "unix", "value": "uid:%d"}]}`, i, agentID, i)
}

// TestEntryCreateDataLayouts: the three layouts of a -data file, from a
// file and from stdin, give the same entries, in batches of -batch-size.
func TestEntryCreateDataLayouts(t *testing.T) {
	const n = 25
	var items []string
	for i := range n {
		items = append(items, entryJSON(i))
	}
	layouts := map[string]string{
		"array":   "[\n" + strings.Join(items, ",\n") + "\n]\n",
		"lines":   strings.Join(items, "\n") + "\n",
		"wrapper": `  {"entries": [` + strings.Join(items, ",") + "]}",
	}
	for name, doc := range layouts {
		for _, stdin := range []bool{false, true} {
			a := &countingAdmin{fakeAdmin: newFakeAdmin()}
			sock := startFakeAdmin(t, a)
			file := filepath.Join(t.TempDir(), "entries.json")
			os.WriteFile(file, []byte(doc), 0o600)
			arg := file
			var in *strings.Reader
			if stdin {
				arg, in = "-", strings.NewReader(doc)
			} else {
				in = strings.NewReader("")
			}
			code, out, errOut := runIn(t, in, "entry", "create", "-socket", sock, "-data", arg, "-batch-size", "10")
			if code != 0 {
				t.Fatalf("%s (stdin %v): %d %q", name, stdin, code, errOut)
			}
			if len(a.entries) != n || fmt.Sprint(a.creates) != "[10 10 5]" {
				t.Errorf("%s: %d entries in batches %v, want %d in [10 10 5]", name, len(a.entries), a.creates, n)
			}
			if strings.Count(out, "Created entry ") != n || !strings.Contains(out, "(spiffe://example.org/w/24)") {
				t.Errorf("%s: stdout %q", name, out)
			}
			// Not a terminal: a plain line at every tenth of the way, then
			// the summary.
			if !strings.Contains(errOut, "create: 10/25 entries (40%), 0 failed\n") || !strings.HasSuffix(errOut, "create: 25/25 entries (100%), 0 failed\nCreated 25 of 25 entries\n") {
				t.Errorf("%s: stderr %q", name, errOut)
			}
		}
	}
}

// TestEntryCreateDataFailures: failed items are listed with their reasons
// after the progress, the summary counts them and the exit code is 1; a
// malformed file sends nothing (exit 2); a call that fails stops sending.
func TestEntryCreateDataFailures(t *testing.T) {
	a := &countingAdmin{fakeAdmin: newFakeAdmin()}
	sock := startFakeAdmin(t, a)
	dir := t.TempDir()
	file := filepath.Join(dir, "entries.jsonl")
	lines := []string{entryJSON(0), strings.Replace(entryJSON(1), "example.org/w", "other.org/w", 1), entryJSON(2)}
	os.WriteFile(file, []byte(strings.Join(lines, "\n")), 0o600)
	code, out, errOut := run(t, "entry", "create", "-socket", sock, "-data", file)
	if code != ExitFailure || strings.Count(out, "Created entry") != 2 {
		t.Errorf("partial failure: %d %q", code, out)
	}
	if !strings.Contains(errOut, "failed to create entry 1 (spiffe://other.org/w/1): InvalidArgument: registration: spiffe_id \"spiffe://other.org/w/1\" is not in trust domain \"example.org\"\n"+
		"Created 2 of 3 entries, 1 failed\nsigil: 1 of 3 entries failed to create\n") {
		t.Errorf("partial failure stderr: %q", errOut)
	}

	// JSON: {"results": [...]}, one per item in file order, the layout
	// printJSON gives the whole message.
	code, out, _ = run(t, "entry", "create", "-socket", sock, "-data", file, "-output", "json")
	var resp sigilv1.BatchCreateEntryResponse
	if code != ExitFailure || protojson.Unmarshal([]byte(out), &resp) != nil || len(resp.Results) != 3 ||
		resp.Results[1].GetStatus().GetCode() != int32(codes.InvalidArgument) || resp.Results[2].GetEntry().GetSpiffeId() != "spiffe://example.org/w/2" {
		t.Fatalf("json: %d %s", code, out)
	}
	var whole bytes.Buffer
	printJSON(&whole, &resp)
	if whole.String() != out {
		t.Errorf("streamed JSON differs from printJSON:\n%s\nvs\n%s", out, whole.String())
	}

	before := len(a.entries)
	for name, doc := range map[string]string{
		"syntax":        entryJSON(0) + "\n{\"spiffe_id\": ",
		"unknown field": entryJSON(0) + "\n" + `{"spiffe_idd": "x"}`,
		"not an entry":  "[" + entryJSON(0) + `, 3]`,
		"empty":         " \n",
		"trailing":      "[" + entryJSON(0) + "] x",
		"scalar":        "42",
	} {
		os.WriteFile(file, []byte(doc), 0o600)
		code, out, errOut := run(t, "entry", "create", "-socket", sock, "-data", file)
		if code != ExitUsage || out != "" || !strings.HasPrefix(errOut, "sigil: -data "+file) || strings.Count(errOut, "\n") != 1 {
			t.Errorf("%s: %d %q %q", name, code, out, errOut)
		}
	}
	if len(a.entries) != before {
		t.Errorf("malformed files created %d entries", len(a.entries)-before)
	}
	if code, _, errOut := run(t, "entry", "create", "-socket", sock, "-data", file, "-batch-size", "0"); code != ExitUsage || !strings.Contains(errOut, "invalid -batch-size 0: want 1 to 10000") {
		t.Errorf("-batch-size 0: %d %q", code, errOut)
	}

	// The server fails the third call: the rest is not sent.
	var items []string
	for i := range 10 {
		items = append(items, entryJSON(100+i))
	}
	os.WriteFile(file, []byte(strings.Join(items, "\n")), 0o600)
	a.mu.Lock()
	a.failAfter = len(a.creates) + 2
	a.mu.Unlock()
	code, out, errOut = run(t, "entry", "create", "-socket", sock, "-data", file, "-batch-size", "3")
	if code != ExitFailure || strings.Count(out, "Created entry") != 6 ||
		!strings.Contains(errOut, "Created 6 of 10 entries, 4 not sent\nsigil: 4 of 10 entries failed to create; sending stopped at entry 6: create entries: cannot reach the server") {
		t.Errorf("failed call: %d %q %q", code, out, errOut)
	}
}

// TestEntryDeleteData: delete takes ids as JSON strings or entry objects,
// for example what entry list -output json printed.
func TestEntryDeleteData(t *testing.T) {
	a := &countingAdmin{fakeAdmin: newFakeAdmin()}
	sock := startFakeAdmin(t, a)
	dir := t.TempDir()
	var items []string
	for i := range 7 {
		items = append(items, entryJSON(i))
	}
	file := filepath.Join(dir, "entries.json")
	os.WriteFile(file, []byte("["+strings.Join(items, ",")+"]"), 0o600)
	if code, _, errOut := run(t, "entry", "create", "-socket", sock, "-data", file); code != 0 {
		t.Fatalf("create: %d %q", code, errOut)
	}
	code, listed, _ := run(t, "entry", "list", "-socket", sock, "-output", "json", "-selector", "unix:uid:3")
	if code != 0 {
		t.Fatal("list")
	}
	os.WriteFile(file, []byte(listed), 0o600)
	code, out, errOut := run(t, "entry", "delete", "-socket", sock, "-data", file)
	if code != 0 || out != "Deleted entry e4\n" || !strings.HasSuffix(errOut, "Deleted 1 of 1 entry\n") || len(a.entries) != 6 {
		t.Errorf("delete listed: %d %q %q", code, out, errOut)
	}
	os.WriteFile(file, []byte("\"e1\"\n\"e2\"\n\"e4\"\n{\"id\": \"e5\"}\n"), 0o600)
	code, out, errOut = run(t, "entry", "delete", "-socket", sock, "-data", file, "-batch-size", "2")
	if code != ExitFailure || out != "Deleted entry e1\nDeleted entry e2\nDeleted entry e5\n" || fmt.Sprint(a.deletes[1:]) != "[2 2]" ||
		!strings.Contains(errOut, "failed to delete entry 2 (id e4): NotFound: entry \"e4\" not found\nDeleted 3 of 4 entries, 1 failed\n") {
		t.Errorf("delete ids: %d %q %q %v", code, out, errOut, a.deletes)
	}
	code, out, _ = run(t, "entry", "delete", "-socket", sock, "-data", file, "-output", "json")
	var resp sigilv1.BatchDeleteEntryResponse
	if code != ExitFailure || protojson.Unmarshal([]byte(out), &resp) != nil || len(resp.Results) != 4 || resp.Results[3].GetId() != "e5" ||
		resp.Results[3].GetStatus().GetCode() != int32(codes.NotFound) {
		t.Errorf("delete json: %d %s", code, out)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-data", file, "-id", "e1"}, "-data and -id are mutually exclusive"},
		{[]string{"-batch-size", "5", "-id", "e1"}, "-batch-size goes with -data"},
		{[]string{"-data", filepath.Join(dir, "none")}, "reading -data: stat "},
	} {
		if code, _, errOut := run(t, append([]string{"entry", "delete", "-socket", sock}, tc.args...)...); code != ExitUsage || !strings.Contains(errOut, tc.want) {
			t.Errorf("%q: %d %q", tc.args, code, errOut)
		}
	}
	os.WriteFile(file, []byte(`["e1", ""]`), 0o600)
	if code, _, errOut := run(t, "entry", "delete", "-socket", sock, "-data", file); code != ExitUsage || !strings.Contains(errOut, "entry 1: empty id") {
		t.Errorf("empty id: %d %q", code, errOut)
	}
}

// TestProgress: on a terminal a bar redrawn in place, else plain lines at
// every tenth.
func TestProgress(t *testing.T) {
	var b bytes.Buffer
	p := newProgress(&b, true, "create", 200)
	p.update(100, 0)
	p.clear()
	p.update(200, 3)
	p.finish()
	want := "\r\033[Kcreate [###############---------------] 100/200  50%" + "\r\033[K" +
		"\r\033[Kcreate [##############################] 200/200 100%  3 failed\n"
	if b.String() != want {
		t.Errorf("bar = %q, want %q", b.String(), want)
	}
	b.Reset()
	p = newProgress(&b, false, "delete", 20000)
	for done := 500; done <= 20000; done += 500 {
		p.update(done, 0)
	}
	p.finish()
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 10 || lines[0] != "delete: 2000/20000 entries (10%), 0 failed" || lines[9] != "delete: 20000/20000 entries (100%), 0 failed" {
		t.Errorf("plain progress: %q", lines)
	}
	if isTerminal(&b) {
		t.Error("a buffer is a terminal")
	}
}

// TestScanItemsLargeWrapper streams a wrapper of many entries without
// holding it (items arrive one by one, in order).
func TestScanItemsLargeWrapper(t *testing.T) {
	var doc strings.Builder
	doc.WriteString(`{"entries": [`)
	for i := range 5000 {
		if i > 0 {
			doc.WriteByte(',')
		}
		doc.WriteString(entryJSON(i))
	}
	doc.WriteString("]}\n")
	next := 0
	err := scanItems("x", strings.NewReader(doc.String()), func(i int, raw json.RawMessage) error {
		e, err := decodeEntry("x", i, raw)
		if err != nil {
			return err
		}
		if i != next || e.SpiffeId != fmt.Sprintf("spiffe://example.org/w/%d", i) {
			return fmt.Errorf("item %d is %s", i, e.SpiffeId)
		}
		next++
		return nil
	})
	if err != nil || next != 5000 {
		t.Errorf("scan: %v after %d items", err, next)
	}
}
