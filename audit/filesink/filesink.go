// Package filesink is the audit sink for compliance teams: it appends
// every audit event (identities issued or refused, agents attested,
// admin changes, authority transitions) to a file as one JSON object per
// line, and rotates the file by size.
//
// # Format
//
// Each line is one object with its keys always in this order:
//
//	{"time":"2026-11-30T15:04:05.123456789Z","what":"entry_created","who":"admin",
//	 "subject":"<entry id>","outcome":"success","message":"entry created",
//	 "fields":{"spiffe_id":"spiffe://example.org/web", ...}}
//
// time is when the sink received the event (RFC 3339 with nanoseconds,
// UTC); who, subject are "" when the event has none; outcome is "success"
// when the event leaves it empty; message is the event's What when it has
// none; fields holds the event's fields in the event's order (strings,
// string lists, numbers, booleans; times as RFC 3339 UTC strings,
// durations as seconds, errors as their message).
//
// # Design
//
// Audit is called on the request path, after the action took effect, so
// it must never wait on the disk. Audit encodes the line (so the event's
// slices are not kept) and hands it to a bounded queue without blocking;
// one writer goroutine drains the queue in batches, writes each batch,
// flushes it and fsyncs once per batch (group commit: under load batches
// grow instead of callers waiting). A slow or hung disk therefore costs
// the caller nothing; when the queue is full the event is dropped and
// counted, and the writer records the gap in the file itself as an
// "audit_events_dropped" line, so a reader of the file sees that events
// are missing. A mutex-protected writer was rejected: a stalled fsync or
// NFS mount would stall every issuance.
//
// # Rotation
//
// When the next line would make the file larger than MaxSize, the file
// is closed, path.N-1 is renamed path.N … path.1 → path.2 (the oldest,
// beyond MaxFiles, is removed), path is renamed path.1 and a new path is
// opened. A line is never split across files nor lost in a rotation; a
// single line larger than MaxSize gets a file of its own.
//
// Files are created with mode 0600, the directory with 0700 when
// missing. A write error is counted (Stats) and logged at most once a
// minute; it never reaches the caller.
package filesink

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/sigil-id/sigil/audit"
	"github.com/sigil-id/sigil/clock"
)

// Defaults for Config.
const (
	DefaultMaxSize   int64 = 100 << 20 // 100 MiB
	DefaultMaxFiles        = 5
	DefaultQueueSize       = 4096
)

// errorLogInterval is the least time between two logged write errors.
const errorLogInterval = time.Minute

// Config configures a Sink.
type Config struct {
	// Path is the audit file. Required.
	Path string
	// MaxSize is the largest the file grows before it is rotated, in
	// bytes; 0 means DefaultMaxSize.
	MaxSize int64
	// MaxFiles is how many rotated files (path.1 … path.MaxFiles) are
	// kept; 0 means DefaultMaxFiles.
	MaxFiles int
	// QueueSize is how many events may wait for the writer before Audit
	// drops events; 0 means DefaultQueueSize.
	QueueSize int
	// Clock stamps events and paces error logs; nil is the wall clock.
	Clock clock.Clock
	// Logger receives write errors and drops; nil discards them.
	Logger *zap.Logger
}

// DefaultConfig returns a Config with the defaults filled in and no Path.
func DefaultConfig() Config {
	return Config{MaxSize: DefaultMaxSize, MaxFiles: DefaultMaxFiles, QueueSize: DefaultQueueSize}
}

func (c Config) withDefaults() Config {
	if c.MaxSize == 0 {
		c.MaxSize = DefaultMaxSize
	}
	if c.MaxFiles == 0 {
		c.MaxFiles = DefaultMaxFiles
	}
	if c.QueueSize == 0 {
		c.QueueSize = DefaultQueueSize
	}
	if c.Clock == nil {
		c.Clock = clock.New()
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	return c
}

// Validate reports a Config that New would refuse (zero values are
// defaults and valid, except Path).
func (c Config) Validate() error {
	switch {
	case c.Path == "":
		return errors.New("filesink: path is required")
	case c.MaxSize < 0:
		return fmt.Errorf("filesink: max size %d must not be negative", c.MaxSize)
	case c.MaxFiles < 0:
		return fmt.Errorf("filesink: max files %d must not be negative", c.MaxFiles)
	case c.QueueSize < 0:
		return fmt.Errorf("filesink: queue size %d must not be negative", c.QueueSize)
	}
	return nil
}

// Stats are a Sink's counters since New.
type Stats struct {
	// Written is the number of event lines handed to the file (a failed
	// flush may still lose some: see WriteErrors).
	Written uint64
	// Dropped is the number of events refused because the queue was
	// full or the sink closed.
	Dropped uint64
	// WriteErrors is the number of failed writes, flushes, syncs,
	// rotations and opens; the lines they concerned may be lost.
	WriteErrors uint64
	// Rotations is the number of rotations done.
	Rotations uint64
}

// Sink is an audit.Sink that appends events to a file. It is safe for
// concurrent use; Close flushes it.
type Sink struct {
	cfg Config
	log *zap.Logger

	mu     sync.RWMutex // guards closed against sends on queue
	closed bool
	queue  chan []byte
	done   chan struct{}

	written, dropped, writeErrors, rotations atomic.Uint64

	// Owned by the writer goroutine.
	f           *os.File
	w           *bufio.Writer
	size        int64
	reported    uint64 // drops already recorded in the file
	lastErrLog  time.Time
	errsSince   uint64
	lastDropLog time.Time
	dropsSince  uint64
}

var _ audit.Sink = (*Sink)(nil)

// New opens (creating it and its directory if needed) the file at
// cfg.Path for appending and starts the writer. A file that cannot be
// opened is an error here, not at the first event.
func New(cfg Config) (*Sink, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s, err := newSink(cfg.withDefaults())
	if err != nil {
		return nil, err
	}
	go s.run()
	return s, nil
}

// newSink opens the file; the caller starts the writer.
func newSink(cfg Config) (*Sink, error) {
	s := &Sink{
		cfg:   cfg,
		log:   cfg.Logger,
		queue: make(chan []byte, cfg.QueueSize),
		done:  make(chan struct{}),
	}
	if err := os.MkdirAll(filepath.Dir(cfg.Path), 0o700); err != nil {
		return nil, fmt.Errorf("filesink: %w", err)
	}
	if err := s.open(); err != nil {
		return nil, err
	}
	return s, nil
}

// Path is the file the sink writes.
func (s *Sink) Path() string { return s.cfg.Path }

// Audit encodes ev as a line and queues it for the writer. It never
// blocks on the file: when the queue is full, or the sink is closed, the
// event is dropped and counted.
func (s *Sink) Audit(ev audit.Event) {
	line := Encode(s.cfg.Clock.Now(), ev)
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		s.dropped.Add(1)
		return
	}
	select {
	case s.queue <- line:
	default:
		s.dropped.Add(1)
	}
}

// Stats returns the sink's counters.
func (s *Sink) Stats() Stats {
	return Stats{
		Written:     s.written.Load(),
		Dropped:     s.dropped.Load(),
		WriteErrors: s.writeErrors.Load(),
		Rotations:   s.rotations.Load(),
	}
}

// Close stops accepting events, writes and fsyncs those queued and closes
// the file. It returns the error of the final flush or close, if any.
// Later calls return nil.
func (s *Sink) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.queue)
	s.mu.Unlock()
	<-s.done
	if s.f == nil {
		if s.writeErrors.Load() > 0 {
			return fmt.Errorf("filesink: %s: %d write errors", s.cfg.Path, s.writeErrors.Load())
		}
		return nil
	}
	err := s.w.Flush()
	if serr := s.f.Sync(); err == nil {
		err = serr
	}
	if cerr := s.f.Close(); err == nil {
		err = cerr
	}
	s.f = nil
	if err != nil {
		return fmt.Errorf("filesink: close %s: %w", s.cfg.Path, err)
	}
	return nil
}

// run is the writer: it drains the queue in batches until Close.
func (s *Sink) run() {
	defer close(s.done)
	for line := range s.queue {
		s.write(line)
	batch:
		for {
			select {
			case l, ok := <-s.queue:
				if !ok {
					break batch
				}
				s.write(l)
			default:
				break batch
			}
		}
		s.recordDrops()
		s.sync()
	}
	s.recordDrops()
}

// recordDrops writes a line saying how many events were dropped since the
// last such line, and logs the drops (at most once per errorLogInterval).
func (s *Sink) recordDrops() {
	d := s.dropped.Load()
	if d == s.reported {
		return
	}
	n := d - s.reported
	s.reported = d
	s.dropsSince += n
	if now := s.cfg.Clock.Now(); s.lastDropLog.IsZero() || now.Sub(s.lastDropLog) >= errorLogInterval {
		s.log.Warn("audit events dropped: the audit file writer is behind", zap.Uint64("dropped", s.dropsSince), zap.String("path", s.cfg.Path))
		s.lastDropLog, s.dropsSince = now, 0
	}
	s.writeLine(Encode(s.cfg.Clock.Now(), audit.Event{
		What:    "audit_events_dropped",
		Outcome: audit.Failure,
		Message: "audit events dropped: queue full",
		Fields:  []audit.Field{audit.Uint64("count", n)},
	}))
}

func (s *Sink) write(line []byte) {
	if s.writeLine(line) {
		s.written.Add(1)
	}
}

// writeLine appends line, rotating first when it would overflow the
// file. It reports whether the line reached the buffer.
func (s *Sink) writeLine(line []byte) bool {
	if s.f != nil && s.size > 0 && s.size+int64(len(line)) > s.cfg.MaxSize {
		s.rotate()
	}
	if s.f == nil {
		if err := s.open(); err != nil {
			s.fail(err)
			return false
		}
	}
	n, err := s.w.Write(line)
	s.size += int64(n)
	if err != nil {
		s.broken(fmt.Errorf("filesink: write %s: %w", s.cfg.Path, err))
		return false
	}
	return true
}

// sync flushes the buffer and fsyncs the file.
func (s *Sink) sync() {
	if s.f == nil {
		return
	}
	if err := s.w.Flush(); err != nil {
		s.broken(fmt.Errorf("filesink: write %s: %w", s.cfg.Path, err))
		return
	}
	if err := s.f.Sync(); err != nil {
		s.fail(fmt.Errorf("filesink: sync %s: %w", s.cfg.Path, err))
	}
}

// broken handles a failed write: the buffered lines are lost (a
// bufio.Writer keeps its error), the file is closed and the next line
// opens it again.
func (s *Sink) broken(err error) {
	s.fail(err)
	s.f.Close() //nolint:errcheck // already failing
	s.f = nil
}

// open opens the file for appending with mode 0600.
func (s *Sink) open() error {
	f, err := os.OpenFile(s.cfg.Path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("filesink: %w", err)
	}
	st, err := f.Stat()
	if err == nil && st.Mode().IsRegular() && st.Mode().Perm() != 0o600 {
		err = f.Chmod(0o600)
	}
	if err != nil {
		f.Close()
		return fmt.Errorf("filesink: %w", err)
	}
	s.f, s.size = f, st.Size()
	if s.w == nil {
		s.w = bufio.NewWriterSize(f, 64<<10)
	} else {
		s.w.Reset(f)
	}
	return nil
}

// rotate closes the file and shifts path → path.1 → … → path.MaxFiles.
// On an error the current file is closed anyway; the next write opens
// path again (appending to it if the rename failed).
func (s *Sink) rotate() {
	s.sync()
	if err := s.f.Close(); err != nil {
		s.fail(fmt.Errorf("filesink: close %s: %w", s.cfg.Path, err))
	}
	s.f = nil
	p := s.cfg.Path
	if err := os.Remove(p + "." + strconv.Itoa(s.cfg.MaxFiles)); err != nil && !errors.Is(err, os.ErrNotExist) {
		s.fail(fmt.Errorf("filesink: rotate: %w", err))
	}
	for i := s.cfg.MaxFiles - 1; i >= 1; i-- {
		from := p + "." + strconv.Itoa(i)
		if err := os.Rename(from, p+"."+strconv.Itoa(i+1)); err != nil && !errors.Is(err, os.ErrNotExist) {
			s.fail(fmt.Errorf("filesink: rotate: %w", err))
		}
	}
	if err := os.Rename(p, p+".1"); err != nil {
		s.fail(fmt.Errorf("filesink: rotate: %w", err))
		return
	}
	s.rotations.Add(1)
}

// fail counts err and logs it, at most once per errorLogInterval (with
// the number of errors since the last log).
func (s *Sink) fail(err error) {
	s.writeErrors.Add(1)
	s.errsSince++
	now := s.cfg.Clock.Now()
	if !s.lastErrLog.IsZero() && now.Sub(s.lastErrLog) < errorLogInterval {
		return
	}
	s.log.Error("audit file write failed; audit events may be lost", zap.Error(err), zap.Uint64("errors", s.errsSince))
	s.lastErrLog, s.errsSince = now, 0
}

// Encode returns ev as one JSON line (ending in '\n') stamped with t, in
// the format of the package documentation. The output depends only on t
// and ev.
func Encode(t time.Time, ev audit.Event) []byte {
	outcome := ev.Outcome
	if outcome == "" {
		outcome = audit.Success
	}
	msg := ev.Message
	if msg == "" {
		msg = ev.What
	}
	var b bytes.Buffer
	b.WriteString(`{"time":`)
	appendString(&b, t.UTC().Format(time.RFC3339Nano))
	for _, kv := range [...]struct{ k, v string }{
		{"what", ev.What}, {"who", ev.Who}, {"subject", ev.Subject},
		{"outcome", string(outcome)}, {"message", msg},
	} {
		b.WriteString(`,"` + kv.k + `":`)
		appendString(&b, kv.v)
	}
	b.WriteString(`,"fields":{`)
	for i, f := range ev.Fields {
		if i > 0 {
			b.WriteByte(',')
		}
		appendString(&b, f.Key)
		b.WriteByte(':')
		appendValue(&b, f.Value)
	}
	b.WriteString("}}\n")
	return b.Bytes()
}

func appendValue(b *bytes.Buffer, v any) {
	switch v := v.(type) {
	case nil:
		b.WriteString("null")
	case string:
		appendString(b, v)
	case []string:
		b.WriteByte('[')
		for i, s := range v {
			if i > 0 {
				b.WriteByte(',')
			}
			appendString(b, s)
		}
		b.WriteByte(']')
	case int:
		b.WriteString(strconv.Itoa(v))
	case int64:
		b.WriteString(strconv.FormatInt(v, 10))
	case uint64:
		b.WriteString(strconv.FormatUint(v, 10))
	case bool:
		b.WriteString(strconv.FormatBool(v))
	case time.Time:
		appendString(b, v.UTC().Format(time.RFC3339Nano))
	case time.Duration:
		b.WriteString(strconv.FormatFloat(v.Seconds(), 'f', -1, 64))
	case error:
		appendString(b, v.Error())
	case fmt.Stringer:
		appendString(b, v.String())
	default:
		appendString(b, fmt.Sprint(v))
	}
}

// appendString writes s as a JSON string (not HTML-escaped).
func appendString(b *bytes.Buffer, s string) {
	if plainASCII(s) {
		b.WriteByte('"')
		b.WriteString(s)
		b.WriteByte('"')
		return
	}
	enc := json.NewEncoder(b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s)       // a string always encodes
	b.Truncate(b.Len() - 1) // Encode's newline
}

// plainASCII reports whether s is printable ASCII without a quote or a
// backslash: its JSON form is s in quotes.
func plainASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}
