package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"go.uber.org/zap"

	"github.com/sigil-id/sigil/cmd/sigil/internal/cli"
	"github.com/sigil-id/sigil/cmd/sigil/internal/config"
)

// testServer is a real single-node server in this process.
type testServer struct {
	dir, admin, nodeAddr, bundlePath string
	ctx                              context.Context
}

func startTestServer(t *testing.T, td string) *testServer {
	t.Helper()
	tmp, err := os.MkdirTemp("", "sgc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(tmp) })
	ctx, cancel := context.WithCancel(context.Background())
	s := &testServer{dir: tmp, admin: filepath.Join(tmp, "adm", "admin.sock"), nodeAddr: freeAddr(t), ctx: ctx}
	health := freeAddr(t)
	file := filepath.Join(tmp, "server.hcl")
	if err := os.WriteFile(file, []byte(fmt.Sprintf(`server {
  trust_domain   = %q
  node_name      = "s1"
  data_dir       = %q
  bind_address   = %q
  admin_socket   = %q
  health_address = %q
  plugins {
    node_attestor "join_token" {}
    key_manager "memory" {}
  }
}
`, td, filepath.Join(tmp, "server"), s.nodeAddr, s.admin, health)), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := config.LoadFile(file)
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
	done := make(chan error, 1)
	go func() { done <- runServer(ctx, scfg, zap.NewNop()) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Errorf("server did not stop within 30s")
		}
	})
	waitStatus(t, "http://"+health+"/ready", 200)
	s.bundlePath = filepath.Join(tmp, "bundle.pem")
	if code, out, errOut := sigilCLI(t, nil, "bundle", "show", "-socket", s.admin); code != 0 || os.WriteFile(s.bundlePath, []byte(out), 0o600) != nil {
		t.Fatalf("bundle show: %d %q", code, errOut)
	}
	return s
}

// sigilCLI runs the sigil command line in this process.
func sigilCLI(t *testing.T, stdin *bytes.Reader, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	root := newRootCommand()
	if stdin != nil {
		root.SetIn(stdin)
	}
	code := cli.Execute(root, args, &out, &errb)
	return code, out.String(), errb.String()
}

// TestEntryDataAtScale creates 20,000 entries (and 2 bad ones) from one
// JSON lines file with `sigil entry create -data` against a real server,
// then deletes them all with `entry delete -data` fed by `entry list
// -output json`.
func TestEntryDataAtScale(t *testing.T) {
	s := startTestServer(t, "bulk.test")
	const n = 20000
	var doc bytes.Buffer
	for i := range n + 2 {
		td := "bulk.test"
		if i == 5000 || i == 15001 {
			td = "other.test" // refused by the server
		}
		fmt.Fprintf(&doc, `{"spiffe_id": "spiffe://%s/w/%d", "parent_id": "spiffe://bulk.test/sigil/agent/join_token/0123456789abcdef0123456789abcdef", "selectors": [{"type": "unix", "value": "uid:%d"}]}`+"\n", td, i, i)
	}
	file := filepath.Join(s.dir, "entries.jsonl")
	if err := os.WriteFile(file, doc.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	code, out, errOut := sigilCLI(t, nil, "entry", "create", "-socket", s.admin, "-data", file)
	took := time.Since(start)
	t.Logf("entry create -data: %d entries in %s (%.0f entries/s)", n+2, took.Round(time.Millisecond), float64(n+2)/took.Seconds())
	if code != cli.ExitFailure {
		t.Fatalf("create: code %d, stderr %q", code, tail(errOut))
	}
	if got := strings.Count(out, "Created entry "); got != n {
		t.Errorf("stdout lists %d created entries, want %d", got, n)
	}
	for _, want := range []string{
		"failed to create entry 5000 (spiffe://other.test/w/5000): InvalidArgument: ",
		"failed to create entry 15001 (spiffe://other.test/w/15001): InvalidArgument: ",
		"Created 20000 of 20002 entries, 2 failed\nsigil: 2 of 20002 entries failed to create\n",
		"create: 20002/20002 entries (100%), 2 failed\n",
	} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr lacks %q:\n%s", want, tail(errOut))
		}
	}

	code, listed, errOut := sigilCLI(t, nil, "entry", "list", "-socket", s.admin, "-output", "json")
	var resp struct {
		Entries []struct {
			ID       string `json:"id"`
			SpiffeID string `json:"spiffe_id"`
		} `json:"entries"`
	}
	if code != 0 || json.Unmarshal([]byte(listed), &resp) != nil || len(resp.Entries) != n {
		t.Fatalf("list: %d, %d entries, %q", code, len(resp.Entries), errOut)
	}
	listFile := filepath.Join(s.dir, "listed.json")
	if err := os.WriteFile(listFile, []byte(listed), 0o600); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	code, out, errOut = sigilCLI(t, nil, "entry", "delete", "-socket", s.admin, "-data", listFile)
	t.Logf("entry delete -data: %d entries in %s", n, time.Since(start).Round(time.Millisecond))
	if code != 0 || strings.Count(out, "Deleted entry ") != n || !strings.HasSuffix(errOut, "Deleted 20000 of 20000 entries\n") {
		t.Fatalf("delete: %d %q", code, tail(errOut))
	}
	if code, out, _ := sigilCLI(t, nil, "entry", "list", "-socket", s.admin); code != 0 || out != "Found 0 entries\n" {
		t.Errorf("after delete: %d %q", code, out)
	}
}

// tail is the end of a long output, for messages.
func tail(s string) string {
	if len(s) > 2000 {
		return "..." + s[len(s)-2000:]
	}
	return s
}

// TestTokenGenerateAlias: the node alias that `token generate -spiffe-id`
// registers is the agent's: an agent that attests with the token gets
// the SVID of a workload entry parented to the alias.
func TestTokenGenerateAlias(t *testing.T) {
	s := startTestServer(t, "alias.test")
	const alias = "spiffe://alias.test/nodes/db-1"
	code, out, errOut := sigilCLI(t, nil, "token", "generate", "-socket", s.admin, "-spiffe-id", alias, "-output", "json")
	var tok struct {
		Token   string `json:"token"`
		AgentID string `json:"agent_id"`
		Alias   struct {
			ID        string `json:"id"`
			SpiffeID  string `json:"spiffe_id"`
			ParentID  string `json:"parent_id"`
			Selectors []struct {
				Type  string `json:"type"`
				Value string `json:"value"`
			} `json:"selectors"`
		} `json:"node_alias"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &tok) != nil {
		t.Fatalf("token generate: %d %q %q", code, out, errOut)
	}
	seg := tok.AgentID[strings.LastIndex(tok.AgentID, "/")+1:]
	if tok.Alias.SpiffeID != alias || tok.Alias.ParentID != "spiffe://alias.test/sigil/server" || len(tok.Alias.Selectors) != 1 ||
		tok.Alias.Selectors[0].Type != "join_token" || tok.Alias.Selectors[0].Value != seg {
		t.Fatalf("alias = %+v (agent %s)", tok.Alias, tok.AgentID)
	}
	// A workload entry under the alias, for this process's uid.
	if code, _, errOut := sigilCLI(t, nil, "entry", "create", "-socket", s.admin, "-spiffe-id", "spiffe://alias.test/db",
		"-parent-id", alias, "-selector", fmt.Sprintf("unix:uid:%d", os.Getuid())); code != 0 {
		t.Fatalf("workload entry: %d %q", code, errOut)
	}

	tokenFile := filepath.Join(s.dir, "token")
	if err := os.WriteFile(tokenFile, []byte(tok.Token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	socket := filepath.Join(s.dir, "api.sock")
	agentFile := filepath.Join(s.dir, "agent.hcl")
	if err := os.WriteFile(agentFile, []byte(fmt.Sprintf(`plugins {
  node_attestor "join_token" {}
  workload_attestor "unix" {}
}

agent {
  trust_domain      = "alias.test"
  server_address    = %q
  data_dir          = %q
  socket_path       = %q
  join_token_file   = %q
  trust_bundle_path = %q
}
`, s.nodeAddr, filepath.Join(s.dir, "agent"), socket, tokenFile, s.bundlePath)), 0o600); err != nil {
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
	ctx, cancel := context.WithCancel(s.ctx)
	agentDone := make(chan error, 1)
	agentHealth := freeAddr(t)
	go func() { agentDone <- runAgent(ctx, acfg, agentHealth, zap.NewNop()) }()
	defer func() {
		cancel()
		<-agentDone
	}()
	waitStatus(t, "http://"+agentHealth+"/ready", 200)
	fctx, fcancel := context.WithTimeout(ctx, 20*time.Second)
	defer fcancel()
	svid, err := workloadapi.FetchX509SVID(fctx, workloadapi.WithAddr("unix://"+socket))
	if err != nil || svid.ID.String() != "spiffe://alias.test/db" {
		t.Fatalf("the workload under the alias got %v, %v; want spiffe://alias.test/db", svid, err)
	}
	// The agent is the token's.
	if code, out, _ := sigilCLI(t, nil, "agent", "show", "-socket", s.admin, "-spiffe-id", tok.AgentID, "-output", "json"); code != 0 || !strings.Contains(out, `"value": "`+seg+`"`) {
		t.Errorf("agent show: %d %q", code, out)
	}
}
