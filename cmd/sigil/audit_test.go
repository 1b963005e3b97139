package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/cmd/sigil/internal/cli"
	"github.com/sigil-id/sigil/cmd/sigil/internal/config"
)

// auditLines reads an audit file: one JSON object per line.
func auditLines(t *testing.T, path string) (recs []map[string]any, raw string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		var rec map[string]any
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatalf("%s: not a JSON line: %q", path, sc.Text())
		}
		recs = append(recs, rec)
	}
	return recs, string(b)
}

func findAudit(recs []map[string]any, what, subject string) map[string]any {
	for _, r := range recs {
		if r["what"] == what && (subject == "" || r["subject"] == subject) {
			return r
		}
	}
	return nil
}

// TestAuditSinkFile runs a server and an agent configured with an
// audit_sink "file" block each: the server's file records the admin
// changes, the attestation and the issuances, the agent's its
// attestation, the log keeps its audit records, and neither file holds a
// private key, the join token or the JWT-SVID.
func TestAuditSinkFile(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server and an agent")
	}
	tmp, err := os.MkdirTemp("", "sga")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(tmp) })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	nodeAddr, serverHealth := freeAddr(t), freeAddr(t)
	serverAudit, agentAudit := filepath.Join(tmp, "log", "server-audit.log"), filepath.Join(tmp, "log", "agent-audit.log")
	serverFile := filepath.Join(tmp, "server.hcl")
	if err := os.WriteFile(serverFile, []byte(fmt.Sprintf(`server {
  trust_domain   = "audit.test"
  node_name      = "s1"
  data_dir       = %q
  bind_address   = %q
  admin_socket   = %q
  health_address = %q
  plugins {
    node_attestor "join_token" {}
    key_manager "disk" {}
    audit_sink "file" {
      path      = %q
      max_size  = "1MiB"
      max_files = 2
    }
  }
}
`, filepath.Join(tmp, "server"), nodeAddr, filepath.Join(tmp, "adm", "admin.sock"), serverHealth, serverAudit)), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := config.LoadFile(serverFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Server.Validate(); err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.InfoLevel)
	slog := zap.New(core)
	scfg, err := serverConfig(f.Server, slog)
	if err != nil {
		t.Fatal(err)
	}
	serverDone := make(chan error, 1)
	go func() { serverDone <- runServer(ctx, scfg, slog) }()
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
	created, err := admin.BatchCreateEntry(ctx, &sigilv1.BatchCreateEntryRequest{Entries: []*sigilv1.Entry{{
		SpiffeId: "spiffe://audit.test/me", ParentId: tok.AgentId,
		Selectors: []*sigilv1.Selector{{Type: "unix", Value: fmt.Sprintf("uid:%d", os.Getuid())}},
	}}})
	if err != nil || len(created.Results) != 1 || created.Results[0].Entry == nil {
		t.Fatalf("create entry: %v %v", created, err)
	}
	entryID := created.Results[0].Entry.Id

	agentFile := filepath.Join(tmp, "agent.hcl")
	socket := filepath.Join(tmp, "api.sock")
	if err := os.WriteFile(agentFile, []byte(fmt.Sprintf(`plugins {
  node_attestor "join_token" {}
  workload_attestor "unix" {}
  audit_sink "file" {
    path = %q
  }
}

agent {
  trust_domain      = "audit.test"
  server_address    = %q
  data_dir          = %q
  socket_path       = %q
  join_token_file   = %q
  trust_bundle_path = %q
}
`, agentAudit, nodeAddr, filepath.Join(tmp, "agent"), socket, tokenFile, bundlePath)), 0o600); err != nil {
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
	if err != nil || svid.ID.String() != "spiffe://audit.test/me" {
		fcancel()
		t.Fatalf("fetch SVID: %v %v", svid, err)
	}
	jwt, err := workloadapi.FetchJWTSVID(fctx, jwtsvid.Params{Audience: "audit-test"}, workloadapi.WithAddr("unix://"+socket))
	fcancel()
	if err != nil {
		t.Fatalf("fetch JWT-SVID: %v", err)
	}

	// Closing the daemons closes (flushes) their audit files.
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

	recs, raw := auditLines(t, serverAudit)
	for _, want := range []struct{ what, who, subject string }{
		{"join_token_created", "admin", tok.AgentId},
		{"entry_created", "admin", entryID},
		{"agent_attested", "", tok.AgentId},
		{"x509_svid_issued", tok.AgentId, "spiffe://audit.test/me"},
		{"jwt_svid_issued", tok.AgentId, entryID},
	} {
		r := findAudit(recs, want.what, want.subject)
		if r == nil {
			t.Errorf("server audit file has no %s of %s: %s", want.what, want.subject, raw)
			continue
		}
		if r["who"] != want.who || r["outcome"] != "success" {
			t.Errorf("%s: who %v outcome %v, want %q success", want.what, r["who"], r["outcome"], want.who)
		}
	}
	if r := findAudit(recs, "entry_created", entryID); r != nil && r["fields"].(map[string]any)["spiffe_id"] != "spiffe://audit.test/me" {
		t.Errorf("entry_created fields %v", r["fields"])
	}
	arecs, araw := auditLines(t, agentAudit)
	if findAudit(arecs, "agent_attested", tok.AgentId) == nil {
		t.Errorf("agent audit file has no agent_attested: %s", araw)
	}
	for name, text := range map[string]string{"server": raw, "agent": araw} {
		if strings.Contains(text, "PRIVATE KEY") || strings.Contains(text, tok.Token) || strings.Contains(text, jwt.Marshal()) {
			t.Errorf("%s audit file holds a private key, the join token or the JWT-SVID", name)
		}
	}
	for _, p := range []string{serverAudit, agentAudit} {
		if st, err := os.Stat(p); err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v %v, want mode 0600", p, st, err)
		}
	}
	// The log keeps its audit records as before, with the server's ID.
	zl := logs.FilterField(zap.String("audit", "entry_created")).All()
	if len(zl) != 1 || zl[0].ContextMap()["server_id"] != "spiffe://audit.test/sigil/server/s1" {
		t.Errorf("log audit records of entry_created: %v", zl)
	}
}

func TestAuditSinkConfigErrors(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		name  string
		agent bool
		src   string
		want  string // after "<file>:"
	}{
		{"bad size", false, `server {
  trust_domain = "example.org"
  plugins {
    node_attestor "join_token" {}
    audit_sink "file" {
      path     = "/var/log/sigil/audit.log"
      max_size = "lots"
    }
  }
}`, `7: audit_sink "file": max_size: "lots" is not a size`},
		{"unknown key", true, `plugins {
  node_attestor "join_token" {}
  workload_attestor "unix" {}
  audit_sink "file" {
    path = "/var/log/sigil/audit.log"
    rotate = true
  }
}
agent {
  trust_domain      = "example.org"
  server_address    = "127.0.0.1:8081"
  trust_bundle_path = "/etc/sigil/bundle.pem"
  join_token        = "t"
}`, `6: audit_sink "file": Unsupported argument; An argument named "rotate" is not expected here.`},
		{"unwritable", false, fmt.Sprintf(`server {
  trust_domain = "example.org"
  plugins {
    node_attestor "join_token" {}
    audit_sink "file" {
      path = %q
    }
  }
}`, dir), `5: audit_sink "file": filesink: open ` + dir + `: is a directory`},
	} {
		t.Run(c.name, func(t *testing.T) {
			var p string
			var err error
			if c.agent {
				p, err = agentFromFile(t, c.src)
			} else {
				p, err = serverFromFile(t, c.src)
			}
			if err == nil || !strings.Contains(err.Error(), p+":"+c.want) {
				t.Fatalf("error = %v\nwant %s:%s", err, p, c.want)
			}
		})
	}
}
