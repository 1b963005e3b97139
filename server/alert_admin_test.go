package server

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/sigil-id/sigil/alert"
	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// memNotifier is an in-memory alert.Notifier (a stand-in for a receiver
// outside the process); it fails every send with err when err is set.
type memNotifier struct {
	name string
	min  alert.Severity
	err  error

	mu  sync.Mutex
	got []alert.Alert
}

func (m *memNotifier) Name() string                { return m.name }
func (m *memNotifier) MinSeverity() alert.Severity { return m.min }
func (m *memNotifier) Notify(_ context.Context, alerts []alert.Alert) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.got = append(m.got, alerts...)
	return m.err
}

func (m *memNotifier) received() []alert.Alert {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]alert.Alert(nil), m.got...)
}

// startAlertServer starts a single-node server with notifiers and returns
// it, its log and an AlertAdmin client on its admin socket.
func startAlertServer(t *testing.T, notifiers ...alert.Notifier) (*Server, *observer.ObservedLogs, sigilv1.AlertAdminClient) {
	t.Helper()
	dir := t.TempDir()
	core, logs := observer.New(zap.DebugLevel)
	cfg := DefaultConfig()
	cfg.TrustDomain = testTD
	cfg.NodeName = "s1"
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.BindAddress = "127.0.0.1:0"
	cfg.AdminSocket = filepath.Join(dir, "admin", "admin.sock")
	cfg.Logger = zap.New(core)
	cfg.Notifiers = notifiers
	withPlugins(t, &cfg, "memory")
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	select {
	case <-srv.Ready():
	case err := <-done:
		t.Fatalf("server exited: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("server not ready")
	}
	conn, err := grpc.NewClient("unix://"+cfg.AdminSocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("server run: %v", err)
		}
	})
	return srv, logs, sigilv1.NewAlertAdminClient(conn)
}

func TestAlertAdminTestReachesEveryNotifier(t *testing.T) {
	ok := &memNotifier{name: "pager", min: alert.Critical}
	bad := &memNotifier{name: "hook", min: alert.Info, err: errors.New("hook: receiver answered 503")}
	srv, logs, client := startAlertServer(t, ok, bad)
	resp, err := client.Test(context.Background(), &sigilv1.AlertTestRequest{Severity: "info"})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Results) != 2 {
		t.Fatalf("results = %v", resp.Results)
	}
	if r := resp.Results[0]; r.Name != "pager" || !r.Ok || r.Error != "" {
		t.Errorf("pager result = %v", r)
	}
	if r := resp.Results[1]; r.Name != "hook" || r.Ok || !strings.Contains(r.Error, "503") {
		t.Errorf("hook result = %v", r)
	}
	// Test ignores routing: the critical-only notifier got the info alert.
	for _, m := range []*memNotifier{ok, bad} {
		got := m.received()
		if len(got) != 1 {
			t.Fatalf("%s received %v", m.name, got)
		}
		a := got[0]
		if a.Key != "sigil_test/s1" || a.Name != "SigilTestAlert" || a.Source != "s1" || a.Severity != alert.Info || a.Details["test"] != "true" || a.Resolved() {
			t.Errorf("%s received %+v", m.name, a)
		}
	}
	if resp.Key != "sigil_test/s1" {
		t.Errorf("key = %q", resp.Key)
	}
	ev := logs.FilterField(zap.String("audit", "alert_test_sent")).All()
	if len(ev) != 1 || ev[0].ContextMap()["outcome"] != "failure" {
		t.Errorf("audit events = %v", ev)
	}
	if _, err := client.Test(context.Background(), &sigilv1.AlertTestRequest{Severity: "urgent"}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("bad severity: %v", err)
	}
	// Run runs the dispatcher: a fired alert reaches the notifiers.
	srv.alerts.Fire(alert.Alert{Key: "k/1", Name: "SVIDNotRenewed", Severity: alert.Critical, Source: "s1"})
	deadline := time.Now().Add(10 * time.Second)
	for len(ok.received()) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("the fired alert did not reach the notifier: %v", ok.received())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := ok.received()[1]; got.Key != "k/1" {
		t.Errorf("notifier got %+v", got)
	}
}

func TestAlertAdminWithoutNotifiers(t *testing.T) {
	srv, _, client := startAlertServer(t)
	resp, err := client.Test(context.Background(), &sigilv1.AlertTestRequest{})
	if err != nil || len(resp.Results) != 0 {
		t.Fatalf("Test = %v, %v; want no results", resp, err)
	}
	list, err := client.List(context.Background(), &sigilv1.AlertListRequest{})
	if err != nil || len(list.Alerts) != 0 {
		t.Fatalf("List = %v, %v; want none", list, err)
	}
	start := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	srv.alerts.Fire(alert.Alert{Key: "k/1", Name: "SVIDNotRenewed", Severity: alert.Critical, Source: "s1", StartsAt: start, Details: map[string]string{"agent": "a"}})
	list, err = client.List(context.Background(), &sigilv1.AlertListRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Alerts) != 1 {
		t.Fatalf("List = %v", list.Alerts)
	}
	if a := list.Alerts[0]; a.Key != "k/1" || a.Name != "SVIDNotRenewed" || a.Severity != "critical" || a.StartsAt != start.Unix() || a.Details["agent"] != "a" {
		t.Fatalf("List = %v", a)
	}
}

func TestNewRefusesDuplicateNotifierNames(t *testing.T) {
	cfg := DefaultConfig()
	cfg.TrustDomain = testTD
	cfg.NodeName = "s1"
	cfg.DataDir = t.TempDir()
	cfg.Notifiers = []alert.Notifier{&memNotifier{name: "x"}, &memNotifier{name: "x"}}
	withPlugins(t, &cfg, "memory")
	_, err := New(cfg)
	if err == nil || !strings.Contains(err.Error(), `two notifiers named "x"`) || strings.Count(err.Error(), "server:") != 1 {
		t.Fatalf("New = %v", err)
	}
}
