package slack

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sigil-id/sigil/alert"
	"github.com/sigil-id/sigil/alert/notifier/internal/notifytest"
	"github.com/sigil-id/sigil/plugin"
)

// hookPath stands for the secret part of a Slack webhook URL.
const hookPath = "/services/T000/B000/XXXXSECRETXXXX"

type receiver struct {
	texts  []string
	status int
}

func (rc *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != hookPath || r.Header.Get("Content-Type") != "application/json" {
		w.WriteHeader(http.StatusNotFound)
		io.WriteString(w, "no_service")
		return
	}
	var m struct {
		Text string `json:"text"`
	}
	if err := json.NewDecoder(r.Body).Decode(&m); err != nil || m.Text == "" {
		w.WriteHeader(http.StatusBadRequest)
		io.WriteString(w, "invalid_payload")
		return
	}
	if rc.status != 0 {
		w.WriteHeader(rc.status)
		io.WriteString(w, "error at "+r.URL.Path)
		return
	}
	rc.texts = append(rc.texts, m.Text)
	io.WriteString(w, "ok")
}

func TestNotifyText(t *testing.T) {
	rc := &receiver{}
	srv := httptest.NewServer(rc)
	defer srv.Close()
	n, err := New(Config{WebhookURL: srv.URL + hookPath})
	if err != nil {
		t.Fatal(err)
	}
	if n.Name() != "slack" || n.MinSeverity() != alert.Warning {
		t.Fatalf("defaults %q %q", n.Name(), n.MinSeverity())
	}
	if err := n.Notify(context.Background(), []alert.Alert{notifytest.Firing()}); err != nil {
		t.Fatal(err)
	}
	if err := n.Notify(context.Background(), []alert.Alert{notifytest.Resolved()}); err != nil {
		t.Fatal(err)
	}
	if len(rc.texts) != 2 {
		t.Fatalf("%d messages", len(rc.texts))
	}
	fire, res := rc.texts[0], rc.texts[1]
	for _, want := range []string{"FIRING [critical] SVIDNotRenewed: agent abc did not renew its SVID (server sigil-1)", "• agent: spiffe://td/sigil/agent/join_token/abc", "• expires_in: 4m", "https://sigil-1.example.com:8081/alerts"} {
		if !strings.Contains(fire, want) {
			t.Errorf("firing text lacks %q:\n%s", want, fire)
		}
	}
	if strings.Contains(fire, "RESOLVED") || !strings.Contains(res, "RESOLVED [critical] SVIDNotRenewed") || !strings.Contains(res, "lasted 10m0s") || strings.Contains(res, "FIRING") {
		t.Errorf("resolved text:\n%s", res)
	}
}

func TestTextBoundsAndEscapes(t *testing.T) {
	var alerts []alert.Alert
	for range MaxAlerts + 5 {
		a := notifytest.Firing()
		a.Summary = "<!channel> & " + strings.Repeat("s", 1000)
		alerts = append(alerts, a)
	}
	txt := Text(alerts)
	if !strings.Contains(txt, "… and 5 more alerts") || strings.Count(txt, "FIRING") != MaxAlerts {
		t.Errorf("not bounded to %d alerts", MaxAlerts)
	}
	if strings.Contains(txt, "<!channel>") || !strings.Contains(txt, "&lt;!channel&gt; &amp;") {
		t.Error("mrkdwn control characters not escaped")
	}
	if len(txt) > MaxAlerts*(maxLine+600)+100 {
		t.Errorf("text of %d bytes", len(txt))
	}
}

func TestErrorsHideTheWebhookURL(t *testing.T) {
	rc := &receiver{status: http.StatusServiceUnavailable}
	srv := httptest.NewServer(rc)
	defer srv.Close()
	n, err := New(Config{WebhookURL: srv.URL + hookPath})
	if err != nil {
		t.Fatal(err)
	}
	err = n.Notify(context.Background(), []alert.Alert{notifytest.Firing()})
	if err == nil || !strings.Contains(err.Error(), "slack: POST slack webhook: 503") || strings.Contains(err.Error(), "SECRET") {
		t.Fatalf("5xx: %v", err)
	}
	n, _ = New(Config{WebhookURL: srv.URL + "/services/wrong/SECRET"})
	err = n.Notify(context.Background(), []alert.Alert{notifytest.Firing()})
	if err == nil || !strings.Contains(err.Error(), "404") || !strings.Contains(err.Error(), "will not succeed") || strings.Contains(err.Error(), "SECRET") {
		t.Fatalf("404: %v", err)
	}
	srv.Close()
	err = n.Notify(context.Background(), []alert.Alert{notifytest.Firing()})
	if err == nil || strings.Contains(err.Error(), "SECRET") || strings.Contains(err.Error(), "/services/") {
		t.Fatalf("receiver down: %v", err)
	}
	if _, err := New(Config{WebhookURL: "ftp://hooks.example/SECRET"}); err == nil || strings.Contains(err.Error(), "SECRET") {
		t.Fatalf("bad URL: %v", err)
	}
	if s := n.String(); strings.Contains(s, "SECRET") {
		t.Errorf("String() = %q", s)
	}
}

func TestPlugin(t *testing.T) {
	rc := &receiver{}
	srv := httptest.NewServer(rc)
	defer srv.Close()
	file := filepath.Join(t.TempDir(), "slack.url")
	if err := os.WriteFile(file, []byte(srv.URL+hookPath+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	v, err := NewPlugin(notifytest.Body(t, "webhook_url_file = \""+file+"\"\nname = \"ops\"\nmin_severity = \"critical\"\n"), plugin.Env{Role: plugin.RoleServer})
	if err != nil {
		t.Fatal(err)
	}
	n := v.(*Notifier)
	if n.Name() != "ops" || n.MinSeverity() != alert.Critical {
		t.Fatalf("%q %q", n.Name(), n.MinSeverity())
	}
	if err := n.Notify(context.Background(), []alert.Alert{notifytest.Firing()}); err != nil || len(rc.texts) != 1 {
		t.Fatalf("from file: %v", err)
	}
	t.Setenv("SIGIL_TEST_SLACK_URL", srv.URL+hookPath)
	v, err = NewPlugin(notifytest.Body(t, "webhook_url_env = \"SIGIL_TEST_SLACK_URL\"\n"), plugin.Env{Role: plugin.RoleServer})
	if err != nil {
		t.Fatal(err)
	}
	if err := v.(*Notifier).Notify(context.Background(), []alert.Alert{notifytest.Firing()}); err != nil || len(rc.texts) != 2 {
		t.Fatalf("from env: %v", err)
	}

	t.Setenv("SIGIL_TEST_SLACK_BAD_URL", "hooks.slack.com/services/SECRET")
	for src, want := range map[string]string{
		"notifier \"slack\" {\n}\n": `n.hcl:1: notifier "slack": webhook_url_file or webhook_url_env is required`,
		"notifier \"slack\" {\n  webhook_url = \"https://hooks.slack.com/services/SECRET\"\n}\n":                         `n.hcl:2: notifier "slack": Unsupported argument`,
		"notifier \"slack\" {\n\n  webhook_url_env = \"SIGIL_TEST_SLACK_BAD_URL\"\n}\n":                                  `n.hcl:3: notifier "slack": webhook_url_env: the webhook URL is not valid`,
		"notifier \"slack\" {\n  webhook_url_env = \"SIGIL_TEST_SLACK_URL\"\n  timeout = \"-1s\"\n}\n":                   `n.hcl:3: notifier "slack": timeout: "-1s" is not a positive duration`,
		"notifier \"slack\" {\n  webhook_url_env = \"SIGIL_TEST_SLACK_URL\"\n  webhook_url_file = \"" + file + "\"\n}\n": `n.hcl:2: notifier "slack": webhook_url_env: both webhook_url_file and webhook_url_env are set`,
	} {
		err := notifytest.Build(t, src)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q:\n got %v\nwant %s", src, err, want)
		}
		if err != nil && (strings.Contains(err.Error(), "SECRET") && !strings.Contains(src, "webhook_url =")) {
			t.Errorf("error leaks the URL: %v", err)
		}
	}
}
