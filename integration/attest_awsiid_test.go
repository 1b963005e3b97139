package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/sigil-id/sigil/attestor/node/awsiid/awsiidtest"
	"github.com/sigil-id/sigil/internal/eventually"
)

// awsiidServer starts a server whose node attestor is aws_iid, trusting
// signer's certificate for us-east-1 and the given accounts.
func awsiidServer(t *testing.T, dir string, signer *awsiidtest.Signer, accounts ...string) *server {
	t.Helper()
	s := newServer(t, dir)
	certPath := filepath.Join(dir, "aws-us-east-1.pem")
	if err := os.WriteFile(certPath, signer.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`server {
  trust_domain   = %q
  node_name      = "s1"
  data_dir       = %q
  bind_address   = %q
  admin_socket   = %q
  health_address = %q
  log_level      = "debug"
  plugins {
    node_attestor "aws_iid" {
      regions = {
        "us-east-1" = { certificate_path = %q }
      }
      account_allow_list = [%s]
      max_document_age   = "720h"
    }
    key_manager "disk" {}
  }
}
`, trustDomain, filepath.Join(dir, "data"), s.addr, s.admin, s.health, certPath, `"`+strings.Join(accounts, `", "`)+`"`)
	if err := os.WriteFile(s.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	s.start()
	return s
}

// awsiidAgent configures (does not start) an agent attesting with aws_iid
// against the metadata service at imds.
func awsiidAgent(t *testing.T, s *server, dir, imds string) *agent {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	bundle := filepath.Join(dir, "bootstrap.pem")
	if err := os.WriteFile(bundle, []byte(s.cli("bundle", "show")), 0o644); err != nil {
		t.Fatal(err)
	}
	a := &agent{t: t, dir: dir, config: filepath.Join(dir, "agent.hcl"), socket: filepath.Join(dir, "public", "api.sock"), health: freeAddr(t)}
	cfg := fmt.Sprintf(`agent {
  trust_domain      = %q
  server_address    = %q
  data_dir          = %q
  socket_path       = %q
  trust_bundle_path = %q
  health_address    = %q
  log_level         = "debug"
  plugins {
    node_attestor "aws_iid" {
      metadata_endpoint = %q
      timeout           = "10s"
    }
    workload_attestor "unix" {}
  }
}
`, trustDomain, s.addr, filepath.Join(dir, "data"), a.socket, bundle, a.health, imds)
	if err := os.WriteFile(a.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return a
}

// TestAttestAWSIIDNodeAlias: three agents attest with instance identity
// documents served by fake IMDSv2 services on loopback and signed by a
// test certificate standing in for AWS's. A node alias on the account and
// region of the first two gives the workload an SVID on both of their
// sockets, not on the third's (another account); a copy of the first
// instance's document is refused (trust on first use) until the instance
// is evicted, and refused again once it is banned.
func TestAttestAWSIIDNodeAlias(t *testing.T) {
	dir := t.TempDir()
	signer := awsiidtest.NewSigner(t, "test stand-in for the AWS us-east-1 RSA-2048 certificate")
	const acct, other = "123456789012", "210987654321"
	s := awsiidServer(t, filepath.Join(dir, "server"), signer, acct, other)

	instances := []struct{ account, id string }{{acct, "i-0aaaaaaaaaaaaaaa1"}, {acct, "i-0bbbbbbbbbbbbbbb2"}, {other, "i-0ccccccccccccccc3"}}
	var imds []*awsiidtest.IMDS
	var agentIDs []string
	for _, in := range instances {
		doc := awsiidtest.NewDocument(in.account, "us-east-1", in.id, time.Now().Add(-time.Hour)).JSON()
		imds = append(imds, awsiidtest.NewIMDS(t, doc, signer.Sign(t, doc)))
		agentIDs = append(agentIDs, "spiffe://"+trustDomain+"/sigil/agent/aws_iid/"+in.account+"/us-east-1/"+in.id)
	}

	aliased := "spiffe://" + trustDomain + "/aws/app"
	createEntry(t, s, aliased, "spiffe://"+trustDomain+"/sigil/server", "aws_iid:account:"+acct, "aws_iid:region:us-east-1")
	thirdOnly := "spiffe://" + trustDomain + "/aws/third"
	createEntry(t, s, thirdOnly, agentIDs[2], uidSelector(t))
	createEntry(t, s, aliased+"/workload", aliased, uidSelector(t))
	// The aliased workload entry's parent is the alias: every agent of the
	// alias serves it.

	var agents []*agent
	for i := range instances {
		a := awsiidAgent(t, s, filepath.Join(dir, fmt.Sprintf("agent%d", i)), imds[i].URL)
		a.p = startProc(t, fmt.Sprintf("agent%d", i), filepath.Join(a.dir, "agent.log"), nil, sigilBin, "agent", "-config", a.config)
		waitReady(t, a.p, "http://"+a.health+"/ready")
		agents = append(agents, a)
	}
	for i, m := range imds {
		if m.Requests.Load() < 3 {
			t.Errorf("agent %d made %d metadata requests, want token, document and signature", i, m.Requests.Load())
		}
	}
	out := s.cli("agent", "list")
	for _, id := range agentIDs {
		if !strings.Contains(out, id) {
			t.Errorf("agent list does not show %s:\n%s", id, out)
		}
	}

	fetchID(t, agents[0].socket, aliased+"/workload")
	fetchID(t, agents[1].socket, aliased+"/workload")
	xc := fetchID(t, agents[2].socket, thirdOnly)
	for _, svid := range xc.SVIDs {
		if strings.HasPrefix(svid.ID.String(), aliased) {
			t.Fatalf("the agent of account %s serves the alias of account %s: %s", other, acct, svid.ID)
		}
	}
	// Still so once the third agent has certainly synced every entry: it
	// got its own entry, created after the alias.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	xc, err := workloadapi.FetchX509Context(ctx, workloadapi.WithAddr("unix://"+agents[2].socket))
	if err != nil {
		t.Fatal(err)
	}
	for _, svid := range xc.SVIDs {
		if strings.HasPrefix(svid.ID.String(), aliased) {
			t.Fatalf("third agent serves %s", svid.ID)
		}
	}

	// A copy of the first instance's document (anyone who read it on the
	// instance has it) on another machine: refused, the first instance is
	// attested already.
	replay := awsiidAgent(t, s, filepath.Join(dir, "replay"), imds[0].URL)
	replay.p = startProc(t, "replay", filepath.Join(replay.dir, "agent.log"), nil, sigilBin, "agent", "-config", replay.config)
	eventually.NoError(t, 60*time.Second, func() error {
		if log := replay.logText(); !strings.Contains(log, "aws_iid attestation refused") {
			return fmt.Errorf("replayed document not refused yet:\n%s", tail(log, 2000))
		}
		return nil
	})
	if strings.Contains(replay.logText(), "already attested") {
		t.Error("the agent was told the refusal's reason (only the server's log may say it)")
	}
	if b, _ := os.ReadFile(filepath.Join(s.dir, "server.log")); !strings.Contains(string(b), "already attested") {
		t.Error("the server's log does not say why the replay was refused")
	}
	replay.p.kill()

	// Evicting the instance deletes its record: the instance (a fresh
	// agent with the same document) attests again as new.
	agents[0].p.stop()
	s.cli("agent", "evict", "-spiffe-id", agentIDs[0])
	again := awsiidAgent(t, s, filepath.Join(dir, "again"), imds[0].URL)
	again.p = startProc(t, "again", filepath.Join(again.dir, "agent.log"), nil, sigilBin, "agent", "-config", again.config)
	waitReady(t, again.p, "http://"+again.health+"/ready")
	fetchID(t, again.socket, aliased+"/workload")

	// A banned instance stays out, whatever document it shows.
	again.p.stop()
	s.cli("agent", "ban", "-spiffe-id", agentIDs[0])
	banned := awsiidAgent(t, s, filepath.Join(dir, "banned"), imds[0].URL)
	banned.p = startProc(t, "banned", filepath.Join(banned.dir, "agent.log"), nil, sigilBin, "agent", "-config", banned.config)
	eventually.NoError(t, 60*time.Second, func() error {
		b, _ := os.ReadFile(filepath.Join(s.dir, "server.log"))
		if !strings.Contains(banned.logText(), "refused") || !strings.Contains(string(b), "is banned") {
			return fmt.Errorf("banned instance not refused yet:\n%s", tail(banned.logText(), 2000))
		}
		return nil
	})
}
