package audit_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/sigil-id/sigil/audit"
)

// recorder is a custom sink, as an alerting or flow-log subscriber is.
type recorder struct {
	mu     sync.Mutex
	events []audit.Event
}

func (r *recorder) Audit(ev audit.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, ev)
}

func TestEventReachesCustomSinkThroughMulti(t *testing.T) {
	a, b := &recorder{}, &recorder{}
	var viaFunc []string
	sink := audit.Multi(a, nil, b, audit.SinkFunc(func(ev audit.Event) { viaFunc = append(viaFunc, ev.What) }))
	ev := audit.Event{
		What:    "x509_svid_refused",
		Who:     "spiffe://example.org/sigil/agent/join_token/n1",
		Subject: "entry-1",
		Outcome: audit.Denied,
		Message: "x509-svid refused",
		Fields:  []audit.Field{audit.String("reason", "not authorized")},
	}
	sink.Audit(ev)
	for name, r := range map[string]*recorder{"first": a, "second": b} {
		if len(r.events) != 1 || !reflect.DeepEqual(r.events[0], ev) {
			t.Errorf("%s sink got %+v, want exactly the event", name, r.events)
		}
	}
	if !reflect.DeepEqual(viaFunc, []string{"x509_svid_refused"}) {
		t.Errorf("SinkFunc got %v", viaFunc)
	}
	audit.Nop.Audit(ev) // must not panic
}

// The zap sink's record has a stable shape: consumers and tests match
// on the message, on "audit":"<what>" and on the detail fields, each
// with a fixed JSON type.
func TestZapSinkShape(t *testing.T) {
	var buf bytes.Buffer
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	log := zap.New(zapcore.NewCore(enc, zapcore.AddSync(&buf), zapcore.DebugLevel))
	expires := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	audit.NewZap(log).Audit(audit.Event{
		What:    "jwt_svid_issued",
		Who:     "spiffe://example.org/sigil/agent/join_token/n1",
		Subject: "spiffe://example.org/web",
		Message: "jwt-svid issued",
		Fields: []audit.Field{
			audit.String("entry_id", "e1"),
			audit.Strings("audience", []string{"a", "b"}),
			audit.Int("slot", 3),
			audit.Uint64("index", 7),
			audit.Bool("tainted", false),
			audit.Time("expires_at", expires),
			audit.Duration("ttl", time.Minute),
			audit.Err(errors.New("boom")),
		},
	})
	var rec map[string]any
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
		t.Fatalf("%v: %s", err, buf.String())
	}
	want := map[string]any{
		"level":      "info",
		"msg":        "jwt-svid issued",
		"audit":      "jwt_svid_issued",
		"who":        "spiffe://example.org/sigil/agent/join_token/n1",
		"subject":    "spiffe://example.org/web",
		"outcome":    "success",
		"entry_id":   "e1",
		"audience":   []any{"a", "b"},
		"slot":       float64(3),
		"index":      float64(7),
		"tainted":    false,
		"expires_at": float64(expires.UnixNano()) / 1e9,
		"ttl":        float64(60),
		"error":      "boom",
	}
	for k, v := range want {
		if !reflect.DeepEqual(rec[k], v) {
			t.Errorf("field %q = %#v (%T), want %#v (%T)", k, rec[k], rec[k], v, v)
		}
	}
	delete(rec, "ts")
	if len(rec) != len(want) {
		t.Errorf("record has %d fields, want %d: %v", len(rec), len(want), rec)
	}
}

func TestZapSinkLevelsAndDefaults(t *testing.T) {
	var buf bytes.Buffer
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	log := zap.New(zapcore.NewCore(enc, zapcore.AddSync(&buf), zapcore.DebugLevel))
	sink := audit.NewZap(log)
	for _, tc := range []struct {
		outcome audit.Outcome
		level   string
	}{{"", "info"}, {audit.Success, "info"}, {audit.Denied, "warn"}, {audit.Failure, "error"}} {
		buf.Reset()
		sink.Audit(audit.Event{What: "bundle_pruned", Outcome: tc.outcome})
		var rec map[string]any
		if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
			t.Fatal(err)
		}
		wantOutcome := string(tc.outcome)
		if wantOutcome == "" {
			wantOutcome = "success"
		}
		if rec["level"] != tc.level || rec["outcome"] != wantOutcome || rec["msg"] != "bundle_pruned" {
			t.Errorf("outcome %q: level %v outcome %v msg %v; want %s, %s, the What", tc.outcome, rec["level"], rec["outcome"], rec["msg"], tc.level, wantOutcome)
		}
		if _, ok := rec["who"]; ok {
			t.Errorf("empty Who written: %v", rec)
		}
		if _, ok := rec["subject"]; ok {
			t.Errorf("empty Subject written: %v", rec)
		}
	}
	// A logger above the event's level writes nothing.
	buf.Reset()
	quiet := zap.New(zapcore.NewCore(enc, zapcore.AddSync(&buf), zapcore.ErrorLevel))
	audit.NewZap(quiet).Audit(audit.Event{What: "entry_created"})
	if buf.Len() != 0 {
		t.Errorf("info event written by an error-level logger: %s", buf.String())
	}
}
