package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/attestor/node"
	"github.com/sigil-id/sigil/attestor/node/jointoken"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/internal/eventually"
	"github.com/sigil-id/sigil/workloadapi"
)

// reattestName is the attestation type of reattestAttestor.
const reattestName = "reattest_test"

// reattestAttestor is a test-only node attestor that can attest again
// (it is not node.SingleUse), as the platform attestors can: its payload
// is the node's name, and the fake server accepts it unless the agent is
// banned.
type reattestAttestor struct{ name string }

func (reattestAttestor) Name() string { return reattestName }

func (a reattestAttestor) Payload(context.Context) ([]byte, error) { return []byte(a.name), nil }

func (reattestAttestor) Answer(context.Context, []byte) ([]byte, error) {
	return nil, errors.New("reattest_test: no challenges")
}

func (reattestAttestor) ChallengeFree() bool { return true }

var _ node.ChallengeFree = reattestAttestor{}

// attestAgainLocked is the fake server's attestation of reattestAttestor:
// refused for a banned agent, as the real server refuses a banned agent
// ID whatever its evidence; otherwise the agent is (again) known.
func (s *fakeServer) attestAgainLocked(req *sigilv1.AttestRequest) (*sigilv1.AttestResponse, error) {
	id, err := spiffeid.FromSegments(testTD, "sigil", "agent", reattestName, string(req.GetPayload()))
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if s.banned {
		return nil, status.Errorf(codes.PermissionDenied, "agent %s is banned", id)
	}
	pub, err := parseCSR(req.GetCsr())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	chain, err := s.ca.issue(id, pub, s.now(), s.agentTTL)
	if err != nil {
		return nil, err
	}
	s.evicted = false
	return &sigilv1.AttestResponse{SpiffeId: id.String(), SvidChain: derChain(chain), Bundle: s.bundleLocked()}, nil
}

// reattestConfig is the agent configuration of these tests: the
// reattest_test attestor and the fake clock clk, which the fake server
// shares.
func reattestConfig(t *testing.T, srv *fakeServer, clk clock.Clock) Config {
	cfg := srv.config(t, t.TempDir())
	cfg.NodeAttestor = reattestAttestor{name: "node-1"}
	if _, ok := cfg.NodeAttestor.(node.SingleUse); ok {
		t.Fatal("reattestAttestor must not be node.SingleUse")
	}
	cfg.Clock = clk
	srv.now = clk.Now
	return cfg
}

// savedSerial is the serial of the agent SVID saved in dir, read without
// loadIdentity (which would race with a save in progress).
func savedSerial(dir string) string {
	data, err := os.ReadFile(filepath.Join(dir, svidFileName))
	if err != nil {
		return ""
	}
	certs, err := parsePEMCerts(data)
	if err != nil {
		return ""
	}
	return certs[0].SerialNumber.String()
}

// TestAgentReattestsWhenSVIDExpired: an agent whose SVID expired (here:
// the clock jumps past it before the renewal ran) attests again by
// itself, reconnects and serves.
func TestAgentReattestsWhenSVIDExpired(t *testing.T) {
	srv := newFakeServer(t)
	clk := agentClockInPast()
	srv.agentTTL = 10 * time.Minute
	cfg := reattestConfig(t, srv, clk)
	r := startAgent(t, cfg)
	first := savedSerial(cfg.DataDir)
	waitAgentLoopOnClock(t, clk)
	clk.Add(11 * time.Minute) // past renewal and expiry
	eventually.NoError(t, 10*time.Second, func() error {
		attest, renew, syncs := srv.counts()
		if cur := savedSerial(cfg.DataDir); attest == 2 && cur != "" && cur != first && syncs >= 2 {
			if renew != 0 {
				return eventually.Stop(fmt.Errorf("%d renew calls with an expired SVID", renew))
			}
			return nil
		}
		return fmt.Errorf("agent did not re-attest (attest calls %d, sync calls %d)", attest, syncs)
	})
	if want := "spiffe://example.org/sigil/agent/reattest_test/node-1"; r.SPIFFEID().String() != want {
		t.Fatalf("SPIFFEID = %s, want %s", r.SPIFFEID(), want)
	}
	// It serves on the new identity.
	sub := r.Cache().SubscribeX509([]*sigilv1.Selector{sel("uid:3")})
	defer sub.Close()
	srv.upsert(entry("e1", "svc", 1, "uid:3"))
	waitSnapshot(t, sub, func(s *workloadapi.X509Snapshot) bool { return len(s.Identities) == 1 })
	eventually.NoError(t, 10*time.Second, r.Healthy)
	r.stop(t)
}

// TestAgentReattestsWhenEvicted: the server answers the sync stream with
// "not attested (evicted?)" (evicted, or forgotten after a restore from
// an older snapshot); the agent attests again at once, without waiting
// for its clock, resumes the stream, keeps the workload SVIDs it holds
// and mints new ones.
func TestAgentReattestsWhenEvicted(t *testing.T) {
	srv := newFakeServer(t)
	clk := agentClockInPast()
	srv.agentTTL = agentRenewalTTL
	cfg := reattestConfig(t, srv, clk)
	r := startAgent(t, cfg)
	sub := r.Cache().SubscribeX509([]*sigilv1.Selector{sel("uid:3")})
	defer sub.Close()
	srv.upsert(entry("e1", "svc", 1, "uid:3"))
	before := waitSnapshot(t, sub, func(s *workloadapi.X509Snapshot) bool { return len(s.Identities) == 1 })
	serial := leafOf(t, before.Identities[0]).SerialNumber.String()

	srv.mu.Lock()
	srv.evicted = true
	srv.mu.Unlock()
	srv.cutStreams()
	eventually.NoError(t, 10*time.Second, func() error {
		attest, _, syncs := srv.counts()
		if attest == 2 && syncs >= 2 && r.Healthy() == nil {
			return nil
		}
		return fmt.Errorf("agent did not re-attest and resume (attest calls %d, sync calls %d, healthy: %v)", attest, syncs, r.Healthy())
	})
	// The workload SVID minted before the eviction is still served, and a
	// new entry is minted on the new identity.
	srv.upsert(entry("e2", "svc2", 1, "uid:3"))
	after := waitSnapshot(t, sub, func(s *workloadapi.X509Snapshot) bool { return len(s.Identities) == 2 })
	kept := false
	for _, id := range after.Identities {
		if leafOf(t, id).SerialNumber.String() == serial {
			kept = true
		}
	}
	if !kept {
		t.Fatalf("the workload SVID minted before the eviction (serial %s) was not kept", serial)
	}
	r.stop(t)
}

// afterLog is a clock that reports the durations its callers wait for.
type afterLog struct {
	*clock.Fake
	mu    sync.Mutex
	waits []time.Duration
}

func (c *afterLog) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	c.waits = append(c.waits, d)
	c.mu.Unlock()
	return c.Fake.After(d)
}

// backoffWaits returns the waits so far from index from on that are
// agentLoop's retry backoff (in [agentRetryBase/2, agentRetryMax]; the
// other loops wait for other spans in these tests).
func (c *afterLog) backoffWaits(from int) (waits []time.Duration, n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, d := range c.waits[min(from, len(c.waits)):] {
		if d >= agentRetryBase/2 && d <= agentRetryMax {
			waits = append(waits, d)
		}
	}
	return waits, len(c.waits)
}

// TestAgentBannedStaysOut: a banned agent is refused its re-attestation;
// it reports unhealthy with both refusals, and asks again only after a
// capped exponential backoff measured on the fake clock, while its sync
// loop makes no calls at all.
func TestAgentBannedStaysOut(t *testing.T) {
	srv := newFakeServer(t)
	clk := &afterLog{Fake: agentClockInPast()}
	srv.agentTTL = agentRenewalTTL
	cfg := reattestConfig(t, srv, clk)
	r := startAgent(t, cfg)

	srv.mu.Lock()
	srv.banned = true
	srv.mu.Unlock()
	srv.cutStreams()
	eventually.NoError(t, 10*time.Second, func() error {
		err := r.Healthy()
		if err != nil && strings.Contains(err.Error(), "is banned; attesting again was refused") {
			return nil
		}
		return fmt.Errorf("Healthy = %v, want the ban and the refused re-attestation", err)
	})
	_, _, syncs := srv.counts()
	// Each refusal is followed by one backoff wait, then one attempt.
	seen := 0
	var total time.Duration
	const steps = 10
	for k := range steps {
		var d time.Duration
		eventually.NoError(t, 10*time.Second, func() error {
			waits, _ := clk.backoffWaits(0)
			if len(waits) > k {
				d = waits[k]
				return nil
			}
			return fmt.Errorf("agent did not back off after refusal %d (waits %v)", k+1, waits)
		})
		lo, hi := Backoff(agentRetryBase, agentRetryMax, k, 0), Backoff(agentRetryBase, agentRetryMax, k, 1)
		if d < lo || d > hi {
			t.Fatalf("backoff %d = %v, want in [%v, %v]", k+1, d, lo, hi)
		}
		if attest, _, _ := srv.counts(); attest != 2+k {
			t.Fatalf("after %d refusals: %d attest calls, want %d (one per backoff)", k+1, attest, 2+k)
		}
		total += d
		clk.Add(d)
		eventually.NoError(t, 10*time.Second, func() error {
			if attest, _, _ := srv.counts(); attest == 3+k {
				return nil
			}
			return errors.New("no attempt after the backoff")
		})
		seen = k + 1
	}
	_, _, syncsNow := srv.counts()
	t.Logf("%d re-attestation attempts after the first refusal in %v of fake time", seen, total)
	// 2.5+5+10+20+30·6 s at least: the backoff is capped, not stopped.
	if total < 217*time.Second {
		t.Fatalf("%d attempts in only %v", seen, total)
	}
	if syncsNow != syncs {
		t.Fatalf("sync calls went from %d to %d while banned, want none", syncs, syncsNow)
	}
	if err := r.Healthy(); err == nil || !strings.Contains(err.Error(), "banned") {
		t.Fatalf("Healthy = %v, want the ban", err)
	}
	r.stop(t)
}

// TestAgentEvictedJoinTokenAgentDoesNotReattest: an agent attested with
// a join token (node.SingleUse) does not try to attest again when
// evicted; once its SVID expires, it reports the attestor's "cannot
// re-attest" message.
func TestAgentEvictedJoinTokenAgentDoesNotReattest(t *testing.T) {
	srv := newFakeServer(t)
	clk := agentClockInPast()
	srv.now = clk.Now
	srv.agentTTL = agentRenewalTTL
	cfg := srv.config(t, t.TempDir())
	cfg.Clock = clk
	r := startAgent(t, cfg)
	srv.mu.Lock()
	srv.evicted = true
	srv.mu.Unlock()
	srv.cutStreams()
	eventually.NoError(t, 10*time.Second, func() error {
		err := r.Healthy()
		if err != nil && strings.Contains(err.Error(), "not attested (evicted?)") && !strings.Contains(err.Error(), "attesting again") {
			return nil
		}
		return fmt.Errorf("Healthy = %v, want the eviction", err)
	})
	if attest, _, _ := srv.counts(); attest != 1 {
		t.Fatalf("%d attest calls, want 1 (a join token cannot re-attest)", attest)
	}
	waitAgentLoopOnClock(t, clk)
	clk.Add(agentRenewalTTL + time.Minute) // past expiry
	eventually.NoError(t, 10*time.Second, func() error {
		err := r.Healthy()
		if err != nil && strings.Contains(err.Error(), jointoken.SpentMessage) {
			return nil
		}
		return fmt.Errorf("Healthy = %v, want %q", err, jointoken.SpentMessage)
	})
	r.stop(t)
}
