package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/internal/eventually"
)

// haJoinSecret is a join secret as `sigil cluster secret generate` makes
// it (servers accept no other kind).
const haJoinSecret = "sigil-join-v1-pBgSqrWfKbR9dIF6n4rb1u1c5CRA8_yKovjYuT2lN3w"

// faultProxy forwards TCP connections to one server's cluster port and
// drops those from blocked source IPs (every server dials from its own
// loopback IP), or all of them.
type faultProxy struct {
	ln     net.Listener
	target string

	mu       sync.Mutex
	blockAll bool
	blocked  map[string]bool
	conns    map[net.Conn]string // client side -> source IP
}

func newFaultProxy(t *testing.T, target string) *faultProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &faultProxy{ln: ln, target: target, blocked: map[string]bool{}, conns: map[net.Conn]string{}}
	go p.serve()
	t.Cleanup(func() { ln.Close(); p.isolate() })
	return p
}

func (p *faultProxy) addr() string { return p.ln.Addr().String() }

func (p *faultProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		src, _, _ := net.SplitHostPort(c.RemoteAddr().String())
		p.mu.Lock()
		if p.blockAll || p.blocked[src] {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.conns[c] = src
		p.mu.Unlock()
		go p.pipe(c, src)
	}
}

func (p *faultProxy) pipe(c net.Conn, src string) {
	defer func() {
		p.mu.Lock()
		delete(p.conns, c)
		p.mu.Unlock()
		c.Close()
	}()
	up, err := net.DialTimeout("tcp", p.target, 2*time.Second)
	if err != nil {
		return
	}
	defer up.Close()
	p.mu.Lock()
	p.conns[up] = src
	p.mu.Unlock()
	done := make(chan struct{}, 2)
	go func() { io.Copy(up, c); done <- struct{}{} }()
	go func() { io.Copy(c, up); done <- struct{}{} }()
	<-done
}

// cut drops every connection from ip, now and until heal.
func (p *faultProxy) cut(ip string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.blocked[ip] = true
	for c, src := range p.conns {
		if src == ip {
			c.Close()
		}
	}
}

// isolate drops every connection.
func (p *faultProxy) isolate() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.blockAll = true
	for c := range p.conns {
		c.Close()
	}
}

func (p *faultProxy) heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.blockAll = false
	p.blocked = map[string]bool{}
}

// haNode is one server of a test cluster. Each listens on its own
// loopback IP; peers reach its cluster port through its proxy.
type haNode struct {
	t        *testing.T
	name     string
	ip       string
	dir      string
	config   string
	admin    string
	nodeAddr string
	health   string
	proxy    *faultProxy
	p        *proc
	starts   int
}

// freeAddrsOn returns n distinct free addresses on ip. Each listener stays
// open until all n are picked: picked one at a time, the kernel may hand
// out the same port twice, and a server given it for two of its
// listeners fails to start with "address already in use".
func freeAddrsOn(t *testing.T, ip string, n int) []string {
	t.Helper()
	out := make([]string, 0, n)
	for range n {
		l, err := net.Listen("tcp", ip+":0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		out = append(out, l.Addr().String())
	}
	return out
}

type haCluster struct {
	t     *testing.T
	nodes []*haNode
}

// newHACluster writes the configs of n servers; the first bootstraps,
// the others join through it. extra lines go into every server block.
func newHACluster(t *testing.T, dir string, n int, ipBase int, extra ...string) *haCluster {
	t.Helper()
	c := &haCluster{t: t}
	for i := 0; i < n; i++ {
		ip := fmt.Sprintf("127.0.0.%d", ipBase+i)
		addrs := freeAddrsOn(t, ip, 3)
		clusterAddr := addrs[0]
		nd := &haNode{
			t:        t,
			name:     fmt.Sprintf("s%d", i+1),
			ip:       ip,
			dir:      filepath.Join(dir, fmt.Sprintf("s%d", i+1)),
			nodeAddr: addrs[1],
			health:   addrs[2],
			proxy:    newFaultProxy(t, clusterAddr),
		}
		if err := os.MkdirAll(nd.dir, 0o700); err != nil {
			t.Fatal(err)
		}
		nd.config = filepath.Join(nd.dir, "server.hcl")
		nd.admin = filepath.Join(nd.dir, "admin", "admin.sock")
		join := ""
		if i > 0 {
			join = fmt.Sprintf("retry_join = [%q]", c.nodes[0].proxy.addr())
		}
		cfg := fmt.Sprintf(`server {
  trust_domain           = %q
  node_name              = %q
  data_dir               = %q
  bind_address           = %q
  admin_socket           = %q
  health_address         = %q
  cluster_address        = %q
  advertise_address      = %q
  join_secret            = %q
  raft_heartbeat_timeout = "500ms"
  log_level              = "info"
  %s
}
`, trustDomain, nd.name, filepath.Join(nd.dir, "data"), nd.nodeAddr, nd.admin, nd.health, clusterAddr, nd.proxy.addr(), haJoinSecret, join)
		if len(extra) > 0 {
			cfg = strings.TrimSuffix(cfg, "}\n") + "  " + strings.Join(extra, "\n  ") + "\n}\n"
		}
		if err := os.WriteFile(nd.config, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		c.nodes = append(c.nodes, nd)
	}
	return c
}

func (n *haNode) start() {
	n.t.Helper()
	n.starts++
	n.p = startProc(n.t, n.name, filepath.Join(n.dir, fmt.Sprintf("server-%d.log", n.starts)), nil, sigilBin, "server", "-config", n.config)
	waitReady(n.t, n.p, "http://"+n.health+"/ready")
}

func (c *haCluster) start() {
	c.t.Helper()
	c.nodes[0].start()
	var wg sync.WaitGroup
	for _, n := range c.nodes[1:] {
		wg.Add(1)
		go func(n *haNode) {
			defer wg.Done()
			n.start()
		}(n)
	}
	wg.Wait()
	c.waitMembers(c.nodes[0], len(c.nodes), 30*time.Second)
}

func (c *haCluster) nodeByName(name string) *haNode {
	for _, n := range c.nodes {
		if n.name == name {
			return n
		}
	}
	return nil
}

// adminConn is an in-process admin client of one server.
type adminConn struct {
	conn    *grpc.ClientConn
	admin   sigilv1.AdminClient
	cluster sigilv1.ClusterAdminClient
}

func dialAdmin(t *testing.T, socket string) *adminConn {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &adminConn{conn: conn, admin: sigilv1.NewAdminClient(conn), cluster: sigilv1.NewClusterAdminClient(conn)}
}

func (n *haNode) adminClient() *adminConn { return dialAdmin(n.t, n.admin) }

func (n *haNode) members(ctx context.Context) (*sigilv1.MembersResponse, error) {
	ac := dialAdmin(n.t, n.admin)
	defer ac.conn.Close()
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	return ac.cluster.Members(cctx, &sigilv1.MembersRequest{})
}

// waitMembers waits until n sees want healthy members and a leader.
func (c *haCluster) waitMembers(n *haNode, want int, within time.Duration) *sigilv1.MembersResponse {
	c.t.Helper()
	var m *sigilv1.MembersResponse
	err := eventually.Wait(within, func() error {
		var err error
		if m, err = n.members(context.Background()); err != nil {
			return err
		}
		healthy := 0
		for _, mm := range m.Members {
			if mm.Healthy {
				healthy++
			}
		}
		if m.LeaderId == "" || len(m.Members) != want || healthy != want {
			return fmt.Errorf("%d members, %d healthy, leader %q", len(m.Members), healthy, m.LeaderId)
		}
		return nil
	})
	if err != nil {
		c.t.Fatalf("%s never saw %d healthy members with a leader: %v", n.name, want, err)
	}
	return m
}

// leader returns the current leader as some live node sees it.
func (c *haCluster) leader(except ...*haNode) *haNode {
	c.t.Helper()
	var leader *haNode
	err := eventually.Wait(15*time.Second, func() error {
		for _, n := range c.nodes {
			if n.p == nil || n.p.exited() || contains(except, n) {
				continue
			}
			if m, err := n.members(context.Background()); err == nil && m.LeaderId != "" {
				if l := c.nodeByName(m.LeaderId); l != nil && !contains(except, l) {
					leader = l
					return nil
				}
			}
		}
		return errors.New("no live node names a leader")
	})
	if err != nil {
		c.t.Fatalf("no leader: %v", err)
	}
	return leader
}

func contains(ns []*haNode, n *haNode) bool {
	for _, x := range ns {
		if x == n {
			return true
		}
	}
	return false
}

// writer creates entries continuously through the admin sockets of the
// given nodes in turn and remembers every SPIFFE ID whose write returned
// success.
type writer struct {
	mu    sync.Mutex
	acked []string
	fails atomic.Int64
	stop  chan struct{}
	done  chan struct{}
	// slowest is the longest attempt, acknowledged or not, and slowestAt
	// when it ended: a commit path that stalled (a disk that does not
	// sync for seconds) shows here.
	slowest   time.Duration
	slowestAt time.Time
}

func startWriter(t *testing.T, prefix string, targets func() []*haNode) *writer {
	w := &writer{stop: make(chan struct{}), done: make(chan struct{})}
	conns := map[*haNode]*adminConn{}
	go func() {
		defer close(w.done)
		for i := 0; ; i++ {
			select {
			case <-w.stop:
				return
			default:
			}
			ts := targets()
			if len(ts) == 0 {
				time.Sleep(20 * time.Millisecond)
				continue
			}
			n := ts[i%len(ts)]
			ac, ok := conns[n]
			if !ok {
				ac = dialAdmin(t, n.admin)
				conns[n] = ac
			}
			id := fmt.Sprintf("spiffe://%s/%s/%d", trustDomain, prefix, i)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			began := time.Now()
			resp, err := ac.admin.BatchCreateEntry(ctx, &sigilv1.BatchCreateEntryRequest{Entries: []*sigilv1.Entry{{
				SpiffeId:  id,
				ParentId:  fmt.Sprintf("spiffe://%s/writer", trustDomain),
				Selectors: []*sigilv1.Selector{{Type: "unix", Value: "uid:4242"}},
			}}})
			cancel()
			if took := time.Since(began); took > w.slowest {
				w.mu.Lock()
				w.slowest, w.slowestAt = took, time.Now()
				w.mu.Unlock()
			}
			if err == nil && len(resp.Results) == 1 && resp.Results[0].Status.GetCode() == 0 {
				w.mu.Lock()
				w.acked = append(w.acked, id)
				w.mu.Unlock()
			} else {
				w.fails.Add(1)
				time.Sleep(20 * time.Millisecond)
			}
		}
	}()
	return w
}

// slowestWrite reports the longest write attempt and when it ended.
func (w *writer) slowestWrite() (time.Duration, time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.slowest, w.slowestAt
}

func (w *writer) finish() []string {
	close(w.stop)
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.acked...)
}

func (w *writer) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.acked)
}

// entryIDs lists the SPIFFE IDs of the entries with prefix on n;
// linearizable asks the leader first.
func entryIDs(t *testing.T, n *haNode, prefix string, linearizable bool) (map[string]bool, error) {
	ac := dialAdmin(t, n.admin)
	defer ac.conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if linearizable {
		ctx = metadata.AppendToOutgoingContext(ctx, "sigil-consistency", "linearizable")
	}
	out := map[string]bool{}
	tok := ""
	for i := 0; i < 1000; i++ {
		resp, err := ac.admin.ListEntries(ctx, &sigilv1.ListEntriesRequest{PageToken: tok, PageSize: 1000})
		if err != nil {
			return nil, err
		}
		for _, e := range resp.Entries {
			if strings.Contains(e.SpiffeId, "/"+prefix+"/") || prefix == "" {
				out[e.SpiffeId] = true
			}
		}
		if tok = resp.NextPageToken; tok == "" {
			break
		}
	}
	return out, nil
}

// checkAcked fails the test unless every acknowledged write is on n.
func checkAcked(t *testing.T, n *haNode, prefix string, acked []string) {
	t.Helper()
	var have map[string]bool
	err := eventually.Wait(10*time.Second, func() (err error) {
		have, err = entryIDs(t, n, prefix, true)
		return err
	})
	if err != nil {
		t.Fatalf("listing entries on %s: %v", n.name, err)
	}
	missing := 0
	for _, id := range acked {
		if !have[id] {
			missing++
			if missing < 5 {
				t.Errorf("%s: acknowledged write %s is missing", n.name, id)
			}
		}
	}
	if missing > 0 {
		t.Fatalf("%s: %d of %d acknowledged writes are missing", n.name, missing, len(acked))
	}
}

// haAgent starts an agent that knows every server of c.
func haAgent(t *testing.T, c *haCluster, via *haNode, dir string) *agent {
	t.Helper()
	return haAgentOn(t, via, c.nodes, dir)
}

// haAgentOn starts an agent with a join token from via that knows the
// servers ns.
func haAgentOn(t *testing.T, via *haNode, ns []*haNode, dir string) *agent {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	var tok struct {
		Token   string `json:"token"`
		AgentID string `json:"agent_id"`
	}
	out := sigil(t, "token", "generate", "-output", "json", "-socket", via.admin)
	if err := json.Unmarshal([]byte(out), &tok); err != nil {
		t.Fatalf("token: %q: %v", out, err)
	}
	bundle := filepath.Join(dir, "bootstrap.pem")
	if err := os.WriteFile(bundle, []byte(sigil(t, "bundle", "show", "-socket", via.admin)), 0o644); err != nil {
		t.Fatal(err)
	}
	var addrs []string
	for _, n := range ns {
		addrs = append(addrs, n.nodeAddr)
	}
	a := &agent{
		t:      t,
		dir:    dir,
		config: filepath.Join(dir, "agent.hcl"),
		socket: filepath.Join(dir, "public", "api.sock"),
		health: freeAddr(t),
		id:     tok.AgentID,
	}
	cfg := fmt.Sprintf(`agent {
  trust_domain      = %q
  server_address    = %q
  data_dir          = %q
  socket_path       = %q
  join_token        = %q
  trust_bundle_path = %q
  health_address    = %q
  log_level         = "debug"
}
`, trustDomain, strings.Join(addrs, ","), filepath.Join(dir, "data"), a.socket, tok.Token, bundle, a.health)
	if err := os.WriteFile(a.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	a.start()
	return a
}
