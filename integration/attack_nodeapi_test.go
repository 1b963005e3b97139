package integration

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/internal/eventually"
)

// nodeAttackRefused is the one answer for a made-up, used or expired join
// token.
const nodeAttackRefused = "attestation failed: join token is unknown, already used or expired"

// nodeAttackState is what an attack on the node API must leave unchanged:
// the Raft applied index (from `sigil cluster members`) and the agent
// list.
type nodeAttackState struct {
	index  uint64
	agents string
}

func nodeAttackSnapshot(t *testing.T, s *server) nodeAttackState {
	t.Helper()
	var m struct {
		AppliedIndex string `json:"applied_index"`
	}
	out := s.cli("cluster", "members", "-output", "json")
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("cluster members output %q: %v", out, err)
	}
	idx, err := strconv.ParseUint(m.AppliedIndex, 10, 64)
	if err != nil || idx == 0 {
		t.Fatalf("cluster members reports applied index %q", m.AppliedIndex)
	}
	return nodeAttackState{index: idx, agents: s.cli("agent", "list", "-output", "json")}
}

func nodeAttackUnchanged(t *testing.T, what string, before, after nodeAttackState) {
	t.Helper()
	if before.index != after.index {
		t.Errorf("%s moved the Raft applied index from %d to %d", what, before.index, after.index)
	}
	if before.agents != after.agents {
		t.Errorf("%s changed the agent list:\nbefore %s\nafter  %s", what, before.agents, after.agents)
	}
}

// nodeAttackConn is a client of a server's node API without a client
// certificate, connecting from the loopback address from (127.0.0.0/8,
// so that tests can play several sources).
func nodeAttackConn(t *testing.T, s *server, from string) *grpc.ClientConn {
	t.Helper()
	return nodeAttackConnTo(t, s.addr, []byte(s.cli("bundle", "show")), from)
}

// nodeAttackConnTo is nodeAttackConn for the node API at addr, whose
// server is authenticated against bundlePEM.
func nodeAttackConnTo(t *testing.T, addr string, bundlePEM []byte, from string) *grpc.ClientConn {
	t.Helper()
	b, err := x509bundle.Parse(spiffeid.RequireTrustDomainFromString(trustDomain), bundlePEM)
	if err != nil {
		t.Fatalf("parsing the bundle: %v", err)
	}
	cfg := &tls.Config{
		MinVersion:            tls.VersionTLS12,
		InsecureSkipVerify:    true, //nolint:gosec // verified by SPIFFE ID below
		VerifyPeerCertificate: tlsconfig.VerifyPeerCertificate(b, tlsconfig.AuthorizeAny()),
	}
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 10 * time.Second}
	conn, err := grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(credentials.NewTLS(cfg)),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", addr)
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func nodeAttackCSR(t *testing.T) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	return csr
}

func nodeAttackToken(t *testing.T) string {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", b)
}

func nodeAttackCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// nodeAttackVmHWM is the peak resident set size of a process, from
// /proc/<pid>/status.
func nodeAttackVmHWM(t *testing.T, pid int) int64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("VmHWM line %q: %v", sc.Text(), err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no VmHWM in /proc/%d/status", pid)
	return 0
}

// TestAttackNodeAPIBogusTokensNoRaftWrite: 200 made-up (well-formed) join
// tokens, from 200 source addresses so that no per-source limit hides the
// check, are each refused with the one PermissionDenied answer; the Raft
// applied index and the agent list do not move (the old server signed an
// agent SVID and appended a Raft command for each). A real agent then
// attests normally.
func TestAttackNodeAPIBogusTokensNoRaftWrite(t *testing.T) {
	s := newServer(t, filepath.Join(t.TempDir(), "server"))
	s.start()
	before := nodeAttackSnapshot(t, s)
	ctx := nodeAttackCtx(t)
	const n, workers = 200, 8
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		answers = map[string]int{}
		next    = make(chan int)
	)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				from := fmt.Sprintf("127.0.%d.%d", 1+i/250, 2+i%250)
				c := sigilv1.NewNodeClient(nodeAttackConn(t, s, from))
				_, err := c.Attest(ctx, &sigilv1.AttestRequest{AttestationType: "join_token", Payload: []byte(nodeAttackToken(t)), Csr: nodeAttackCSR(t)})
				mu.Lock()
				answers[fmt.Sprintf("%v: %s", status.Code(err), status.Convert(err).Message())]++
				mu.Unlock()
			}
		}()
	}
	for i := 0; i < n; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
	if want := fmt.Sprintf("%v: %s", codes.PermissionDenied, nodeAttackRefused); answers[want] != n {
		t.Errorf("answers to %d made-up tokens: %v; want all %q", n, answers, want)
	}
	nodeAttackUnchanged(t, "200 made-up join tokens", before, nodeAttackSnapshot(t, s))

	a := newAgent(t, s, filepath.Join(t.TempDir(), "agent"))
	a.start()
	if !strings.Contains(s.cli("agent", "list", "-output", "json"), a.id) {
		t.Errorf("the agent %s did not attest after the attack", a.id)
	}
}

// nodeAttackRawCodec sends pre-encoded bytes as the request, so that 20
// callers can share one large buffer.
type nodeAttackRawCodec struct{}

func (nodeAttackRawCodec) Marshal(v any) ([]byte, error) { return v.([]byte), nil }
func (nodeAttackRawCodec) Unmarshal(data []byte, v any) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (nodeAttackRawCodec) Name() string { return "proto" }

// TestAttackNodeAPIOversizedAttestation: 20 concurrent attestation calls
// of 30 MiB each (a well-formed AttestRequest whose bulk is an unknown
// field, which the old server decoded in full: 29 MB to 2.5 GB) are
// refused, with ResourceExhausted or a closed connection; nothing
// changes, the server stays up and still serves a real agent, and its
// peak resident set (VmHWM) stays under 200 MiB.
func TestAttackNodeAPIOversizedAttestation(t *testing.T) {
	s := newServer(t, filepath.Join(t.TempDir(), "server"))
	s.start()
	before := nodeAttackSnapshot(t, s)
	hwm0 := nodeAttackVmHWM(t, s.p.cmd.Process.Pid)

	const n, size = 20, 30 << 20
	msg := protowire.AppendTag(nil, 1, protowire.BytesType)
	msg = protowire.AppendString(msg, "join_token")
	msg = protowire.AppendTag(msg, 2, protowire.BytesType)
	msg = protowire.AppendString(msg, nodeAttackToken(t))
	msg = protowire.AppendTag(msg, 999, protowire.BytesType)
	msg = protowire.AppendVarint(msg, size)
	msg = append(msg, make([]byte, size)...)

	ctx := nodeAttackCtx(t)
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		byCode = map[codes.Code]int{}
		start  = make(chan struct{})
	)
	conns := make([]*grpc.ClientConn, n)
	for i := range conns {
		conns[i] = nodeAttackConn(t, s, fmt.Sprintf("127.0.3.%d", 2+i))
	}
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			<-start
			var out []byte
			err := conns[i].Invoke(ctx, sigilv1.Node_Attest_FullMethodName, msg, &out, grpc.ForceCodec(nodeAttackRawCodec{}))
			mu.Lock()
			byCode[status.Code(err)]++
			mu.Unlock()
		}(i)
	}
	close(start)
	wg.Wait()
	t.Logf("answers to %d concurrent 30 MiB attestations: %v", n, byCode)
	for c, k := range byCode {
		if c != codes.ResourceExhausted && c != codes.Unavailable /* connection closed */ {
			t.Errorf("%d oversized attestations got %v, want ResourceExhausted or a closed connection", k, c)
		}
	}
	if s.p.exited() {
		t.Fatalf("the server exited: %v", s.p.err)
	}
	nodeAttackUnchanged(t, "20 oversized attestations", before, nodeAttackSnapshot(t, s))
	hwm := nodeAttackVmHWM(t, s.p.cmd.Process.Pid)
	t.Logf("server VmHWM: %d MiB before, %d MiB after 20 concurrent 30 MiB attestations", hwm0>>20, hwm>>20)
	if hwm >= 200<<20 {
		t.Errorf("server peak RSS %d MiB, want under 200 MiB", hwm>>20)
	}

	a := newAgent(t, s, filepath.Join(t.TempDir(), "agent"))
	a.start()
	if !strings.Contains(s.cli("agent", "list", "-output", "json"), a.id) {
		t.Errorf("the agent %s did not attest after the attack", a.id)
	}
}

// TestAttackNodeAPIRateLimit: one source sending 150 made-up tokens as
// fast as it can is cut off with ResourceExhausted after its burst (50,
// then 10 per second); nothing changes, and a real agent from another
// source address attests meanwhile.
func TestAttackNodeAPIRateLimit(t *testing.T) {
	s := newServer(t, filepath.Join(t.TempDir(), "server"))
	s.start()
	before := nodeAttackSnapshot(t, s)
	c := sigilv1.NewNodeClient(nodeAttackConn(t, s, "127.0.4.2"))
	ctx := nodeAttackCtx(t)
	csr := nodeAttackCSR(t)
	var denied, exhausted int
	start := time.Now()
	for i := 0; i < 150; i++ {
		_, err := c.Attest(ctx, &sigilv1.AttestRequest{AttestationType: "join_token", Payload: []byte(nodeAttackToken(t)), Csr: csr})
		switch status.Code(err) {
		case codes.PermissionDenied:
			denied++
		case codes.ResourceExhausted:
			exhausted++
			if !strings.Contains(err.Error(), "rate limit exceeded for 127.0.4.2") {
				t.Fatalf("call %d: %v, want a rate limit message naming the source", i, err)
			}
		default:
			t.Fatalf("call %d: %v", i, err)
		}
	}
	elapsed := time.Since(start)
	t.Logf("150 calls in %v: %d refused by the token check, %d rate-limited", elapsed, denied, exhausted)
	// The bucket holds 50 and refills 10 per second.
	if maxDenied := 50 + int(elapsed.Seconds()*10) + 1; exhausted == 0 || denied > maxDenied {
		t.Errorf("%d calls passed the rate limit in %v (want at most %d) and %d were refused", denied, elapsed, maxDenied, exhausted)
	}
	nodeAttackUnchanged(t, "rate-limited attestations", before, nodeAttackSnapshot(t, s))

	a := newAgent(t, s, filepath.Join(t.TempDir(), "agent"))
	a.start()
	if !strings.Contains(s.cli("agent", "list", "-output", "json"), a.id) {
		t.Errorf("the agent %s did not attest while another source was rate-limited", a.id)
	}
}

// nodeAttackApplied returns each node's own Raft applied index, once all
// of them agree (bounded wait).
func nodeAttackApplied(t *testing.T, c *haCluster) map[string]uint64 {
	t.Helper()
	var got map[string]uint64
	err := eventually.Wait(5*time.Second, func() error {
		got = map[string]uint64{}
		for _, n := range c.nodes {
			m, err := n.members(context.Background())
			if err != nil {
				t.Fatalf("%s: cluster members: %v", n.name, err)
			}
			got[n.name] = m.AppliedIndex
		}
		for _, n := range c.nodes {
			if got[n.name] != got[c.nodes[0].name] {
				return fmt.Errorf("applied indexes %v", got)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("the servers' applied indexes do not converge: %v", err)
	}
	return got
}

// TestAttackNodeAPIFollowerBogusTokens: on a 3-server cluster, made-up
// join tokens sent to a follower are refused there from its local store:
// no server's Raft applied index moves (the old follower forwarded an
// attestation command to the leader for each). A real token created on
// the leader and presented to the follower a moment later still attests.
func TestAttackNodeAPIFollowerBogusTokens(t *testing.T) {
	c := newHACluster(t, haDir(t), 3, 231)
	c.start()
	leader := c.leader()
	var follower *haNode
	for _, n := range c.nodes {
		if n != leader {
			follower = n
			break
		}
	}
	bundlePEM := []byte(sigil(t, "bundle", "show", "-socket", follower.admin))
	ctx := nodeAttackCtx(t)
	before := nodeAttackApplied(t, c)
	agentsBefore := sigil(t, "agent", "list", "-output", "json", "-socket", leader.admin)
	// A follower waits up to a second for its store to catch up before it
	// refuses a token it does not hold; the calls run concurrently.
	const n = 20
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		answers = map[string]int{}
	)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			conn := nodeAttackConnTo(t, follower.nodeAddr, bundlePEM, fmt.Sprintf("127.0.9.%d", 2+i))
			_, err := sigilv1.NewNodeClient(conn).Attest(ctx, &sigilv1.AttestRequest{AttestationType: "join_token", Payload: []byte(nodeAttackToken(t)), Csr: nodeAttackCSR(t)})
			mu.Lock()
			answers[fmt.Sprintf("%v: %s", status.Code(err), status.Convert(err).Message())]++
			mu.Unlock()
			conn.Close()
		}(i)
	}
	wg.Wait()
	if want := fmt.Sprintf("%v: %s", codes.PermissionDenied, nodeAttackRefused); answers[want] != n {
		t.Errorf("answers to %d made-up tokens at the follower: %v; want all %q", n, answers, want)
	}
	after := nodeAttackApplied(t, c)
	for name, idx := range before {
		if after[name] != idx {
			t.Errorf("%s: Raft applied index moved from %d to %d", name, idx, after[name])
		}
	}
	if got := sigil(t, "agent", "list", "-output", "json", "-socket", leader.admin); got != agentsBefore {
		t.Errorf("agent list changed:\nbefore %s\nafter  %s", agentsBefore, got)
	}

	// A fresh token from the leader works at the follower at once.
	tok, err := leader.adminClient().admin.CreateJoinToken(ctx, &sigilv1.CreateJoinTokenRequest{})
	if err != nil {
		t.Fatal(err)
	}
	conn := nodeAttackConnTo(t, follower.nodeAddr, bundlePEM, "127.0.9.200")
	resp, err := sigilv1.NewNodeClient(conn).Attest(ctx, &sigilv1.AttestRequest{AttestationType: "join_token", Payload: []byte(tok.Token), Csr: nodeAttackCSR(t)})
	if err != nil || resp.SpiffeId != tok.AgentId {
		t.Fatalf("a token just created on the leader, at the follower: %v", err)
	}
}
