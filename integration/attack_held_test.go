package integration

// Attack cases that held when Sigil was attacked for issue 8: each test
// drives real sigil processes, attacks them the way a compromised agent, a
// rogue peer or a local user would, and asserts both the refusal and that
// no state changed (entries, agents, bundle, Raft applied index where the
// admin API shows it). They are here so that these properties stay true.

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/internal/clusterpb"
	"github.com/sigil-id/sigil/internal/eventually"
	"github.com/sigil-id/sigil/internal/storepb"
)

// ---- helpers (prefixed held) ----

// heldState is what an attack must leave unchanged.
type heldState struct {
	entries string // `entry list -output json`
	agents  string // `agent list -output json`
	bundle  string // `bundle show`
	index   uint64 // Raft applied index (cluster members)
}

func heldSnapshot(t *testing.T, admin string) heldState {
	t.Helper()
	st := heldState{
		entries: sigil(t, "entry", "list", "-output", "json", "-socket", admin),
		agents:  sigil(t, "agent", "list", "-output", "json", "-socket", admin),
		bundle:  sigil(t, "bundle", "show", "-socket", admin),
	}
	ac := dialAdmin(t, admin)
	defer ac.conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := ac.cluster.Members(ctx, &sigilv1.MembersRequest{})
	if err != nil {
		t.Fatalf("cluster members on %s: %v", admin, err)
	}
	st.index = m.AppliedIndex
	if st.index == 0 {
		t.Fatalf("cluster members on %s reports applied index 0", admin)
	}
	return st
}

// heldUnchanged fails the test if after differs from before.
func heldUnchanged(t *testing.T, what string, before, after heldState) {
	t.Helper()
	if before.entries != after.entries {
		t.Errorf("%s: entry list changed:\nbefore %s\nafter  %s", what, before.entries, after.entries)
	}
	if before.agents != after.agents {
		t.Errorf("%s: agent list changed:\nbefore %s\nafter  %s", what, before.agents, after.agents)
	}
	if before.bundle != after.bundle {
		t.Errorf("%s: bundle changed", what)
	}
	if before.index != after.index {
		t.Errorf("%s: Raft applied index moved from %d to %d", what, before.index, after.index)
	}
}

// heldAgentCert loads an agent's SVID and key from its data directory:
// what an attacker who took over that node holds.
func heldAgentCert(t *testing.T, a *agent) *tls.Certificate {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(filepath.Join(a.dir, "data", "agent_svid.pem"), filepath.Join(a.dir, "data", "agent_svid.key"))
	if err != nil {
		t.Fatalf("loading the agent SVID from %s: %v", a.dir, err)
	}
	return &cert
}

// heldNodeClient is a direct node API client of the server at addr that
// authenticates the server against bundlePEM and presents cert (nil:
// none).
func heldNodeClient(t *testing.T, addr string, bundlePEM []byte, cert *tls.Certificate) sigilv1.NodeClient {
	t.Helper()
	td := spiffeid.RequireTrustDomainFromString(trustDomain)
	b, err := x509bundle.Parse(td, bundlePEM)
	if err != nil {
		t.Fatalf("parsing the bundle: %v", err)
	}
	cfg := &tls.Config{
		MinVersion:            tls.VersionTLS12,
		InsecureSkipVerify:    true, //nolint:gosec // verified by SPIFFE ID below
		VerifyPeerCertificate: tlsconfig.VerifyPeerCertificate(b, tlsconfig.AuthorizeAny()),
	}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return sigilv1.NewNodeClient(conn)
}

func heldCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// heldKeyCSR returns a new P-256 key and a plain CSR over it.
func heldKeyCSR(t *testing.T) (*ecdsa.PrivateKey, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	return key, csr
}

// heldLogRecords parses the JSON log lines of path.
func heldLogRecords(t *testing.T, path string) []map[string]any {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []map[string]any
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

// heldCountLog counts the log records with message msg whose fields
// include every key/value of match.
func heldCountLog(t *testing.T, path, msg string, match map[string]string) int {
	t.Helper()
	n := 0
	for _, r := range heldLogRecords(t, path) {
		if r["msg"] != msg {
			continue
		}
		ok := true
		for k, v := range match {
			if fmt.Sprint(r[k]) != v {
				ok = false
			}
		}
		if ok {
			n++
		}
	}
	return n
}

// heldSyncIDs reads a Sync stream until the full set is complete and
// returns the entry IDs in it.
func heldSyncIDs(t *testing.T, stream sigilv1.Node_SyncClient) map[string]bool {
	t.Helper()
	ids := map[string]bool{}
	for i := 0; i < 1000; i++ {
		msg, err := stream.Recv()
		if err != nil {
			t.Fatalf("sync stream: %v", err)
		}
		for _, e := range msg.Upserted {
			ids[e.Id] = true
		}
		if msg.Synced {
			return ids
		}
	}
	t.Fatal("sync stream: no synced message in 1000 messages")
	return nil
}

// heldAgentToken reads the join token an agent was configured with.
func heldAgentToken(t *testing.T, a *agent) string {
	t.Helper()
	b, err := os.ReadFile(a.config)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`join_token\s*=\s*"([0-9a-f]+)"`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("no join_token in %s", a.config)
	}
	return string(m[1])
}

func heldRequireCode(t *testing.T, what string, err error, want codes.Code) {
	t.Helper()
	if status.Code(err) != want {
		t.Errorf("%s: got %v, want %v", what, err, want)
	}
}

// heldIntegration skips under -short, like every test of this package
// (the unit pass of `make test` runs with -short).
func heldIntegration(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test (runs in make integration)")
	}
}

// heldStartPair starts a server and n agents under it.
func heldStartPair(t *testing.T, n int, extra string) (*server, []*agent) {
	t.Helper()
	root := t.TempDir()
	s := newServerWith(t, filepath.Join(root, "server"), extra)
	s.start()
	var as []*agent
	for i := 0; i < n; i++ {
		a := newAgent(t, s, filepath.Join(root, fmt.Sprintf("agent%d", i+1)))
		a.start()
		as = append(as, a)
	}
	return s, as
}

// ---- 1. cross-agent entry theft ----

// TestAttackHeldCrossAgentEntryTheft: agent B, with its own SVID and key
// from its data directory, asks the node API for an X.509- and a
// JWT-SVID of an entry parented to agent A, and reads its own Sync
// stream. Both mints are refused, nothing is signed for B, B's stream
// never carries A's entries (neither in the full set nor as a delta), and
// nothing in the store changes.
func TestAttackHeldCrossAgentEntryTheft(t *testing.T) {
	heldIntegration(t)
	s, as := heldStartPair(t, 2, "")
	a, b := as[0], as[1]
	idA := "spiffe://" + trustDomain + "/held/a-only"
	entryA := createEntry(t, s, idA, a.id, uidSelector(t))
	entryB := createEntry(t, s, "spiffe://"+trustDomain+"/held/b-own", b.id, "unix:uid:4242")
	bundlePEM := []byte(s.cli("bundle", "show"))
	ncA := heldNodeClient(t, s.addr, bundlePEM, heldAgentCert(t, a))
	ncB := heldNodeClient(t, s.addr, bundlePEM, heldAgentCert(t, b))
	ctx := heldCtx(t)

	// Control: A's own credentials get A's entry signed, so the request
	// below is well-formed and only B's identity makes the difference.
	_, csr := heldKeyCSR(t)
	resp, err := ncA.BatchNewX509SVID(ctx, &sigilv1.BatchNewX509SVIDRequest{Requests: []*sigilv1.X509SVIDRequest{{EntryId: entryA, Csr: csr}}})
	if err != nil || len(resp.Results) != 1 || resp.Results[0].Status.GetCode() != 0 || len(resp.Results[0].Chain) == 0 {
		t.Fatalf("control: agent A signing its own entry: %v %v", resp, err)
	}
	// The workload matches entry A's selector, but B's Workload API must
	// not serve it.
	fctx, fcancel := context.WithTimeout(ctx, 10*time.Second)
	_, err = workloadapi.FetchX509Context(fctx, workloadapi.WithAddr("unix://"+b.socket))
	fcancel()
	heldRequireCode(t, "agent B's Workload API for a workload registered under A", err, codes.PermissionDenied)

	stream, err := ncB.Sync(ctx, &sigilv1.SyncRequest{})
	if err != nil {
		t.Fatal(err)
	}
	ids := heldSyncIDs(t, stream)
	if !ids[entryB] {
		t.Fatalf("control: B's sync full set lacks its own entry %s: %v", entryB, ids)
	}

	before := heldSnapshot(t, s.admin)
	slog := s.p.log
	issuedToB := func() int {
		return heldCountLog(t, slog, "x509-svid issued", map[string]string{"agent_id": b.id, "entry_id": entryA}) +
			heldCountLog(t, slog, "jwt-svid issued", map[string]string{"agent_id": b.id, "entry_id": entryA})
	}

	// Attack: B asks for A's entry, alone and hidden in a batch with its
	// own entry.
	_, csr2 := heldKeyCSR(t)
	resp, err = ncB.BatchNewX509SVID(ctx, &sigilv1.BatchNewX509SVIDRequest{Requests: []*sigilv1.X509SVIDRequest{
		{EntryId: entryA, Csr: csr2}, {EntryId: entryA, Csr: csr}, {EntryId: entryB, Csr: csr2},
	}})
	if err != nil || len(resp.Results) != 3 {
		t.Fatalf("B's batch: %v %v", resp, err)
	}
	for i, r := range resp.Results[:2] {
		if r.Status.GetCode() != int32(codes.PermissionDenied) || len(r.Chain) != 0 {
			t.Errorf("B asking for A's entry (request %d): status %v, %d certificates; want PermissionDenied and none", i, r.Status, len(r.Chain))
		}
	}
	if r := resp.Results[2]; r.Status.GetCode() != 0 || len(r.Chain) == 0 {
		t.Errorf("control: B's own entry in the same batch: %v", r.Status)
	}
	_, err = ncB.NewJWTSVID(ctx, &sigilv1.NewJWTSVIDRequest{EntryId: entryA, Audience: []string{"held"}})
	heldRequireCode(t, "B asking for a JWT-SVID of A's entry", err, codes.PermissionDenied)

	// The refusals were audited, and nothing was signed for B for A's
	// entry.
	refused := 0
	_ = eventually.Wait(5*time.Second, func() error {
		if refused = heldCountLog(t, slog, "x509-svid refused", map[string]string{"agent_id": b.id, "entry_id": entryA}); refused < 2 {
			return errors.New("fewer than 2 refusals logged")
		}
		return nil
	})
	if refused < 2 {
		t.Errorf("want 2 audited refusals of A's entry to B, got %d", refused)
	}
	if n := issuedToB(); n != 0 {
		t.Errorf("the server logged %d SVIDs of A's entry issued to B", n)
	}
	heldUnchanged(t, "after B's theft attempts", before, heldSnapshot(t, s.admin))

	// Deltas: a new entry under A while B's stream is open never reaches
	// B; a marker entry under B created after it does, so B's stream has
	// seen everything up to then.
	entryA2 := createEntry(t, s, "spiffe://"+trustDomain+"/held/a-later", a.id, uidSelector(t))
	marker := createEntry(t, s, "spiffe://"+trustDomain+"/held/b-marker", b.id, "unix:uid:4243")
	seenMarker := false
	for i := 0; i < 100 && !seenMarker; i++ {
		msg, err := stream.Recv()
		if err != nil {
			t.Fatalf("B's sync stream: %v", err)
		}
		for _, e := range msg.Upserted {
			switch e.Id {
			case entryA, entryA2:
				t.Errorf("B's sync stream carried A's entry %s (%s)", e.Id, e.SpiffeId)
			case marker:
				seenMarker = true
			}
		}
	}
	if !seenMarker {
		t.Fatal("B's sync stream never delivered B's marker entry")
	}
}

// ---- 2. banned and evicted agents on an open stream ----

// TestAttackHeldBannedAgentOpenStream: an agent whose Sync stream is
// open is banned (`sigil agent ban`): the stream ends within 5 s with
// PermissionDenied, and its renew, sign, JWT and new Sync calls are
// refused without changing anything. The same for `sigil agent evict`
// ("Forget an attested agent; it must attest again"): the record is gone,
// calls are refused, and its spent join token cannot bring it back.
func TestAttackHeldBannedAgentOpenStream(t *testing.T) {
	heldIntegration(t)
	s, as := heldStartPair(t, 2, "")
	bundlePEM := []byte(s.cli("bundle", "show"))
	for i, op := range []string{"ban", "evict"} {
		a := as[i]
		t.Run(op, func(t *testing.T) {
			entry := createEntry(t, s, "spiffe://"+trustDomain+"/held/"+op, a.id, uidSelector(t))
			fetchID(t, a.socket, "spiffe://"+trustDomain+"/held/"+op)
			nc := heldNodeClient(t, s.addr, bundlePEM, heldAgentCert(t, a))
			ctx := heldCtx(t)
			stream, err := nc.Sync(ctx, &sigilv1.SyncRequest{})
			if err != nil {
				t.Fatal(err)
			}
			if ids := heldSyncIDs(t, stream); !ids[entry] {
				t.Fatalf("control: the agent's sync lacks its entry: %v", ids)
			}
			ended := make(chan error, 1)
			go func() {
				for {
					if _, err := stream.Recv(); err != nil {
						ended <- err
						return
					}
				}
			}()
			start := time.Now()
			s.cli("agent", op, "-spiffe-id", a.id)
			select {
			case err := <-ended:
				t.Logf("%s: open sync stream ended %v after the CLI call started: %v", op, time.Since(start).Round(time.Millisecond), err)
				heldRequireCode(t, op+": end of the open stream", err, codes.PermissionDenied)
			case <-time.After(5 * time.Second):
				t.Fatalf("%s: the open sync stream was still open 5 s after `sigil agent %s`", op, op)
			}

			before := heldSnapshot(t, s.admin)
			_, csr := heldKeyCSR(t)
			_, err = nc.RenewAgent(ctx, &sigilv1.RenewAgentRequest{Csr: csr})
			heldRequireCode(t, op+": RenewAgent", err, codes.PermissionDenied)
			_, err = nc.BatchNewX509SVID(ctx, &sigilv1.BatchNewX509SVIDRequest{Requests: []*sigilv1.X509SVIDRequest{{EntryId: entry, Csr: csr}}})
			heldRequireCode(t, op+": BatchNewX509SVID", err, codes.PermissionDenied)
			_, err = nc.NewJWTSVID(ctx, &sigilv1.NewJWTSVIDRequest{EntryId: entry, Audience: []string{"held"}})
			heldRequireCode(t, op+": NewJWTSVID", err, codes.PermissionDenied)
			if st, err := nc.Sync(ctx, &sigilv1.SyncRequest{}); err == nil {
				_, err = st.Recv()
				heldRequireCode(t, op+": new Sync", err, codes.PermissionDenied)
			} else {
				heldRequireCode(t, op+": new Sync", err, codes.PermissionDenied)
			}
			heldUnchanged(t, op+": refused agent calls", before, heldSnapshot(t, s.admin))
			// Its spent join token does not bring it back.
			_, csr2 := heldKeyCSR(t)
			_, err = heldNodeClient(t, s.addr, bundlePEM, nil).Attest(ctx, &sigilv1.AttestRequest{
				AttestationType: "join_token", Payload: []byte(heldAgentToken(t, a)), Csr: csr2,
			})
			if err == nil {
				t.Errorf("%s: the agent re-attested with its spent join token", op)
			}
			after := heldSnapshot(t, s.admin)
			// A refused attestation may cost a Raft entry (issue 8
			// finding 2, which has its own attack case), so the index
			// is not compared across it.
			before.index, after.index = 0, 0
			heldUnchanged(t, op+": refused re-attestation", before, after)
			shown, showErr := s.cliErr("agent", "show", "-spiffe-id", a.id, "-output", "json")
			switch op {
			case "ban":
				if showErr != nil || !strings.Contains(strings.ReplaceAll(shown, " ", ""), `"banned":true`) {
					t.Errorf("banned agent record: %v %s", showErr, shown)
				}
			case "evict":
				if showErr == nil || strings.Contains(after.agents, a.id) {
					t.Errorf("evicted agent still listed: %v %s", showErr, after.agents)
				}
			}
		})
	}
}

// ---- 3. one join token, 20 concurrent attestations ----

// TestAttackHeldJoinTokenConcurrentReuse: one valid join token presented
// by 20 concurrent Attest calls (each its own connection and key) gets
// exactly one agent SVID; the agent list grows by exactly one and the
// entries and bundle do not change.
func TestAttackHeldJoinTokenConcurrentReuse(t *testing.T) {
	heldIntegration(t)
	s, _ := heldStartPair(t, 0, "")
	bundlePEM := []byte(s.cli("bundle", "show"))
	token, agentID := s.token()
	before := heldSnapshot(t, s.admin)
	const n = 20
	clients := make([]sigilv1.NodeClient, n)
	csrs := make([][]byte, n)
	for i := range clients {
		clients[i] = heldNodeClient(t, s.addr, bundlePEM, nil)
		_, csrs[i] = heldKeyCSR(t)
	}
	ctx := heldCtx(t)
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		ok     []*sigilv1.AttestResponse
		byCode = map[codes.Code]int{}
		start  = make(chan struct{})
	)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			<-start
			resp, err := clients[i].Attest(ctx, &sigilv1.AttestRequest{AttestationType: "join_token", Payload: []byte(token), Csr: csrs[i]})
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				ok = append(ok, resp)
			} else {
				byCode[status.Code(err)]++
			}
		}(i)
	}
	close(start)
	wg.Wait()
	t.Logf("20 concurrent attestations with one token: %d succeeded, refusals by code %v", len(ok), byCode)
	if len(ok) != 1 {
		t.Fatalf("%d of %d concurrent attestations with one join token succeeded, want exactly 1", len(ok), n)
	}
	if ok[0].SpiffeId != agentID {
		t.Errorf("the attestation returned %s, want %s", ok[0].SpiffeId, agentID)
	}
	after := heldSnapshot(t, s.admin)
	var b, a struct {
		Agents []struct {
			SpiffeID string `json:"spiffe_id"`
		} `json:"agents"`
	}
	if err := json.Unmarshal([]byte(before.agents), &b); err != nil {
		t.Fatalf("agent list %q: %v", before.agents, err)
	}
	if err := json.Unmarshal([]byte(after.agents), &a); err != nil {
		t.Fatalf("agent list %q: %v", after.agents, err)
	}
	// The Raft index is only logged: before the fix of issue 8 finding
	// 2 (which has its own attack case) every refused attestation
	// appended a command.
	t.Logf("Raft applied index %d -> %d over the 20 attestations", before.index, after.index)
	if len(a.Agents) != len(b.Agents)+1 || !strings.Contains(after.agents, agentID) {
		t.Errorf("agent list grew from %d to %d (want +1, with %s): %s", len(b.Agents), len(a.Agents), agentID, after.agents)
	}
	if before.entries != after.entries || before.bundle != after.bundle {
		t.Error("entries or bundle changed by the attestations")
	}
	// A 21st, sequential use is refused too and changes no agent.
	_, csr := heldKeyCSR(t)
	_, err := clients[0].Attest(ctx, &sigilv1.AttestRequest{AttestationType: "join_token", Payload: []byte(token), Csr: csr})
	heldRequireCode(t, "reusing the spent token", err, codes.PermissionDenied)
	if again := sigil(t, "agent", "list", "-output", "json", "-socket", s.admin); again != after.agents {
		t.Errorf("agent list changed by a refused reuse:\n%s\n%s", after.agents, again)
	}
}

// ---- 4. agent and workload SVIDs on the cluster port ----

// heldStreamLayer dials a cluster port with a chosen client certificate,
// negotiating the Raft ALPN: a Raft client for an attacker.
type heldStreamLayer struct {
	cert   *tls.Certificate
	closed chan struct{}
	once   sync.Once
}

func (l *heldStreamLayer) Accept() (net.Conn, error) { <-l.closed; return nil, net.ErrClosed }
func (l *heldStreamLayer) Close() error              { l.once.Do(func() { close(l.closed) }); return nil }
func (l *heldStreamLayer) Addr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}
}
func (l *heldStreamLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: []string{"sigil-raft/1"}, InsecureSkipVerify: true} //nolint:gosec // attacker
	if l.cert != nil {
		cfg.Certificates = []tls.Certificate{*l.cert}
	}
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: timeout}, Config: cfg}
	return d.Dial("tcp", string(addr))
}

// heldClusterView is the Raft state of every node that an attack on the
// cluster port must not change.
type heldClusterView struct {
	term    uint64
	leader  string
	applied map[string]uint64
	members string
}

func heldView(t *testing.T, c *haCluster) heldClusterView {
	t.Helper()
	v := heldClusterView{applied: map[string]uint64{}}
	for _, n := range c.nodes {
		m, err := n.members(context.Background())
		if err != nil {
			t.Fatalf("members on %s: %v", n.name, err)
		}
		var ms []string
		for _, mm := range m.Members {
			ms = append(ms, mm.NodeName+"/"+mm.Address+"/"+mm.Suffrage)
		}
		sort.Strings(ms)
		if n == c.nodes[0] {
			v.term, v.leader, v.members = m.Term, m.LeaderId, strings.Join(ms, ",")
		} else if m.Term != v.term || m.LeaderId != v.leader || strings.Join(ms, ",") != v.members {
			t.Fatalf("%s sees term %d leader %s members %v; %s sees %d %s %s", n.name, m.Term, m.LeaderId, ms, c.nodes[0].name, v.term, v.leader, v.members)
		}
		v.applied[n.name] = m.AppliedIndex
	}
	return v
}

// heldStableView waits until every node has applied the same index.
func heldStableView(t *testing.T, c *haCluster) heldClusterView {
	t.Helper()
	var v heldClusterView
	err := eventually.Wait(5*time.Second, func() error {
		v = heldView(t, c)
		for _, a := range v.applied {
			if a != v.applied[c.nodes[0].name] {
				return fmt.Errorf("applied indexes %v", v.applied)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("the nodes did not converge on one applied index: %v", err)
	}
	return v
}

// TestAttackHeldAgentSVIDOnClusterPort: on a 3-server cluster, a client
// holding a valid agent SVID (from an agent's data directory), a valid
// workload SVID (from the Workload API), or no certificate at all, cannot
// speak Raft to a server's cluster port (a RequestVote and an
// AppendEntries with a far higher term are refused) nor call the cluster
// RPCs (forward a write, read index, remove a member, transfer
// leadership). Term, leader, membership, every node's applied index and
// the entries are unchanged, and the Raft refusals are audited.
func TestAttackHeldAgentSVIDOnClusterPort(t *testing.T) {
	heldIntegration(t)
	dir := haDir(t)
	c := newHACluster(t, dir, 3, 161)
	c.start()
	a := haAgent(t, c, c.nodes[1], filepath.Join(dir, "agent"))
	wantID := "spiffe://" + trustDomain + "/held/cluster-workload"
	createEntry(t, &server{t: t, admin: c.nodes[1].admin}, wantID, a.id, uidSelector(t))
	xc := fetchID(t, a.socket, wantID)
	var wl *tls.Certificate
	for _, sv := range xc.SVIDs {
		if sv.ID.String() == wantID {
			wl = &tls.Certificate{PrivateKey: sv.PrivateKey, Leaf: sv.Certificates[0]}
			for _, cert := range sv.Certificates {
				wl.Certificate = append(wl.Certificate, cert.Raw)
			}
		}
	}
	creds := []struct {
		name string
		cert *tls.Certificate
	}{{"agent SVID", heldAgentCert(t, a)}, {"workload SVID", wl}, {"no certificate", nil}}

	leader := c.leader()
	target := leader.proxy.target // the leader's real cluster port
	// No workload can be registered under a server's (or an agent's)
	// ID, which would make its SVID a server SVID on this port.
	for _, id := range []string{"spiffe://" + trustDomain + "/sigil/server/" + leader.name, a.id} {
		if out, err := sigilErr("entry", "create", "-spiffe-id", id, "-parent-id", a.id, "-selector", uidSelector(t), "-socket", leader.admin); err == nil {
			t.Errorf("an entry for the reserved ID %s was created:\n%s", id, out)
		}
	}
	before := heldStableView(t, c)
	entriesBefore := sigil(t, "entry", "list", "-output", "json", "-socket", leader.admin)
	refusedBefore := heldCountLogText(t, leader.p.log, "raft peer refused")

	cmd, err := proto.Marshal(&storepb.Command{Timestamp: time.Now().UnixNano(), Op: &storepb.Command_CreateEntries{CreateEntries: &storepb.CreateEntries{
		Entries: []*sigilv1.Entry{{
			Id: "held-forged", SpiffeId: "spiffe://" + trustDomain + "/held/forged", ParentId: a.id,
			Selectors: []*sigilv1.Selector{{Type: "unix", Value: "uid:0"}},
		}},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, cr := range creds {
		t.Run(cr.name, func(t *testing.T) {
			// Raft: a vote request and an append with a far higher term
			// would depose the leader if they were read.
			sl := &heldStreamLayer{cert: cr.cert, closed: make(chan struct{})}
			tr := raft.NewNetworkTransport(sl, 1, 3*time.Second, io.Discard)
			defer tr.Close()
			hdr := raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("s9"), Addr: []byte("127.0.0.1:1")}
			var vr raft.RequestVoteResponse
			err := tr.RequestVote(raft.ServerID(leader.name), raft.ServerAddress(target), &raft.RequestVoteRequest{
				RPCHeader: hdr, Term: before.term + 100, LastLogIndex: 1 << 40, LastLogTerm: before.term + 99, LeadershipTransfer: true,
			}, &vr)
			if err == nil {
				t.Errorf("Raft RequestVote with %s was answered: granted=%v term=%d", cr.name, vr.Granted, vr.Term)
			} else {
				t.Logf("Raft RequestVote with %s: %v", cr.name, err)
			}
			var ar raft.AppendEntriesResponse
			err = tr.AppendEntries(raft.ServerID(leader.name), raft.ServerAddress(target), &raft.AppendEntriesRequest{
				RPCHeader: hdr, Term: before.term + 100, PrevLogEntry: 0, PrevLogTerm: 0, LeaderCommitIndex: 1 << 40,
				Entries: []*raft.Log{{Index: 1 << 40, Term: before.term + 100, Type: raft.LogCommand, Data: cmd}},
			}, &ar)
			if err == nil {
				t.Errorf("Raft AppendEntries with %s was answered: success=%v term=%d", cr.name, ar.Success, ar.Term)
			}

			// Cluster RPCs over the gRPC ALPN.
			cfg := &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true} //nolint:gosec // attacker
			if cr.cert != nil {
				cfg.Certificates = []tls.Certificate{*cr.cert}
			}
			conn, err := grpc.NewClient("passthrough:///"+target, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			cc := clusterpb.NewClusterClient(conn)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			calls := map[string]error{}
			_, calls["Apply"] = cc.Apply(ctx, &clusterpb.ApplyRequest{Command: cmd})
			_, calls["ReadIndex"] = cc.ReadIndex(ctx, &clusterpb.ReadIndexRequest{})
			_, calls["Status"] = cc.Status(ctx, &clusterpb.StatusRequest{})
			_, calls["RemoveMember"] = cc.RemoveMember(ctx, &sigilv1.RemoveMemberRequest{NodeName: c.nodes[2].name})
			_, calls["TransferLeadership"] = cc.TransferLeadership(ctx, &sigilv1.TransferLeadershipRequest{})
			for name, err := range calls {
				switch {
				case err == nil:
					t.Errorf("cluster %s with %s succeeded", name, cr.name)
				case cr.cert == nil && status.Code(err) != codes.PermissionDenied:
					// Without a certificate the handshake passes (Join
					// needs none) and each method refuses.
					t.Errorf("cluster %s without a certificate: %v, want PermissionDenied", name, err)
				case cr.cert != nil && status.Code(err) != codes.Unavailable:
					// With a client certificate that is not a server
					// SVID the connection itself is refused.
					t.Errorf("cluster %s with %s: %v, want the connection refused (Unavailable)", name, cr.name, err)
				}
			}
			if cr.cert != nil {
				// The refusal is the server's certificate check: a bare
				// handshake on the gRPC ALPN gets a bad certificate alert.
				if err := heldProbeTLS(target, "h2", cr.cert); err == nil || !strings.Contains(err.Error(), "bad certificate") {
					t.Errorf("TLS on the gRPC ALPN with %s: %v, want a bad certificate alert", cr.name, err)
				}
			}
		})
	}

	time.Sleep(500 * time.Millisecond) // a deposed leader would show by now
	after := heldStableView(t, c)
	if after.term != before.term || after.leader != before.leader || after.members != before.members {
		t.Errorf("cluster changed: term %d->%d leader %s->%s members %s -> %s", before.term, after.term, before.leader, after.leader, before.members, after.members)
	}
	for n, i := range before.applied {
		if after.applied[n] != i {
			t.Errorf("%s: applied index moved from %d to %d", n, i, after.applied[n])
		}
	}
	if e := sigil(t, "entry", "list", "-output", "json", "-socket", leader.admin); e != entriesBefore {
		t.Errorf("entries changed:\n%s\n%s", entriesBefore, e)
	}
	// Two Raft RPCs per credential were refused in the handshake, and
	// each refusal was audited.
	if n := heldCountLogText(t, leader.p.log, "raft peer refused") - refusedBefore; n < len(creds) {
		t.Errorf("the leader audited %d Raft refusals, want at least %d", n, len(creds))
	}
}

// heldProbeTLS completes a TLS handshake with the cluster port at addr
// on alpn presenting cert, and returns the error of the first read: what
// the server thought of the certificate.
func heldProbeTLS(addr, alpn string, cert *tls.Certificate) error {
	cfg := &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: []string{alpn}, InsecureSkipVerify: true, Certificates: []tls.Certificate{*cert}} //nolint:gosec // attacker
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 3 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	_, err = c.Read(make([]byte, 1))
	return err
}

// heldCountLogText counts the lines of path that contain s.
func heldCountLogText(t *testing.T, path, s string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), s)
}

// ---- 5. CSR asking for CA:true and extra SANs ----

// TestAttackHeldCSRWithCAAndSANs: an agent-authenticated sign request
// whose CSR asks for CA:true, key usage certSign, extra DNS, IP, email and
// URI SANs (another SPIFFE ID among them) and a subject gets an SVID with
// only the CSR's public key from it: not a CA, exactly one URI SAN (the
// entry's SPIFFE ID), no other SAN, digital signature key usage only. A
// certificate chained under that SVID fails `openssl verify`.
func TestAttackHeldCSRWithCAAndSANs(t *testing.T) {
	heldIntegration(t)
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Fatal("openssl is required (apt-get install -y openssl)")
	}
	s, as := heldStartPair(t, 1, "")
	a := as[0]
	spiffeID := "spiffe://" + trustDomain + "/held/csr"
	entry := createEntry(t, s, spiffeID, a.id, "unix:uid:4244")
	bundlePEM := []byte(s.cli("bundle", "show"))
	nc := heldNodeClient(t, s.addr, bundlePEM, heldAgentCert(t, a))

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	bc, _ := asn1.Marshal(struct {
		IsCA       bool
		MaxPathLen int
	}{true, 5})
	ku, _ := asn1.Marshal(asn1.BitString{Bytes: []byte{0x86}, BitLength: 7}) // digitalSignature, keyCertSign, cRLSign
	eku, _ := asn1.Marshal([]asn1.ObjectIdentifier{{2, 5, 29, 37, 0}})       // anyExtendedKeyUsage
	mustURL := func(s string) *url.URL { u, _ := url.Parse(s); return u }
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:        pkix.Name{CommonName: "evil.example.com", Organization: []string{"Evil CA"}},
		DNSNames:       []string{"evil.example.com", "*.example.com"},
		EmailAddresses: []string{"root@example.com"},
		IPAddresses:    []net.IP{net.IPv4(127, 0, 0, 9)},
		URIs: []*url.URL{
			mustURL("spiffe://" + trustDomain + "/sigil/server/s1"),
			mustURL("spiffe://other.example/admin"),
			mustURL("https://evil.example.com/"),
		},
		ExtraExtensions: []pkix.Extension{
			{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: bc},
			{Id: asn1.ObjectIdentifier{2, 5, 29, 15}, Critical: true, Value: ku},
			{Id: asn1.ObjectIdentifier{2, 5, 29, 37}, Value: eku},
		},
	}, key)
	if err != nil {
		t.Fatal(err)
	}
	if parsed, err := x509.ParseCertificateRequest(csr); err != nil || len(parsed.URIs) != 3 || len(parsed.Extensions) < 4 {
		t.Fatalf("the crafted CSR does not carry what it should: %v", err)
	}

	before := heldSnapshot(t, s.admin)
	resp, err := nc.BatchNewX509SVID(heldCtx(t), &sigilv1.BatchNewX509SVIDRequest{Requests: []*sigilv1.X509SVIDRequest{{EntryId: entry, Csr: csr}}})
	if err != nil || len(resp.Results) != 1 {
		t.Fatalf("sign: %v %v", resp, err)
	}
	heldUnchanged(t, "signing a hostile CSR", before, heldSnapshot(t, s.admin))
	r := resp.Results[0]
	if r.Status.GetCode() != 0 {
		// A refusal would also hold; today the CSR is signed with
		// everything but its key ignored, and that is what is checked.
		t.Fatalf("the hostile CSR was refused (%v); update this test if that is now the intended behaviour", r.Status)
	}
	var chain []*x509.Certificate
	for _, der := range r.Chain {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		chain = append(chain, c)
	}
	leaf := chain[0]
	if leaf.IsCA || !leaf.BasicConstraintsValid {
		t.Errorf("issued SVID: IsCA=%v BasicConstraintsValid=%v, want a non-CA with basic constraints", leaf.IsCA, leaf.BasicConstraintsValid)
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != spiffeID {
		t.Errorf("issued SVID URI SANs %v, want exactly [%s]", leaf.URIs, spiffeID)
	}
	if len(leaf.DNSNames)+len(leaf.EmailAddresses)+len(leaf.IPAddresses) != 0 {
		t.Errorf("issued SVID carries CSR SANs: DNS %v email %v IP %v", leaf.DNSNames, leaf.EmailAddresses, leaf.IPAddresses)
	}
	if leaf.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Errorf("issued SVID key usage %b, want digital signature only", leaf.KeyUsage)
	}
	for _, u := range leaf.ExtKeyUsage {
		if u == x509.ExtKeyUsageAny {
			t.Error("issued SVID has anyExtendedKeyUsage from the CSR")
		}
	}
	if strings.Contains(leaf.Subject.String(), "evil") || strings.Contains(leaf.Subject.String(), "Evil") {
		t.Errorf("issued SVID subject %q comes from the CSR", leaf.Subject)
	}
	if !key.PublicKey.Equal(leaf.PublicKey) {
		t.Error("issued SVID is not for the CSR's key")
	}

	// Mint a certificate under the issued SVID with its key, and check
	// that neither openssl nor go-spiffe accepts the chain.
	td := spiffeid.RequireTrustDomainFromString(trustDomain)
	b, err := x509bundle.Parse(td, bundlePEM)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := x509svid.Verify(chain, b); err != nil {
		t.Fatalf("control: the issued SVID does not verify: %v", err)
	}
	childKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	childDER, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(42),
		// A subject of its own, so that openssl looks for its issuer
		// (the SVID) instead of taking it for self-signed.
		Subject:   pkix.Name{CommonName: "forged child"},
		NotBefore: time.Now().Add(-time.Minute),
		NotAfter:  time.Now().Add(time.Hour),
		URIs:      []*url.URL{mustURL("spiffe://" + trustDomain + "/held/forged-child")},
		KeyUsage:  x509.KeyUsageDigitalSignature,
	}, &x509.Certificate{
		// Only what x509.CreateCertificate needs of the parent.
		Subject:      leaf.Subject,
		SubjectKeyId: leaf.SubjectKeyId,
		PublicKey:    leaf.PublicKey,
	}, &childKey.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	child, _ := x509.ParseCertificate(childDER)
	if _, _, err := x509svid.Verify(append([]*x509.Certificate{child}, chain...), b); err == nil {
		t.Error("go-spiffe verified a certificate chained under an issued SVID")
	}
	dir := t.TempDir()
	write := func(name string, certs ...*x509.Certificate) string {
		var buf bytes.Buffer
		for _, c := range certs {
			pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, buf.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	bundleFile := filepath.Join(dir, "bundle.pem")
	os.WriteFile(bundleFile, bundlePEM, 0o600)
	svidFile := write("svid.pem", chain...)
	childFile := write("child.pem", child)
	ok, err := exec.Command("openssl", "verify", "-CAfile", bundleFile, "-untrusted", svidFile, svidFile).CombinedOutput()
	if err != nil || !strings.Contains(string(ok), ": OK") {
		t.Fatalf("control: openssl verify of the issued SVID: %v\n%s", err, ok)
	}
	out, err := exec.Command("openssl", "verify", "-CAfile", bundleFile, "-untrusted", svidFile, childFile).CombinedOutput()
	t.Logf("openssl verify of a certificate under the SVID: %v: %s", err, strings.TrimSpace(string(out)))
	if err == nil || strings.Contains(string(out), ": OK") {
		t.Errorf("openssl verified a certificate chained under an issued SVID:\n%s", out)
	} else if !strings.Contains(string(out), "invalid CA certificate") {
		t.Errorf("openssl refused the chain, but not because the SVID is not a CA:\n%s", out)
	}
}

// ---- 6. private-key scan ----

// heldKeyForms returns byte strings that would betray key if found: the
// raw private scalar (and its hex and base64 at every alignment), the
// PKCS#8 and SEC1 DER, and the first line of their PEM bodies.
func heldKeyForms(t *testing.T, key crypto.Signer) [][]byte {
	t.Helper()
	ek, ok := key.(*ecdsa.PrivateKey)
	if !ok {
		t.Fatalf("key %T is not ECDSA", key)
	}
	d, err := ek.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	p8, err := x509.MarshalPKCS8PrivateKey(ek)
	if err != nil {
		t.Fatal(err)
	}
	sec1, err := x509.MarshalECPrivateKey(ek)
	if err != nil {
		t.Fatal(err)
	}
	forms := [][]byte{d, p8, sec1, []byte(hex.EncodeToString(d)), []byte(strings.ToUpper(hex.EncodeToString(d)))}
	for _, blob := range [][]byte{d, p8, sec1} {
		for k := 0; k < 3; k++ {
			part := blob[k:]
			part = part[:len(part)/3*3]
			forms = append(forms, []byte(base64.StdEncoding.EncodeToString(part)), []byte(base64.URLEncoding.EncodeToString(part)))
			if len(part) >= 48 {
				// One line of a PEM body (64 characters).
				forms = append(forms, []byte(base64.StdEncoding.EncodeToString(part[:48])))
			}
		}
	}
	return forms
}

// heldKeys collects the private keys on the machine by a name.
type heldKeys map[string]crypto.Signer

func (k heldKeys) addPEMFile(t *testing.T, path, name string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		return // rotated away between listing and reading
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s is not PEM", path)
	}
	key, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	s, ok := key.(crypto.Signer)
	if !ok {
		t.Fatalf("%s: %T", path, key)
	}
	d, _ := s.(*ecdsa.PrivateKey).Bytes()
	k[name+"#"+hex.EncodeToString(d)[:8]] = s
}

// collect reads every key manager file under the server data directory
// and the agent's key file.
func (k heldKeys) collect(t *testing.T, serverData, agentKey string) {
	t.Helper()
	filepath.WalkDir(serverData, func(p string, de fs.DirEntry, err error) error {
		if err == nil && !de.IsDir() && strings.HasSuffix(p, ".key.pem") {
			rel, _ := filepath.Rel(serverData, p)
			k.addPEMFile(t, p, rel)
		}
		return nil
	})
	k.addPEMFile(t, agentKey, "agent_svid.key")
}

// TestAttackHeldPrivateKeyScan runs a server, an agent and a workload
// with short SVID lifetimes and a CA and JWT key rotation, saves a
// snapshot with `sigil cluster snapshot save`, and scans the data
// directories (Raft log and snapshots included), the snapshot file, every
// log line and the JSON output of the admin CLI for every private key
// that was on the machine: the CA and JWT keys (from the disk key
// manager's files), the agent's key and every workload key go-spiffe
// received. None is found outside the key manager's files and the agent's
// own key file. This extends the unit-level TestNoPrivateKeyInLogOrSnapshot
// (server package) to real processes, the agent, workload keys, snapshot
// files and CLI output.
func TestAttackHeldPrivateKeyScan(t *testing.T) {
	heldIntegration(t)
	// A cluster address gives the server its cluster identity CA (and
	// key) too, as every member of a cluster has.
	s, as := heldStartPair(t, 1, fmt.Sprintf(`
  cluster_address      = %q
  ca_ttl               = "60s"
  x509_svid_ttl        = "8s"
  agent_svid_ttl       = "15s"
  jwt_svid_ttl         = "10s"
  ca_propagation_delay = "2s"`, freeAddr(t)))
	a := as[0]
	serverData := filepath.Join(s.dir, "data")
	agentKey := filepath.Join(a.dir, "data", "agent_svid.key")
	want := "spiffe://" + trustDomain + "/held/scan"
	createEntry(t, s, want, a.id, uidSelector(t))
	keys := heldKeys{}
	keys.collect(t, serverData, agentKey)

	// Rotate the CA and JWT keys by hand and let workload and agent SVIDs
	// rotate on their own; the workload keeps fetching.
	s.cli("authority", "prepare", "-kind", "x509")
	s.cli("authority", "prepare", "-kind", "jwt")
	keys.collect(t, serverData, agentKey)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	client, err := workloadapi.New(ctx, workloadapi.WithAddr("unix://"+a.socket))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	workload := map[string]crypto.Signer{}
	activated := false
	deadline := time.Now().Add(14 * time.Second)
	for time.Now().Before(deadline) || len(workload) < 3 {
		if time.Since(deadline) > 20*time.Second {
			t.Fatalf("only %d distinct workload SVIDs seen", len(workload))
		}
		xc, err := client.FetchX509Context(ctx)
		if err == nil {
			for _, sv := range xc.SVIDs {
				workload["workload-"+sv.Certificates[0].SerialNumber.Text(16)] = sv.PrivateKey
			}
		}
		if _, err := client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "held-scan"}); err != nil && !activated {
			t.Logf("JWT fetch: %v", err)
		}
		if !activated {
			if _, err := s.cliErr("authority", "activate", "-kind", "x509"); err == nil {
				activated = true
				s.cli("authority", "activate", "-kind", "jwt")
			}
		}
		keys.collect(t, serverData, agentKey)
		time.Sleep(500 * time.Millisecond)
	}
	if !activated {
		t.Fatal("the prepared CA key was never activated")
	}
	for name, k := range workload {
		keys[name] = k
	}

	snap := filepath.Join(t.TempDir(), "state.snap")
	s.cli("cluster", "snapshot", "save", snap)
	var cliOut bytes.Buffer
	for _, args := range [][]string{
		{"entry", "list", "-output", "json"},
		{"bundle", "show"},
		{"bundle", "show", "-format", "spiffe"},
		{"authority", "show", "-output", "json"},
		{"agent", "list", "-output", "json"},
		{"agent", "show", "-spiffe-id", a.id, "-output", "json"},
		{"cluster", "members", "-output", "json"},
	} {
		cliOut.WriteString(s.cli(args...))
	}
	keys.collect(t, serverData, agentKey)
	a.p.stop()
	s.p.stop()
	keys.collect(t, serverData, agentKey)

	var ca, jwt, wl, ag int
	for name := range keys {
		switch {
		case strings.HasPrefix(name, "keys/x509"):
			ca++
		case strings.HasPrefix(name, "keys/jwt"):
			jwt++
		case strings.HasPrefix(name, "workload-"):
			wl++
		case strings.HasPrefix(name, "agent_svid.key"):
			ag++
		}
	}
	t.Logf("scanning for %d private keys: %d CA, %d JWT, %d agent, %d workload, %d other (cluster identity)", len(keys), ca, jwt, ag, wl, len(keys)-ca-jwt-wl-ag)
	if ca < 2 || jwt < 2 || wl < 3 || ag < 2 || len(keys)-ca-jwt-wl-ag < 1 {
		t.Fatalf("want at least 2 CA, 2 JWT, 2 agent, 3 workload keys (rotation) and a cluster identity key, got %d %d %d %d %d", ca, jwt, ag, wl, len(keys)-ca-jwt-wl-ag)
	}

	// What is scanned: every file under both directories (the key
	// manager's files and the agent's key file aside), the snapshot
	// file and the CLI output.
	blobs := map[string][]byte{"snapshot file": nil, "admin CLI output": cliOut.Bytes()}
	var err2 error
	if blobs["snapshot file"], err2 = os.ReadFile(snap); err2 != nil || len(blobs["snapshot file"]) == 0 {
		t.Fatalf("snapshot file: %v", err2)
	}
	own := map[string]bool{}
	raftFiles := 0
	for _, root := range []string{s.dir, a.dir} {
		filepath.WalkDir(root, func(p string, de fs.DirEntry, err error) error {
			if err != nil || de.IsDir() {
				return err
			}
			if strings.HasSuffix(p, ".key.pem") || strings.HasPrefix(filepath.Base(p), "agent_svid.key") {
				own[p] = true
				return nil
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			if strings.Contains(p, string(filepath.Separator)+"raft"+string(filepath.Separator)) {
				raftFiles++
			}
			blobs[p] = b
			return nil
		})
	}
	if raftFiles < 1 || len(own) < 2 {
		t.Fatalf("found %d Raft files and %d key files; the scan would prove nothing", raftFiles, len(own))
	}
	// Controls: the Raft files and the snapshot hold the state (the
	// entry's SPIFFE ID, the agent's ID).
	var raftBytes []byte
	for p, b := range blobs {
		if strings.Contains(p, string(filepath.Separator)+"raft"+string(filepath.Separator)) {
			raftBytes = append(raftBytes, b...)
		}
	}
	for name, b := range map[string][]byte{"the Raft files": raftBytes, "the snapshot file": blobs["snapshot file"]} {
		if !bytes.Contains(b, []byte(want)) || !bytes.Contains(b, []byte(a.id)) {
			t.Errorf("control: %s hold neither the entry %s nor the agent %s", name, want, a.id)
		}
	}
	if _, ok := blobs[s.p.log]; !ok {
		t.Fatalf("the server log %s is not among the scanned files", s.p.log)
	}
	// The matcher works: every key file's key is found in that file.
	for p := range own {
		b, _ := os.ReadFile(p)
		found := false
		for _, k := range keys {
			for _, f := range heldKeyForms(t, k) {
				if bytes.Contains(b, f) {
					found = true
				}
			}
		}
		if !found && !strings.HasSuffix(p, ".new") {
			t.Errorf("control: no collected key found in its own file %s", p)
		}
	}
	var scanned []string
	for where := range blobs {
		scanned = append(scanned, where)
	}
	sort.Strings(scanned)
	t.Logf("scanned: %s", strings.Join(scanned, ", "))
	leaks := 0
	for name, k := range keys {
		for _, f := range heldKeyForms(t, k) {
			for where, b := range blobs {
				if bytes.Contains(b, f) {
					leaks++
					t.Errorf("private key %s found in %s", name, where)
				}
			}
		}
	}
	t.Logf("scanned %d files/outputs (%d Raft files) for %d keys: %d leaks", len(blobs), raftFiles, len(keys), leaks)
}

// ---- 7. agent certificates from a foreign CA or trust domain ----

// TestAttackHeldForeignCAAgentCert: a client certificate naming a real,
// attested agent (spiffe://<td>/sigil/agent/...) but signed by a foreign
// CA, the same self-signed, and a genuine agent SVID of another trust
// domain (from a second sigil server) are all refused by every
// authenticated node API method; nothing changes, and the real agent's
// own credentials keep working.
func TestAttackHeldForeignCAAgentCert(t *testing.T) {
	heldIntegration(t)
	s, as := heldStartPair(t, 1, "")
	a := as[0]
	entry := createEntry(t, s, "spiffe://"+trustDomain+"/held/foreign", a.id, "unix:uid:4245")
	bundlePEM := []byte(s.cli("bundle", "show"))

	// A foreign CA and an agent certificate it signs for a's ID.
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "foreign CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
		URIs: []*url.URL{{Scheme: "spiffe", Host: trustDomain}},
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	agentURL, _ := url.Parse(a.id)
	leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		URIs: []*url.URL{agentURL}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, caCert, &leafKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	selfDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, leafTmpl, &leafKey.PublicKey, leafKey)
	if err != nil {
		t.Fatal(err)
	}

	// A genuine agent SVID of another trust domain, from a second server.
	other := newServer(t, filepath.Join(t.TempDir(), "other"))
	cfg, _ := os.ReadFile(other.config)
	const otherTD = "other.held.test"
	os.WriteFile(other.config, bytes.Replace(cfg, []byte(fmt.Sprintf("%q", trustDomain)), []byte(fmt.Sprintf("%q", otherTD)), 1), 0o600)
	other.start()
	otherToken, otherAgent := other.token()
	if !strings.HasPrefix(otherAgent, "spiffe://"+otherTD+"/sigil/agent/") {
		t.Fatalf("the other server's agent ID is %s", otherAgent)
	}
	otherKey, otherCSR := heldKeyCSR(t)
	otherBundle := []byte(other.cli("bundle", "show"))
	ores, err := heldNodeClientTD(t, other.addr, otherTD, otherBundle).Attest(heldCtx(t), &sigilv1.AttestRequest{
		AttestationType: "join_token", Payload: []byte(otherToken), Csr: otherCSR,
	})
	if err != nil {
		t.Fatalf("attesting to the other trust domain's server: %v", err)
	}

	creds := []struct {
		name string
		cert *tls.Certificate
	}{
		{"foreign-CA agent certificate", &tls.Certificate{Certificate: [][]byte{leafDER, caDER}, PrivateKey: leafKey}},
		{"self-signed agent certificate", &tls.Certificate{Certificate: [][]byte{selfDER}, PrivateKey: leafKey}},
		{"agent SVID of another trust domain", &tls.Certificate{Certificate: ores.SvidChain, PrivateKey: otherKey}},
	}
	// Control: the real agent's credentials work.
	_, csr := heldKeyCSR(t)
	genuine := heldNodeClient(t, s.addr, bundlePEM, heldAgentCert(t, a))
	if r, err := genuine.BatchNewX509SVID(heldCtx(t), &sigilv1.BatchNewX509SVIDRequest{Requests: []*sigilv1.X509SVIDRequest{{EntryId: entry, Csr: csr}}}); err != nil || r.Results[0].Status.GetCode() != 0 {
		t.Fatalf("control: the real agent signing its entry: %v %v", r, err)
	}
	before := heldSnapshot(t, s.admin)
	agentBefore := s.cli("agent", "show", "-spiffe-id", a.id, "-output", "json")
	for _, cr := range creds {
		t.Run(cr.name, func(t *testing.T) {
			nc := heldNodeClient(t, s.addr, bundlePEM, cr.cert)
			ctx := heldCtx(t)
			_, err := nc.RenewAgent(ctx, &sigilv1.RenewAgentRequest{Csr: csr})
			heldRequireCode(t, "RenewAgent", err, codes.Unauthenticated)
			_, err = nc.BatchNewX509SVID(ctx, &sigilv1.BatchNewX509SVIDRequest{Requests: []*sigilv1.X509SVIDRequest{{EntryId: entry, Csr: csr}}})
			heldRequireCode(t, "BatchNewX509SVID", err, codes.Unauthenticated)
			_, err = nc.NewJWTSVID(ctx, &sigilv1.NewJWTSVIDRequest{EntryId: entry, Audience: []string{"held"}})
			heldRequireCode(t, "NewJWTSVID", err, codes.Unauthenticated)
			st, err := nc.Sync(ctx, &sigilv1.SyncRequest{})
			if err == nil {
				_, err = st.Recv()
			}
			heldRequireCode(t, "Sync", err, codes.Unauthenticated)
		})
	}
	heldUnchanged(t, "foreign agent certificates", before, heldSnapshot(t, s.admin))
	if after := s.cli("agent", "show", "-spiffe-id", a.id, "-output", "json"); after != agentBefore {
		t.Errorf("the impersonated agent's record changed:\n%s\n%s", agentBefore, after)
	}
}

// heldNodeClientTD is heldNodeClient for a server of trust domain td,
// without a client certificate.
func heldNodeClientTD(t *testing.T, addr, td string, bundlePEM []byte) sigilv1.NodeClient {
	t.Helper()
	b, err := x509bundle.Parse(spiffeid.RequireTrustDomainFromString(td), bundlePEM)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &tls.Config{
		MinVersion:            tls.VersionTLS12,
		InsecureSkipVerify:    true, //nolint:gosec // verified by SPIFFE ID below
		VerifyPeerCertificate: tlsconfig.VerifyPeerCertificate(b, tlsconfig.AuthorizeAny()),
	}
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return sigilv1.NewNodeClient(conn)
}

// ---- 8. the admin socket and another uid ----

// TestAttackHeldUnauthenticatedAdmin: the admin socket's directory is
// 0700 and the socket not accessible to others, so another uid (nobody,
// through setpriv) that can reach the directory above it cannot connect:
// `sigil entry list` and `sigil token generate` fail with permission
// denied, and nothing changes. The paths are explicit, so this does not
// depend on the default socket location.
func TestAttackHeldUnauthenticatedAdmin(t *testing.T) {
	heldIntegration(t)
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("setpriv (util-linux) is not installed: cannot run a command as another uid")
	}
	if os.Geteuid() != 0 {
		t.Skip("switching to uid 65534 with setpriv needs root; this test runs as uid", os.Geteuid())
	}
	// A base directory that the other uid may traverse, so that only
	// the admin directory's mode stands in its way.
	base, err := os.MkdirTemp("", "sigil-held-admin-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	bin := filepath.Join(base, "sigil")
	b, err := os.ReadFile(sigilBin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	s := newServer(t, filepath.Join(base, "server"))
	for _, d := range []string{base, s.dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	s.start()
	asNobody := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, setpriv, append([]string{"--reuid", "65534", "--regid", "65534", "--clear-groups"}, args...)...).CombinedOutput()
		return string(out), err
	}

	adminDir := filepath.Dir(s.admin)
	fi, err := os.Stat(adminDir)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o700 || fi.Sys().(*syscall.Stat_t).Uid != uint32(os.Geteuid()) {
		t.Errorf("admin socket directory %s: mode %v owner %d, want 0700 owned by %d", adminDir, fi.Mode().Perm(), fi.Sys().(*syscall.Stat_t).Uid, os.Geteuid())
	}
	if si, err := os.Stat(s.admin); err != nil || si.Mode().Perm()&0o077 != 0 {
		t.Errorf("admin socket %s: %v %v, want no access for group or others", s.admin, si.Mode(), err)
	}
	// Controls: the other uid can run the binary and list the directory
	// that holds the admin directory.
	if out, err := asNobody(bin, "version"); err != nil {
		t.Fatalf("control: uid 65534 cannot run %s: %v\n%s", bin, err, out)
	}
	if out, err := asNobody("/bin/ls", s.dir); err != nil || !strings.Contains(out, "admin") {
		t.Fatalf("control: uid 65534 cannot list %s: %v\n%s", s.dir, err, out)
	}
	before := heldSnapshot(t, s.admin)
	for _, args := range [][]string{
		{"entry", "list", "-output", "json"},
		{"token", "generate", "-output", "json"},
		{"entry", "create", "-spiffe-id", "spiffe://" + trustDomain + "/held/nobody", "-parent-id", "spiffe://" + trustDomain + "/held/p", "-selector", "unix:uid:65534"},
	} {
		out, err := asNobody(append(append([]string{bin}, args...), "-socket", s.admin)...)
		t.Logf("as uid 65534: sigil %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(out))
		if err == nil || !strings.Contains(strings.ToLower(out), "permission denied") {
			t.Errorf("uid 65534 ran sigil %s: %v\n%s\nwant a permission-denied failure", strings.Join(args, " "), err, out)
		}
	}
	heldUnchanged(t, "admin calls by another uid", before, heldSnapshot(t, s.admin))
}
