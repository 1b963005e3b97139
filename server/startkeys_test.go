package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/cluster"
	"github.com/sigil-id/sigil/internal/storepb"
	"github.com/sigil-id/sigil/raftstore"
)

// faultStart is a single-node server started with a fault at the apply
// seam; ready reports whether it became ready, err what Run returned when
// it did not.
type faultStart struct {
	srv   *Server
	logs  *observer.ObservedLogs
	ready bool
	err   error
}

// startWithFault starts a single-node server on a fake clock that nothing
// advances, with fault called before each of its writes (fault may write
// through srv.store itself). It waits until the server is ready or Run
// returns.
func startWithFault(t *testing.T, fault func(srv *Server, ctx context.Context, cmd *storepb.Command) error) *faultStart {
	t.Helper()
	dir := t.TempDir()
	core, logs := observer.New(zap.DebugLevel)
	cfg := DefaultConfig()
	cfg.TrustDomain = testTD
	cfg.NodeName = "s1"
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.BindAddress = "127.0.0.1:0"
	cfg.AdminSocket = filepath.Join(dir, "admin", "admin.sock")
	cfg.Logger = zap.New(core)
	cfg.Clock = clock.NewFake(time.Date(2026, 12, 1, 6, 0, 0, 0, time.UTC))
	withPlugins(t, &cfg, "disk")
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv.applyFault = func(ctx context.Context, cmd *storepb.Command) error { return fault(srv, ctx, cmd) }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	fs := &faultStart{srv: srv, logs: logs}
	select {
	case <-srv.Ready():
		fs.ready = true
		t.Cleanup(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("server run: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Error("server did not stop")
			}
		})
	case fs.err = <-done:
		cancel()
	case <-time.After(60 * time.Second):
		cancel()
		t.Fatal("server neither ready nor exited")
	}
	return fs
}

// publishCounter counts the publishing writes by kind.
type publishCounter struct {
	mu        sync.Mutex
	x509, jwt int
}

// count records cmd and returns the attempt number of its kind (1 for the
// first), or 0 when cmd publishes no authority.
func (c *publishCounter) count(cmd *storepb.Command) (kind string, n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch cmd.Op.(type) {
	case *storepb.Command_PutX509Authority:
		c.x509++
		return "x509", c.x509
	case *storepb.Command_PutJwtAuthority:
		c.jwt++
		return "jwt", c.jwt
	}
	return "", 0
}

func (c *publishCounter) counts() (x509, jwt int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.x509, c.jwt
}

// ownAuthorities returns the X.509 and JWT authorities of server s1 in the
// trust domain's bundle.
func ownAuthorities(t *testing.T, srv *Server) ([]*sigilv1.X509Authority, []*sigilv1.JWTAuthority) {
	t.Helper()
	pb, err := srv.store.Read().Bundle(testTD.Name())
	if err != nil {
		t.Fatal(err)
	}
	var xs []*sigilv1.X509Authority
	for _, a := range pb.X509Authorities {
		if a.ServerId == "s1" {
			xs = append(xs, a)
		}
	}
	var js []*sigilv1.JWTAuthority
	for _, a := range pb.JwtAuthorities {
		if a.ServerId == "s1" {
			js = append(js, a)
		}
	}
	return xs, js
}

// checkOwnKeysPublished fails unless the bundle holds exactly the active
// CA certificate and the active JWT key of the server, once each.
func checkOwnKeysPublished(t *testing.T, srv *Server) {
	t.Helper()
	xs, js := ownAuthorities(t, srv)
	if len(xs) != 1 || !bytes.Equal(xs[0].Certificate, srv.x509CA().Certificate().Raw) {
		t.Errorf("bundle has %d X.509 authorities of s1, want exactly the active CA certificate", len(xs))
	}
	if len(js) != 1 || js[0].KeyId != srv.jwtSigner().KeyID() {
		t.Errorf("bundle has %d JWT authorities of s1, want exactly the active key %s", len(js), srv.jwtSigner().KeyID())
	}
}

// TestStartRetriesTransientPublishFailures: the first writes that publish
// the keys fail the ways a cluster in motion makes them fail (leadership
// lost before the commit, a write committed whose answer timed out, the
// leader unreachable); the server starts anyway, on a fake clock nothing
// advances, and its keys are in the bundle once each.
func TestStartRetriesTransientPublishFailures(t *testing.T) {
	var pc publishCounter
	fs := startWithFault(t, func(srv *Server, ctx context.Context, cmd *storepb.Command) error {
		switch kind, n := pc.count(cmd); {
		case kind == "x509" && n == 1:
			return fmt.Errorf("raftstore: apply: %w", raft.ErrLeadershipLost)
		case kind == "x509" && n == 2:
			// Committed, but the caller hears of a timeout: the retry
			// writes the same authority again.
			if _, err := srv.store.Apply(ctx, cmd); err != nil {
				t.Errorf("committing the write whose answer is lost: %v", err)
			}
			return fmt.Errorf("cluster: forwarded write: %w", context.DeadlineExceeded)
		case kind == "jwt" && n == 1:
			return fmt.Errorf("cluster: write not accepted: %w", status.Error(codes.Unavailable, "connection refused"))
		}
		return nil
	})
	if !fs.ready {
		t.Fatalf("server did not start: %v", fs.err)
	}
	if x, j := pc.counts(); x != 3 || j != 2 {
		t.Errorf("publishing writes: %d X.509, %d JWT; want 3 and 2 (each failure retried once)", x, j)
	}
	checkOwnKeysPublished(t, fs.srv)
	if n := fs.logs.FilterMessage("publishing this server's keys failed; retrying once there is a leader").Len(); n != 2 {
		t.Errorf("%d retry warnings, want 2 (two failed rounds)", n)
	}
	if fs.logs.FilterMessage("keys published after transient failures").FilterField(zap.Int("rounds", 3)).Len() != 1 {
		t.Error("no log that the keys were published in the third round")
	}
}

// TestStartFailsOnPermanentPublishError: a publishing write the state
// machine refuses is not retried, and the start fails with an error that
// names it.
func TestStartFailsOnPermanentPublishError(t *testing.T) {
	var pc publishCounter
	fs := startWithFault(t, func(_ *Server, _ context.Context, cmd *storepb.Command) error {
		if kind, _ := pc.count(cmd); kind == "x509" {
			return &raftstore.CommandError{Code: codes.InvalidArgument, Msg: "authority refused for the test"}
		}
		return nil
	})
	if fs.ready {
		t.Fatal("server started although its CA key could not be published")
	}
	var ce *raftstore.CommandError
	if !errors.As(fs.err, &ce) || ce.Code != codes.InvalidArgument {
		t.Errorf("start error %v does not carry the refusal", fs.err)
	}
	if msg := fs.err.Error(); !strings.HasPrefix(msg, "server: no active CA key: ") || !strings.Contains(msg, "authority refused for the test") {
		t.Errorf("start error %q does not say which key failed and why", msg)
	}
	if x, _ := pc.counts(); x != 1 {
		t.Errorf("%d X.509 publishing writes, want 1 (a refusal is not retried)", x)
	}
}

// TestStartGivesUpAfterBoundedTransientFailures: a transient failure that
// does not pass ends the start after startKeyRounds rounds, with the last
// cause; every attempt runs under the round's and the start's deadlines.
func TestStartGivesUpAfterBoundedTransientFailures(t *testing.T) {
	var pc publishCounter
	begin := time.Now()
	var mu sync.Mutex
	var deadlineErr error
	fs := startWithFault(t, func(_ *Server, ctx context.Context, cmd *storepb.Command) error {
		kind, n := pc.count(cmd)
		if kind != "jwt" {
			return nil
		}
		dl, ok := ctx.Deadline()
		mu.Lock()
		switch {
		case !ok:
			deadlineErr = fmt.Errorf("attempt %d has no deadline", n)
		case dl.After(time.Now().Add(startKeyRoundFor)) || dl.After(begin.Add(startKeysFor)):
			deadlineErr = fmt.Errorf("attempt %d has a deadline %s, past the round's or the start's bound", n, dl)
		}
		mu.Unlock()
		return fmt.Errorf("raftstore: apply: %w", raft.ErrLeadershipLost)
	})
	if fs.ready {
		t.Fatal("server started although its JWT key was never published")
	}
	if !errors.Is(fs.err, raft.ErrLeadershipLost) {
		t.Errorf("start error %v does not carry the last cause", fs.err)
	}
	want := fmt.Sprintf("server: no active JWT key after %d rounds in ", startKeyRounds)
	if msg := fs.err.Error(); !strings.HasPrefix(msg, want) || !strings.Contains(msg, "leadership lost") {
		t.Errorf("start error %q, want it to start with %q and name the cause", msg, want)
	}
	if _, j := pc.counts(); j != startKeyRounds {
		t.Errorf("%d JWT publishing writes, want %d", j, startKeyRounds)
	}
	mu.Lock()
	defer mu.Unlock()
	if deadlineErr != nil {
		t.Error(deadlineErr)
	}
}

// TestPublishAuthorityIsIdempotent: publishing a server's active keys
// again, as a retry does, leaves the bundle's authorities as they were.
func TestPublishAuthorityIsIdempotent(t *testing.T) {
	h := startServer(t)
	srv := h.srv
	before, err := srv.store.Read().Bundle(testTD.Name())
	if err != nil {
		t.Fatal(err)
	}
	pub := &bundlePublisher{s: srv}
	for _, m := range []*ca.Manager{srv.auth.x509, srv.auth.jwt} {
		sl, ok := m.Active()
		if !ok {
			t.Fatalf("no active %s key", m.Kind())
		}
		for range 3 {
			if err := pub.Publish(context.Background(), sl); err != nil {
				t.Fatalf("publishing the %s key again: %v", m.Kind(), err)
			}
		}
	}
	after, err := srv.store.Read().Bundle(testTD.Name())
	if err != nil {
		t.Fatal(err)
	}
	if after.SequenceNumber <= before.SequenceNumber {
		t.Fatalf("sequence number %d → %d: the writes were not applied", before.SequenceNumber, after.SequenceNumber)
	}
	if !sameAuthorities(before, after) {
		t.Errorf("authorities changed by publishing the same keys again:\nbefore %v\nafter  %v", before, after)
	}
	checkOwnKeysPublished(t, srv)
}

func sameAuthorities(a, b *sigilv1.Bundle) bool {
	a2 := &sigilv1.Bundle{X509Authorities: a.X509Authorities, JwtAuthorities: a.JwtAuthorities, X509Intermediates: a.X509Intermediates}
	b2 := &sigilv1.Bundle{X509Authorities: b.X509Authorities, JwtAuthorities: b.JwtAuthorities, X509Intermediates: b.X509Intermediates}
	return proto.Equal(a2, b2)
}

// TestTransientWriteClassification pins which write failures the start
// path retries.
func TestTransientWriteClassification(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("raftstore: apply: %w", raft.ErrNotLeader), true},
		{fmt.Errorf("raftstore: apply: %w", raft.ErrLeadershipLost), true},
		{fmt.Errorf("raftstore: apply: %w", raft.ErrLeadershipTransferInProgress), true},
		{fmt.Errorf("raftstore: apply timed out: %w (%w)", context.DeadlineExceeded, raft.ErrEnqueueTimeout), true},
		{fmt.Errorf("cluster: write not accepted: %w", cluster.ErrNoLeader), true},
		{fmt.Errorf("cluster: write not accepted: %w", status.Error(codes.Unavailable, "connection refused")), true},
		{fmt.Errorf("cluster: write not accepted: %w", status.Error(codes.FailedPrecondition, "not the leader")), true},
		{fmt.Errorf("cluster: forwarded write: %w", status.Error(codes.Aborted, "leadership lost while committing log")), true},
		{fmt.Errorf("cluster: forwarded write: %w", context.DeadlineExceeded), true},
		{fmt.Errorf("ca: publishing x509 key k: %w", &raftstore.CommandError{Code: codes.FailedPrecondition, Msg: "authority revoked"}), false},
		{&raftstore.CommandError{Code: codes.InvalidArgument, Msg: "bad"}, false},
		{fmt.Errorf("raftstore: apply: %w", raft.ErrRaftShutdown), false},
		{fmt.Errorf("%w: signing the new CA certificate: %w", ca.ErrUpstream, status.Error(codes.Unavailable, "down")), false},
		{errors.New("ca: generating x509 key: no space left"), false},
		{fmt.Errorf("cluster: forwarded write: %w", status.Error(codes.PermissionDenied, "no")), false},
	} {
		if got := transientWrite(tc.err); got != tc.want {
			t.Errorf("transientWrite(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
	if allTransient(nil) {
		t.Error("allTransient(nil): no failure is no reason to retry")
	}
	if allTransient([]error{raft.ErrLeadershipLost, errors.New("permanent")}) {
		t.Error("allTransient with one permanent failure")
	}
	if !allTransient([]error{raft.ErrLeadershipLost, cluster.ErrNoLeader}) {
		t.Error("allTransient with only transient failures")
	}
}

// TestClusterRestartPublishesWhileLeaderStops: a follower restarts
// without its key slot state (as when its keys expired while it was
// down), so it must publish new keys; the leader stops at the moment of
// its first publishing write. The restarted server starts anyway, and its
// keys are in the bundle of the new leader.
func TestClusterRestartPublishesWhileLeaderStops(t *testing.T) {
	mc := newMemCluster(t)
	disk := func(c *Config) { withPlugins(t, c, "disk") }
	first := mc.start("s1", mc.config("s1", "", disk))
	first.waitReady()
	for _, name := range []string{"s2", "s3"} {
		mc.start(name, mc.config(name, "", func(c *Config) { disk(c); c.JoinAddresses = []string{first.cfg.ClusterAddress} })).waitReady()
	}
	l := mc.leader()
	var f *memNode
	for _, n := range mc.live() {
		if n != l {
			f = n
			break
		}
	}
	cfg := f.cfg
	f.stop()
	for _, kind := range []ca.SlotKind{ca.KindX509, ca.KindJWT} {
		if err := os.Remove(filepath.Join(cfg.DataDir, "authorities-"+string(kind)+".json")); err != nil {
			t.Fatal(err)
		}
	}
	var pc publishCounter
	back := mc.startTuned(f.name, cfg, func(c *cluster.Config) {
		// Short, so that a write to the stopped leader fails instead of
		// riding out the election inside cluster.Cluster.Apply.
		c.ForwardRetryFor = 300 * time.Millisecond
		// Called in Run before the store opens: the fault is in place
		// before any write.
		mc.mu.Lock()
		srv := mc.nodes[f.name].srv
		mc.mu.Unlock()
		srv.applyFault = func(_ context.Context, cmd *storepb.Command) error {
			if kind, n := pc.count(cmd); kind != "" && n == 1 {
				l.stop()
			}
			return nil
		}
	})
	back.waitReady()
	if x, j := pc.counts(); x == 0 || j == 0 {
		t.Fatalf("publishing writes: %d X.509, %d JWT; the restarted server published nothing", x, j)
	}
	t.Logf("publishing writes: %v; retry rounds: %d", func() [2]int { x, j := pc.counts(); return [2]int{x, j} }(),
		back.logs.FilterMessage("publishing this server's keys failed; retrying once there is a leader").Len())
	nl := mc.leader()
	if nl == l {
		t.Fatal("the stopped leader is still the leader")
	}
	clusterWait(t, "the restarted server's keys in the new leader's bundle", func() bool {
		pb, err := nl.srv.store.Read().Bundle(testTD.Name())
		if err != nil {
			return false
		}
		okX, okJ := false, false
		for _, a := range pb.X509Authorities {
			okX = okX || (a.ServerId == f.name && bytes.Equal(a.Certificate, back.srv.x509CA().Certificate().Raw))
		}
		for _, a := range pb.JwtAuthorities {
			okJ = okJ || (a.ServerId == f.name && a.KeyId == back.srv.jwtSigner().KeyID())
		}
		return okX && okJ
	})
}
