package webhook

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sigil-id/sigil/alert"
	"github.com/sigil-id/sigil/alert/notifier/internal/notifytest"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/plugin"
)

const secret = "webhook-test-secret"

// receiver verifies requests the way docs/notifiers.md tells receivers to,
// with its own HMAC code, and keeps the bodies it accepted.
type receiver struct {
	now    time.Time
	mu     sync.Mutex
	bodies []Body
	header http.Header
}

func (rc *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	raw, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	ts := r.Header.Get("X-Sigil-Timestamp")
	sig := r.Header.Get("X-Sigil-Signature")
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(ts + "." + string(raw)))
	want := "sha256=" + hex.EncodeToString(m.Sum(nil))
	if !hmac.Equal([]byte(sig), []byte(want)) {
		http.Error(w, "bad signature", http.StatusUnauthorized)
		return
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || rc.now.Sub(time.Unix(sec, 0)).Abs() > 5*time.Minute {
		http.Error(w, "stale", http.StatusUnauthorized)
		return
	}
	var b Body
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&b); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.bodies = append(rc.bodies, b)
	rc.header = r.Header.Clone()
	w.WriteHeader(http.StatusNoContent)
}

func TestNotifySignedBody(t *testing.T) {
	clk := clock.NewFake(notifytest.Start.Add(time.Minute))
	rc := &receiver{now: clk.Now()}
	srv := httptest.NewServer(rc)
	defer srv.Close()
	n, err := New(Config{URL: srv.URL, Secret: secret, Clock: clk, Header: http.Header{"X-Team": {"identity"}}})
	if err != nil {
		t.Fatal(err)
	}
	if n.Name() != "webhook" || n.MinSeverity() != alert.Warning {
		t.Fatalf("defaults %q %q", n.Name(), n.MinSeverity())
	}
	if err := n.Notify(context.Background(), []alert.Alert{notifytest.Firing(), notifytest.Resolved()}); err != nil {
		t.Fatal(err)
	}
	if len(rc.bodies) != 1 {
		t.Fatalf("%d bodies", len(rc.bodies))
	}
	b := rc.bodies[0]
	f := notifytest.Firing()
	if b.Version != "1" || len(b.Alerts) != 2 {
		t.Fatalf("body %+v", b)
	}
	fa, ra := b.Alerts[0], b.Alerts[1]
	if fa.Key != f.Key || fa.Name != f.Name || fa.Severity != "critical" || fa.Status != "firing" || fa.Summary != f.Summary ||
		fa.Details["agent"] != f.Details["agent"] || fa.Source != "sigil-1" || fa.StartsAt != "2026-11-30T12:00:00Z" || fa.EndsAt != "" || fa.GeneratorURL != f.GeneratorURL {
		t.Errorf("firing alert %+v", fa)
	}
	if ra.Status != "resolved" || ra.EndsAt != "2026-11-30T12:10:00Z" || ra.Key != f.Key {
		t.Errorf("resolved alert %+v", ra)
	}
	if rc.header.Get("X-Team") != "identity" || rc.header.Get("X-Sigil-Timestamp") != strconv.FormatInt(clk.Now().Unix(), 10) {
		t.Errorf("headers %v", rc.header)
	}
}

func TestReceiverRefusesTamperingAndReplay(t *testing.T) {
	clk := clock.NewFake(notifytest.Start)
	rc := &receiver{now: clk.Now()}
	srv := httptest.NewServer(rc)
	defer srv.Close()
	body := []byte(`{"version":"1","alerts":[{"key":"k","name":"N","severity":"critical","status":"firing","summary":"s"}]}`)
	ts := strconv.FormatInt(clk.Now().Unix(), 10)
	send := func(ts, sig string, body []byte) int {
		req, _ := http.NewRequest(http.MethodPost, srv.URL, strings.NewReader(string(body)))
		req.Header.Set("X-Sigil-Timestamp", ts)
		req.Header.Set("X-Sigil-Signature", sig)
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	sig := Sign([]byte(secret), ts, body)
	if c := send(ts, sig, body); c != http.StatusNoContent {
		t.Fatalf("genuine request: %d", c)
	}
	tampered := []byte(strings.Replace(string(body), "critical", "info", 1))
	if c := send(ts, sig, tampered); c != http.StatusUnauthorized {
		t.Errorf("tampered body: %d", c)
	}
	old := strconv.FormatInt(clk.Now().Add(-time.Hour).Unix(), 10)
	if c := send(old, sig, body); c != http.StatusUnauthorized {
		t.Errorf("signature moved to another timestamp: %d", c)
	}
	if c := send(old, Sign([]byte(secret), old, body), body); c != http.StatusUnauthorized {
		t.Errorf("replayed old request: %d", c)
	}
	if c := send(ts, Sign([]byte("other"), ts, body), body); c != http.StatusUnauthorized {
		t.Errorf("wrong secret: %d", c)
	}
	// Verify agrees with the receiver.
	if err := Verify([]byte(secret), sig, ts, body, clk.Now(), 5*time.Minute); err != nil {
		t.Errorf("Verify genuine: %v", err)
	}
	if err := Verify([]byte(secret), sig, ts, tampered, clk.Now(), 5*time.Minute); err == nil {
		t.Error("Verify accepted a tampered body")
	}
	if err := Verify([]byte(secret), sig, ts, body, clk.Now().Add(time.Hour), 5*time.Minute); err == nil {
		t.Error("Verify accepted a stale timestamp")
	}
}

func TestNotifyErrors(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusInternalServerError)
		io.WriteString(w, "echo "+r.Header.Get("X-Sigil-Signature")+" "+secret)
	}))
	defer srv.Close()
	n, err := New(Config{URL: srv.URL, Secret: secret})
	if err != nil {
		t.Fatal(err)
	}
	err = n.Notify(context.Background(), []alert.Alert{notifytest.Firing()})
	if err == nil || !strings.HasPrefix(err.Error(), "webhook: POST ") || !strings.Contains(err.Error(), "500") || strings.Contains(err.Error(), secret) {
		t.Fatalf("5xx: %v", err)
	}
}

func writeSecret(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestPlugin(t *testing.T) {
	file := writeSecret(t, secret+"\n")
	rc := &receiver{now: time.Now()}
	srv := httptest.NewServer(rc)
	defer srv.Close()
	v, err := NewPlugin(notifytest.Body(t, `
url          = "`+srv.URL+`"
secret_file  = "`+file+`"
headers      = { "X-Team" = "identity" }
name         = "hook"
min_severity = "info"
`), plugin.Env{Role: plugin.RoleServer, Clock: clock.New()})
	if err != nil {
		t.Fatal(err)
	}
	n := v.(*Notifier)
	if n.Name() != "hook" || n.MinSeverity() != alert.Info {
		t.Fatalf("%q %q", n.Name(), n.MinSeverity())
	}
	// The receiver checks the signature with the secret of the file.
	if err := n.Notify(context.Background(), []alert.Alert{notifytest.Firing()}); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SIGIL_TEST_WEBHOOK_SECRET", secret)
	v, err = NewPlugin(notifytest.Body(t, `
url        = "`+srv.URL+`"
secret_env = "SIGIL_TEST_WEBHOOK_SECRET"
`), plugin.Env{Role: plugin.RoleServer, Clock: clock.New()})
	if err != nil {
		t.Fatal(err)
	}
	if err := v.(*Notifier).Notify(context.Background(), []alert.Alert{notifytest.Resolved()}); err != nil || len(rc.bodies) != 2 {
		t.Fatalf("secret from env: %v", err)
	}

	for src, want := range map[string]string{
		"notifier \"webhook\" {\n  url = \"https://x\"\n}\n":                                                                                  `n.hcl:1: notifier "webhook": secret_file or secret_env is required`,
		"notifier \"webhook\" {\n  url = \"https://x\"\n  secret_env = \"SIGIL_TEST_UNSET_VAR\"\n}\n":                                         `n.hcl:3: notifier "webhook": secret_env: environment variable SIGIL_TEST_UNSET_VAR is not set`,
		"notifier \"webhook\" {\n  url = \"x:y\"\n  secret_file = \"" + file + "\"\n}\n":                                                      `n.hcl:2: notifier "webhook": url: "x:y": scheme "x"`,
		"notifier \"webhook\" {\n  url = \"https://x\"\n  secret = \"inline\"\n}\n":                                                           `n.hcl:3: notifier "webhook": Unsupported argument`,
		"notifier \"webhook\" {\n  url = \"https://x\"\n  secret_file = \"" + file + "\"\n  min_severity = \"high\"\n}\n":                     `n.hcl:4: notifier "webhook": min_severity: "high" is not a severity`,
		"notifier \"webhook\" {\n  url = \"https://x\"\n  secret_file = \"" + file + "\"\n  headers = { \"X-Sigil-Signature\" = \"x\" }\n}\n": `n.hcl:4: notifier "webhook": headers: header "X-Sigil-Signature" cannot be set`,
		"notifier \"webhook\" {\n  url = \"https://x\"\n  secret_file = \"/nonexistent/secret\"\n}\n":                                         `n.hcl:3: notifier "webhook": secret_file: /nonexistent/secret: no such file or directory`,
		"notifier \"webhook\" {\n  secret_file = \"" + file + "\"\n}\n":                                                                       `n.hcl:1: notifier "webhook": url: is required`,
	} {
		err := notifytest.Build(t, src)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q:\n got %v\nwant %s", src, err, want)
		}
		if err != nil && strings.Contains(err.Error(), secret) {
			t.Errorf("error leaks the secret: %v", err)
		}
	}
	two := "notifier \"webhook\" {\n  url = \"https://x\"\n  secret_file = \"" + file + "\"\n}\n"
	if err := notifytest.Build(t, two); err != nil {
		t.Errorf("good block: %v", err)
	}
}
