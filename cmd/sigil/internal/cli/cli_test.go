package cli

import (
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/registration"
)

const agentID = "spiffe://example.org/sigil/agent/join_token/abc"

func TestNormalizeArgs(t *testing.T) {
	root := testRoot()
	tests := []struct {
		in, want []string
	}{
		{[]string{"entry", "create", "-spiffe-id", "x", "-selector=unix:uid:1"}, []string{"entry", "create", "--spiffe-id", "x", "--selector=unix:uid:1"}},
		{[]string{"entry", "list", "--parent-id", "y", "-h"}, []string{"entry", "list", "--parent-id", "y", "-h"}},
		{[]string{"svid", "fetch", "-help"}, []string{"svid", "fetch", "--help"}},
		{[]string{"entry", "create", "-hint", "-notaflag"}, []string{"entry", "create", "--hint", "-notaflag"}},
		{[]string{"entry", "--", "-socket"}, []string{"entry", "--", "-socket"}},
	}
	for _, tt := range tests {
		if got := NormalizeArgs(root, tt.in); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("NormalizeArgs(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestExecuteErrorsAreOneLine(t *testing.T) {
	root := &cobra.Command{Use: "sigil"}
	root.AddCommand(&cobra.Command{Use: "boom", RunE: func(*cobra.Command, []string) error {
		return &ExitError{Code: 3, Err: errTest("first line\nsecond line")}
	}})
	var out, errb strings.Builder
	code := Execute(root, []string{"boom"}, &out, &errb)
	if code != 3 || errb.String() != "sigil: first line; second line\n" {
		t.Errorf("code %d, stderr %q", code, errb.String())
	}
}

type errTest string

func (e errTest) Error() string { return string(e) }

func TestEntryCommands(t *testing.T) {
	f := newFakeAdmin()
	sock := startFakeAdmin(t, f)

	// create with flags, single-dash style
	code, out, errOut := run(t, "entry", "create", "-socket", sock,
		"-spiffe-id", "spiffe://example.org/web", "-parent-id", agentID,
		"-selector", "unix:uid:1000", "-selector", "unix:gid:50",
		"-dns", "web.example.org", "-x509-svid-ttl", "30m", "-jwt-svid-ttl", "2m", "-hint", "frontend")
	if code != 0 {
		t.Fatalf("create: code %d, stderr %q", code, errOut)
	}
	for _, want := range []string{"Entry ID         : e1", "SPIFFE ID        : spiffe://example.org/web", "X509-SVID TTL    : 30m0s", "JWT-SVID TTL     : 2m0s", "Selector         : unix:gid:50", "DNS name         : web.example.org", "Hint             : frontend"} {
		if !strings.Contains(out, want) {
			t.Errorf("create output lacks %q:\n%s", want, out)
		}
	}
	e1 := f.entries["e1"]
	if e1.X509SvidTtl != 1800 || e1.JwtSvidTtl != 120 || len(e1.Selectors) != 2 || e1.ParentId != agentID {
		t.Errorf("stored entry = %v", e1)
	}

	// -node makes the parent the servers ID
	code, _, errOut = run(t, "entry", "create", "--socket", sock, "-node", "-spiffe-id", "spiffe://example.org/nodes/db", "-selector", "join_token:abc")
	if code != 0 {
		t.Fatalf("create -node: %d %q", code, errOut)
	}
	if got, want := f.entries["e2"].ParentId, registration.ServersID(fakeTD).String(); got != want {
		t.Errorf("node alias parent = %q, want %q", got, want)
	}

	// missing and conflicting flags fail before dialing
	for _, args := range [][]string{
		{"entry", "create", "-socket", sock, "-parent-id", agentID, "-selector", "unix:uid:1"},
		{"entry", "create", "-socket", sock, "-spiffe-id", "spiffe://example.org/a", "-selector", "unix:uid:1"},
		{"entry", "create", "-socket", sock, "-spiffe-id", "spiffe://example.org/a", "-parent-id", agentID},
		{"entry", "create", "-socket", sock, "-spiffe-id", "spiffe://example.org/a", "-parent-id", agentID, "-node", "-selector", "unix:uid:1"},
		{"entry", "create", "-socket", sock, "-spiffe-id", "spiffe://example.org/a", "-parent-id", agentID, "-selector", "nocolon"},
		{"entry", "create", "-socket", sock, "-spiffe-id", "not-an-id", "-parent-id", agentID, "-selector", "unix:uid:1"},
		{"entry", "create", "-socket", sock, "-spiffe-id", "spiffe://example.org/a", "-parent-id", agentID, "-selector", "unix:uid:1", "-x509-svid-ttl", "1.5s"},
		{"entry", "create", "-socket", sock, "-data", "x.json", "-spiffe-id", "spiffe://example.org/a"},
		{"entry", "create", "-socket", sock, "-spiffe-id", "spiffe://example.org/a", "-parent-id", agentID, "-selector", "unix:uid:1", "-output", "yaml"},
	} {
		code, _, errOut := run(t, args...)
		if code != ExitUsage || strings.Count(errOut, "\n") != 1 || !strings.HasPrefix(errOut, "sigil: ") {
			t.Errorf("%q: code %d, stderr %q", args, code, errOut)
		}
	}
	if len(f.entries) != 2 {
		t.Fatalf("invalid invocations created entries: %d", len(f.entries))
	}

	// batch create from a file: per-item errors, exit 1
	dir := t.TempDir()
	batch := filepath.Join(dir, "entries.json")
	os.WriteFile(batch, []byte(`{"entries": [
		{"spiffe_id": "spiffe://example.org/a", "parent_id": "`+agentID+`", "selectors": [{"type": "unix", "value": "uid:1"}]},
		{"spiffe_id": "spiffe://other.org/b", "parent_id": "`+agentID+`", "selectors": [{"type": "unix", "value": "uid:2"}]},
		{"spiffeId": "spiffe://example.org/c", "parentId": "`+agentID+`", "selectors": [{"type": "unix", "value": "uid:3"}], "x509SvidTtl": 60}
	]}`), 0o600)
	code, out, errOut = run(t, "entry", "create", "-socket", sock, "-data", batch)
	if code != 1 {
		t.Errorf("batch with a bad item: code %d", code)
	}
	if !strings.Contains(errOut, `failed to create entry 1 (spiffe://other.org/b): InvalidArgument: registration: spiffe_id "spiffe://other.org/b" is not in trust domain "example.org"`) ||
		!strings.HasSuffix(errOut, "sigil: 1 of 3 entries failed to create\n") {
		t.Errorf("batch stderr = %q", errOut)
	}
	if !strings.Contains(out, "spiffe://example.org/a") || !strings.Contains(out, "spiffe://example.org/c") {
		t.Errorf("batch stdout = %q", out)
	}
	if len(f.entries) != 4 {
		t.Errorf("entries after batch = %d, want 4", len(f.entries))
	}

	// bad batch file
	os.WriteFile(batch, []byte(`{"entries": [{"spiffe_idd": "x"}]}`), 0o600)
	if code, _, errOut := run(t, "entry", "create", "-socket", sock, "-data", batch); code != ExitUsage || !strings.Contains(errOut, "-data "+batch) {
		t.Errorf("bad batch file: %d %q", code, errOut)
	}

	// update merges the given flags into the stored entry
	code, out, errOut = run(t, "entry", "update", "-socket", sock, "-id", "e1", "-selector", "unix:uid:2000")
	if code != 0 {
		t.Fatalf("update: %d %q", code, errOut)
	}
	e1 = f.entries["e1"]
	if len(e1.Selectors) != 1 || e1.Selectors[0].Value != "uid:2000" || e1.Hint != "frontend" || e1.X509SvidTtl != 1800 || e1.Revision != 1 {
		t.Errorf("updated entry = %v", e1)
	}
	if !strings.Contains(out, "Revision         : 1") {
		t.Errorf("update output = %q", out)
	}
	if code, _, errOut := run(t, "entry", "update", "-socket", sock, "-id", "nope", "-hint", "x"); code != ExitNotFound || errOut != "sigil: update entry nope: NotFound: entry \"nope\" not found\n" {
		t.Errorf("update missing: %d %q", code, errOut)
	}
	if code, _, errOut := run(t, "entry", "update", "-socket", sock, "-id", "e1"); code != ExitUsage || !strings.Contains(errOut, "nothing to update") {
		t.Errorf("update without fields: %d %q", code, errOut)
	}

	// show
	code, out, _ = run(t, "entry", "show", "-socket", sock, "-id", "e1", "-output", "json")
	var shown map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &shown) != nil || shown["spiffe_id"] != "spiffe://example.org/web" {
		t.Errorf("show json: %d %q", code, out)
	}

	// list pages through everything (page size 2, 4 entries)
	code, out, _ = run(t, "entry", "list", "-socket", sock)
	if code != 0 || !strings.HasPrefix(out, "Found 4 entries\n") {
		t.Errorf("list: %d %q", code, out)
	}
	code, out, _ = run(t, "entry", "list", "-socket", sock, "-output", "json")
	var listed struct{ Entries []map[string]any }
	if code != 0 || json.Unmarshal([]byte(out), &listed) != nil || len(listed.Entries) != 4 {
		t.Errorf("list json: %d %q", code, out)
	}
	code, out, _ = run(t, "entry", "list", "-socket", sock, "-selector", "unix:uid:2000", "-parent-id", agentID)
	if code != 0 || !strings.HasPrefix(out, "Found 1 entry\n") || !strings.Contains(out, "Entry ID         : e1") {
		t.Errorf("filtered list: %d %q", code, out)
	}

	// delete: one good, one missing
	code, out, errOut = run(t, "entry", "delete", "-socket", sock, "-id", "e1", "-id", "nope")
	if code != 1 || out != "Deleted entry e1\n" || !strings.Contains(errOut, `failed to delete entry nope: NotFound`) {
		t.Errorf("delete: %d %q %q", code, out, errOut)
	}
	if _, ok := f.entries["e1"]; ok {
		t.Error("e1 not deleted")
	}
}

func TestAdminSocketMissing(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "admin.sock")
	code, _, errOut := run(t, "entry", "list", "-socket", missing)
	if code != 1 || !strings.Contains(errOut, "does not exist (is `sigil server` running?") {
		t.Errorf("%d %q", code, errOut)
	}
}

func TestTokenBundleAgentCommands(t *testing.T) {
	f := newFakeAdmin()
	ca := newTestCA(t, "example.org")
	f.bundle = &sigilv1.Bundle{
		TrustDomain:     "example.org",
		X509Authorities: []*sigilv1.X509Authority{{Certificate: ca.cert.Raw, ServerId: "s1"}},
		RefreshHint:     300,
		SequenceNumber:  7,
	}
	for _, id := range []string{"a1", "a2", "a3"} {
		f.agents = append(f.agents, &sigilv1.AttestedNode{
			SpiffeId:        "spiffe://example.org/sigil/agent/join_token/" + id,
			AttestationType: "join_token",
			Selectors:       []*sigilv1.Selector{{Type: "join_token", Value: id}},
		})
	}
	sock := startFakeAdmin(t, f)

	code, out, _ := run(t, "token", "generate", "-socket", sock, "-ttl", "5m")
	if code != 0 || !strings.Contains(out, "Token           : secret-token") || !strings.Contains(out, "Agent SPIFFE ID : "+agentID) || f.tokenTTL != 300 {
		t.Errorf("token: %d %q ttl %d", code, out, f.tokenTTL)
	}

	code, out, _ = run(t, "bundle", "show", "-socket", sock)
	block, rest := pem.Decode([]byte(out))
	if code != 0 || block == nil || block.Type != "CERTIFICATE" || len(strings.TrimSpace(string(rest))) != 0 {
		t.Fatalf("bundle pem: %d %q", code, out)
	}
	if c, err := x509.ParseCertificate(block.Bytes); err != nil || !c.Equal(ca.cert) {
		t.Errorf("bundle certificate does not round-trip: %v", err)
	}

	code, out, _ = run(t, "bundle", "show", "-socket", sock, "-format", "spiffe")
	var doc struct {
		Keys []struct {
			Use string   `json:"use"`
			X5c []string `json:"x5c"`
		} `json:"keys"`
		Seq     uint64 `json:"spiffe_sequence"`
		Refresh int64  `json:"spiffe_refresh_hint"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &doc) != nil || len(doc.Keys) != 1 || doc.Keys[0].Use != "x509-svid" || doc.Seq != 7 || doc.Refresh != 300 {
		t.Errorf("bundle spiffe: %d %q", code, out)
	}
	if code, _, errOut := run(t, "bundle", "show", "-socket", sock, "-format", "der"); code != ExitUsage || !strings.Contains(errOut, `invalid -format "der"`) {
		t.Errorf("bad format: %d %q", code, errOut)
	}

	code, out, _ = run(t, "agent", "list", "-socket", sock)
	if code != 0 || !strings.HasPrefix(out, "Found 3 agents\n") || !strings.Contains(out, "join_token/a3") {
		t.Errorf("agent list: %d %q", code, out)
	}
	code, out, _ = run(t, "agent", "show", "-socket", sock, "-spiffe-id", "spiffe://example.org/sigil/agent/join_token/a2")
	if code != 0 || !strings.Contains(out, "Selector         : join_token:a2") {
		t.Errorf("agent show: %d %q", code, out)
	}
	if code, _, errOut := run(t, "agent", "show", "-socket", sock, "-spiffe-id", "spiffe://example.org/x"); code != ExitNotFound || !strings.Contains(errOut, "NotFound") {
		t.Errorf("agent show missing: %d %q", code, errOut)
	}
	if code, out, _ := run(t, "agent", "evict", "-socket", sock, "-spiffe-id", "spiffe://example.org/sigil/agent/join_token/a1"); code != 0 || !strings.Contains(out, "Evicted") || len(f.evicted) != 1 {
		t.Errorf("evict: %d %q", code, out)
	}
	if code, out, _ := run(t, "agent", "ban", "-socket", sock, "-spiffe-id", "spiffe://example.org/sigil/agent/join_token/a1"); code != 0 || !strings.Contains(out, "Banned") || len(f.banned) != 1 {
		t.Errorf("ban: %d %q", code, out)
	}
	if code, _, errOut := run(t, "agent", "ban", "-socket", sock); code != ExitUsage || !strings.Contains(errOut, "-spiffe-id is required") {
		t.Errorf("ban without id: %d %q", code, errOut)
	}
}

func TestSVIDFetch(t *testing.T) {
	ca := newTestCA(t, "example.org")
	const id = "spiffe://example.org/web"
	cert, key := ca.issue(t, id)
	api := &fakeWorkloadAPI{resp: &workloadpb.X509SVIDResponse{Svids: []*workloadpb.X509SVID{{
		SpiffeId: id, X509Svid: cert, X509SvidKey: key, Bundle: ca.cert.Raw, Hint: "web",
	}}}}
	sock := startFakeWorkloadAPI(t, api)
	dir := filepath.Join(t.TempDir(), "svid")

	code, out, errOut := run(t, "svid", "fetch", "-socket", sock, "-write", dir)
	if code != 0 {
		t.Fatalf("fetch: %d %q", code, errOut)
	}
	for _, want := range []string{"SPIFFE ID        : " + id, "Serial           : abcdef", "Hint             : web", "Chain [0]", "Trust bundle     : example.org (1 CA certificate)", "Wrote "} {
		if !strings.Contains(out, want) {
			t.Errorf("fetch output lacks %q:\n%s", want, out)
		}
	}
	st, err := os.Stat(filepath.Join(dir, "svid.key"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("svid.key: %v mode %v", err, st)
	}
	keyPEM, _ := os.ReadFile(filepath.Join(dir, "svid.key"))
	if b, _ := pem.Decode(keyPEM); b == nil || b.Type != "PRIVATE KEY" {
		t.Errorf("svid.key is not PKCS#8 PEM")
	} else if _, err := x509.ParsePKCS8PrivateKey(b.Bytes); err != nil {
		t.Errorf("svid.key: %v", err)
	}

	// The written files verify with the standard library and, when
	// available, with openssl.
	chainPEM, _ := os.ReadFile(filepath.Join(dir, "svid.pem"))
	bundlePEM, _ := os.ReadFile(filepath.Join(dir, "bundle.pem"))
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(bundlePEM) {
		t.Fatal("bundle.pem has no certificates")
	}
	b, _ := pem.Decode(chainPEM)
	leaf, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Errorf("svid.pem does not verify against bundle.pem: %v", err)
	}
	if openssl, err := exec.LookPath("openssl"); err == nil {
		out, err := exec.Command(openssl, "verify", "-CAfile", filepath.Join(dir, "bundle.pem"), filepath.Join(dir, "svid.pem")).CombinedOutput()
		if err != nil {
			t.Errorf("openssl verify: %v: %s", err, out)
		}
	}

	// A process with no identity gets a clear error.
	api.deny = true
	code, _, errOut = run(t, "svid", "fetch", "-socket", sock, "-timeout", "2s")
	if code != 1 || !strings.Contains(errOut, "no identity issued to this process") {
		t.Errorf("denied fetch: %d %q", code, errOut)
	}

	// A missing socket too; SPIFFE_ENDPOINT_SOCKET is the default.
	t.Setenv("SPIFFE_ENDPOINT_SOCKET", "unix://"+filepath.Join(t.TempDir(), "none.sock"))
	code, _, errOut = run(t, "svid", "fetch")
	if code != 1 || !strings.Contains(errOut, "none.sock does not exist") {
		t.Errorf("missing socket: %d %q", code, errOut)
	}
}

func TestHealthcheck(t *testing.T) {
	ready := false
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !ready {
			http.Error(w, "not ready: agent is starting", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n"))
	}))
	defer srv.Close()

	code, _, errOut := run(t, "healthcheck", "-url", srv.URL+"/ready")
	if code != 1 || !strings.Contains(errOut, "HTTP 503: agent is starting") {
		t.Errorf("not ready: %d %q", code, errOut)
	}
	ready = true
	if code, out, _ := run(t, "healthcheck", "-url", srv.URL+"/ready"); code != 0 || out != "ready\n" {
		t.Errorf("ready: %d %q", code, out)
	}
	if code, _, errOut := run(t, "healthcheck", "-url", "http://127.0.0.1:1/ready"); code != 1 || !strings.HasPrefix(errOut, "sigil: not ready: ") {
		t.Errorf("unreachable: %d %q", code, errOut)
	}
}
