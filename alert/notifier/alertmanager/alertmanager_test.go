package alertmanager

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sigil-id/sigil/alert"
	"github.com/sigil-id/sigil/alert/notifier/internal/notifytest"
	"github.com/sigil-id/sigil/plugin"
)

// receivedAlert is what Alertmanager's API v2 decodes (postableAlert in
// its OpenAPI spec), declared independently of the notifier's type.
type receivedAlert struct {
	Labels       map[string]string `json:"labels"`
	Annotations  map[string]string `json:"annotations"`
	StartsAt     *time.Time        `json:"startsAt"`
	EndsAt       *time.Time        `json:"endsAt"`
	GeneratorURL string            `json:"generatorURL"`
}

// receiver is a local Alertmanager API v2 alerts endpoint.
type receiver struct {
	mu      sync.Mutex
	batches [][]receivedAlert
	status  int
}

func (rc *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/prefix/api/v2/alerts" || r.Header.Get("Content-Type") != "application/json" {
		http.Error(w, "not the v2 alerts endpoint", http.StatusNotFound)
		return
	}
	var batch []receivedAlert
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&batch); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.status != 0 {
		w.WriteHeader(rc.status)
		return
	}
	rc.batches = append(rc.batches, batch)
}

func (rc *receiver) last(t *testing.T) []receivedAlert {
	t.Helper()
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if len(rc.batches) == 0 {
		t.Fatal("nothing received")
	}
	return rc.batches[len(rc.batches)-1]
}

func TestNotifyFiringAndResolved(t *testing.T) {
	rc := &receiver{}
	srv := httptest.NewServer(rc)
	defer srv.Close()
	n, err := New(Config{URLs: []string{srv.URL + "/prefix/"}})
	if err != nil {
		t.Fatal(err)
	}
	if n.Name() != "alertmanager" || n.MinSeverity() != alert.Warning {
		t.Fatalf("defaults: %q %q", n.Name(), n.MinSeverity())
	}
	firing := notifytest.Firing()
	if err := n.Notify(context.Background(), []alert.Alert{firing}); err != nil {
		t.Fatal(err)
	}
	got := rc.last(t)
	if len(got) != 1 {
		t.Fatalf("got %d alerts", len(got))
	}
	a := got[0]
	wantLabels := map[string]string{"alertname": "SVIDNotRenewed", "severity": "critical", "dedupe_key": firing.Key}
	if len(a.Labels) != len(wantLabels) {
		t.Errorf("labels %v, want %v", a.Labels, wantLabels)
	}
	for k, v := range wantLabels {
		if a.Labels[k] != v {
			t.Errorf("label %s = %q, want %q", k, a.Labels[k], v)
		}
	}
	if a.Annotations["summary"] != firing.Summary || a.Annotations["source"] != "sigil-1" || a.Annotations["agent"] != firing.Details["agent"] || a.Annotations["expires_in"] != "4m" {
		t.Errorf("annotations %v", a.Annotations)
	}
	if a.StartsAt == nil || !a.StartsAt.Equal(notifytest.Start) || a.EndsAt != nil {
		t.Errorf("firing: startsAt %v endsAt %v", a.StartsAt, a.EndsAt)
	}
	if a.GeneratorURL != firing.GeneratorURL {
		t.Errorf("generatorURL %q", a.GeneratorURL)
	}

	resolved := notifytest.Resolved()
	if err := n.Notify(context.Background(), []alert.Alert{resolved}); err != nil {
		t.Fatal(err)
	}
	a = rc.last(t)[0]
	if a.EndsAt == nil || !a.EndsAt.Equal(resolved.EndsAt) || !a.StartsAt.Equal(notifytest.Start) {
		t.Errorf("resolved: startsAt %v endsAt %v", a.StartsAt, a.EndsAt)
	}
	if a.Labels["dedupe_key"] != firing.Key || a.Labels["alertname"] != firing.Name {
		t.Errorf("resolved labels %v differ from the firing alert's", a.Labels)
	}
}

func TestDetailsAreBoundedAnnotations(t *testing.T) {
	a := notifytest.Firing()
	a.Details = map[string]string{"summary": "must not replace the summary", "source": "must not replace the source", "bad-key.1": strings.Repeat("v", 5000), "9lives": "x"}
	for i := range 100 {
		a.Details["d"+string(rune('a'+i%26))+strings.Repeat("z", i/26)] = "v"
	}
	p := payload([]alert.Alert{a})[0]
	if p.Annotations["summary"] != a.Summary {
		t.Errorf("summary replaced by a detail: %q", p.Annotations["summary"])
	}
	if p.Annotations["source"] != a.Source {
		t.Errorf("source replaced by a detail: %q", p.Annotations["source"])
	}
	if len(p.Annotations) != 2+MaxDetails {
		t.Errorf("%d annotations, want %d", len(p.Annotations), 2+MaxDetails)
	}
	if v := p.Annotations["bad_key_1"]; len(v) > MaxDetailValue || len(v) == 0 {
		t.Errorf("bad-key.1 annotation of %d bytes", len(v))
	}
	if _, ok := p.Annotations["_9lives"]; !ok {
		t.Errorf("9lives not made a label name: %v", p.Annotations)
	}
	if len(p.Labels) != 3 {
		t.Errorf("details leaked into labels: %v", p.Labels)
	}
}

// TestLabelsDoNotDependOnSource: the same condition raised by another
// server (a new Raft leader) has the same labels, so Alertmanager updates
// one alert rather than opening a second that would never resolve.
func TestLabelsDoNotDependOnSource(t *testing.T) {
	a, b := notifytest.Firing(), notifytest.Firing()
	a.Source, b.Source = "sigil-1", "sigil-2"
	pa, pb := payload([]alert.Alert{a})[0], payload([]alert.Alert{b})[0]
	if len(pa.Labels) != len(pb.Labels) {
		t.Fatalf("labels %v and %v", pa.Labels, pb.Labels)
	}
	for k, v := range pa.Labels {
		if pb.Labels[k] != v {
			t.Errorf("label %s: %q from sigil-1, %q from sigil-2", k, v, pb.Labels[k])
		}
	}
	if pa.Annotations["source"] != "sigil-1" || pb.Annotations["source"] != "sigil-2" {
		t.Errorf("source annotations %q, %q", pa.Annotations["source"], pb.Annotations["source"])
	}
}

func TestRepeatInterval(t *testing.T) {
	n, err := New(Config{URLs: []string{"http://127.0.0.1:9093"}})
	if err != nil {
		t.Fatal(err)
	}
	var r alert.Repeater = n
	if r.RepeatInterval() != DefaultRepeatInterval || DefaultRepeatInterval != time.Minute {
		t.Errorf("default repeat interval %s", r.RepeatInterval())
	}
	n, err = New(Config{URLs: []string{"http://127.0.0.1:9093"}, RepeatInterval: 20 * time.Second})
	if err != nil || n.RepeatInterval() != 20*time.Second {
		t.Fatalf("repeat interval 20s: %v %v", n, err)
	}
	if _, err := New(Config{URLs: []string{"http://127.0.0.1:9093"}, RepeatInterval: -time.Second}); err == nil || err.Error() != "alertmanager: repeat interval -1s is negative" {
		t.Errorf("negative repeat interval: %v", err)
	}
}

func TestEveryURLGetsTheBatch(t *testing.T) {
	ok1, ok2, down := &receiver{}, &receiver{}, &receiver{status: http.StatusServiceUnavailable}
	s1, s2, s3 := httptest.NewServer(ok1), httptest.NewServer(ok2), httptest.NewServer(down)
	defer s1.Close()
	defer s2.Close()
	defer s3.Close()
	n, err := New(Config{URLs: []string{s1.URL + "/prefix", s2.URL + "/prefix"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Notify(context.Background(), []alert.Alert{notifytest.Firing()}); err != nil {
		t.Fatal(err)
	}
	if len(ok1.last(t)) != 1 || len(ok2.last(t)) != 1 {
		t.Fatal("not every Alertmanager got the batch")
	}
	n, err = New(Config{URLs: []string{s1.URL + "/prefix", s3.URL + "/prefix"}})
	if err != nil {
		t.Fatal(err)
	}
	err = n.Notify(context.Background(), []alert.Alert{notifytest.Firing()})
	if err == nil || !strings.HasPrefix(err.Error(), "alertmanager: POST "+s3.URL) || !strings.Contains(err.Error(), "503") || strings.Contains(err.Error(), s1.URL) {
		t.Fatalf("one Alertmanager down: %v", err)
	}
	if len(ok1.batches) != 2 {
		t.Errorf("the healthy Alertmanager got %d batches, want 2", len(ok1.batches))
	}
	if err := n.Notify(context.Background(), nil); err != nil {
		t.Errorf("empty batch: %v", err)
	}
}

func TestPlugin(t *testing.T) {
	v, err := NewPlugin(notifytest.Body(t, `
url          = "http://127.0.0.1:9093"
name         = "am-local"
min_severity = "critical"
timeout      = "3s"
repeat_interval = "30s"
`), plugin.Env{Role: plugin.RoleServer})
	if err != nil {
		t.Fatal(err)
	}
	n := v.(*Notifier)
	if n.Name() != "am-local" || n.MinSeverity() != alert.Critical || n.client.Timeout != 3*time.Second || n.RepeatInterval() != 30*time.Second || n.endpoints[0] != "http://127.0.0.1:9093/api/v2/alerts" {
		t.Fatalf("notifier %+v", n)
	}
	v, err = NewPlugin(notifytest.Body(t, `urls = ["http://a:9093", "https://b:9093"]`), plugin.Env{Role: plugin.RoleServer})
	if err != nil || len(v.(*Notifier).endpoints) != 2 || v.(*Notifier).Name() != "alertmanager" || v.(*Notifier).RepeatInterval() != time.Minute {
		t.Fatalf("urls: %v", err)
	}

	for src, want := range map[string]string{
		"notifier \"alertmanager\" {\n  url = \"http://a\"\n  min_severity = \"loud\"\n}\n":  `n.hcl:3: notifier "alertmanager": min_severity: "loud" is not a severity`,
		"notifier \"alertmanager\" {\n\n  url = \"ftp://a\"\n}\n":                            `n.hcl:3: notifier "alertmanager": url: "ftp://a": scheme "ftp"`,
		"notifier \"alertmanager\" {\n  url = \"http://a\"\n  uri = \"x\"\n}\n":              `n.hcl:3: notifier "alertmanager": Unsupported argument`,
		"notifier \"alertmanager\" {\n}\n":                                                   `n.hcl:1: notifier "alertmanager": url: is required`,
		"notifier \"alertmanager\" {\n  url = \"http://a\"\n  urls = [\"http://b\"]\n}\n":    `n.hcl:3: notifier "alertmanager": urls: both url and urls are set`,
		"notifier \"alertmanager\" {\n  url = \"http://a\"\n  timeout = \"soon\"\n}\n":       `n.hcl:3: notifier "alertmanager": timeout: "soon" is not a positive duration`,
		"notifier \"alertmanager\" {\n  url = \"http://a\"\n  repeat_interval = \"0s\"\n}\n": `n.hcl:3: notifier "alertmanager": repeat_interval: "0s" is not a positive duration`,
	} {
		if err := notifytest.Build(t, src); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q:\n got %v\nwant %s", src, err, want)
		}
	}
	if err := notifytest.Build(t, "notifier \"alertmanager\" { url = \"http://127.0.0.1:9093\" }\n"); err != nil {
		t.Errorf("a good block through the registry: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	c := DefaultConfig()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []Config{{}, {URLs: []string{"http//x"}}, {URLs: []string{"http://x"}, MinSeverity: "nope"}} {
		if err := c.Validate(); err == nil || !strings.HasPrefix(err.Error(), "alertmanager: ") || strings.HasPrefix(err.Error(), "alertmanager: alertmanager") {
			t.Errorf("%+v: %v", c, err)
		}
	}
}
