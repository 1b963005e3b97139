package cli

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/term"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/server"
)

// Bulk -data files (docs/cli.md, "Entries in bulk").
//
// A -data file holds entries in one of three layouts, told apart by its
// first bytes: a JSON array of entries, JSON lines (one entry object per
// line, or any white space between objects), or the object
// {"entries": [...]} that `sigil entry list -output json` prints. Each
// entry is the protojson of sigil.v1.Entry (snake_case or lowerCamelCase
// names, unknown fields refused). For `entry delete` an item may also be
// a JSON string: the entry's id.
//
// The file is read twice and never held in memory: a first pass checks
// every item and counts them, so that a malformed file sends nothing; the
// second pass sends the items in batches of at most -batch-size items and
// maxBatchBytes bytes. Standard input ("-") is spooled to a temporary file
// first.

// defaultBatchSize is the default -batch-size of the bulk commands.
const defaultBatchSize = 1000

// maxBatchBytes bounds the encoded entries of one batch, so that a batch
// and its answer (which echoes the entries) stay well under gRPC's 4 MiB
// message limit.
const maxBatchBytes = 1 << 20

// dataFile is an opened -data file: a path that can be read twice.
type dataFile struct {
	name    string // as the user gave it, for messages
	path    string
	cleanup func()
}

// openData makes path ("-" for standard input) readable twice.
func openData(cmd *cobra.Command, path string) (*dataFile, error) {
	if path != "-" {
		if _, err := os.Stat(path); err != nil {
			return nil, usagef("reading -data: %w", err)
		}
		return &dataFile{name: path, path: path, cleanup: func() {}}, nil
	}
	f, err := os.CreateTemp("", "sigil-data-*.json")
	if err != nil {
		return nil, fmt.Errorf("spooling -data from standard input: %w", err)
	}
	cleanup := func() { f.Close(); os.Remove(f.Name()) }
	if _, err := io.Copy(f, cmd.InOrStdin()); err != nil {
		cleanup()
		return nil, fmt.Errorf("reading -data from standard input: %w", err)
	}
	if err := f.Close(); err != nil {
		cleanup()
		return nil, fmt.Errorf("spooling -data from standard input: %w", err)
	}
	return &dataFile{name: "-", path: f.Name(), cleanup: cleanup}, nil
}

// scan calls fn with every item of the file, in order, numbered from 0.
// An error of fn stops the scan and is returned as it is.
func (d *dataFile) scan(fn func(i int, raw json.RawMessage) error) error {
	f, err := os.Open(d.path)
	if err != nil {
		return usagef("reading -data: %w", err)
	}
	defer f.Close()
	return scanItems(d.name, f, fn)
}

// scanItems reads the items of a -data document from r (see above).
func scanItems(name string, r io.Reader, fn func(i int, raw json.RawMessage) error) error {
	br := bufio.NewReaderSize(r, 64<<10)
	first, err := skipSpace(br)
	if err == io.EOF {
		return usagef("-data %s holds no entries", name)
	}
	if err != nil {
		return fmt.Errorf("reading -data %s: %w", name, err)
	}
	dec := json.NewDecoder(br)
	bad := func(i int, err error) error {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return usagef("-data %s: entry %d: invalid JSON at byte %d: %v", name, i, se.Offset, err)
		}
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return usagef("-data %s: entry %d: the file ends inside it", name, i)
		}
		return usagef("-data %s: entry %d: %v", name, i, err)
	}
	n := 0
	items := func() error {
		for dec.More() {
			var raw json.RawMessage
			if err := dec.Decode(&raw); err != nil {
				return bad(n, err)
			}
			if err := fn(n, raw); err != nil {
				return err
			}
			n++
		}
		return nil
	}
	// expect reads one delimiter token.
	expect := func(want json.Delim) error {
		tok, err := dec.Token()
		if err != nil {
			return bad(n, err)
		}
		if d, ok := tok.(json.Delim); !ok || d != want {
			return usagef("-data %s: want %q, found %v", name, want, tok)
		}
		return nil
	}
	switch {
	case first == '[':
		if err := expect('['); err != nil {
			return err
		}
		if err := items(); err != nil {
			return err
		}
		if err := expect(']'); err != nil {
			return err
		}
	case first == '{' && isWrapper(br):
		if err := expect('{'); err != nil {
			return err
		}
		if _, err := dec.Token(); err != nil { // "entries"
			return bad(n, err)
		}
		if err := expect('['); err != nil {
			return err
		}
		if err := items(); err != nil {
			return err
		}
		if err := expect(']'); err != nil {
			return err
		}
		// entry list -output json also prints "next_page_token" (empty).
		for dec.More() {
			key, err := dec.Token()
			if err != nil {
				return bad(n, err)
			}
			var skip json.RawMessage
			if key != "next_page_token" || dec.Decode(&skip) != nil {
				return usagef(`-data %s: the object may hold only "entries" (and "next_page_token"), found %v`, name, key)
			}
		}
		if err := expect('}'); err != nil {
			return err
		}
	default:
		// JSON lines: values one after the other (objects; for delete
		// also strings).
		for {
			var raw json.RawMessage
			err := dec.Decode(&raw)
			if err == io.EOF {
				break
			}
			if err != nil {
				return bad(n, err)
			}
			if err := fn(n, raw); err != nil {
				return err
			}
			n++
		}
	}
	if _, err := dec.Token(); err != io.EOF {
		return usagef("-data %s: unexpected data after entry %d", name, n-1)
	}
	if n == 0 {
		return usagef("-data %s holds no entries", name)
	}
	return nil
}

// skipSpace consumes the JSON white space at the start of br and returns
// the first other byte, left unread.
func skipSpace(br *bufio.Reader) (byte, error) {
	for {
		b, err := br.ReadByte()
		if err != nil {
			return 0, err
		}
		switch b {
		case ' ', '\t', '\r', '\n':
			continue
		}
		return b, br.UnreadByte()
	}
}

// isWrapper reports whether the object at the start of br begins with the
// key "entries" (the list layout) rather than an entry field.
func isWrapper(br *bufio.Reader) bool {
	b, _ := br.Peek(br.Size())
	b = bytes.TrimLeft(b, " \t\r\n")
	b = bytes.TrimLeft(b[min(1, len(b)):], " \t\r\n")
	return bytes.HasPrefix(b, []byte(`"entries"`))
}

// decodeEntry parses one item as an entry, normalizing federates_with as
// -federates-with does.
func decodeEntry(name string, i int, raw json.RawMessage) (*sigilv1.Entry, error) {
	e := &sigilv1.Entry{}
	if err := protojson.Unmarshal(raw, e); err != nil {
		return nil, usagef("-data %s: entry %d: want an entry like {\"spiffe_id\": ..., \"parent_id\": ..., \"selectors\": [{\"type\": \"unix\", \"value\": \"uid:1000\"}]}: %v", name, i, err)
	}
	for j, v := range e.FederatesWith {
		if v == "" {
			return nil, usagef("-data %s: entry %d: federates_with holds an empty trust domain", name, i)
		}
		td, err := trustDomainArg("federates-with", v)
		if err != nil {
			return nil, usagef("-data %s: entry %d: federates_with: %v", name, i, strings.TrimPrefix(err.Error(), "invalid -federates-with "))
		}
		e.FederatesWith[j] = td
	}
	return e, nil
}

// decodeID parses one item of a delete file: a JSON string or an entry
// object with its id.
func decodeID(name string, i int, raw json.RawMessage) (string, error) {
	if len(raw) > 0 && raw[0] == '"' {
		var id string
		if err := json.Unmarshal(raw, &id); err != nil {
			return "", usagef("-data %s: entry %d: %v", name, i, err)
		}
		if id == "" {
			return "", usagef("-data %s: entry %d: empty id", name, i)
		}
		return id, nil
	}
	// Only the id matters: the other fields of an entry (as entry list
	// prints them) are not checked.
	var e struct {
		ID string `json:"id"`
	}
	if len(raw) == 0 || raw[0] != '{' || json.Unmarshal(raw, &e) != nil {
		return "", usagef("-data %s: entry %d: want an entry id (a JSON string) or an entry object with its \"id\", found %.40s", name, i, raw)
	}
	if e.ID == "" {
		return "", usagef("-data %s: entry %d has no id", name, i)
	}
	return e.ID, nil
}

// bulkItem is one item of a bulk operation: an entry (create, update) or
// an id (delete).
type bulkItem struct {
	index int
	entry *sigilv1.Entry
	id    string
	size  int
}

// label names the item in failure lines: entry 17 (spiffe://...) or
// entry 17 (id 5c0e...).
func (it bulkItem) label() string {
	what := fmt.Sprintf("entry %d", it.index)
	switch {
	case it.id != "":
		what += " (id " + it.id + ")"
	case it.entry.GetId() != "":
		what += " (id " + it.entry.GetId() + ")"
	case it.entry.GetSpiffeId() != "":
		what += " (" + it.entry.GetSpiffeId() + ")"
	}
	return what
}

// bulkResult is the server's answer for one item.
type bulkResult struct {
	status *sigilv1.Status
	entry  *sigilv1.Entry // create, update
	msg    proto.Message  // EntryResult or DeleteResult, for -output json
}

// bulkOp is one kind of bulk operation.
type bulkOp struct {
	verb   string // create, update, delete
	past   string // Created, Updated, Deleted
	decode func(name string, i int, raw json.RawMessage) (bulkItem, error)
	send   func(cmd *cobra.Command, c *AdminConn, items []bulkItem) ([]bulkResult, error)
	// notSent is the JSON result of an item that was not sent.
	notSent func(it bulkItem, st *sigilv1.Status) proto.Message
}

// bulkFailure is one failed item, for the summary.
type bulkFailure struct {
	label  string
	reason string
}

// runBulk checks the whole -data file, then sends its items in batches,
// reporting progress on stderr, and prints the summary. It fails with
// ExitFailure if any item failed or was not sent.
func runBulk(cmd *cobra.Command, o *adminOpts, op bulkOp, path string, batchSize int) error {
	if batchSize < 1 || batchSize > server.MaxAdminBatch {
		return usagef("invalid -batch-size %d: want 1 to %d (the server's limit)", batchSize, server.MaxAdminBatch)
	}
	d, err := openData(cmd, path)
	if err != nil {
		return err
	}
	defer d.cleanup()
	total := 0
	if err := d.scan(func(i int, raw json.RawMessage) error {
		if _, err := op.decode(d.name, i, raw); err != nil {
			return err
		}
		total++
		return nil
	}); err != nil {
		return err
	}

	c, err := o.dial()
	if err != nil {
		return err
	}
	defer c.Close()

	out, errw := cmd.OutOrStdout(), cmd.ErrOrStderr()
	var js *jsonResults
	if o.json() {
		js = newJSONResults(out)
	}
	prog := newProgress(errw, isTerminal(errw), op.verb, total)
	var (
		done, ok   int
		failures   []bulkFailure
		sendErr    error // the error that stopped sending
		notSent    int
		batch      []bulkItem
		batchBytes int
	)
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		items := batch
		batch, batchBytes = nil, 0
		var results []bulkResult
		if sendErr == nil {
			var err error
			results, err = op.send(cmd, c, items)
			if err == nil && len(results) != len(items) {
				err = fmt.Errorf("%s entries: the server answered %d results for %d entries", op.verb, len(results), len(items))
			}
			if err != nil {
				sendErr = err
				results = nil
			}
		}
		// The bar's line is cleared so that stdout lines on the same
		// terminal do not run into it; update redraws it.
		prog.clear()
		for k, it := range items {
			if results == nil {
				notSent++
				if js != nil {
					js.add(op.notSent(it, &sigilv1.Status{Code: int32(codes.Aborted), Message: "not sent: " + OneLine(sendErr.Error())}))
				}
				continue
			}
			r := results[k]
			if js != nil {
				js.add(r.msg)
			}
			if code := codes.Code(r.status.GetCode()); code != codes.OK {
				failures = append(failures, bulkFailure{label: it.label(), reason: OneLine(statusText(code, r.status.GetMessage()))})
				continue
			}
			ok++
			if js == nil {
				switch {
				case r.entry != nil:
					fmt.Fprintf(out, "%s entry %s (%s)\n", op.past, r.entry.GetId(), r.entry.GetSpiffeId())
				case it.id != "":
					fmt.Fprintf(out, "%s entry %s\n", op.past, it.id)
				}
			}
		}
		done += len(items)
		prog.update(done, len(failures)+notSent)
		if js != nil {
			return js.err
		}
		return nil
	}
	err = d.scan(func(i int, raw json.RawMessage) error {
		it, err := op.decode(d.name, i, raw)
		if err != nil {
			return err
		}
		if len(batch) > 0 && (len(batch) >= batchSize || batchBytes+it.size > maxBatchBytes) {
			if err := flush(); err != nil {
				return err
			}
		}
		batch = append(batch, it)
		batchBytes += it.size
		return nil
	})
	if err == nil {
		err = flush()
	}
	prog.finish()
	if js != nil {
		js.end()
		if err == nil {
			err = js.err
		}
	}
	if err != nil {
		return err
	}
	if done != total {
		return fmt.Errorf("-data %s changed while it was read: %d entries, then %d", d.name, total, done)
	}

	for _, f := range failures {
		fmt.Fprintf(errw, "failed to %s %s: %s\n", op.verb, f.label, f.reason)
	}
	summary := fmt.Sprintf("%s %d of %d %s", op.past, ok, total, plural(total, "entry", "entries"))
	if len(failures) > 0 {
		summary += fmt.Sprintf(", %d failed", len(failures))
	}
	if notSent > 0 {
		summary += fmt.Sprintf(", %d not sent", notSent)
	}
	fmt.Fprintln(errw, summary)
	switch {
	case sendErr != nil:
		return &ExitError{Code: ExitFailure, Err: fmt.Errorf("%d of %d entries failed to %s; sending stopped at entry %d: %w", len(failures)+notSent, total, op.verb, done-notSent, sendErr)}
	case len(failures) > 0:
		return &ExitError{Code: ExitFailure, Err: fmt.Errorf("%d of %d entries failed to %s", len(failures), total, op.verb)}
	}
	return nil
}

// entryBulkOp is create or update of entries from a -data file.
func entryBulkOp(verb string) bulkOp {
	op := bulkOp{
		verb: verb,
		decode: func(name string, i int, raw json.RawMessage) (bulkItem, error) {
			e, err := decodeEntry(name, i, raw)
			if err != nil {
				return bulkItem{}, err
			}
			if verb == "update" && e.Id == "" {
				return bulkItem{}, usagef("-data %s: entry %d has no id", name, i)
			}
			return bulkItem{index: i, entry: e, size: proto.Size(e)}, nil
		},
		notSent: func(it bulkItem, st *sigilv1.Status) proto.Message {
			return &sigilv1.EntryResult{Status: st, Entry: it.entry}
		},
	}
	entries := func(items []bulkItem) []*sigilv1.Entry {
		es := make([]*sigilv1.Entry, len(items))
		for k, it := range items {
			es[k] = it.entry
		}
		return es
	}
	results := func(rs []*sigilv1.EntryResult) []bulkResult {
		out := make([]bulkResult, len(rs))
		for k, r := range rs {
			out[k] = bulkResult{status: r.GetStatus(), entry: r.GetEntry(), msg: r}
		}
		return out
	}
	if verb == "create" {
		op.past = "Created"
		op.send = func(cmd *cobra.Command, c *AdminConn, items []bulkItem) ([]bulkResult, error) {
			resp, err := call(cmd.Context(), c.BatchCreateEntry, &sigilv1.BatchCreateEntryRequest{Entries: entries(items)})
			if err != nil {
				return nil, c.RPCError("create entries", err)
			}
			return results(resp.Results), nil
		}
	} else {
		op.past = "Updated"
		op.send = func(cmd *cobra.Command, c *AdminConn, items []bulkItem) ([]bulkResult, error) {
			resp, err := call(cmd.Context(), c.BatchUpdateEntry, &sigilv1.BatchUpdateEntryRequest{Entries: entries(items)})
			if err != nil {
				return nil, c.RPCError("update entries", err)
			}
			return results(resp.Results), nil
		}
	}
	return op
}

// deleteBulkOp is delete of entries named in a -data file.
func deleteBulkOp() bulkOp {
	return bulkOp{
		verb: "delete",
		past: "Deleted",
		decode: func(name string, i int, raw json.RawMessage) (bulkItem, error) {
			id, err := decodeID(name, i, raw)
			if err != nil {
				return bulkItem{}, err
			}
			return bulkItem{index: i, id: id, size: len(id) + 4}, nil
		},
		send: func(cmd *cobra.Command, c *AdminConn, items []bulkItem) ([]bulkResult, error) {
			ids := make([]string, len(items))
			for k, it := range items {
				ids[k] = it.id
			}
			resp, err := call(cmd.Context(), c.BatchDeleteEntry, &sigilv1.BatchDeleteEntryRequest{Ids: ids})
			if err != nil {
				return nil, c.RPCError("delete entries", err)
			}
			out := make([]bulkResult, len(resp.Results))
			for k, r := range resp.Results {
				out[k] = bulkResult{status: r.GetStatus(), msg: r}
			}
			return out, nil
		},
		notSent: func(it bulkItem, st *sigilv1.Status) proto.Message {
			return &sigilv1.DeleteResult{Id: it.id, Status: st}
		},
	}
}

// isTerminal reports whether w is a terminal (for the progress bar).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// progress reports a bulk operation on stderr: a bar redrawn in place on a
// terminal, otherwise a plain line at every tenth of the way.
type progress struct {
	w         io.Writer
	tty       bool
	verb      string
	total     int
	lastTenth int
	drawn     bool
}

func newProgress(w io.Writer, tty bool, verb string, total int) *progress {
	return &progress{w: w, tty: tty, verb: verb, total: total}
}

// progressWidth is the width of the bar, in characters.
const progressWidth = 30

func (p *progress) update(done, failed int) {
	if p.total == 0 {
		return
	}
	pct := done * 100 / p.total
	if p.tty {
		fill := done * progressWidth / p.total
		fmt.Fprintf(p.w, "\r\033[K%s [%s%s] %d/%d %3d%%", p.verb, strings.Repeat("#", fill), strings.Repeat("-", progressWidth-fill), done, p.total, pct)
		if failed > 0 {
			fmt.Fprintf(p.w, "  %d failed", failed)
		}
		p.drawn = true
		return
	}
	tenth := done * 10 / p.total
	if tenth == p.lastTenth && done != p.total {
		return
	}
	p.lastTenth = tenth
	fmt.Fprintf(p.w, "%s: %d/%d entries (%d%%), %d failed\n", p.verb, done, p.total, pct, failed)
}

// clear erases the bar, if drawn.
func (p *progress) clear() {
	if p.drawn {
		fmt.Fprint(p.w, "\r\033[K")
		p.drawn = false
	}
}

// finish ends the bar's line.
func (p *progress) finish() {
	if p.drawn {
		fmt.Fprintln(p.w)
		p.drawn = false
	}
}

// jsonResults streams {"results": [...]} with the layout printJSON gives
// the same message whole.
type jsonResults struct {
	w   io.Writer
	n   int
	err error
}

func newJSONResults(w io.Writer) *jsonResults {
	j := &jsonResults{w: w}
	j.write([]byte("{\n  \"results\": ["))
	return j
}

func (j *jsonResults) write(b []byte) {
	if j.err == nil {
		_, j.err = j.w.Write(b)
	}
}

func (j *jsonResults) add(m proto.Message) {
	b, err := jsonOptions.Marshal(m)
	if err != nil {
		j.err = errors.Join(j.err, err)
		return
	}
	var buf bytes.Buffer
	if j.n > 0 {
		buf.WriteByte(',')
	}
	buf.WriteString("\n    ")
	if err := json.Indent(&buf, b, "    ", "  "); err != nil {
		j.err = errors.Join(j.err, err)
		return
	}
	j.n++
	j.write(buf.Bytes())
}

func (j *jsonResults) end() {
	if j.n == 0 {
		j.write([]byte("]\n}\n"))
		return
	}
	j.write([]byte("\n  ]\n}\n"))
}
