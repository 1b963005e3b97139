package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/sigil-id/sigil/internal/eventually"
	"github.com/sigil-id/sigil/internal/jwkstest"
)

// lifecycleToken returns a token of is for acme/app's run run (hence the
// same agent ID for every token of that run) with jti jti, valid for ten
// minutes.
func lifecycleToken(t *testing.T, is *oidcIssuer, run, jti string) string {
	t.Helper()
	now := time.Now()
	return jwkstest.Sign(t, jose.ES256, is.key, "it-1", map[string]any{
		"iss": is.srv.URL, "aud": "sigil", "jti": jti, "sub": "repo:acme/app:ref:refs/heads/main",
		"repository": "acme/app", "repository_owner": "acme", "run_id": run, "workflow": "deploy",
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(10 * time.Minute).Unix(),
	})
}

// writeToken replaces the token in a's token file (the oidc attestor
// reads it at every attestation).
func writeToken(t *testing.T, a *agent, tok string) {
	t.Helper()
	p := filepath.Join(a.dir, "token")
	if err := os.WriteFile(p+".tmp", []byte(tok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(p+".tmp", p); err != nil {
		t.Fatal(err)
	}
}

// serverEvents returns the server log's JSON lines that are audit events
// of kind what that mention id ("": all of them).
func serverEvents(t *testing.T, s *server, what, id string) []map[string]any {
	t.Helper()
	b, err := os.ReadFile(s.p.log)
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.Contains(line, `"`+what+`"`) || !strings.Contains(line, id) {
			continue
		}
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) != nil {
			continue
		}
		out = append(out, m)
	}
	return out
}

// agentShow returns the admin API's record of agent id.
func agentShow(t *testing.T, s *server, id string) map[string]any {
	t.Helper()
	out := s.cli("agent", "show", "-spiffe-id", id, "-output", "json")
	var m map[string]any
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("agent show output %q: %v", out, err)
	}
	return m
}

// readyStatus is the status code and body of a's /ready endpoint.
func readyStatus(a *agent) (int, string, error) {
	resp, err := http.Get("http://" + a.health + "/ready")
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp.StatusCode, string(b), nil
}

// svidIDs is the SPIFFE IDs the workload (this test process) gets over
// socket now.
func svidIDs(t *testing.T, socket string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	xc, err := workloadapi.FetchX509Context(ctx, workloadapi.WithAddr("unix://"+socket))
	if err != nil {
		t.Fatalf("fetch X509 context: %v", err)
	}
	var ids []string
	for _, s := range xc.SVIDs {
		ids = append(ids, s.ID.String())
	}
	return ids
}

// TestAttestLifecycleEvictReattestBan: a real agent attested with the
// oidc attestor (fake issuer on loopback, token file) serves a workload.
// Evicted, it attests again by itself with the fresh token in its file,
// under the same agent ID, and its sync resumes: an entry created after
// the re-attestation is served. Banned, it stays out though its file
// holds fresh tokens: the server refuses it as banned, its health
// endpoint says so, a new entry is not served, and its attempts are paced
// by its backoff (5 s doubling, with jitter to half: at most three in the
// first twelve seconds).
func TestAttestLifecycleEvictReattestBan(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	root := t.TempDir()
	is := newOIDCIssuer(t)
	s := newServer(t, filepath.Join(root, "server"))
	withOIDCServerPlugins(t, s, is)
	s.start()

	const run = "4242"
	id := "spiffe://" + trustDomain + "/sigil/agent/oidc/it/run-" + run
	a := newOIDCAgent(t, s, filepath.Join(root, "agent"), lifecycleToken(t, is, run, "lc-1"), id)
	a.start()

	first := "spiffe://" + trustDomain + "/it/lifecycle/first"
	createEntry(t, s, first, id, uidSelector(t))
	fetchID(t, a.socket, first)
	before := agentShow(t, s, id)
	if n := len(serverEvents(t, s, "agent_attested", id)); n != 1 {
		t.Fatalf("want 1 agent_attested event for %s before the eviction, got %d", id, n)
	}

	// Evicted: the agent attests again by itself with the fresh token
	// (the first one's jti is recorded as used), under the same ID.
	writeToken(t, a, lifecycleToken(t, is, run, "lc-2"))
	s.cli("agent", "evict", "-spiffe-id", id)
	eventually.NoError(t, 20*time.Second, func() error {
		if a.p.exited() {
			return eventually.Stop(fmt.Errorf("agent exited: %v", a.p.err))
		}
		if n := len(serverEvents(t, s, "agent_attested", id)); n != 2 {
			return fmt.Errorf("%d agent_attested events for %s, want 2", n, id)
		}
		if !strings.Contains(a.logText(), `"re-attested"`) {
			return fmt.Errorf("the agent's log does not say it re-attested")
		}
		return nil
	})
	if strings.Contains(a.logText(), "different agent ID") {
		t.Fatal("the agent re-attested under a different agent ID")
	}
	after := agentShow(t, s, id)
	t.Logf("agent record before the eviction %v, after the re-attestation %v", before, after)
	if after["spiffe_id"] != id {
		t.Fatalf("re-attested agent record %v, want spiffe_id %s", after, id)
	}
	if fmt.Sprint(after["cert_serial"]) == fmt.Sprint(before["cert_serial"]) {
		t.Fatalf("re-attested agent has the old SVID serial %v", after["cert_serial"])
	}
	if b, ok := after["banned"].(bool); ok && b {
		t.Fatalf("re-attested agent is banned: %v", after)
	}
	if n := len(serverEvents(t, s, "node_attestation_refused", "")); n != 0 {
		t.Fatalf("%d refused attestations, want none", n)
	}
	// Its sync resumed: an entry created now is served, and so is the
	// first.
	second := "spiffe://" + trustDomain + "/it/lifecycle/second"
	createEntry(t, s, second, id, uidSelector(t))
	xc := fetchID(t, a.socket, second)
	found := false
	for _, sv := range xc.SVIDs {
		found = found || sv.ID.String() == first
	}
	if !found {
		t.Fatalf("the first entry %s is no longer served after the re-attestation", first)
	}
	eventually.NoError(t, 10*time.Second, func() error {
		code, body, err := readyStatus(a)
		if err != nil || code != http.StatusOK {
			return fmt.Errorf("agent not ready after re-attesting: %d %s %v", code, body, err)
		}
		return nil
	})

	// Banned: however fresh its tokens, the agent stays out.
	jti := 3
	fresh := func() {
		writeToken(t, a, lifecycleToken(t, is, run, fmt.Sprintf("lc-%d", jti)))
		jti++
	}
	fresh()
	s.cli("agent", "ban", "-spiffe-id", id)
	banned := time.Now()
	third := "spiffe://" + trustDomain + "/it/lifecycle/third"
	createEntry(t, s, third, id, uidSelector(t))

	const window = 12 * time.Second
	eventually.NoError(t, window, func() error {
		fresh()
		code, body, err := readyStatus(a)
		if err != nil {
			return err
		}
		if code == http.StatusOK || !strings.Contains(body, "attesting again was refused") || !strings.Contains(body, "is banned") {
			return fmt.Errorf("agent health after the ban: %d %s", code, body)
		}
		if len(serverEvents(t, s, "node_attestation_refused", id)) == 0 {
			return fmt.Errorf("no refused attestation of %s yet", id)
		}
		return nil
	})
	// Keep the file fresh until the window has passed.
	for time.Since(banned) < window {
		fresh()
		time.Sleep(500 * time.Millisecond)
	}
	refusals := serverEvents(t, s, "node_attestation_refused", "")
	t.Logf("banned agent: %d refused attestations in %s", len(refusals), window)
	for _, ev := range refusals {
		if ev["reason"] != "banned" || ev["attestation_type"] != "oidc" {
			t.Errorf("refusal not for the ban of %s: %v", id, ev)
		}
	}
	// Attempts at about 0, 2.5–5 s and 7.5–15 s after the ban; the
	// fourth comes no sooner than 17.5 s.
	if n := len(refusals); n < 2 || n > 3 {
		t.Errorf("%d refused attestations of the banned agent in %s, want 2 or 3 (backoff from 5 s)", n, window)
	}
	if n := len(serverEvents(t, s, "agent_attested", id)); n != 2 {
		t.Errorf("%d agent_attested events for %s, want 2: the banned agent got back in", n, id)
	}
	if rec := agentShow(t, s, id); rec["banned"] != true {
		t.Errorf("agent record after the ban: %v, want banned", rec)
	}
	refusedLine := false
	for _, line := range strings.Split(a.logText(), "\n") {
		refusedLine = refusedLine || strings.Contains(line, "cannot re-attest") && strings.Contains(line, id+" is banned")
	}
	if !refusedLine {
		t.Error("the agent's log does not report that its re-attestation was refused as banned")
	}
	for _, got := range svidIDs(t, a.socket) {
		if got == third {
			t.Fatalf("the banned agent serves %s, an entry created after the ban", third)
		}
	}
	if a.p.exited() {
		t.Fatalf("the agent exited: %v", a.p.err)
	}
}
