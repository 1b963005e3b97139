package pagerduty

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/sigil-id/sigil/alert"
	"github.com/sigil-id/sigil/alert/notifier/internal/notifytest"
	"github.com/sigil-id/sigil/plugin"
)

const routingKey = "R0UT1NGKEY0123456789abcdef012345"

// received is an Events API v2 event as PagerDuty reads it.
type received struct {
	RoutingKey  string `json:"routing_key"`
	EventAction string `json:"event_action"`
	DedupKey    string `json:"dedup_key"`
	Client      string `json:"client"`
	ClientURL   string `json:"client_url"`
	Payload     *struct {
		Summary       string            `json:"summary"`
		Source        string            `json:"source"`
		Severity      string            `json:"severity"`
		Timestamp     string            `json:"timestamp"`
		Component     string            `json:"component"`
		Class         string            `json:"class"`
		CustomDetails map[string]string `json:"custom_details"`
	} `json:"payload"`
}

// receiver is a local Events API: it checks what PagerDuty checks and
// answers 202 like it.
type receiver struct {
	mu     sync.Mutex
	events []received
	status int
}

func (rc *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var e received
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	err := dec.Decode(&e)
	valid := err == nil && e.RoutingKey == routingKey && e.DedupKey != "" && len(e.DedupKey) <= 255
	switch e.EventAction {
	case "trigger":
		valid = valid && e.Payload != nil && e.Payload.Summary != "" && e.Payload.Source != "" &&
			(e.Payload.Severity == "critical" || e.Payload.Severity == "error" || e.Payload.Severity == "warning" || e.Payload.Severity == "info")
	case "resolve":
		valid = valid && e.Payload == nil
	default:
		valid = false
	}
	if !valid {
		w.WriteHeader(http.StatusBadRequest)
		io.WriteString(w, `{"status":"invalid event","message":"Event object is invalid","routing_key":"`+e.RoutingKey+`"}`)
		return
	}
	if rc.status != 0 {
		w.WriteHeader(rc.status)
		return
	}
	rc.mu.Lock()
	rc.events = append(rc.events, e)
	rc.mu.Unlock()
	w.WriteHeader(http.StatusAccepted)
	io.WriteString(w, `{"status":"success","message":"Event processed","dedup_key":"`+e.DedupKey+`"}`)
}

func TestTriggerThenResolve(t *testing.T) {
	rc := &receiver{}
	srv := httptest.NewServer(rc)
	defer srv.Close()
	n, err := New(Config{RoutingKey: routingKey, URL: srv.URL + "/v2/enqueue"})
	if err != nil {
		t.Fatal(err)
	}
	if n.Name() != "pagerduty" || n.MinSeverity() != alert.Warning {
		t.Fatalf("defaults %q %q", n.Name(), n.MinSeverity())
	}
	f := notifytest.Firing()
	if err := n.Notify(context.Background(), []alert.Alert{f}); err != nil {
		t.Fatal(err)
	}
	if err := n.Notify(context.Background(), []alert.Alert{notifytest.Resolved()}); err != nil {
		t.Fatal(err)
	}
	if len(rc.events) != 2 {
		t.Fatalf("%d events", len(rc.events))
	}
	trig, res := rc.events[0], rc.events[1]
	if trig.EventAction != "trigger" || trig.DedupKey != f.Key || trig.Client != "sigil" || trig.ClientURL != f.GeneratorURL {
		t.Errorf("trigger %+v", trig)
	}
	p := trig.Payload
	if p.Summary != f.Summary || p.Source != "sigil-1" || p.Severity != "critical" || p.Timestamp != "2026-11-30T12:00:00Z" || p.Class != f.Name ||
		p.CustomDetails["agent"] != f.Details["agent"] || p.CustomDetails["key"] != f.Key {
		t.Errorf("payload %+v", p)
	}
	if res.EventAction != "resolve" || res.DedupKey != trig.DedupKey {
		t.Errorf("resolve %+v does not resolve dedup key %q", res, trig.DedupKey)
	}
}

func TestSeverityAndLongKeys(t *testing.T) {
	n, err := New(Config{RoutingKey: routingKey})
	if err != nil {
		t.Fatal(err)
	}
	for sev, want := range map[alert.Severity]string{alert.Info: "info", alert.Warning: "warning", alert.Critical: "critical"} {
		a := notifytest.Firing()
		a.Severity = sev
		if got := n.event(a).Payload.Severity; got != want {
			t.Errorf("%s → %s, want %s", sev, got, want)
		}
	}
	long := strings.Repeat("k", 256)
	if k := DedupKey(long); len(k) > 255 || !strings.HasPrefix(k, "sha256:") || k != DedupKey(long) || k == DedupKey(long[:255]+"j") {
		t.Errorf("DedupKey(256 bytes) = %q", k)
	}
	if DedupKey("short") != "short" {
		t.Error("a short key was changed")
	}
	a := notifytest.Firing()
	a.Summary, a.Source = "", ""
	if p := n.event(a).Payload; p.Summary != a.Name || p.Source != "sigil" {
		t.Errorf("defaults for empty summary/source: %+v", p)
	}
}

func TestErrors(t *testing.T) {
	rc := &receiver{status: http.StatusInternalServerError}
	srv := httptest.NewServer(rc)
	defer srv.Close()
	n, _ := New(Config{RoutingKey: routingKey, URL: srv.URL})
	err := n.Notify(context.Background(), []alert.Alert{notifytest.Firing()})
	if err == nil || !strings.HasPrefix(err.Error(), "pagerduty: trigger \"svid_not_renewed/") || !strings.Contains(err.Error(), "500") {
		t.Fatalf("5xx: %v", err)
	}
	// A refused event (wrong routing key): PagerDuty's answer is quoted,
	// without the key.
	bad, _ := New(Config{RoutingKey: "wrong-key-that-is-secret", URL: srv.URL})
	err = bad.Notify(context.Background(), []alert.Alert{notifytest.Firing()})
	if err == nil || !strings.Contains(err.Error(), "400 Bad Request") || !strings.Contains(err.Error(), "will not succeed") || strings.Contains(err.Error(), "wrong-key-that-is-secret") {
		t.Fatalf("400: %v", err)
	}
	if s := bad.String(); strings.Contains(s, "wrong-key") {
		t.Errorf("String() = %q", s)
	}
}

func TestPlugin(t *testing.T) {
	rc := &receiver{}
	srv := httptest.NewServer(rc)
	defer srv.Close()
	file := filepath.Join(t.TempDir(), "pd.key")
	if err := os.WriteFile(file, []byte(routingKey+"\n"), 0o400); err != nil {
		t.Fatal(err)
	}
	v, err := NewPlugin(notifytest.Body(t, "routing_key_file = \""+file+"\"\nurl = \""+srv.URL+"\"\nmin_severity = \"critical\"\n"), plugin.Env{Role: plugin.RoleServer})
	if err != nil {
		t.Fatal(err)
	}
	n := v.(*Notifier)
	if n.MinSeverity() != alert.Critical || n.Name() != "pagerduty" {
		t.Fatalf("%q %q", n.Name(), n.MinSeverity())
	}
	if err := n.Notify(context.Background(), []alert.Alert{notifytest.Firing()}); err != nil || len(rc.events) != 1 {
		t.Fatalf("key from file: %v", err)
	}
	t.Setenv("SIGIL_TEST_PD_KEY", routingKey)
	v, err = NewPlugin(notifytest.Body(t, "routing_key_env = \"SIGIL_TEST_PD_KEY\"\n"), plugin.Env{Role: plugin.RoleServer})
	if err != nil {
		t.Fatal(err)
	}
	if v.(*Notifier).url != DefaultURL || v.(*Notifier).key != routingKey {
		t.Errorf("default url %q", v.(*Notifier).url)
	}

	if err := os.Chmod(file, 0o644); err != nil {
		t.Fatal(err)
	}
	for src, want := range map[string]string{
		"notifier \"pagerduty\" {\n}\n":                                                                `n.hcl:1: notifier "pagerduty": routing_key_file or routing_key_env is required`,
		"notifier \"pagerduty\" {\n  routing_key = \"" + routingKey + "\"\n}\n":                        `n.hcl:2: notifier "pagerduty": Unsupported argument`,
		"notifier \"pagerduty\" {\n  routing_key_env = \"SIGIL_TEST_PD_KEY\"\n  url = \"events\"\n}\n": `n.hcl:3: notifier "pagerduty": url: "events": scheme ""`,
		"notifier \"pagerduty\" {\n\n  routing_key_file = \"" + file + "\"\n}\n":                       `n.hcl:3: notifier "pagerduty": routing_key_file: ` + file + ` is accessible by group or others`,
		"notifier \"pagerduty\" {\n  routing_key_env = \"SIGIL_TEST_PD_KEY\"\n  name = \"\"\n}\n":      `n.hcl:3: notifier "pagerduty": name: must not be empty`,
	} {
		err := notifytest.Build(t, src)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q:\n got %v\nwant %s", src, err, want)
		}
		if err != nil && strings.Contains(err.Error(), routingKey) {
			t.Errorf("error leaks the routing key: %v", err)
		}
	}
}
