package server

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"io"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"

	"github.com/sigil-id/sigil/alert"
	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/ca/keymanager/memory"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/health"
	"github.com/sigil-id/sigil/internal/clusterpb"
	"github.com/sigil-id/sigil/internal/eventually"
)

// errUnplugged is what a switchStore's authority keys fail with.
var errUnplugged = errors.New("hsm unplugged")

// switchStore is the memory key store whose authority keys (GenerateKey,
// GetKey and their signers) fail while fail is set, like an HSM pulled
// out of a running server.
type switchStore struct {
	memory.Store
	fail *atomic.Bool
}

func (s switchStore) OpenKeyManager(ctx context.Context, scope ca.KeyScope) (ca.KeyManager, error) {
	km, err := s.Store.OpenKeyManager(ctx, scope)
	if err != nil || scope != ca.KeyScopeAuthorities {
		return km, err
	}
	return switchKM{km, s.fail}, nil
}

type switchKM struct {
	inner ca.KeyManager
	fail  *atomic.Bool
}

func (k switchKM) GenerateKey(ctx context.Context, id string, kt ca.KeyType) (crypto.Signer, error) {
	if k.fail.Load() {
		return nil, errUnplugged
	}
	s, err := k.inner.GenerateKey(ctx, id, kt)
	if err != nil {
		return nil, err
	}
	return switchSigner{s, k.fail}, nil
}

func (k switchKM) GetKey(ctx context.Context, id string) (crypto.Signer, error) {
	if k.fail.Load() {
		return nil, errUnplugged
	}
	s, err := k.inner.GetKey(ctx, id)
	if err != nil {
		return nil, err
	}
	return switchSigner{s, k.fail}, nil
}

type switchSigner struct {
	crypto.Signer
	fail *atomic.Bool
}

func (s switchSigner) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if s.fail.Load() {
		return nil, errUnplugged
	}
	return s.Signer.Sign(r, digest, opts)
}

// TestKeyManagerFailingAlert: a server whose key manager fails to sign
// reports it (the AgentReports answer, the metrics), and after
// key_manager_failing_after on the clock the leader's evaluation fires
// SigilKeyManagerFailing for it, critical, with the error; the next
// signature that works resolves it. A bad request is no key failure.
func TestKeyManagerFailingAlert(t *testing.T) {
	clk := clock.NewFake(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
	fail := &atomic.Bool{}
	notifier := &memNotifier{name: "mem", min: alert.Warning}
	dir := t.TempDir()
	cfg := DefaultConfig()
	cfg.TrustDomain = testTD
	cfg.NodeName = "s1"
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.BindAddress = "127.0.0.1:0"
	cfg.AdminSocket = filepath.Join(dir, "admin", "admin.sock")
	cfg.Logger = zap.NewNop()
	cfg.Clock = clk
	cfg.Notifiers = []alert.Notifier{notifier}
	cfg.EvaluateInterval = testEvalInterval
	withPlugins(t, &cfg, "memory")
	cfg.KeyStore = switchStore{memory.NewStore(), fail}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("server run: %v", err)
		}
	})
	select {
	case <-srv.Ready():
	case err := <-done:
		t.Fatalf("server exited: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("server not ready")
	}
	eventually.True(t, 30*time.Second, func() bool { return srv.store.IsLeader() }, "no leader")

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id := spiffeid.RequireFromPath(testTD, "/web")
	sign := func() error {
		_, err := srv.x509CA().SignX509SVID(ctx, ca.X509SVIDParams{PublicKey: key.Public(), SPIFFEID: id})
		return err
	}
	failing := func() float64 { return gaugeSum(t, srv, "sigil_server_key_manager_failing") }
	ops := func(op, outcome string) float64 {
		return metricValue(t, srv, "sigil_server_key_operations_total", map[string]string{"op": op, "outcome": outcome})
	}
	if err := sign(); err != nil {
		t.Fatal(err)
	}
	if failing() != 0 || ops(ca.KeyOpSign, "ok") < 1 || ops(ca.KeyOpGenerate, "ok") < 2 {
		t.Fatalf("working key manager: failing %v, sign ok %v, generate ok %v", failing(), ops(ca.KeyOpSign, "ok"), ops(ca.KeyOpGenerate, "ok"))
	}
	// A request the caller got wrong is no key failure.
	if _, err := srv.x509CA().SignX509SVID(ctx, ca.X509SVIDParams{PublicKey: key.Public(), SPIFFEID: spiffeid.RequireFromPath(spiffeid.RequireTrustDomainFromString("other.org"), "/web")}); err == nil {
		t.Fatal("signed an ID of another trust domain")
	}
	if failing() != 0 || ops(ca.KeyOpSign, "error") != 0 {
		t.Fatal("a bad request counted as a key failure")
	}

	fail.Store(true)
	failedAt := clk.Now()
	if err := sign(); !errors.Is(err, errUnplugged) {
		t.Fatalf("signing with the key manager unplugged: %v", err)
	}
	if failing() != 1 || ops(ca.KeyOpSign, "error") != 1 {
		t.Fatalf("failing %v, sign errors %v; want 1 and 1", failing(), ops(ca.KeyOpSign, "error"))
	}
	resp, err := srv.agentReports(ctx, &clusterpb.AgentReportsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if resp.KeyManagerFailingSince != failedAt.Unix() || !strings.Contains(resp.KeyManagerError, "hsm unplugged") {
		t.Fatalf("AgentReports: failing since %d error %q, want %d and the signing error", resp.KeyManagerFailingSince, resp.KeyManagerError, failedAt.Unix())
	}

	k := health.KeyKeyManagerFailing + "s1"
	untilEval(t, clk, "SigilKeyManagerFailing", func() bool { return raftAlerts(srv)[k] != nil })
	if d := clk.Now().Sub(failedAt); d <= health.DefaultConfig().KeyManagerFailingAfter {
		t.Fatalf("fired %v after the first failure, before the threshold", d)
	}
	r := raftAlerts(srv)[k]
	if r.Name != health.NameKeyManagerFailing || r.Severity != string(alert.Critical) || r.Details["server"] != "s1" ||
		r.Details["since"] != failedAt.UTC().Format(time.RFC3339) || !strings.Contains(r.Details["last_error"], "hsm unplugged") {
		t.Fatalf("alert = %+v", r)
	}
	eventually.True(t, 10*time.Second, func() bool { n, _, _ := sentTo(notifier, k); return n > 0 }, "alert not sent")

	fail.Store(false)
	if err := sign(); err != nil {
		t.Fatal(err)
	}
	if failing() != 0 {
		t.Fatal("key manager still failing after a signature that worked")
	}
	untilEval(t, clk, "resolution", func() bool { return raftAlerts(srv)[k] == nil })
	eventually.True(t, 10*time.Second, func() bool { _, _, n := sentTo(notifier, k); return n > 0 }, "resolution not sent")
}

// TestGatherHealthKeyManagerStates: the leader's gather carries every
// server's key manager state (a follower's through its AgentReports
// answer, its error bounded), and keeps a stopped member's last known
// state.
func TestGatherHealthKeyManagerStates(t *testing.T) {
	mc := startMemCluster(t, 3)
	l := mc.leader()
	var f, g *memNode
	for _, n := range mc.live() {
		switch {
		case n == l:
		case f == nil:
			f = n
		default:
			g = n
		}
	}
	ctx := context.Background()
	g.srv.keys.KeyFailed(ca.KeyOpSign, errors.New("pkcs11: CKR_DEVICE_REMOVED "+strings.Repeat("é", 200)))
	since, _ := g.srv.keys.state()
	byName := func(v healthView) map[string]health.Server {
		out := map[string]health.Server{}
		for _, s := range v.Servers {
			if _, dup := out[s.Name]; dup {
				t.Fatalf("two states for %s", s.Name)
			}
			out[s.Name] = s
		}
		return out
	}
	check := func(what string, got map[string]health.Server, n int) {
		t.Helper()
		if len(got) != n {
			t.Fatalf("%s: states of %d servers, want %d: %+v", what, len(got), n, got)
		}
		if s := got[l.name]; !s.KeyManagerFailingSince.IsZero() || s.KeyManagerError != "" {
			t.Fatalf("%s: leader's state %+v, want working", what, s)
		}
		s := got[g.name]
		if !s.KeyManagerFailingSince.Equal(since.Truncate(time.Second)) || !strings.HasPrefix(s.KeyManagerError, "pkcs11: CKR_DEVICE_REMOVED") ||
			len(s.KeyManagerError) > health.MaxErrorLen || !utf8.ValidString(s.KeyManagerError) {
			t.Fatalf("%s: %s's state %+v (%d bytes), want failing since %v", what, g.name, s, len(s.KeyManagerError), since)
		}
	}
	check("gather", byName(l.srv.gatherHealth(ctx)), 3)
	got := byName(l.srv.gatherHealth(ctx))
	if s, ok := got[f.name]; !ok || !s.KeyManagerFailingSince.IsZero() {
		t.Fatalf("%s's state %+v, want working", f.name, s)
	}
	g.stop()
	v := l.srv.gatherHealth(ctx)
	if v.Unreachable[g.name] == nil {
		t.Fatalf("%s not unreachable after it stopped", g.name)
	}
	check("after "+g.name+" stopped", byName(v), 3)
}
