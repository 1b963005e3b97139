package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/sigil-id/sigil/agent"
	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/cmd/sigil/internal/cli"
	"github.com/sigil-id/sigil/cmd/sigil/internal/config"
	"github.com/sigil-id/sigil/internal/eventually"
	"github.com/sigil-id/sigil/server"
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

// startRetrying starts a daemon with start(attempt) and waits until the
// health address it returns answers /live with 200. If the daemon exits
// first because an address it was given is in use, it starts it again
// (at most three attempts); any other exit fails the test.
func startRetrying(t *testing.T, name string, start func(attempt int) (healthAddr string, done chan error)) {
	t.Helper()
	for attempt := 1; ; attempt++ {
		addr, done := start(attempt)
		err := waitLive("http://"+addr+"/live", done)
		if err == nil {
			return
		}
		if attempt == 3 || !strings.Contains(err.Error(), "address already in use") {
			t.Fatalf("%s: %v", name, err)
		}
		t.Logf("%s, attempt %d: %v; starting it again on other addresses", name, attempt, err)
	}
}

// startAgent runs the agent of cfg with a health address chosen right
// before its start (started again if another process took it, as
// startRetrying does) and returns that address and the agent's result.
func startAgent(t *testing.T, ctx context.Context, cfg agent.Config) (healthAddr string, done chan error) {
	t.Helper()
	startRetrying(t, "agent", func(int) (string, chan error) {
		healthAddr = freeAddr(t)
		done = make(chan error, 1)
		go func(addr string, done chan error) { done <- runAgent(ctx, cfg, addr, zap.NewNop()) }(healthAddr, done)
		return healthAddr, done
	})
	return healthAddr, done
}

// waitLive polls url until it answers 200 (nil), or until the daemon
// whose result done carries exits (its error, put back on done), for at
// most 30 s.
func waitLive(url string, done chan error) error {
	deadline := time.Now().Add(30 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			done <- err
			return fmt.Errorf("exited before %s answered: %v", url, err)
		default:
		}
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not answer 200 within 30s (last: %v)", url, err)
		}
		<-tick.C
	}
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

	// The daemons bind addresses freeAddr found free; another test
	// process may take one first (then the daemon exits with "address
	// already in use" and the test would poll that process's server):
	// each start is tried again on other addresses, in a fresh directory.
	var nodeAddr, serverHealth string
	var scfg server.Config
	var serverDone chan error
	startRetrying(t, "server", func(attempt int) (string, chan error) {
		nodeAddr, serverHealth = freeAddr(t), freeAddr(t)
		var err error
		scfg, err = serverConfig(&config.Server{
			TrustDomain:   "daemon.test",
			NodeName:      "s1",
			DataDir:       filepath.Join(tmp, fmt.Sprintf("server%d", attempt)),
			BindAddress:   nodeAddr,
			AdminSocket:   filepath.Join(tmp, fmt.Sprintf("adm%d", attempt), "admin.sock"),
			HealthAddress: serverHealth,
			KeyManager:    "memory",
		}, zap.NewNop())
		if err != nil {
			t.Fatal(err)
		}
		serverDone = make(chan error, 1)
		go func() { serverDone <- runServer(ctx, scfg, zap.NewNop()) }()
		return serverHealth, serverDone
	})
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

	var agentHealth string
	var agentDone chan error
	startRetrying(t, "agent", func(attempt int) (string, chan error) {
		agentHealth = freeAddr(t)
		tok, err := admin.CreateJoinToken(ctx, &sigilv1.CreateJoinTokenRequest{})
		if err != nil {
			t.Fatal(err)
		}
		acfg, err := agentConfig(&config.Agent{
			TrustDomain:     "daemon.test",
			ServerAddress:   nodeAddr,
			DataDir:         filepath.Join(tmp, fmt.Sprintf("agent%d", attempt)),
			SocketPath:      filepath.Join(tmp, fmt.Sprintf("api%d.sock", attempt)),
			JoinToken:       tok.Token,
			TrustBundlePath: bundlePath,
		}, zap.NewNop())
		if err != nil {
			t.Fatal(err)
		}
		agentDone = make(chan error, 1)
		go func() { agentDone <- runAgent(ctx, acfg, agentHealth, zap.NewNop()) }()
		return agentHealth, agentDone
	})
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

// startRetrying starts a daemon again when it exits because an address
// was taken, and waits for the start that answers.
func TestStartRetrying(t *testing.T) {
	live := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/live" {
			http.NotFound(w, r)
		}
	}))
	defer live.Close()
	var attempts []int
	startRetrying(t, "daemon", func(attempt int) (string, chan error) {
		attempts = append(attempts, attempt)
		done := make(chan error, 1)
		if attempt == 1 {
			done <- errors.New("listen tcp 127.0.0.1:1: bind: address already in use")
			return freeAddr(t), done
		}
		return strings.TrimPrefix(live.URL, "http://"), done
	})
	if len(attempts) != 2 || attempts[1] != 2 {
		t.Fatalf("attempts %v, want [1 2]", attempts)
	}
	// A daemon that exits for another reason is reported at once.
	done := make(chan error, 1)
	done <- errors.New("bad config")
	if err := waitLive("http://"+freeAddr(t)+"/live", done); err == nil || !strings.Contains(err.Error(), "bad config") {
		t.Fatalf("waitLive: %v", err)
	}
}
