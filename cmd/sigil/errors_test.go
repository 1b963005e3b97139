package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/sigil-id/sigil/cmd/sigil/internal/config"
)

// doubledPrefix reports whether err's message says one prefix twice in a
// row ("server: server: ..."), also in two spellings ("workload API:
// workloadapi: ...").
func doubledPrefix(msg string) bool {
	parts := strings.Split(msg, ": ")
	norm := func(s string) string { return strings.ToLower(strings.ReplaceAll(s, " ", "")) }
	for i := 0; i+1 < len(parts); i++ {
		if norm(parts[i]) == norm(parts[i+1]) {
			return true
		}
	}
	return false
}

func TestDoubledPrefixPattern(t *testing.T) {
	for s, want := range map[string]bool{
		"server: server: data dir: mkdir x":               true,
		"agent: agent: workload API: workloadapi: listen": true,
		"agent: workload API: workloadapi: listen":        true,
		"server: data dir: mkdir x: not a directory":      false,
		"agent: workloadapi: listen unix x: bind":         false,
	} {
		if got := doubledPrefix(s); got != want {
			t.Errorf("doubled(%q) = %v, want %v", s, got, want)
		}
	}
	if err := prefixed("server", errors.New("server: x")); err.Error() != "server: x" {
		t.Errorf("prefixed kept %q", err)
	}
	if err := prefixed("server", errors.New("raftstore: x")); err.Error() != "server: raftstore: x" {
		t.Errorf("prefixed gave %q", err)
	}
}

// notADir is a path under a regular file: creating it fails.
func notADir(t *testing.T) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(f, "data")
}

// A daemon that cannot start says so once: "server: data dir: ...", not
// "server: server: data dir: ...".
func TestDaemonErrorsHaveOnePrefix(t *testing.T) {
	tmp, err := os.MkdirTemp("", "sge")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(tmp) })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	scfg, err := serverConfig(&config.Server{
		TrustDomain: "daemon.test",
		DataDir:     notADir(t),
		BindAddress: "127.0.0.1:0",
		AdminSocket: filepath.Join(tmp, "adm", "admin.sock"),
		KeyManager:  "memory",
	}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	err = runServer(ctx, scfg, zap.NewNop())
	if err == nil || !strings.HasPrefix(err.Error(), "server: data dir: ") || doubledPrefix(err.Error()) {
		t.Errorf("server error = %v, want one prefix: server: data dir: ...", err)
	}

	acfg, err := agentConfig(&config.Agent{
		TrustDomain:   "daemon.test",
		ServerAddress: "127.0.0.1:1",
		DataDir:       notADir(t),
		SocketPath:    filepath.Join(tmp, "api.sock"),
	}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	err = runAgent(ctx, acfg, "", zap.NewNop())
	if err == nil || !strings.HasPrefix(err.Error(), "agent: data directory: ") || doubledPrefix(err.Error()) {
		t.Errorf("agent error = %v, want one prefix: agent: data directory: ...", err)
	}

	acfg.DataDir = filepath.Join(tmp, "agent")
	acfg.SocketPath = filepath.Join(notADir(t), "api.sock")
	err = runAgent(ctx, acfg, "", zap.NewNop())
	t.Logf("agent socket error: %v", err)
	if err == nil || !strings.HasPrefix(err.Error(), "agent: ") || doubledPrefix(err.Error()) {
		t.Errorf("agent socket error = %v, want one prefix", err)
	}
}
