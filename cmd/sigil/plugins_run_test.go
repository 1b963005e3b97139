package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"go.uber.org/zap"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/cmd/sigil/internal/cli"
	"github.com/sigil-id/sigil/cmd/sigil/internal/config"
)

// TestDaemonsFromPluginBlocks runs a server and an agent configured from
// HCL files with plugins blocks (the server's disk key manager with its
// own directories, the agent's at the top level of its file): the keys
// land in the configured directories and a workload of this uid gets its
// SVID.
func TestDaemonsFromPluginBlocks(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server and an agent")
	}
	tmp, err := os.MkdirTemp("", "sgp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(tmp) })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	nodeAddr, serverHealth := freeAddr(t), freeAddr(t)
	keys, clusterKeys := filepath.Join(tmp, "k"), filepath.Join(tmp, "ck")
	serverFile := filepath.Join(tmp, "server.hcl")
	if err := os.WriteFile(serverFile, []byte(fmt.Sprintf(`server {
  trust_domain   = "plugins.test"
  node_name      = "s1"
  data_dir       = %q
  bind_address   = %q
  admin_socket   = %q
  health_address = %q
  plugins {
    node_attestor "join_token" {}
    key_manager "disk" {
      directory         = %q
      cluster_directory = %q
    }
  }
}
`, filepath.Join(tmp, "server"), nodeAddr, filepath.Join(tmp, "adm", "admin.sock"), serverHealth, keys, clusterKeys)), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := config.LoadFile(serverFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Server.Validate(); err != nil {
		t.Fatal(err)
	}
	scfg, err := serverConfig(f.Server, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	serverDone := make(chan error, 1)
	go func() { serverDone <- runServer(ctx, scfg, zap.NewNop()) }()
	waitStatus(t, "http://"+serverHealth+"/ready", 200)
	if ents, err := os.ReadDir(keys); err != nil || len(ents) == 0 {
		t.Errorf("no CA key in the configured directory %s: %v", keys, err)
	}
	if _, err := os.Stat(filepath.Join(tmp, "server", "keys")); !os.IsNotExist(err) {
		t.Errorf("keys were written to the default directory too: %v", err)
	}

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
	bf, err := os.Create(bundlePath)
	if err != nil {
		t.Fatal(err)
	}
	if err := cli.WriteBundlePEM(bf, bundle); err != nil {
		t.Fatal(err)
	}
	bf.Close()
	tok, err := admin.CreateJoinToken(ctx, &sigilv1.CreateJoinTokenRequest{})
	if err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(tmp, "token")
	if err := os.WriteFile(tokenFile, []byte(tok.Token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	uid := os.Getuid()
	if _, err := admin.BatchCreateEntry(ctx, &sigilv1.BatchCreateEntryRequest{Entries: []*sigilv1.Entry{{
		SpiffeId: "spiffe://plugins.test/me", ParentId: tok.AgentId,
		Selectors: []*sigilv1.Selector{{Type: "unix", Value: fmt.Sprintf("uid:%d", uid)}},
	}}}); err != nil {
		t.Fatal(err)
	}

	agentFile := filepath.Join(tmp, "agent.hcl")
	socket := filepath.Join(tmp, "api.sock")
	if err := os.WriteFile(agentFile, []byte(fmt.Sprintf(`plugins {
  node_attestor "join_token" {}
  workload_attestor "unix" {}
}

agent {
  trust_domain      = "plugins.test"
  server_address    = %q
  data_dir          = %q
  socket_path       = %q
  join_token_file   = %q
  trust_bundle_path = %q
}
`, nodeAddr, filepath.Join(tmp, "agent"), socket, tokenFile, bundlePath)), 0o600); err != nil {
		t.Fatal(err)
	}
	af, err := config.LoadFile(agentFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := af.Agent.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := af.Agent.ResolveJoinToken(nil); err != nil {
		t.Fatal(err)
	}
	acfg, err := agentConfig(af.Agent, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	agentHealth, agentDone := startAgent(t, ctx, acfg)
	waitStatus(t, "http://"+agentHealth+"/ready", 200)

	fctx, fcancel := context.WithTimeout(ctx, 20*time.Second)
	svid, err := workloadapi.FetchX509SVID(fctx, workloadapi.WithAddr("unix://"+socket))
	fcancel()
	if err != nil || svid.ID.String() != "spiffe://plugins.test/me" {
		t.Errorf("fetch SVID: %v %v", svid, err)
	}

	cancel()
	for name, ch := range map[string]chan error{"server": serverDone, "agent": agentDone} {
		select {
		case err := <-ch:
			if err != nil && !strings.Contains(err.Error(), "context canceled") {
				t.Errorf("%s: %v", name, err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("%s did not stop within 30s", name)
		}
	}
	if ents, err := os.ReadDir(clusterKeys); err == nil && len(ents) > 0 {
		t.Errorf("a single server (no cluster_address) wrote cluster identity keys: %v", ents)
	}
}
