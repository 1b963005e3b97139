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
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sigil-id/sigil/attestor/node/k8spsat/k8spsattest"
	"github.com/sigil-id/sigil/internal/eventually"
)

// k8sAgent is a sigil agent attesting with k8s_psat from a pod of the
// fake cluster.
func newK8sAgent(t *testing.T, s *server, p *k8spsattest.Platform, dir, pod, node string) *agent {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	tokenPath := filepath.Join(dir, "token")
	tok := p.Token(t, p.Claims(time.Now(), "sigil-server", "sigil", "sigil-agent", pod, node))
	if err := os.WriteFile(tokenPath, []byte(tok), 0o600); err != nil {
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
    node_attestor "k8s_psat" {
      cluster    = "prod"
      token_path = %q
    }
    workload_attestor "unix" {}
  }
}
`, trustDomain, s.addr, filepath.Join(dir, "data"), a.socket, bundle, a.health, tokenPath)
	if err := os.WriteFile(a.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return a
}

// newK8sServer starts a server whose k8s_psat cluster "prod" is p, with
// the validation keys given and API access for the zone label.
func newK8sServer(t *testing.T, p *k8spsattest.Platform, dir, validation string) *server {
	t.Helper()
	s := newServer(t, dir)
	raw, err := os.ReadFile(s.config)
	if err != nil {
		t.Fatal(err)
	}
	plugins := fmt.Sprintf(`  plugins {
    node_attestor "k8s_psat" {
      cluster "prod" {
        audience                   = "sigil-server"
        service_account_allow_list = ["sigil:sigil-agent"]%s
        kube_api {
          url        = %q
          ca_path    = %q
          token_path = %q
        }
        node_label_allow_list = ["topology.kubernetes.io/zone"]
      }
    }
    key_manager "disk" {}
  }
}
`, validation, p.URL, p.CAPath, p.ReviewerTokenPath)
	cfg := strings.TrimSuffix(strings.TrimSpace(string(raw)), "}") + plugins
	if err := os.WriteFile(s.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	s.start()
	return s
}

// TestAttestK8sPSATNodeAlias: three agents in pods of a fake cluster attest
// to a real server with k8s_psat (tokens checked against the cluster's
// OIDC discovery and JWKS, node labels read from its API); a node alias on
// the cluster and a zone label covers the two agents in that zone, whose
// go-spiffe workload gets the SVID parented to the alias; the third
// agent, in another zone, does not serve it. An evicted agent re-attests
// by itself and serves again; a banned one is refused.
func TestAttestK8sPSATNodeAlias(t *testing.T) {
	p := k8spsattest.New(t)
	zones := map[string]string{"node-a": "eu-1a", "node-b": "eu-1a", "node-c": "eu-1b"}
	for i, n := range []string{"node-a", "node-b", "node-c"} {
		p.SetNode(n, k8spsattest.Node{UID: fmt.Sprintf("00000000-0000-4000-8000-00000000000%d", i), Labels: map[string]string{"topology.kubernetes.io/zone": zones[n]}})
		p.SetPod("sigil", "sigil-agent-"+n, k8spsattest.Pod{UID: fmt.Sprintf("10000000-0000-4000-8000-00000000000%d", i), NodeName: n})
	}

	dir := t.TempDir()
	s := newK8sServer(t, p, filepath.Join(dir, "server"), fmt.Sprintf(`
        validation                 = "oidc"
        issuer                     = %q
        ca_path                    = %q`, p.Issuer, p.CAPath))

	var agents []*agent
	for i, n := range []string{"node-a", "node-b", "node-c"} {
		a := newK8sAgent(t, s, p, filepath.Join(dir, n), "sigil-agent-"+n, n)
		a.id = fmt.Sprintf("spiffe://%s/sigil/agent/k8s_psat/prod/00000000-0000-4000-8000-00000000000%d", trustDomain, i)
		a.start()
		if !strings.Contains(a.logText(), a.id) {
			t.Fatalf("agent on %s is not %s:\n%s", n, a.id, tail(a.logText(), 2000))
		}
		agents = append(agents, a)
	}
	if p.Count("jwks") == 0 || p.Count("node") == 0 {
		t.Fatalf("the server did not use the cluster: jwks %d, node %d fetches", p.Count("jwks"), p.Count("node"))
	}

	// The servers keep each agent's node selectors: the zone selects two.
	out := s.cli("agent", "list", "-selector", "k8s_psat:agent_node_label:topology.kubernetes.io/zone:eu-1a")
	if !strings.Contains(out, agents[0].id) || !strings.Contains(out, agents[1].id) || strings.Contains(out, agents[2].id) {
		t.Fatalf("agent list -selector zone eu-1a:\n%s", out)
	}

	alias := "spiffe://" + trustDomain + "/k8s/prod/eu-1a"
	createEntry(t, s, alias, "spiffe://"+trustDomain+"/sigil/server",
		"k8s_psat:cluster:prod", "k8s_psat:agent_node_label:topology.kubernetes.io/zone:eu-1a")
	web := "spiffe://" + trustDomain + "/k8s/web"
	createEntry(t, s, web, alias, uidSelector(t))

	fetchID(t, agents[0].socket, web)
	fetchID(t, agents[1].socket, web)

	// The third agent is attested and serves its socket, but not the
	// aliased entry.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	xc, err := workloadapi.FetchX509Context(ctx, workloadapi.WithAddr("unix://"+agents[2].socket))
	switch {
	case err == nil:
		for _, svid := range xc.SVIDs {
			if svid.ID.String() == web {
				t.Fatalf("the agent in zone eu-1b serves %s", web)
			}
		}
	case status.Code(err) != codes.PermissionDenied:
		t.Fatalf("the agent in zone eu-1b: %v, want no identity (PermissionDenied)", err)
	}

	// Evicted, an agent re-attests by itself with its pod's token (not
	// single-use) under the same ID, and serves the aliased entry again;
	// banned, it stays out.
	s.cli("agent", "evict", "-spiffe-id", agents[0].id)
	eventually.NoError(t, 60*time.Second, func() error {
		if !strings.Contains(agents[0].logText(), `"re-attested"`) {
			return fmt.Errorf("agent on node-a has not re-attested:\n%s", tail(agents[0].logText(), 1500))
		}
		return nil
	})
	if strings.Contains(agents[0].logText(), "under a different agent ID") {
		t.Fatal("the agent re-attested under another ID")
	}
	if out := s.cli("agent", "list"); !strings.Contains(out, agents[0].id) {
		t.Fatalf("re-attested agent not listed:\n%s", out)
	}
	fetchID(t, agents[0].socket, web)
	s.cli("agent", "ban", "-spiffe-id", agents[1].id)
	eventually.NoError(t, 60*time.Second, func() error {
		if l := agents[1].logText(); !strings.Contains(l, `"cannot re-attest"`) || !strings.Contains(l, "is banned") {
			return fmt.Errorf("the banned agent on node-b was not refused re-attestation yet:\n%s", tail(l, 1500))
		}
		return nil
	})
}

// TestAttestK8sPSATTokenReview: with TokenReview validation an agent in a
// live pod attests; an agent whose pod was deleted is refused with the
// one public message, which neither its log nor the server's echoes the
// token in, and the agent stops.
func TestAttestK8sPSATTokenReview(t *testing.T) {
	p := k8spsattest.New(t)
	p.SetNode("node-a", k8spsattest.Node{UID: "00000000-0000-4000-8000-00000000000a", Labels: map[string]string{"topology.kubernetes.io/zone": "eu-1a"}})
	p.SetPod("sigil", "sigil-agent-a", k8spsattest.Pod{UID: "10000000-0000-4000-8000-00000000000a", NodeName: "node-a"})
	p.SetPod("sigil", "sigil-agent-gone", k8spsattest.Pod{UID: "10000000-0000-4000-8000-00000000000b", NodeName: "node-a"})
	dir := t.TempDir()
	s := newK8sServer(t, p, filepath.Join(dir, "server"), `
        validation                 = "token_review"`)

	a := newK8sAgent(t, s, p, filepath.Join(dir, "a"), "sigil-agent-a", "node-a")
	a.start()
	if id := "spiffe://" + trustDomain + "/sigil/agent/k8s_psat/prod/00000000-0000-4000-8000-00000000000a"; !strings.Contains(a.logText(), id) {
		t.Fatalf("agent is not %s:\n%s", id, tail(a.logText(), 2000))
	}
	if p.Count("tokenreview") == 0 || p.Count("jwks") != 0 {
		t.Fatalf("token reviews %d, jwks fetches %d", p.Count("tokenreview"), p.Count("jwks"))
	}

	gone := newK8sAgent(t, s, p, filepath.Join(dir, "gone"), "sigil-agent-gone", "node-a")
	p.DeletePod("sigil", "sigil-agent-gone")
	gone.p = startProc(t, "agent-gone", filepath.Join(gone.dir, "agent.log"), nil, sigilBin, "agent", "-config", gone.config)
	select {
	case <-gone.p.done:
	case <-time.After(60 * time.Second):
		t.Fatal("the refused agent did not stop")
	}
	if gone.p.err == nil {
		t.Fatal("the refused agent exited cleanly")
	}
	tok, err := os.ReadFile(filepath.Join(gone.dir, "token"))
	if err != nil {
		t.Fatal(err)
	}
	log := gone.logText()
	if !strings.Contains(log, "kubernetes service account token refused") {
		t.Fatalf("the agent's log does not say it was refused:\n%s", tail(log, 2000))
	}
	serverLog, _ := os.ReadFile(filepath.Join(s.dir, "server.log"))
	for name, text := range map[string]string{"agent": log, "server": string(serverLog)} {
		if strings.Contains(text, string(tok)) {
			t.Fatalf("the %s log contains the token", name)
		}
	}
	if !strings.Contains(string(serverLog), "did not authenticate") {
		t.Fatalf("the server's log does not give the reason:\n%s", tail(string(serverLog), 3000))
	}
}
