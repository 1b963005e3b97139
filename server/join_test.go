package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/internal/eventually"
	"github.com/sigil-id/sigil/internal/sourcelimit"
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
		if got := sourcelimit.Key(addr); got != want {
			t.Errorf("sourcelimit.Key(%q) = %q, want %q", in, got, want)
		}
	}
	if got := sourcelimit.Key(nil); got != "" {
		t.Errorf("sourcelimit.Key(nil) = %q", got)
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
//
// The port is below the kernel's ephemeral range when there is room for
// it there: a server restarted on its cluster address (as a real server
// restarts) must find the port free again, and a port of the ephemeral
// range may meanwhile be taken by any outgoing connection of the tests
// running in parallel ("bind: address already in use").
func joinFreeAddrOn(t *testing.T, ip string) string {
	t.Helper()
	if lo, ok := ephemeralLow(); ok && lo > 1024+4096 {
		base := max(1024, lo-16384)
		for range 64 {
			port := base + rand.IntN(lo-base)
			l, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(port)))
			if err != nil {
				continue // in use: try another
			}
			l.Close()
			return l.Addr().String()
		}
	}
	l, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// ephemeralLow is the lowest port of the kernel's ephemeral range.
func ephemeralLow() (int, bool) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0, false
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0, false
	}
	lo, err := strconv.Atoi(f[0])
	return lo, err == nil
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
	var found observer.LoggedEntry
	eventually.True(n.t, 30*time.Second, func() bool {
		for _, e := range n.logs.All() {
			if ok(e) {
				found = e
				return true
			}
		}
		return false
	}, "%s never logged %s", n.cfg.NodeName, what)
	return found
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
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// The refusal cannot change by retrying: the join ends at once, with
	// the reason (it used to retry until the caller gave up).
	_, err := c.admin.Join(ctx, &sigilv1.ClusterJoinRequest{Addresses: []string{a.cfg.ClusterAddress}})
	if err == nil {
		t.Fatal("join with the wrong secret succeeded")
	}
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "did not prove that it holds the join secret") {
		t.Fatalf("joiner's error: %v", err)
	}
	c.waitLog("the refusal", func(e observer.LoggedEntry) bool {
		return e.Message == "join refused; not retrying"
	})
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
