package server

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/internal/clusterpb"
	"github.com/sigil-id/sigil/raftstore"
)

// ---- join secrets -------------------------------------------------------

func TestJoinSecretGeneratedAccepted(t *testing.T) {
	seen := map[string]bool{}
	for range 20 {
		s, err := GenerateJoinSecret(nil)
		if err != nil {
			t.Fatal(err)
		}
		if seen[s] {
			t.Fatalf("secret %q generated twice", s)
		}
		seen[s] = true
		key, err := ParseJoinSecret(s)
		if err != nil {
			t.Fatalf("generated secret refused: %v", err)
		}
		if len(key) != JoinSecretBytes {
			t.Fatalf("key has %d bytes", len(key))
		}
		// Surrounding white space (a file with a newline) is tolerated.
		if _, err := ParseJoinSecret(" " + s + "\n"); err != nil {
			t.Fatalf("secret with a newline refused: %v", err)
		}
		cfg := joinValidConfig(t)
		cfg.JoinSecret = s
		if err := cfg.Validate(); err != nil {
			t.Fatalf("config with a generated secret refused: %v", err)
		}
	}
}

func TestJoinSecretWeakRefused(t *testing.T) {
	good, err := GenerateJoinSecret(nil)
	if err != nil {
		t.Fatal(err)
	}
	random := good[len(JoinSecretPrefix):]
	for name, s := range map[string]string{
		"password":        "password",
		"old test secret": "integration-join-secret",
		"hex, no prefix":  strings.Repeat("ab12", 16),
		"prefix only":     JoinSecretPrefix,
		"short":           JoinSecretPrefix + random[:21],
		"long":            good + "A",
		"not random":      JoinSecretPrefix + strings.Repeat("A", len(random)),
		"std base64":      JoinSecretPrefix + "+" + random[1:],
		"padding":         good[:len(good)-1] + "=",
		"non-canonical":   good[:len(good)-1] + joinNonCanonicalLast(random),
		"other prefix":    "sigil-join-v9-" + random,
		"inner space":     JoinSecretPrefix + random[:10] + " " + random[11:],
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ParseJoinSecret(s)
			if !errors.Is(err, ErrWeakJoinSecret) {
				t.Fatalf("ParseJoinSecret(%q) = %v, want ErrWeakJoinSecret", s, err)
			}
			if !strings.Contains(err.Error(), "sigil cluster secret generate") {
				t.Fatalf("error does not say how to make a secret: %v", err)
			}
			if strings.Contains(err.Error(), s) && len(s) > 8 {
				t.Fatalf("error repeats the secret: %v", err)
			}
			cfg := joinValidConfig(t)
			cfg.JoinSecret = s
			if err := cfg.Validate(); !errors.Is(err, ErrWeakJoinSecret) {
				t.Fatalf("config with join_secret %q: %v, want ErrWeakJoinSecret", s, err)
			}
		})
	}
}

// joinNonCanonicalLast is a base64url character that differs from the last of
// random only in the unused low bits (strict decoding refuses it).
func joinNonCanonicalLast(random string) string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	i := strings.IndexByte(alphabet, random[len(random)-1])
	return string(alphabet[i|1])
}

func TestGenerateJoinSecretBadRandomSource(t *testing.T) {
	if _, err := GenerateJoinSecret(bytes.NewReader(make([]byte, 1<<12))); err == nil {
		t.Fatal("a secret was made from zeros")
	}
	if _, err := GenerateJoinSecret(bytes.NewReader([]byte{1, 2, 3})); err == nil {
		t.Fatal("a secret was made from a short read")
	}
}

func joinValidConfig(t *testing.T) Config {
	cfg := DefaultConfig()
	cfg.TrustDomain = testTD
	cfg.NodeName = "s1"
	cfg.DataDir = t.TempDir()
	cfg.ClusterAddress = "127.0.0.1:0"
	withPlugins(t, &cfg, "disk")
	return cfg
}

// ---- rate limit ---------------------------------------------------------

func TestJoinLimiterPerSource(t *testing.T) {
	clk := clock.NewFake(time.Unix(1_700_000_000, 0))
	l := newJoinLimiter(clk)
	for i := 0; i < int(joinPerSourceBurst); i++ {
		if d := l.allow("10.0.0.1"); !d.ok {
			t.Fatalf("attempt %d refused within the burst", i)
		}
	}
	d := l.allow("10.0.0.1")
	if d.ok || d.global || !d.first || d.retry <= 0 {
		t.Fatalf("attempt past the burst: %+v, want a first per-source refusal with a wait", d)
	}
	if d := l.allow("10.0.0.1"); d.ok || d.first {
		t.Fatalf("second refusal: %+v, want refused and not first", d)
	}
	// Another source is not affected.
	if d := l.allow("10.0.0.2"); !d.ok {
		t.Fatalf("another source refused: %+v", d)
	}
	// The limit is a rate, not a lockout.
	clk.Add(time.Second)
	if d := l.allow("10.0.0.1"); !d.ok {
		t.Fatalf("refused after refill: %+v", d)
	}
}

func TestJoinLimiterFailuresCostMore(t *testing.T) {
	clk := clock.NewFake(time.Unix(1_700_000_000, 0))
	l := newJoinLimiter(clk)
	if d := l.allow("a"); !d.ok {
		t.Fatal("first attempt refused")
	}
	l.penalize("a")
	d := l.allow("a")
	if d.ok {
		t.Fatal("attempt right after a failed proof allowed")
	}
	// -1 token: one more at joinPerSourceRate takes 1 s.
	if d.retry < time.Second {
		t.Fatalf("retry %v after a failure, want >= 1s", d.retry)
	}
	// A source that only fails gets about rate/(1+penalty) attempts a
	// second: count them over 100 fake seconds.
	allowed := 0
	for range 1000 {
		clk.Add(100 * time.Millisecond)
		if l.allow("a").ok {
			allowed++
			l.penalize("a")
		}
	}
	limit := 100*joinPerSourceRate/(1+joinFailPenalty) + 2
	if float64(allowed) > limit {
		t.Fatalf("%d failing attempts in 100 s, want <= %.0f", allowed, limit)
	}
	if allowed == 0 {
		t.Fatal("no attempt allowed in 100 s: a lockout, not a rate limit")
	}
}

func TestJoinLimiterGlobal(t *testing.T) {
	clk := clock.NewFake(time.Unix(1_700_000_000, 0))
	l := newJoinLimiter(clk)
	allowed := 0
	var last limitDecision
	for i := range 200 {
		last = l.allow(fmt.Sprintf("10.0.%d.%d", i/250, i%250))
		if last.ok {
			allowed++
		}
	}
	if allowed != int(joinGlobalBurst) {
		t.Fatalf("%d attempts from distinct sources allowed at once, want the global burst %v", allowed, joinGlobalBurst)
	}
	if !last.global || last.ok {
		t.Fatalf("last decision %+v, want a global refusal", last)
	}
}

func TestJoinLimiterBoundedMemory(t *testing.T) {
	clk := clock.NewFake(time.Unix(1_700_000_000, 0))
	l := newJoinLimiter(clk)
	for i := range joinMaxSources + 500 {
		if i%int(joinGlobalBurst/2) == 0 {
			clk.Add(10 * time.Second) // keep the global bucket from refusing
		}
		src := fmt.Sprintf("s%d", i)
		l.allow(src)
		l.allow(src)
		l.penalize(src) // not refilled: these buckets are not evicted
	}
	l.mu.Lock()
	n := len(l.srcs.m)
	l.mu.Unlock()
	if n > joinMaxSources {
		t.Fatalf("%d sources tracked, bound is %d", n, joinMaxSources)
	}
}

func TestSourceKey(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1:5000":                "127.0.0.1",
		"[::ffff:10.1.2.3]:1":           "10.1.2.3",
		"[2001:db8:1:2:3:4:5:6]:443":    "2001:db8:1:2::/64",
		"[2001:db8:1:2:ffff:4:5:6]:443": "2001:db8:1:2::/64",
		"[2001:db8:1:3::1]:443":         "2001:db8:1:3::/64",
		"[fe80::1%eth0]:80":             "fe80::/64",
		"not an address":                "not an address",
	} {
		addr := joinFakeAddr(in)
		if got := sourceKey(addr); got != want {
			t.Errorf("sourceKey(%q) = %q, want %q", in, got, want)
		}
	}
	if got := sourceKey(nil); got != "" {
		t.Errorf("sourceKey(nil) = %q", got)
	}
}

type joinFakeAddr string

func (a joinFakeAddr) Network() string { return "tcp" }
func (a joinFakeAddr) String() string  { return string(a) }

// ---- servers in a cluster -------------------------------------------------

type joinNode struct {
	t      *testing.T
	srv    *Server
	cfg    Config
	logs   *observer.ObservedLogs
	admin  sigilv1.ClusterAdminClient
	cancel context.CancelFunc
	done   chan error
}

// joinFreeAddrOn returns a free TCP address on ip.
func joinFreeAddrOn(t *testing.T, ip string) string {
	t.Helper()
	l, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// startJoinNode starts a server with a cluster port on ip. It returns
// once the admin socket answers (a joining server is not ready before it
// has joined).
func startJoinNode(t *testing.T, ip, name, secret string, mod func(*Config)) *joinNode {
	t.Helper()
	dir := t.TempDir()
	core, logs := observer.New(zap.DebugLevel)
	cfg := DefaultConfig()
	cfg.TrustDomain = testTD
	cfg.NodeName = name
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.BindAddress = ip + ":0"
	cfg.AdminSocket = filepath.Join(dir, "admin", "admin.sock")
	withPlugins(t, &cfg, "memory")
	cfg.ClusterAddress = joinFreeAddrOn(t, ip)
	cfg.JoinSecret = secret
	cfg.RaftHeartbeatTimeout = 300 * time.Millisecond
	cfg.Logger = zap.New(core)
	if mod != nil {
		mod(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := &joinNode{t: t, srv: srv, cfg: cfg, logs: logs, cancel: cancel, done: make(chan error, 1)}
	go func() { n.done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-n.done:
		case <-time.After(15 * time.Second):
			t.Errorf("%s did not stop", name)
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(cfg.AdminSocket); err == nil {
			break
		}
		select {
		case err := <-n.done:
			t.Fatalf("%s exited: %v", name, err)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: admin socket not up", name)
		}
	}
	conn, err := grpc.NewClient("unix://"+cfg.AdminSocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	n.admin = sigilv1.NewClusterAdminClient(conn)
	return n
}

func (n *joinNode) waitReady() {
	n.t.Helper()
	select {
	case <-n.srv.Ready():
	case err := <-n.done:
		n.t.Fatalf("%s exited: %v", n.cfg.NodeName, err)
	case <-time.After(60 * time.Second):
		var last []string
		for _, e := range n.logs.All() {
			last = append(last, fmt.Sprintf("%s %v", e.Message, e.ContextMap()))
		}
		if len(last) > 20 {
			last = last[len(last)-20:]
		}
		n.t.Fatalf("%s not ready; last logs:\n%s", n.cfg.NodeName, strings.Join(last, "\n"))
	}
}

func (n *joinNode) members() []string {
	n.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := n.admin.Members(ctx, &sigilv1.MembersRequest{})
	if err != nil {
		n.t.Fatalf("members of %s: %v", n.cfg.NodeName, err)
	}
	var out []string
	for _, m := range resp.Members {
		out = append(out, m.NodeName)
	}
	return out
}

// waitLog waits until n logged a message matching ok.
func (n *joinNode) waitLog(what string, ok func(observer.LoggedEntry) bool) observer.LoggedEntry {
	n.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		for _, e := range n.logs.All() {
			if ok(e) {
				return e
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	n.t.Fatalf("%s never logged %s", n.cfg.NodeName, what)
	return observer.LoggedEntry{}
}

func joinBundleDER(s *Server) [][]byte {
	var out [][]byte
	for _, c := range s.Bundle() {
		out = append(out, c.Raw)
	}
	return out
}

func TestJoinWithGeneratedSecret(t *testing.T) {
	secret, err := GenerateJoinSecret(nil)
	if err != nil {
		t.Fatal(err)
	}
	a := startJoinNode(t, "127.0.0.1", "a", secret, nil)
	a.waitReady()
	b := startJoinNode(t, "127.0.0.2", "b", secret, func(c *Config) { c.JoinAddresses = []string{a.cfg.ClusterAddress} })
	b.waitReady()
	if got := a.members(); len(got) != 2 {
		t.Fatalf("members after the join: %v", got)
	}
	a.waitLog("the join with its source", func(e observer.LoggedEntry) bool {
		return e.Message == "server joined" && e.ContextMap()["source"] == "127.0.0.2"
	})
}

// TestJoinWrongSecretAbortsBeforeProof: a joiner with another secret
// finds that the member does not prove the secret it holds, and gives up
// before sending a proof of its own; the member's state is unchanged.
func TestJoinWrongSecretAbortsBeforeProof(t *testing.T) {
	s1, _ := GenerateJoinSecret(nil)
	s2, _ := GenerateJoinSecret(nil)
	a := startJoinNode(t, "127.0.0.1", "a", s1, nil)
	a.waitReady()
	membersBefore, bundleBefore := a.members(), joinBundleDER(a.srv)

	c := startJoinNode(t, "127.0.0.3", "c", s2, func(c *Config) { c.NoBootstrap = true })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		_, err := c.admin.Join(ctx, &sigilv1.ClusterJoinRequest{Addresses: []string{a.cfg.ClusterAddress}})
		errc <- err
	}()
	e := c.waitLog("the failed join", func(e observer.LoggedEntry) bool {
		return e.Message == "join failed; retrying"
	})
	if msg := fmt.Sprint(e.ContextMap()["error"]); !strings.Contains(msg, "did not prove that it holds the join secret") {
		t.Fatalf("joiner's error: %s", msg)
	}
	cancel()
	if err := <-errc; err == nil {
		t.Fatal("join with the wrong secret succeeded")
	}
	if got := a.members(); fmt.Sprint(got) != fmt.Sprint(membersBefore) {
		t.Fatalf("members changed: %v -> %v", membersBefore, got)
	}
	if got := joinBundleDER(a.srv); !joinEqualDERs(got, bundleBefore) {
		t.Fatal("bundle changed")
	}
	// The joiner never sent a proof: the member saw no failed one.
	if n := a.logs.FilterMessage("join refused: bad proof of the join secret").Len(); n != 0 {
		t.Fatalf("the member received %d proofs from a joiner with the wrong secret", n)
	}
}

func joinEqualDERs(a, b [][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !bytes.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

// joinAttack makes one Join call, with a wrong proof, from ip to addr.
func joinAttack(t *testing.T, ip, addr string, challenge bool) error {
	t.Helper()
	d := &tls.Dialer{NetDialer: &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}, Config: &tls.Config{
		MinVersion: tls.VersionTLS13, NextProtos: []string{raftstore.ALPNGRPC}, InsecureSkipVerify: true, //nolint:gosec // attacker
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(context.Context, string) (net.Conn, error) { return raw, nil }))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	client := clusterpb.NewClusterClient(cc)
	nonce := make([]byte, joinNonceLen)
	rand.Read(nonce)
	if challenge {
		if _, err := client.JoinChallenge(ctx, &clusterpb.JoinChallengeRequest{NodeName: "evil", Nonce: nonce}); err != nil {
			return err
		}
	}
	proof := make([]byte, 32)
	rand.Read(proof)
	_, err = client.Join(ctx, &clusterpb.JoinRequest{NodeName: "evil", ClusterAddress: ip + ":1", Nonce: nonce, Proof: proof})
	return err
}

// TestJoinWrongProofRateLimited: wrong proofs are refused and logged with
// their source; after the first, attempts from that source are refused
// by the rate limit (the clock does not move), while a server joining from
// another address gets in; the limit lifts with time.
func TestJoinWrongProofRateLimited(t *testing.T) {
	secret, _ := GenerateJoinSecret(nil)
	clk := clock.NewFake(time.Now())
	withClock := func(c *Config) { c.Clock = clk }
	a := startJoinNode(t, "127.0.0.1", "a", secret, withClock)
	a.waitReady()
	bundleBefore := joinBundleDER(a.srv)

	var denied, limited int
	for i := range 20 {
		err := joinAttack(t, "127.0.0.1", a.cfg.ClusterAddress, i%2 == 0)
		switch status.Code(err) {
		case codes.PermissionDenied:
			denied++
		case codes.ResourceExhausted:
			limited++
			if !strings.Contains(err.Error(), "too many join attempts from 127.0.0.1; retry in") {
				t.Fatalf("rate-limit error is not clear: %v", err)
			}
		default:
			t.Fatalf("attempt %d: %v", i, err)
		}
	}
	if denied != 1 || limited != 19 {
		t.Fatalf("%d wrong proofs checked and %d attempts rate-limited; want 1 and 19", denied, limited)
	}
	if got := a.logs.FilterMessage("join refused: bad proof of the join secret").FilterField(zap.String("source", "127.0.0.1")).Len(); got != 1 {
		t.Fatalf("%d failed proofs logged with the source address, want 1", got)
	}
	if got := a.logs.FilterMessage("join attempts rate-limited").Len(); got != 1 {
		t.Fatalf("rate limiting logged %d times, want once", got)
	}
	if got := a.members(); len(got) != 1 {
		t.Fatalf("members changed: %v", got)
	}
	if !joinEqualDERs(joinBundleDER(a.srv), bundleBefore) {
		t.Fatal("bundle changed")
	}

	// Another source is not locked out by the attacker.
	b := startJoinNode(t, "127.0.0.2", "b", secret, func(c *Config) {
		withClock(c)
		c.JoinAddresses = []string{a.cfg.ClusterAddress}
	})
	b.waitReady()
	if got := a.members(); len(got) != 2 {
		t.Fatalf("members after b joined: %v", got)
	}

	// A rate, not a lockout.
	clk.Add(10 * time.Second)
	if err := joinAttack(t, "127.0.0.1", a.cfg.ClusterAddress, false); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("attempt after the refill: %v, want a refused proof", err)
	}
}

// ---- an impostor endpoint -------------------------------------------------

// joinRawCodec hands gRPC messages over as bytes.
type joinRawCodec struct{}

func (joinRawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(*v.(*[]byte))}, nil
}

func (joinRawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	*v.(*[]byte) = data.Materialize()
	return nil
}

func (joinRawCodec) Name() string { return "proto" }

type joinImpostorMsg struct {
	method string
	body   []byte
	ekm    []byte
}

// joinImpostor answers a join address without holding the secret: a TLS
// gRPC endpoint that records every message it gets and answers a
// JoinChallenge with a random "proof".
type joinImpostor struct {
	addr string
	mu   sync.Mutex
	msgs []joinImpostorMsg
}

func startJoinImpostor(t *testing.T, ip string) *joinImpostor {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "impostor"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	im := &joinImpostor{addr: ln.Addr().String()}
	gs := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}})),
		grpc.ForceServerCodecV2(joinRawCodec{}),
		grpc.UnknownServiceHandler(im.handle),
	)
	go gs.Serve(ln)
	t.Cleanup(gs.Stop)
	return im
}

func (im *joinImpostor) handle(_ any, stream grpc.ServerStream) error {
	method, _ := grpc.MethodFromServerStream(stream)
	var body []byte
	if err := stream.RecvMsg(&body); err != nil {
		return err
	}
	m := joinImpostorMsg{method: method, body: body}
	if st, ok := tlsState(stream.Context()); ok {
		m.ekm, _ = st.ExportKeyingMaterial(ekmLabel, nil, 32)
	}
	im.mu.Lock()
	im.msgs = append(im.msgs, m)
	im.mu.Unlock()
	if strings.HasSuffix(method, "/JoinChallenge") {
		proof := make([]byte, 32)
		rand.Read(proof)
		resp := protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), proof)
		return stream.SendMsg(&resp)
	}
	return status.Error(codes.Unavailable, "impostor")
}

func (im *joinImpostor) received() []joinImpostorMsg {
	im.mu.Lock()
	defer im.mu.Unlock()
	return append([]joinImpostorMsg(nil), im.msgs...)
}

// joinFields parses a protobuf message into its fields (number -> raw value).
func joinFields(t *testing.T, b []byte) map[protowire.Number][]byte {
	t.Helper()
	out := map[protowire.Number][]byte{}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			t.Fatalf("bad message: %v", protowire.ParseError(n))
		}
		b = b[n:]
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			t.Fatalf("bad message: %v", protowire.ParseError(m))
		}
		v := b[:m]
		if typ == protowire.BytesType {
			v, _ = protowire.ConsumeBytes(v)
		}
		out[num] = v
		b = b[m:]
	}
	return out
}

// TestJoinImpostorEndpointGetsNothingSecretDerived points joiners with two
// different secrets at an endpoint that does not hold the secret. It gets
// no Join (the only message that proves the secret), nothing that any of
// the known proofs under either secret could match, and, with the random
// nonce set aside, the same bytes whatever the secret; the joiner fails
// with a message that says why.
func TestJoinImpostorEndpointGetsNothingSecretDerived(t *testing.T) {
	im := startJoinImpostor(t, "127.0.0.1")
	secrets := []string{}
	var perSecret [][]joinImpostorMsg
	for i := range 2 {
		s, _ := GenerateJoinSecret(nil)
		secrets = append(secrets, s)
		before := len(im.received())
		j := startJoinNode(t, "127.0.0.4", "j", s, func(c *Config) { c.NoBootstrap = true })
		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error, 1)
		go func() {
			_, err := j.admin.Join(ctx, &sigilv1.ClusterJoinRequest{Addresses: []string{im.addr}})
			errc <- err
		}()
		// Two rounds of attempts.
		e := j.waitLog("two failed joins", func(e observer.LoggedEntry) bool {
			return e.Message == "join failed; retrying" && j.logs.FilterMessage("join failed; retrying").Len() >= 2
		})
		if msg := fmt.Sprint(e.ContextMap()["error"]); !strings.Contains(msg, "did not prove that it holds the join secret") {
			t.Errorf("secret %d: joiner's error does not say why: %s", i, msg)
		}
		cancel()
		if err := <-errc; err == nil {
			t.Fatalf("secret %d: joined an impostor", i)
		}
		if got := j.members(); len(got) != 0 {
			t.Fatalf("secret %d: joiner has members %v", i, got)
		}
		perSecret = append(perSecret, im.received()[before:])
	}

	normalized := map[string]bool{}
	for i, msgs := range perSecret {
		if len(msgs) == 0 {
			t.Fatalf("secret %d: the impostor received nothing (the test proves nothing)", i)
		}
		for _, m := range msgs {
			if m.method != clusterpb.Cluster_JoinChallenge_FullMethodName {
				t.Errorf("secret %d: the impostor received %s (%d bytes)", i, m.method, len(m.body))
			}
			f := joinFields(t, m.body)
			// No proof under either secret, old or new, is in the message.
			for _, s := range secrets {
				key, _ := ParseJoinSecret(s)
				old := hmac.New(sha256.New, []byte(s))
				old.Write([]byte("sigil join client\x00" + "j" + "\x00"))
				old.Write(m.ekm)
				cands := [][]byte{old.Sum(nil)}
				for _, nonce := range f { // any field may be the nonce
					for _, label := range []string{joinLabelJoiner, joinLabelResponder} {
						cands = append(cands, joinMAC(key, label, testTD.Name(), "j", nonce, m.ekm))
					}
				}
				for _, c := range cands {
					if bytes.Contains(m.body, c) {
						t.Errorf("secret %d: the impostor received a proof of the secret in %s", i, m.method)
					}
				}
			}
			// Set the nonce aside: what is left must not depend on the secret.
			var rest []byte
			for num := protowire.Number(1); num < 16; num++ {
				if v, ok := f[num]; ok && num != 2 {
					rest = protowire.AppendBytes(protowire.AppendTag(rest, num, protowire.BytesType), v)
				}
			}
			if m.method == clusterpb.Cluster_JoinChallenge_FullMethodName && len(f[2]) != joinNonceLen {
				t.Errorf("secret %d: nonce of %d bytes", i, len(f[2]))
			}
			normalized[m.method+":"+string(rest)] = true
		}
	}
	if len(normalized) != 1 {
		t.Fatalf("the impostor's messages depend on the secret: %d distinct messages once the nonce is set aside", len(normalized))
	}
}
