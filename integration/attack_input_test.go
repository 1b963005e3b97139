package integration

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/json"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// Attacks with oversized and malformed input, and secrets on the command
// line (issue 8, findings 9 and 8). Each asserts the refusal and that the
// server's state did not change: the Raft applied index, the entries, the
// agents.

// inputDir is a short temporary directory (unix socket paths are short).
func inputDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "sigil-in-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// inputAgentID is a parent ID for entries; no agent needs to exist.
const inputAgentID = "spiffe://" + trustDomain + "/sigil/agent/join_token/0123456789abcdef0123456789abcdef"

// inputState is what a refused input must leave unchanged.
type inputState struct {
	index   uint64
	entries *sigilv1.ListEntriesResponse
	agents  *sigilv1.ListAgentsResponse
}

func inputSnapshot(t *testing.T, s *server) inputState {
	t.Helper()
	ac := dialAdmin(t, s.admin)
	defer ac.conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := ac.cluster.Members(ctx, &sigilv1.MembersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	e, err := ac.admin.ListEntries(ctx, &sigilv1.ListEntriesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	a, err := ac.admin.ListAgents(ctx, &sigilv1.ListAgentsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return inputState{index: m.AppliedIndex, entries: e, agents: a}
}

func (st inputState) requireSame(t *testing.T, s *server) {
	t.Helper()
	now := inputSnapshot(t, s)
	if now.index != st.index {
		t.Fatalf("Raft applied index moved from %d to %d", st.index, now.index)
	}
	if !proto.Equal(now.entries, st.entries) {
		t.Fatalf("entries changed:\nbefore %v\nafter  %v", st.entries, now.entries)
	}
	if !proto.Equal(now.agents, st.agents) {
		t.Fatalf("agents changed:\nbefore %v\nafter  %v", st.agents, now.agents)
	}
}

// inputStartServer starts a server with one entry in it.
func inputStartServer(t *testing.T) (*server, string) {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test")
	}
	s := newServer(t, filepath.Join(inputDir(t), "server"))
	s.start()
	id := createEntry(t, s, "spiffe://"+trustDomain+"/web", inputAgentID, "unix:uid:1000")
	return s, id
}

// inputRefusedCLI runs the CLI and requires it to fail with want in its
// output.
func inputRefusedCLI(t *testing.T, s *server, want string, args ...string) {
	t.Helper()
	out, err := s.cliErr(args...)
	if err == nil || !strings.Contains(out, want) {
		t.Fatalf("sigil %s: err %v, output %q; want a refusal containing %q", strings.Join(args[:2], " "), err, inputTrim(out), want)
	}
}

// inputRefusedAdmin sends e to the admin API as a create and as an update
// of entry id, and requires both to be refused with want.
func inputRefusedAdmin(t *testing.T, s *server, id string, e *sigilv1.Entry, want string) {
	t.Helper()
	ac := dialAdmin(t, s.admin)
	defer ac.conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cr, err := ac.admin.BatchCreateEntry(ctx, &sigilv1.BatchCreateEntryRequest{Entries: []*sigilv1.Entry{e}})
	if err != nil {
		t.Fatal(err)
	}
	if st := cr.Results[0].Status; codes.Code(st.Code) != codes.InvalidArgument || !strings.Contains(st.Message, want) {
		t.Fatalf("create: %v; want InvalidArgument with %q", inputTrim(st.String()), want)
	}
	u := proto.Clone(e).(*sigilv1.Entry)
	u.Id = id
	ur, err := ac.admin.BatchUpdateEntry(ctx, &sigilv1.BatchUpdateEntryRequest{Entries: []*sigilv1.Entry{u}})
	if err != nil {
		t.Fatal(err)
	}
	if st := ur.Results[0].Status; codes.Code(st.Code) != codes.InvalidArgument || !strings.Contains(st.Message, want) {
		t.Fatalf("update: %v; want InvalidArgument with %q", inputTrim(st.String()), want)
	}
}

func inputTrim(s string) string {
	if len(s) > 400 {
		return s[:400] + "..."
	}
	return s
}

func inputEntry(spiffeID string, sels ...*sigilv1.Selector) *sigilv1.Entry {
	if len(sels) == 0 {
		sels = []*sigilv1.Selector{{Type: "unix", Value: "uid:1"}}
	}
	return &sigilv1.Entry{SpiffeId: spiffeID, ParentId: inputAgentID, Selectors: sels}
}

// TestAttackInputLongSPIFFEID: SPIFFE IDs over the spec's 2048 bytes (a
// 6,022-byte one and a 70,000-character one) are refused as entry IDs and
// parent IDs, through the CLI and the admin API, and as agent IDs; a
// 2048-byte ID is accepted.
func TestAttackInputLongSPIFFEID(t *testing.T) {
	s, id := inputStartServer(t)
	before := inputSnapshot(t, s)
	td := "spiffe://" + trustDomain + "/"
	long := td + strings.Repeat("a", 6022-len(td))
	huge := td + strings.Repeat("b", 70000)

	inputRefusedCLI(t, s, "spiffe_id is 6022 bytes long; SPIFFE IDs are at most 2048 bytes",
		"entry", "create", "-spiffe-id", long, "-parent-id", inputAgentID, "-selector", "unix:uid:1")
	inputRefusedAdmin(t, s, id, inputEntry(huge), "SPIFFE IDs are at most 2048 bytes")
	e := inputEntry(td + "x")
	e.ParentId = long
	inputRefusedAdmin(t, s, id, e, "parent_id is 6022 bytes long")
	inputRefusedCLI(t, s, "at most 2048 bytes", "agent", "show", "-spiffe-id", inputAgentID+strings.Repeat("c", 3000))
	before.requireSame(t, s)

	// At the limit it is accepted.
	atLimit := td + strings.Repeat("d", 2048-len(td))
	createEntry(t, s, atLimit, inputAgentID, "unix:uid:1")
}

// TestAttackInputHugeSelector: a 1 MiB selector value, a selector type of
// 65 bytes, 65 selectors and 16 KiB of selectors in all are refused; a
// 1 MiB selector in a list filter too.
func TestAttackInputHugeSelector(t *testing.T) {
	s, id := inputStartServer(t)
	before := inputSnapshot(t, s)
	td := "spiffe://" + trustDomain + "/"
	mib := "path:/" + strings.Repeat("p", 1<<20)

	inputRefusedCLI(t, s, "is too long", "entry", "create", "-spiffe-id", td+"x", "-parent-id", inputAgentID, "-selector", "unix:"+mib[:100000])
	inputRefusedAdmin(t, s, id, inputEntry(td+"x", &sigilv1.Selector{Type: "unix", Value: mib}), "value of 1048582 bytes is too long (at most 4096)")
	inputRefusedAdmin(t, s, id, inputEntry(td+"x", &sigilv1.Selector{Type: strings.Repeat("t", 65), Value: "v"}), "selector type of 65 bytes is too long")
	var many, big []*sigilv1.Selector
	for i := range 65 {
		many = append(many, &sigilv1.Selector{Type: "unix", Value: "uid:" + strconv.Itoa(1000+i)})
	}
	inputRefusedAdmin(t, s, id, inputEntry(td+"x", many...), "65 selectors, at most 64")
	for i := range 5 {
		big = append(big, &sigilv1.Selector{Type: "unix", Value: "path:/" + strings.Repeat(string(rune('a'+i)), 4000)})
	}
	inputRefusedAdmin(t, s, id, inputEntry(td+"x", big...), "at most 16384 allowed")

	ac := dialAdmin(t, s.admin)
	defer ac.conn.Close()
	_, err := ac.admin.ListEntries(context.Background(), &sigilv1.ListEntriesRequest{Selectors: []*sigilv1.Selector{{Type: "unix", Value: mib}}})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "too long") {
		t.Fatalf("list with a 1 MiB selector: %v", err)
	}
	before.requireSame(t, s)
}

// TestAttackInputReservedPathCase: /SIGIL/agent/... and other spellings
// of the reserved /sigil/ path are refused as workload IDs (SPIFFE paths
// are case-sensitive, so a case-sensitive check let them through).
func TestAttackInputReservedPathCase(t *testing.T) {
	s, id := inputStartServer(t)
	before := inputSnapshot(t, s)
	td := "spiffe://" + trustDomain
	for _, p := range []string{"/SIGIL/agent/join_token/0123456789abcdef0123456789abcdef", "/Sigil/server/s1", "/sIgIl", "/sigil/agent/x"} {
		want := "is reserved for Sigil (spelled /sigil/)"
		if strings.HasPrefix(p, "/sigil/") {
			want = "under the reserved path /sigil/"
		}
		inputRefusedCLI(t, s, want, "entry", "create", "-spiffe-id", td+p, "-parent-id", inputAgentID, "-selector", "unix:uid:1")
		inputRefusedAdmin(t, s, id, inputEntry(td+p), want)
	}
	before.requireSame(t, s)
}

// TestAttackInputBadSelectors: unix:uid:abc, unix:uid:-1 and foo:bar (an
// unknown type) are refused by the server, through the CLI and the admin
// API, with messages that say what is wanted.
func TestAttackInputBadSelectors(t *testing.T) {
	s, id := inputStartServer(t)
	before := inputSnapshot(t, s)
	td := "spiffe://" + trustDomain + "/x"
	for sel, want := range map[string]string{
		"unix:uid:abc":    `"abc" is not a numeric id`,
		"unix:uid:-1":     `"-1" is not a numeric id`,
		"foo:bar":         `unknown selector type "foo" (known types: aws_iid, azure_msi, docker, gcp_iit, join_token, k8s, k8s_psat, oidc, systemd, unix, x509pop)`,
		"unix:path:bin/x": "is not an absolute path",
		"unix:pid:1":      "want unix:<key>:<value> with key one of",
	} {
		inputRefusedCLI(t, s, want, "entry", "create", "-spiffe-id", td, "-parent-id", inputAgentID, "-selector", sel)
		typ, val, _ := strings.Cut(sel, ":")
		inputRefusedAdmin(t, s, id, inputEntry(td, &sigilv1.Selector{Type: typ, Value: val}), want)
	}
	before.requireSame(t, s)
}

// TestAttackInputTokenTTL: a join token valid for 10 years is refused
// (the cap is a day), through the CLI and the admin API, and writes
// nothing; a server configured with such a default refuses to start.
func TestAttackInputTokenTTL(t *testing.T) {
	s, _ := inputStartServer(t)
	before := inputSnapshot(t, s)
	inputRefusedCLI(t, s, "join token TTL 87600h0m0s out of range: want 1s to 24h0m0s", "token", "generate", "-ttl", "87600h")
	inputRefusedCLI(t, s, "out of range", "token", "generate", "-ttl", "24h1s")
	ac := dialAdmin(t, s.admin)
	defer ac.conn.Close()
	if _, err := ac.admin.CreateJoinToken(context.Background(), &sigilv1.CreateJoinTokenRequest{Ttl: 10 * 365 * 24 * 3600}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("10-year token over the admin API: %v", err)
	}
	before.requireSame(t, s)

	dir := filepath.Join(inputDir(t), "s2")
	s2 := newServerWith(t, dir, `
  join_token_ttl = "87600h"`)
	out, err := sigilErr("server", "-config", s2.config)
	if err == nil || !strings.Contains(out, "join_token_ttl 87600h0m0s out of range: want 1s to 24h0m0s") {
		t.Fatalf("server with a 10-year token default: %v %q", err, inputTrim(out))
	}
	if _, err := os.Stat(filepath.Join(dir, "data")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("refused server left a data dir: %v", err)
	}
}

// TestAttackInputTinySVIDTTL: an entry with a 1 s X.509- or JWT-SVID
// lifetime is refused (an agent cannot renew it in time and would push an
// update to every stream at once, over and over), and so is a server whose
// default SVID lifetime is 1 s; 4 s, the minimum, is accepted.
func TestAttackInputTinySVIDTTL(t *testing.T) {
	s, id := inputStartServer(t)
	before := inputSnapshot(t, s)
	td := "spiffe://" + trustDomain + "/x"
	inputRefusedCLI(t, s, "x509_svid_ttl 1s out of range: want 0 (the server default) or 4s", "entry", "create", "-spiffe-id", td, "-parent-id", inputAgentID, "-selector", "unix:uid:1", "-x509-svid-ttl", "1s")
	inputRefusedCLI(t, s, "jwt_svid_ttl 3s out of range", "entry", "update", "-id", id, "-jwt-svid-ttl", "3s")
	e := inputEntry(td)
	e.X509SvidTtl = 1
	inputRefusedAdmin(t, s, id, e, "x509_svid_ttl 1s out of range")
	e.X509SvidTtl, e.JwtSvidTtl = 0, 1
	inputRefusedAdmin(t, s, id, e, "jwt_svid_ttl 1s out of range")
	before.requireSame(t, s)

	for _, key := range []string{"x509_svid_ttl", "agent_svid_ttl", "jwt_svid_ttl"} {
		dir := filepath.Join(inputDir(t), "s2")
		s2 := newServerWith(t, dir, "\n  "+key+` = "1s"`)
		out, err := sigilErr("server", "-config", s2.config)
		if err == nil || !strings.Contains(out, key+" 1s is too short: the minimum is 4s") {
			t.Fatalf("server with %s = 1s: %v %q", key, err, inputTrim(out))
		}
	}

	s.cli("entry", "update", "-id", id, "-x509-svid-ttl", "4s")
}

// inputNodeClient dials the server's node API, checking its SVID against
// the bundle; cert, if any, is the client's agent SVID.
func inputNodeClient(t *testing.T, s *server, cert *tls.Certificate) sigilv1.NodeClient {
	t.Helper()
	pool := x509.NewCertPool()
	rest := []byte(s.cli("bundle", "show"))
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		pool.AddCert(c)
	}
	tc := &tls.Config{InsecureSkipVerify: true, // the SVID has no DNS name; verified below
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			c, err := x509.ParseCertificate(raw[0])
			if err != nil {
				return err
			}
			_, err = c.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
			return err
		}}
	if cert != nil {
		tc.Certificates = []tls.Certificate{*cert}
	}
	conn, err := grpc.NewClient(s.addr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return sigilv1.NewNodeClient(conn)
}

func inputCSR(t *testing.T, key *ecdsa.PrivateKey, pad int) []byte {
	t.Helper()
	tmpl := &x509.CertificateRequest{}
	if pad > 0 {
		tmpl.ExtraExtensions = []pkix.Extension{{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 55555, 1}, Value: make([]byte, pad)}}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// TestAttackInputOversizedCSR: a correctly signed CSR over 16 KiB is
// refused on the node API when attesting (the join token is not consumed,
// nothing is written), when an agent renews its SVID and when it asks for
// a workload SVID.
func TestAttackInputOversizedCSR(t *testing.T) {
	s, _ := inputStartServer(t)
	var tok struct {
		Token   string `json:"token"`
		AgentID string `json:"agent_id"`
	}
	if err := json.Unmarshal([]byte(s.cli("token", "generate", "-output", "json")), &tok); err != nil {
		t.Fatal(err)
	}
	before := inputSnapshot(t, s)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	big := inputCSR(t, key, 17<<10)
	const want = "is too large (at most 16384)"
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	node := inputNodeClient(t, s, nil)
	_, err := node.Attest(ctx, &sigilv1.AttestRequest{AttestationType: "join_token", Payload: []byte(tok.Token), Csr: big})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), want) {
		t.Fatalf("attest with a 17 KiB CSR: %v", err)
	}
	before.requireSame(t, s)

	// The token still works.
	resp, err := node.Attest(ctx, &sigilv1.AttestRequest{AttestationType: "join_token", Payload: []byte(tok.Token), Csr: inputCSR(t, key, 0)})
	if err != nil || resp.SpiffeId != tok.AgentID {
		t.Fatalf("attest after the refusal: %v", err)
	}
	agentNode := inputNodeClient(t, s, &tls.Certificate{Certificate: resp.SvidChain, PrivateKey: key})
	id := createEntry(t, s, "spiffe://"+trustDomain+"/csr", tok.AgentID, "unix:uid:1")
	after := inputSnapshot(t, s)
	if _, err := agentNode.RenewAgent(ctx, &sigilv1.RenewAgentRequest{Csr: big}); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), want) {
		t.Fatalf("renew with a 17 KiB CSR: %v", err)
	}
	br, err := agentNode.BatchNewX509SVID(ctx, &sigilv1.BatchNewX509SVIDRequest{Requests: []*sigilv1.X509SVIDRequest{{EntryId: id, Csr: big}}})
	if err != nil {
		t.Fatal(err)
	}
	if r := br.Results[0]; codes.Code(r.Status.Code) != codes.InvalidArgument || !strings.Contains(r.Status.Message, want) || len(r.Chain) != 0 {
		t.Fatalf("workload SVID with a 17 KiB CSR: %v", r.Status)
	}
	after.requireSame(t, s)
}

// TestAttackInputSecretOnCmdline: secrets can be kept off the command
// line. Two servers form a cluster with join_secret_file; a secret file
// readable by others (0644) is refused with a message saying how to fix
// it, before anything is created; an agent refuses a 0644 join token
// file without using the token, then attests with the same token from a
// 0600 file; -join-token still works but logs a warning.
func TestAttackInputSecretOnCmdline(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	dir := inputDir(t)
	secret := strings.TrimSpace(sigil(t, "cluster", "secret", "generate"))
	good := filepath.Join(dir, "join-secret")
	loose := filepath.Join(dir, "join-secret-0644")
	for p, mode := range map[string]os.FileMode{good: 0o600, loose: 0o644} {
		if err := os.WriteFile(p, []byte(secret+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
	}

	c := newHACluster(t, filepath.Join(dir, "ha"), 2, 223)
	for _, n := range c.nodes {
		inputSetKey(t, n.config, "join_secret", "join_secret_file", loose)
	}
	n1 := c.nodes[0]
	out, err := sigilErr("server", "-config", n1.config)
	if err == nil || !strings.Contains(out, "join_secret_file "+loose+" is accessible by group or others (mode 0644)") || !strings.Contains(out, "run: chmod 600 "+loose) {
		t.Fatalf("server with a 0644 secret file: %v %q", err, inputTrim(out))
	}
	if strings.Contains(out, secret) {
		t.Fatal("the refusal printed the secret")
	}
	if _, err := os.Stat(filepath.Join(n1.dir, "data")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("refused server created its data dir: %v", err)
	}
	for _, n := range c.nodes {
		b, _ := os.ReadFile(n.config)
		if err := os.WriteFile(n.config, []byte(strings.Replace(string(b), loose, good, 1)), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	c.start() // waits for both members: the second joined with the secret from its file

	// Agents: a 0644 token file is refused and the token is not spent.
	s := &server{t: t, dir: n1.dir, config: n1.config, admin: n1.admin, addr: n1.nodeAddr, health: n1.health, p: n1.p}
	a := newAgent(t, s, filepath.Join(dir, "agent"))
	tokenFile := filepath.Join(dir, "token")
	token := inputSetKey(t, a.config, "join_token", "join_token_file", tokenFile)
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(tokenFile, 0o644); err != nil {
		t.Fatal(err)
	}
	before := inputSnapshot(t, s)
	out, err = sigilErr("agent", "-config", a.config)
	if err == nil || !strings.Contains(out, "join_token_file "+tokenFile+" is accessible by group or others (mode 0644)") {
		t.Fatalf("agent with a 0644 token file: %v %q", err, inputTrim(out))
	}
	if strings.Contains(out, token) {
		t.Fatal("the refusal printed the token")
	}
	before.requireSame(t, s)
	if err := os.Chmod(tokenFile, 0o600); err != nil {
		t.Fatal(err)
	}
	a.start()
	if id := createEntry(t, s, "spiffe://"+trustDomain+"/secretfile", a.id, uidSelector(t)); id == "" {
		t.Fatal("no entry")
	}
	fetchID(t, a.socket, "spiffe://"+trustDomain+"/secretfile")

	// -join-token on the command line still works, with a warning.
	a2 := newAgent(t, s, filepath.Join(dir, "agent2"))
	tok2 := inputSetKey(t, a2.config, "join_token", "", "")
	a2.p = startProc(t, "agent2", filepath.Join(a2.dir, "agent.log"), nil, sigilBin, "agent", "-config", a2.config, "-join-token", tok2)
	waitReady(t, a2.p, "http://"+a2.health+"/ready")
	if log := a2.logText(); !strings.Contains(log, "-join-token puts the secret on the command line, which every local user can read") {
		t.Fatalf("no warning for -join-token in the agent log:\n%s", inputTrim(log))
	}
}

// inputSetKey replaces the line "key = value" of an HCL file with
// "newKey = newValue" (or drops it when newKey is empty) and returns the
// old value.
func inputSetKey(t *testing.T, path, key, newKey, newValue string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var old string
	found := false
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok && strings.TrimSpace(k) == key {
			old, found = strings.Trim(strings.TrimSpace(v), `"`), true
			if newKey != "" {
				out = append(out, "  "+newKey+" = "+strconv.Quote(newValue))
			}
			continue
		}
		out = append(out, l)
	}
	if !found {
		t.Fatalf("no %s in %s", key, path)
	}
	if err := os.WriteFile(path, []byte(strings.Join(out, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	return old
}
