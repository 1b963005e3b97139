package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"go.uber.org/zap"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/ca/keymanager/disk"
	"github.com/sigil-id/sigil/cmd/sigil/internal/cli"
	"github.com/sigil-id/sigil/cmd/sigil/internal/config"
	"github.com/sigil-id/sigil/server"
)

func TestServerConfig(t *testing.T) {
	defaults := server.DefaultConfig()
	cfg, err := serverConfig(&config.Server{
		TrustDomain: "example.org",
		NodeName:    "s1",
		BindAddress: "127.0.0.1:9081",
		X509SVIDTTL: 30 * time.Minute,
	}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	if cfg.TrustDomain.Name() != "example.org" || cfg.NodeName != "s1" || cfg.BindAddress != "127.0.0.1:9081" || cfg.X509SVIDTTL != 30*time.Minute {
		t.Errorf("settings not applied: %+v", cfg)
	}
	if cfg.DataDir != defaults.DataDir || cfg.AdminSocket != defaults.AdminSocket || cfg.CATTL != defaults.CATTL {
		t.Errorf("defaults lost: %+v", cfg)
	}
	// The default plugins: the disk key manager in the data directory's
	// keys and cluster/keys, and the join_token verifier.
	ks, ok := cfg.KeyStore.(*disk.Store)
	if !ok || ks.Dir(ca.KeyScopeAuthorities) != filepath.Join(defaults.DataDir, "keys") || ks.Dir(ca.KeyScopeClusterIdentity) != filepath.Join(defaults.DataDir, "cluster", "keys") {
		t.Errorf("default key manager = %#v, want disk in %s/keys and %s/cluster/keys", cfg.KeyStore, defaults.DataDir, defaults.DataDir)
	}
	if len(cfg.NodeVerifiers) != 1 || cfg.NodeVerifiers[0].Name() != "join_token" {
		t.Errorf("default node verifiers = %v, want join_token", cfg.NodeVerifiers)
	}
	if _, err := serverConfig(&config.Server{TrustDomain: "example.org", KeyManager: "hsm"}, zap.NewNop()); err == nil || !strings.Contains(err.Error(), `key_manager "hsm": unknown plugin (known: `+knownKeyManagers+`)`) {
		t.Errorf("unknown key manager: %v", err)
	}
}

func TestAgentConfig(t *testing.T) {
	cfg, err := agentConfig(&config.Agent{TrustDomain: "example.org", ServerAddress: "10.0.0.1:8081"}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	if cfg.DataDir != defaultAgentDataDir || cfg.SocketPath == "" || cfg.ServerAddress != "10.0.0.1:8081" {
		t.Errorf("agent config = %+v", cfg)
	}
	if _, err := agentConfig(&config.Agent{TrustDomain: "example.org", ServerAddress: "no-port"}, zap.NewNop()); err == nil {
		t.Error("server address without port accepted")
	}
	cfg, err = agentConfig(&config.Agent{TrustDomain: "example.org", ServerAddress: "10.0.0.1:8081", MaxWorkloadConnsPerUID: 512, MaxWorkloadConns: 9000, WorkloadAttestorTimeout: 2 * time.Second}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	if l := cfg.WorkloadAPILimits; l.MaxConnsPerUID != 512 || l.MaxConns != 9000 {
		t.Errorf("workload API limits = %+v, want 512 per uid and 9000 in all", l)
	}
	if cfg.WorkloadAttestorTimeout != 2*time.Second {
		t.Errorf("workload attestor timeout = %v, want 2s", cfg.WorkloadAttestorTimeout)
	}
}

func TestCommandErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.hcl")
	os.WriteFile(bad, []byte("server {\n  trust_domain = \"example.org\"\n  ca_ttl = \"one day\"\n}\n"), 0o600)
	unknown := filepath.Join(dir, "unknown.hcl")
	os.WriteFile(unknown, []byte("agent {\n  trust_domian = \"example.org\"\n}\n"), 0o600)
	serverOnly := filepath.Join(dir, "server.hcl")
	os.WriteFile(serverOnly, []byte("server {\n  trust_domain = \"example.org\"\n}\n"), 0o600)
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"server", "-config", bad}, `server.ca_ttl: invalid duration "one day"`},
		{[]string{"agent", "-config", unknown}, `unknown.hcl:2,3: Unsupported argument; An argument named "trust_domian" is not expected here. Did you mean "trust_domain"?`},
		{[]string{"agent", "-config", serverOnly}, "has no agent block"},
		{[]string{"server"}, "trust_domain is required"},
		{[]string{"server", "-trust-domain", "example.org", "-log-level", "loud"}, `log_level "loud" is invalid`},
		{[]string{"agent", "bogus"}, `unknown command "bogus" for "sigil agent"`},
	}
	for _, tt := range tests {
		var out, errb bytes.Buffer
		code := cli.Execute(newRootCommand(), tt.args, &out, &errb)
		if code == 0 || !strings.Contains(errb.String(), tt.want) || strings.Count(errb.String(), "\n") != 1 {
			t.Errorf("%q: code %d, stderr %q, want %q", tt.args, code, errb.String(), tt.want)
		}
	}
}

func TestVersion(t *testing.T) {
	var out bytes.Buffer
	if code := cli.Execute(newRootCommand(), []string{"version"}, &out, &out); code != 0 || !strings.HasPrefix(out.String(), "sigil dev (") {
		t.Errorf("version: %d %q", code, out.String())
	}
}

func TestDevUserName(t *testing.T) {
	if n := devUserName(1234); n == "" || strings.ContainsAny(n, "/\\ :") {
		t.Errorf("devUserName = %q", n)
	}
}

// TestDev runs `sigil dev` twice on one data directory: the first run
// attests the agent and registers the user, the second reuses both, and
// each time this test process (the same uid) gets its SVID.
func TestDev(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server and an agent")
	}
	tmp, err := os.MkdirTemp("", "sgd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(tmp) })
	o := devOptions{
		trustDomain: "dev.test",
		dataDir:     filepath.Join(tmp, "data"),
		socket:      filepath.Join(tmp, "api.sock"),
		adminSocket: filepath.Join(tmp, "adm", "admin.sock"),
		log:         config.Log{Level: "warn"},
		binary:      "./bin/sigil",
	}
	o.healthAddress = freeAddr(t)

	runOnce := func() devReady {
		t.Helper()
		ctx, cancel := context.WithCancel(context.Background())
		readyCh := make(chan devReady, 1)
		errc := make(chan error, 1)
		var out, logs bytes.Buffer
		go func() { errc <- runDev(ctx, o, &out, &logs, func(r devReady) { readyCh <- r }) }()
		var r devReady
		select {
		case r = <-readyCh:
		case err := <-errc:
			cancel()
			t.Fatalf("runDev: %v\nlogs:\n%s", err, logs.String())
		case <-time.After(60 * time.Second):
			cancel()
			t.Fatalf("dev not ready after 60s; logs:\n%s", logs.String())
		}

		fctx, fcancel := context.WithTimeout(ctx, 20*time.Second)
		svid, err := workloadapi.FetchX509SVID(fctx, workloadapi.WithAddr("unix://"+o.socket))
		fcancel()
		if err != nil {
			t.Errorf("fetch SVID: %v", err)
		} else if svid.ID != r.SPIFFEID {
			t.Errorf("SVID for %s, want %s", svid.ID, r.SPIFFEID)
		}

		// Another dev on the same data directory is refused at once.
		if err := runDev(ctx, o, &bytes.Buffer{}, &bytes.Buffer{}, nil); err == nil || !strings.Contains(err.Error(), "another `sigil dev` running") {
			t.Errorf("second concurrent dev: %v", err)
		}

		admin, err := cli.DialAdmin(o.adminSocket)
		if err != nil {
			t.Fatal(err)
		}
		entries, err := cli.ListAllEntries(ctx, admin, &sigilv1.ListEntriesRequest{})
		admin.Close()
		if err != nil {
			t.Fatal(err)
		}
		if len(entries) != 1 || entries[0].SpiffeId != r.SPIFFEID.String() || entries[0].ParentId != r.AgentID.String() {
			t.Errorf("entries = %v", entries)
		}

		for _, want := range []string{
			"Trust domain        : dev.test",
			"Workload API socket : " + o.socket,
			"Your SPIFFE ID      : " + r.SPIFFEID.String(),
			"./bin/sigil svid fetch -socket " + o.socket + "\n",
			"./bin/sigil svid fetch -socket " + o.socket + " -write /tmp/svid && openssl verify -CAfile /tmp/svid/bundle.pem /tmp/svid/svid.pem",
			"Health endpoint     : http://" + o.healthAddress + "/ready (and /live, /metrics); check it with: ./bin/sigil healthcheck -url http://" + o.healthAddress + "/ready\n",
		} {
			if !strings.Contains(out.String(), want) {
				t.Errorf("banner lacks %q:\n%s", want, out.String())
			}
		}

		// `sigil healthcheck` succeeds against dev mode.
		var hout, herr bytes.Buffer
		if code := cli.Execute(newRootCommand(), []string{"healthcheck", "-url", "http://" + o.healthAddress + "/ready"}, &hout, &herr); code != 0 || strings.TrimSpace(hout.String()) != "ready" {
			t.Errorf("healthcheck against dev: code %d, stdout %q, stderr %q", code, hout.String(), herr.String())
		}

		cancel()
		select {
		case err := <-errc:
			if err != nil {
				t.Errorf("runDev after cancel: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("runDev did not stop within 30s of cancel")
		}
		return r
	}

	first := runOnce()
	second := runOnce()
	if first.AgentID != second.AgentID {
		t.Errorf("second run attested a new agent: %s, then %s", first.AgentID, second.AgentID)
	}

	// A different trust domain on the same data is refused.
	o.trustDomain = "other.test"
	if err := runDev(context.Background(), o, &bytes.Buffer{}, &bytes.Buffer{}, nil); err == nil || !strings.Contains(err.Error(), `belongs to trust domain "dev.test"`) {
		t.Errorf("trust domain change: %v", err)
	}
}

// `sigil healthcheck` with no flags probes `sigil dev`'s health endpoint.
func TestHealthcheckDefaultFindsDev(t *testing.T) {
	root := newRootCommand()
	hc, _, err := root.Find([]string{"healthcheck"})
	if err != nil {
		t.Fatal(err)
	}
	dev, _, err := root.Find([]string{"dev"})
	if err != nil {
		t.Fatal(err)
	}
	url := hc.Flags().Lookup("url").DefValue
	addr := dev.Flags().Lookup("health-address").DefValue
	if addr == "" || url != "http://"+addr+"/ready" {
		t.Fatalf("healthcheck probes %s by default, dev serves health on %q", url, addr)
	}
}

// A busy health port stops `sigil dev` before it writes any state.
func TestDevHealthPortInUse(t *testing.T) {
	tmp, err := os.MkdirTemp("", "sgh")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(tmp) })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	o := devOptions{
		trustDomain:   "dev.test",
		dataDir:       filepath.Join(tmp, "data"),
		socket:        filepath.Join(tmp, "api.sock"),
		adminSocket:   filepath.Join(tmp, "adm", "admin.sock"),
		healthAddress: ln.Addr().String(),
		log:           config.Log{Level: "warn"},
	}
	err = runDev(context.Background(), o, &bytes.Buffer{}, &bytes.Buffer{}, nil)
	if err == nil || !strings.Contains(err.Error(), "health endpoint: ") || !strings.Contains(err.Error(), "-health-address") {
		t.Fatalf("runDev = %v, want the busy health port", err)
	}
	for _, p := range []string{"server", "agent", devStateFile} {
		if _, err := os.Stat(filepath.Join(o.dataDir, p)); !os.IsNotExist(err) {
			t.Errorf("%s was written before the health port was checked: %v", p, err)
		}
	}
}
