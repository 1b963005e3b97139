package cluster

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/audit"
	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/ca/keymanager/memory"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/internal/eventually"
	"github.com/sigil-id/sigil/internal/storepb"
	"github.com/sigil-id/sigil/raftstore"
	"github.com/sigil-id/sigil/registration"
)

// The in-process harness: like hashicorp/raft's MakeCluster, servers of
// one test process, Raft on raft.InmemTransport (whose addresses are the
// servers' cluster addresses), the Cluster service on real TLS over
// loopback listeners, every server a real Cluster with a real store.

var testTD = spiffeid.RequireTrustDomainFromString("example.org")

// testRaftTimeout is Raft's heartbeat and election timeout in the
// harness: short, but long enough for a loaded host under -race.
const testRaftTimeout = 200 * time.Millisecond

// waitFor polls cond until it holds, failing the test after 20 s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	eventually.True(t, 20*time.Second, cond, "timed out waiting for %s", what)
}

type testCluster struct {
	t   *testing.T
	key []byte
	clk clock.Clock

	mu    sync.Mutex
	nodes []*testNode // live nodes
}

type testNode struct {
	tc      *testCluster
	name    string
	addr    string
	trans   *raft.InmemTransport
	c       *Cluster
	store   *raftstore.Store
	svid    atomic.Pointer[tls.Certificate]
	logs    *observer.ObservedLogs
	auditMu sync.Mutex
	audited []audit.Event // what the node's AuditSink received
	ctx     context.Context
	cancel  context.CancelFunc
	stopped bool
}

// nodeOpts vary a node of the harness.
type nodeOpts struct {
	bootstrap bool
	join      []string
	key       []byte // the join key; nil: the cluster's
	noKey     bool   // no join key at all
	addr      string // listen address; "" is 127.0.0.1:0
	tune      func(*Config)
}

func newTestCluster(t *testing.T, clk clock.Clock) *testCluster {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	if clk == nil {
		clk = clock.New()
	}
	return &testCluster{t: t, key: key, clk: clk}
}

// makeCluster starts n servers: s0 bootstraps, the others join through it.
func makeCluster(t *testing.T, n int, clk clock.Clock) *testCluster {
	tc := newTestCluster(t, clk)
	first := tc.mustStart("s0", nodeOpts{bootstrap: true})
	for i := 1; i < n; i++ {
		tc.mustStart(fmt.Sprintf("s%d", i), nodeOpts{join: []string{first.addr}})
	}
	tc.waitMembers(n)
	return tc
}

func (tc *testCluster) mustStart(name string, o nodeOpts) *testNode {
	tc.t.Helper()
	n, err := tc.start(name, o)
	if err != nil {
		tc.t.Fatalf("starting %s: %v", name, err)
	}
	return n
}

// start starts a server; it returns once the server is in the cluster
// (joined, with a leader, its identity CA published) or failed.
func (tc *testCluster) start(name string, o nodeOpts) (*testNode, error) {
	t := tc.t
	t.Helper()
	if o.addr == "" {
		o.addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", o.addr)
	if err != nil {
		return nil, err
	}
	core, logs := observer.New(zap.DebugLevel)
	n := &testNode{tc: tc, name: name, addr: ln.Addr().String(), logs: logs}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	_, n.trans = raft.NewInmemTransport(raft.ServerAddress(n.addr))
	tc.mu.Lock()
	for _, o := range tc.nodes {
		o.trans.Connect(raft.ServerAddress(n.addr), n.trans)
		n.trans.Connect(raft.ServerAddress(o.addr), o.trans)
	}
	tc.nodes = append(tc.nodes, n)
	tc.mu.Unlock()
	t.Cleanup(n.stop)

	cfg := DefaultConfig()
	cfg.TrustDomain = testTD
	cfg.NodeName = name
	cfg.Dir = t.TempDir()
	cfg.Listener = ln
	cfg.RaftTransport = n.trans
	cfg.JoinKey = tc.key
	if o.key != nil {
		cfg.JoinKey = o.key
	}
	if o.noKey {
		cfg.JoinKey = nil
	}
	cfg.IdentityKeyManager = memory.New()
	cfg.SVID = n.svid.Load
	cfg.Admin = testAdmin{n}
	cfg.Logger = zap.New(core)
	// The log keeps the audit records (tests look for them there) and
	// n.audited what the configured sink received.
	cfg.AuditSink = audit.Multi(audit.NewZap(cfg.Logger), audit.SinkFunc(func(ev audit.Event) {
		n.auditMu.Lock()
		n.audited = append(n.audited, ev)
		n.auditMu.Unlock()
	}))
	cfg.Clock = tc.clk
	cfg.HealthInterval = 200 * time.Millisecond
	cfg.JoinRetryMax = 200 * time.Millisecond
	if o.tune != nil {
		o.tune(&cfg)
	}
	c, err := New(n.ctx, cfg)
	if err != nil {
		ln.Close()
		return nil, err
	}
	n.c = c
	n.mintSVID(c.IdentityCA())
	if _, err := c.Start(); err != nil {
		return nil, err
	}
	store, err := raftstore.Open(raftstore.Config{
		TrustDomain: testTD, NodeID: name, InMemory: true, Transport: n.trans,
		Bootstrap: o.bootstrap, HeartbeatTimeout: testRaftTimeout,
	})
	if err != nil {
		return nil, err
	}
	n.store = store
	c.SetStore(store)
	if len(o.join) > 0 {
		if err := c.Join(n.ctx, o.join); err != nil {
			return n, err
		}
	}
	wctx, cancel := context.WithTimeout(n.ctx, 20*time.Second)
	defer cancel()
	if err := store.WaitForLeader(wctx); err != nil {
		return n, err
	}
	if err := c.PublishIdentity(wctx); err != nil {
		return n, err
	}
	c.Run(n.ctx)
	return n, nil
}

// mintSVID gives n a fresh server SVID signed by signer.
func (n *testNode) mintSVID(signer *ca.CA) {
	t := n.tc.t
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id, err := registration.ServerID(testTD, n.name)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := signer.SignX509SVID(context.Background(), ca.X509SVIDParams{PublicKey: key.Public(), SPIFFEID: id, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	cert := &tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, c := range chain {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	n.svid.Store(cert)
}

// stop stops n: its Cluster, its store, its Raft links.
func (n *testNode) stop() {
	tc := n.tc
	tc.mu.Lock()
	if n.stopped {
		tc.mu.Unlock()
		return
	}
	n.stopped = true
	for i, o := range tc.nodes {
		if o == n {
			tc.nodes = append(tc.nodes[:i], tc.nodes[i+1:]...)
			break
		}
	}
	for _, o := range tc.nodes {
		o.trans.Disconnect(raft.ServerAddress(n.addr))
	}
	tc.mu.Unlock()
	n.cancel()
	if n.c != nil {
		n.c.Close()
	}
	if n.store != nil {
		n.store.Close()
	}
	n.trans.Close()
}

func (tc *testCluster) live() []*testNode {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	return append([]*testNode(nil), tc.nodes...)
}

// leader waits for a live node to lead, and returns it.
func (tc *testCluster) leader() *testNode {
	tc.t.Helper()
	var l *testNode
	waitFor(tc.t, "a leader", func() bool {
		for _, n := range tc.live() {
			if n.store.IsLeader() {
				l = n
				return true
			}
		}
		return false
	})
	return l
}

// follower returns a live node that is not the leader.
func (tc *testCluster) follower() *testNode {
	tc.t.Helper()
	l := tc.leader()
	for _, n := range tc.live() {
		if n != l {
			return n
		}
	}
	tc.t.Fatal("no follower")
	return nil
}

// waitMembers waits until every live node's configuration has n members.
func (tc *testCluster) waitMembers(n int) {
	tc.t.Helper()
	waitFor(tc.t, fmt.Sprintf("%d members everywhere", n), func() bool {
		for _, node := range tc.live() {
			ms, err := node.store.Members()
			if err != nil || len(ms) != n {
				return false
			}
		}
		return true
	})
}

// testAdmin is the Admin of a harness node: removal and transfer on the
// store, without the server's authority bookkeeping.
type testAdmin struct{ n *testNode }

func (a testAdmin) RemoveMember(ctx context.Context, req *sigilv1.RemoveMemberRequest) (*sigilv1.RemoveMemberResponse, error) {
	st := a.n.c.store.Load()
	if !st.IsLeader() {
		return nil, status.Error(codes.FailedPrecondition, "not the leader")
	}
	if err := st.RemoveServer(ctx, req.NodeName); err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	return &sigilv1.RemoveMemberResponse{}, nil
}

func (a testAdmin) TransferLeadership(ctx context.Context, req *sigilv1.TransferLeadershipRequest) (*sigilv1.TransferLeadershipResponse, error) {
	st := a.n.c.store.Load()
	if err := st.TransferLeadership(req.NodeName); err != nil {
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	_, id := st.Leader()
	return &sigilv1.TransferLeadershipResponse{LeaderId: id}, nil
}

// tokenCmd is a write: a new join token, its hash returned.
func tokenCmd(t testing.TB) (*storepb.Command, string) {
	b := make([]byte, 16)
	rand.Read(b)
	sum := sha256.Sum256(b)
	h := hex.EncodeToString(sum[:])
	return &storepb.Command{Op: &storepb.Command_CreateJoinToken{CreateJoinToken: &storepb.CreateJoinToken{
		Token: &sigilv1.JoinToken{Hash: h, ExpiresAt: time.Now().Add(time.Hour).Unix()},
	}}}, h
}

// hasToken reports whether n's store holds the join token h.
func (n *testNode) hasToken(h string) bool {
	_, err := n.store.Read().JoinToken(h)
	return err == nil
}

var _ = errors.New

// auditedEvents returns the What of each audit event n emitted, with its
// subject ("what subject").
func (n *testNode) auditedEvents() []string {
	n.auditMu.Lock()
	defer n.auditMu.Unlock()
	out := make([]string, len(n.audited))
	for i, ev := range n.audited {
		out[i] = ev.What + " " + ev.Subject
	}
	return out
}
