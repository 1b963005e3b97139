package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// fakeAlertAdmin is an in-memory AlertAdmin that answers with results
// and alerts and records the test requests.
type fakeAlertAdmin struct {
	sigilv1.UnimplementedAlertAdminServer
	results []*sigilv1.NotifierResult
	alerts  []*sigilv1.ActiveAlert

	mu   sync.Mutex
	reqs []*sigilv1.AlertTestRequest
}

func (f *fakeAlertAdmin) Test(_ context.Context, req *sigilv1.AlertTestRequest) (*sigilv1.AlertTestResponse, error) {
	f.mu.Lock()
	f.reqs = append(f.reqs, req)
	f.mu.Unlock()
	return &sigilv1.AlertTestResponse{Results: f.results, Key: "sigil_test/s1"}, nil
}

func (f *fakeAlertAdmin) List(context.Context, *sigilv1.AlertListRequest) (*sigilv1.AlertListResponse, error) {
	return &sigilv1.AlertListResponse{Alerts: f.alerts}, nil
}

func startFakeAlertAdmin(t *testing.T, f *fakeAlertAdmin) string {
	t.Helper()
	path := filepath.Join(shortTempDir(t), "admin.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	sigilv1.RegisterAlertAdminServer(s, f)
	go s.Serve(ln) //nolint:errcheck
	t.Cleanup(s.Stop)
	return path
}

func runAlert(args ...string) (int, string, string) {
	root := &cobra.Command{Use: "sigil"}
	root.AddCommand(NewAlertCommand())
	var out, errb bytes.Buffer
	code := Execute(root, append([]string{"alert"}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

// TestAlertTest: `sigil alert test` prints one line per notifier, exits 1
// when one failed or none is configured, and sends -severity.
func TestAlertTest(t *testing.T) {
	f := &fakeAlertAdmin{results: []*sigilv1.NotifierResult{
		{Name: "pagerduty", Ok: true},
		{Name: "hook", Error: "webhook: POST http://127.0.0.1:1/: connection refused\nretry later"},
	}}
	sock := startFakeAlertAdmin(t, f)
	code, out, errOut := runAlert("test", "-socket", sock, "-severity", "critical")
	want := "pagerduty  ok\nhook       error: webhook: POST http://127.0.0.1:1/: connection refused; retry later\n"
	if code != 1 || out != want || errOut != "sigil: alert test: 1 of 2 notifiers failed\n" {
		t.Fatalf("alert test: %d\n%q\nwant %q\nstderr %q", code, out, want, errOut)
	}
	if len(f.reqs) != 1 || f.reqs[0].Severity != "critical" || f.reqs[0].TimeoutSeconds != 10 {
		t.Fatalf("requests = %v", f.reqs)
	}

	f.results = f.results[:1]
	if code, out, errOut := runAlert("test", "-socket", sock); code != 0 || out != "pagerduty  ok\n" || errOut != "" {
		t.Fatalf("alert test, all ok: %d %q %q", code, out, errOut)
	}
	if f.reqs[1].Severity != "warning" {
		t.Errorf("default severity = %q", f.reqs[1].Severity)
	}
	code, out, _ = runAlert("test", "-socket", sock, "-output", "json")
	var resp struct {
		Results []struct {
			Name string `json:"name"`
			Ok   bool   `json:"ok"`
		} `json:"results"`
	}
	if err := json.Unmarshal([]byte(out), &resp); code != 0 || err != nil || len(resp.Results) != 1 || !resp.Results[0].Ok {
		t.Fatalf("alert test -output json: %d %q %v", code, out, err)
	}

	f.results = nil
	if code, out, errOut := runAlert("test", "-socket", sock); code != 1 || out != "" || !strings.Contains(errOut, "no notifier configured") {
		t.Fatalf("alert test, no notifier: %d %q %q", code, out, errOut)
	}
	if code, _, errOut := runAlert("test", "-socket", sock, "-severity", "urgent"); code != ExitUsage || !strings.Contains(errOut, `invalid -severity "urgent"`) {
		t.Fatalf("bad severity: %d %q", code, errOut)
	}
	if code, _, errOut := runAlert("test", "-socket", filepath.Join(t.TempDir(), "none.sock")); code != 1 || !strings.Contains(errOut, "does not exist") {
		t.Fatalf("missing socket: %d %q", code, errOut)
	}
}

// TestAlertList: `sigil alert list` prints the firing alerts, or says
// there is none.
func TestAlertList(t *testing.T) {
	f := &fakeAlertAdmin{}
	sock := startFakeAlertAdmin(t, f)
	if code, out, _ := runAlert("list", "-socket", sock); code != 0 || out != "No alert firing\n" {
		t.Fatalf("alert list, none: %d %q", code, out)
	}
	t0 := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	f.alerts = []*sigilv1.ActiveAlert{
		{Key: "cluster_no_leader", Name: "SigilClusterNoLeader", Severity: "critical", Source: "s2", StartsAt: t0.Add(time.Minute).Unix()},
		{Key: "svid_not_renewed/a1", Name: "SVIDNotRenewed", Severity: "warning", Source: "s1", StartsAt: t0.Unix(), Details: map[string]string{"count": "3"}},
	}
	code, out, _ := runAlert("list", "-socket", sock)
	want := "SEVERITY  NAME                  SUBJECT  SINCE                 SOURCE\n" +
		"critical  SigilClusterNoLeader  -        2026-11-30T12:01:00Z  s2\n" +
		"warning   SVIDNotRenewed        a1       2026-11-30T12:00:00Z  s1\n"
	if code != 0 || out != want {
		t.Fatalf("alert list: %d\n%s\nwant\n%s", code, out, want)
	}
	code, out, _ = runAlert("list", "-socket", sock, "-output", "json")
	if code != 0 || !strings.Contains(out, `"key": "svid_not_renewed/a1"`) || !strings.Contains(out, `"count": "3"`) {
		t.Fatalf("alert list -output json: %d %q", code, out)
	}
}
