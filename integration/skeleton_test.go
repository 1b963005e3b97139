package integration

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sigil-id/sigil/internal/eventually"
)

func uidSelector(t *testing.T) string {
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	return "unix:uid:" + u.Uid
}

// fetchID waits until the workload (this test process) is served want
// over the agent's socket, and returns the context it got.
func fetchID(t *testing.T, socket, want string) *workloadapi.X509Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client, err := workloadapi.New(ctx, workloadapi.WithAddr("unix://"+socket))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	var got *workloadapi.X509Context
	err = eventually.Wait(30*time.Second, func() error {
		xc, err := client.FetchX509Context(ctx)
		if err != nil {
			return err
		}
		for _, s := range xc.SVIDs {
			if s.ID.String() == want {
				got = xc
				return nil
			}
		}
		return fmt.Errorf("got %d SVIDs, none is %s", len(xc.SVIDs), want)
	})
	if err != nil {
		t.Fatalf("workload never got %s: %v", want, err)
	}
	return got
}

type entryJSON struct {
	ID       string `json:"id"`
	SpiffeID string `json:"spiffe_id"`
}

func createEntry(t *testing.T, s *server, spiffeID, parentID string, selectors ...string) string {
	t.Helper()
	args := []string{"entry", "create", "-spiffe-id", spiffeID, "-parent-id", parentID, "-output", "json"}
	for _, sel := range selectors {
		args = append(args, "-selector", sel)
	}
	out := s.cli(args...)
	var res struct {
		Results []struct {
			Entry entryJSON `json:"entry"`
		} `json:"results"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || len(res.Results) != 1 || res.Results[0].Entry.ID == "" {
		t.Fatalf("entry create output %q: %v", out, err)
	}
	return res.Results[0].Entry.ID
}

func listEntries(t *testing.T, s *server) []entryJSON {
	t.Helper()
	out := s.cli("entry", "list", "-output", "json")
	var res struct {
		Entries []entryJSON `json:"entries"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("entry list output %q: %v", out, err)
	}
	return res.Entries
}

// TestServerAgentWorkload is the walking skeleton end to end: a server and
// an agent as real processes, an entry made with the CLI, a go-spiffe
// workload served its SVID, svid fetch -write checked with openssl, the
// agent restarted without re-attesting, and the server killed with -9 and
// restarted with every entry kept.
func TestServerAgentWorkload(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	root := t.TempDir()
	s := newServer(t, filepath.Join(root, "server"))
	s.start()
	a := newAgent(t, s, filepath.Join(root, "agent"))
	a.start()

	want := "spiffe://" + trustDomain + "/it/workload"
	entryID := createEntry(t, s, want, a.id, uidSelector(t))
	xc := fetchID(t, a.socket, want)
	svid := xc.SVIDs[0]
	if _, _, err := x509svid.Verify(svid.Certificates, xc.Bundles); err != nil {
		t.Fatalf("SVID does not verify against the served bundle: %v", err)
	}

	// svid fetch -write, then openssl verify with the written files.
	out := filepath.Join(root, "svid")
	sigil(t, "svid", "fetch", "-socket", a.socket, "-write", out)
	if fi, err := os.Stat(filepath.Join(out, "svid.key")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("svid.key: %v %v", fi, err)
	}
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Fatal("openssl is required (apt-get install -y openssl)")
	}
	ov, err := exec.Command("openssl", "verify", "-CAfile", filepath.Join(out, "bundle.pem"), filepath.Join(out, "svid.pem")).CombinedOutput()
	if err != nil || !strings.Contains(string(ov), ": OK") {
		t.Fatalf("openssl verify: %v\n%s", err, ov)
	}
	pemBytes, _ := os.ReadFile(filepath.Join(out, "svid.pem"))
	blk, _ := pem.Decode(pemBytes)
	leaf, err := x509.ParseCertificate(blk.Bytes)
	if err != nil || len(leaf.URIs) != 1 || leaf.URIs[0].String() != want {
		t.Fatalf("svid.pem URI SANs: %v %v", leaf, err)
	}

	// Restart the agent: it keeps its identity and does not attest again
	// (its join token is spent, so attesting again would fail).
	agentsBefore := s.cli("agent", "show", "-spiffe-id", a.id, "-output", "json")
	a.p.stop()
	if n := strings.Count(a.logText(), `"node attested"`); n != 1 {
		t.Fatalf("first run attested %d times, want 1", n)
	}
	a.start()
	fetchID(t, a.socket, want)
	log := a.logText()
	if n := strings.Count(log, `"node attested"`); n != 1 {
		t.Fatalf("agent attested again after restart (%d attestations in its log)", n)
	}
	if !strings.Contains(log, `"loaded agent identity"`) {
		t.Fatal("restarted agent did not load its saved identity")
	}
	agents := s.cli("agent", "list", "-output", "json")
	if strings.Count(agents, "/sigil/agent/") != 1 {
		t.Fatalf("want exactly one agent after restart, got %s", agents)
	}
	if after := s.cli("agent", "show", "-spiffe-id", a.id, "-output", "json"); after != agentsBefore {
		t.Fatalf("agent record changed across an agent restart:\n%s\n%s", agentsBefore, after)
	}

	// kill -9 the server and restart it: every entry is still there, and
	// the agent reconnects.
	before := listEntries(t, s)
	s.p.kill()
	s.start()
	after := listEntries(t, s)
	if len(after) != len(before) || len(after) != 1 || after[0].ID != entryID {
		t.Fatalf("entries before kill %v, after %v", before, after)
	}
	want2 := "spiffe://" + trustDomain + "/it/after-restart"
	createEntry(t, s, want2, a.id, uidSelector(t))
	fetchID(t, a.socket, want2)
}

// TestMTLSBetweenWorkloads: two go-spiffe processes, told apart by their
// executable path, complete mTLS with spiffetls and each sees the other's
// SPIFFE ID.
func TestMTLSBetweenWorkloads(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	root := t.TempDir()
	s := newServer(t, filepath.Join(root, "server"))
	s.start()
	a := newAgent(t, s, filepath.Join(root, "agent"))
	a.start()

	bins := filepath.Join(root, "bin")
	os.MkdirAll(bins, 0o755)
	srvBin, cliBin := filepath.Join(bins, "web"), filepath.Join(bins, "client")
	for _, p := range []string{srvBin, cliBin} {
		b, err := os.ReadFile(workloadBin)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	srvID := "spiffe://" + trustDomain + "/web"
	cliID := "spiffe://" + trustDomain + "/client"
	createEntry(t, s, srvID, a.id, uidSelector(t), "unix:path:"+srvBin)
	createEntry(t, s, cliID, a.id, uidSelector(t), "unix:path:"+cliBin)

	// This test process has the same uid but another executable: it
	// matches neither entry and must get nothing.
	fctx, fcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer fcancel()
	if _, err := workloadapi.FetchX509Context(fctx, workloadapi.WithAddr("unix://"+a.socket)); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("a process matching no entry: got %v, want PermissionDenied", err)
	}

	addr := freeAddr(t)
	env := []string{"SPIFFE_ENDPOINT_SOCKET=unix://" + a.socket}
	srvLog := filepath.Join(root, "web.log")
	web := startProc(t, "web", srvLog, env, srvBin, "serve", addr, cliID)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, cliBin, "dial", addr, srvID)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("client: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "client "+cliID+" saw server "+srvID) ||
		!strings.Contains(string(out), "server "+srvID+" saw client "+cliID) {
		t.Fatalf("client output:\n%s", out)
	}
	select {
	case <-web.done:
	case <-time.After(20 * time.Second):
		t.Fatal("server workload did not finish")
	}
	if web.err != nil {
		t.Fatalf("server workload: %v", web.err)
	}
	srvOut, _ := os.ReadFile(srvLog)
	if !strings.Contains(string(srvOut), "server "+srvID+" saw client "+cliID+" saying hello from "+cliID) {
		t.Fatalf("server workload output:\n%s", srvOut)
	}
}
