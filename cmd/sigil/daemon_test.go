package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/cmd/sigil/internal/cli"
	"github.com/sigil-id/sigil/cmd/sigil/internal/config"
	"github.com/sigil-id/sigil/internal/eventually"
)

// freeAddr returns a loopback address that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func waitStatus(t *testing.T, url string, want int) string {
	t.Helper()
	var body string
	eventually.NoError(t, 30*time.Second, func() error {
		resp, err := http.Get(url)
		if err != nil {
			return fmt.Errorf("%s did not answer %d (last: %w)", url, want, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			return fmt.Errorf("%s did not answer %d (last: %d)", url, want, resp.StatusCode)
		}
		body = string(b)
		return nil
	})
	return body
}

// TestDaemons runs the server and agent the way `sigil server` and
// `sigil agent` do: from settings, with health endpoints, the agent
// bootstrapped from a PEM bundle file and a join token.
func TestDaemons(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server and an agent")
	}
	tmp, err := os.MkdirTemp("", "sgm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(tmp) })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	nodeAddr, serverHealth, agentHealth := freeAddr(t), freeAddr(t), freeAddr(t)
	scfg, err := serverConfig(&config.Server{
		TrustDomain:   "daemon.test",
		NodeName:      "s1",
		DataDir:       filepath.Join(tmp, "server"),
		BindAddress:   nodeAddr,
		AdminSocket:   filepath.Join(tmp, "adm", "admin.sock"),
		HealthAddress: serverHealth,
		KeyManager:    "memory",
	}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	serverDone := make(chan error, 1)
	go func() { serverDone <- runServer(ctx, scfg, zap.NewNop()) }()
	waitStatus(t, "http://"+serverHealth+"/live", 200)
	waitStatus(t, "http://"+serverHealth+"/ready", 200)

	admin, err := cli.DialAdmin(scfg.AdminSocket)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	bundle, err := admin.GetBundle(ctx, &sigilv1.GetBundleRequest{})
	if err != nil {
		t.Fatal(err)
	}
	bundlePath := filepath.Join(tmp, "bundle.pem")
	f, err := os.Create(bundlePath)
	if err != nil {
		t.Fatal(err)
	}
	if err := cli.WriteBundlePEM(f, bundle); err != nil {
		t.Fatal(err)
	}
	f.Close()
	tok, err := admin.CreateJoinToken(ctx, &sigilv1.CreateJoinTokenRequest{})
	if err != nil {
		t.Fatal(err)
	}

	acfg, err := agentConfig(&config.Agent{
		TrustDomain:     "daemon.test",
		ServerAddress:   nodeAddr,
		DataDir:         filepath.Join(tmp, "agent"),
		SocketPath:      filepath.Join(tmp, "api.sock"),
		JoinToken:       tok.Token,
		TrustBundlePath: bundlePath,
	}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	agentDone := make(chan error, 1)
	go func() { agentDone <- runAgent(ctx, acfg, agentHealth, zap.NewNop()) }()
	waitStatus(t, "http://"+agentHealth+"/live", 200)
	if body := waitStatus(t, "http://"+agentHealth+"/ready", 200); strings.TrimSpace(body) != "ready" {
		t.Errorf("agent /ready body = %q", body)
	}
	// The agent serves its metrics beside /ready, as the server does.
	if body := waitStatus(t, "http://"+agentHealth+"/metrics", 200); !strings.Contains(body, "sigil_agent_server_connected 1") ||
		!strings.Contains(body, "# TYPE sigil_agent_workload_api_seconds histogram") {
		t.Errorf("agent /metrics lacks the agent's metrics:\n%s", body)
	}

	cancel()
	for name, ch := range map[string]chan error{"server": serverDone, "agent": agentDone} {
		select {
		case err := <-ch:
			if err != nil {
				t.Errorf("%s: %v", name, err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("%s did not stop within 30s", name)
		}
	}
	if _, err := http.Get("http://" + agentHealth + "/live"); err == nil {
		t.Error("agent health endpoint still up after shutdown")
	}
}
