package server

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/attestor/node"
	"github.com/sigil-id/sigil/clock"
)

// onceName is the attestation type of the test-only use-once attestor.
const onceName = "once_test"

// onceKind is the use-once credential kind onceVerifier consumes.
const onceKind = onceName + ":jti"

// onceRefused is onceVerifier's public refusal of a used token.
const onceRefused = "the token was already used"

// onceVerifier is a test-only verifier of a token that works once until
// it expires, as a signed token with a jti would: the payload is
// "<node name> <jti>", valid for ttl from the server's time. It looks the
// jti up with State.Used and names it in Result.Consume; with
// skipUsedCheck it does not look (a verifier that leaves the check to the
// server's Raft apply). consume, when set, replaces what it consumes (a
// buggy verifier).
type onceVerifier struct {
	ttl           time.Duration
	skipUsedCheck atomic.Bool
	consume       func(now time.Time, jti string) []node.Credential
}

func (*onceVerifier) Name() string { return onceName }

func (v *onceVerifier) Verify(ctx context.Context, st node.State, ex node.Exchange) (*node.Result, error) {
	name, jti, ok := strings.Cut(string(ex.Payload()), " ")
	if !ok || name == "" || jti == "" {
		return nil, errors.New("once_test: the payload is not \"<name> <jti>\"")
	}
	cred := node.Credential{Kind: onceKind, ID: jti, ExpiresAt: st.Now().Add(v.ttl)}
	if !v.skipUsedCheck.Load() {
		used, err := st.Used(ctx, cred)
		if err != nil {
			return nil, fmt.Errorf("once_test: %w", err)
		}
		if used {
			return nil, fmt.Errorf("once_test: %w", &node.RefusedError{Public: onceRefused, Reason: "jti " + jti + " was used"})
		}
	}
	consume := []node.Credential{cred}
	if v.consume != nil {
		consume = v.consume(st.Now(), jti)
	}
	return &node.Result{ID: name, Selectors: []*sigilv1.Selector{{Type: onceName, Value: name}}, Consume: consume}, nil
}

func onceAttest(ctx context.Context, t *testing.T, c sigilv1.NodeClient, name, jti string) (*sigilv1.AttestResponse, error) {
	return c.Attest(ctx, &sigilv1.AttestRequest{AttestationType: onceName, Payload: []byte(name + " " + jti), Csr: attackCSR(t)})
}

// scrape returns the server's metrics as /metrics serves them.
func (h *harness) scrape() string {
	h.t.Helper()
	rec := httptest.NewRecorder()
	h.srv.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	return rec.Body.String()
}

func auditWhat(what string) zapcore.Field { return zap.String("audit", what) }

// refusalReasons lists the reason fields of the node_attestation_refused
// audit events logged so far.
func (h *harness) refusalReasons() []string {
	var out []string
	for _, e := range h.logs.FilterField(auditWhat("node_attestation_refused")).All() {
		out = append(out, fmt.Sprint(e.ContextMap()["attestation_type"], "/", e.ContextMap()["reason"]))
	}
	return out
}

// TestAttestUseOnceCredential: an attestor that consumes a use-once
// credential attests once; a second attestation with the same credential
// is refused with nothing signed or written, whether the verifier finds
// it used in State.Used (its own refusal) or leaves that to the server
// (the server's check of its store, before signing); once the record has
// expired (fake clock) the same credential is accepted again. Each
// refusal is an audit event with the reason "replayed" or "refused", and
// the metric counts them.
func TestAttestUseOnceCredential(t *testing.T) {
	// A whole second, so that the records' expiry (rounded up to the
	// second) is exactly ttl later.
	clk := clock.NewFake(time.Unix(time.Now().Unix(), 0))
	h := startServerWith(t, clk, nil)
	v := &onceVerifier{ttl: 10 * time.Minute}
	h.addVerifier(v)
	c := h.nodeClient(nil)
	ctx := context.Background()

	resp, err := onceAttest(ctx, t, c, "n1", "jti-1")
	if err != nil {
		t.Fatalf("first attestation: %v", err)
	}
	if want := "spiffe://example.org/sigil/agent/once_test/n1"; resp.SpiffeId != want {
		t.Fatalf("agent %s, want %s", resp.SpiffeId, want)
	}
	rec, err := h.srv.store.Read().UsedCredential(onceKind, "jti-1")
	if err != nil || rec.SpiffeId != resp.SpiffeId || rec.ExpiresAt < clk.Now().Add(10*time.Minute).Unix() {
		t.Fatalf("record %v %v", rec, err)
	}
	if used, err := (nodeState{s: h.srv, attestor: onceName}).Used(ctx, node.Credential{Kind: onceKind, ID: "jti-1"}); !used || err != nil {
		t.Fatalf("State.Used = %v, %v; want true", used, err)
	}
	if used, err := (nodeState{s: h.srv, attestor: onceName}).Used(ctx, node.Credential{Kind: onceKind, ID: "jti-2"}); used || err != nil {
		t.Fatalf("State.Used of an unused credential = %v, %v", used, err)
	}
	if _, err := (nodeState{s: h.srv, attestor: onceName}).Used(ctx, node.Credential{Kind: "join_token", ID: "x"}); err == nil {
		t.Fatal("State.Used answered for a join token")
	}

	before := h.nodeAttackState()
	_, err = onceAttest(ctx, t, c, "n2", "jti-1")
	if status.Code(err) != codes.PermissionDenied || status.Convert(err).Message() != "attestation failed: "+onceRefused {
		t.Fatalf("replay: %v, want the verifier's refusal", err)
	}
	v.skipUsedCheck.Store(true)
	_, err = onceAttest(ctx, t, c, "n2", "jti-1")
	if status.Code(err) != codes.PermissionDenied || status.Convert(err).Message() != "attestation failed: "+replayedMessage {
		t.Fatalf("replay past a verifier that does not check: %v, want the server's refusal", err)
	}
	h.requireNodeAttackState("replays", before)
	if n := h.logs.FilterMessage("agent attested").Len(); n != 1 {
		t.Fatalf("%d agents attested, want 1", n)
	}

	// One second before the record expires it still counts; at expiry it
	// does not.
	clk.Add(10*time.Minute - time.Second)
	c = h.nodeClient(nil) // the guard closed the idle unauthenticated connection
	if _, err := onceAttest(ctx, t, c, "n2", "jti-1"); status.Code(err) != codes.PermissionDenied ||
		status.Convert(err).Message() != "attestation failed: "+replayedMessage {
		t.Fatalf("replay before expiry: %v", err)
	}
	clk.Add(time.Second)
	c = h.nodeClient(nil)
	v.skipUsedCheck.Store(false)
	resp, err = onceAttest(ctx, t, c, "n2", "jti-1")
	if err != nil {
		t.Fatalf("attestation after the record expired: %v", err)
	}
	if rec, err := h.srv.store.Read().UsedCredential(onceKind, "jti-1"); err != nil || rec.SpiffeId != resp.SpiffeId {
		t.Fatalf("renewed record %v %v", rec, err)
	}

	got := strings.Join(h.refusalReasons(), ",")
	if want := "once_test/refused,once_test/replayed,once_test/replayed"; got != want {
		t.Errorf("audited refusals %s, want %s", got, want)
	}
	metrics := h.scrape()
	for _, line := range []string{
		`sigil_server_node_attestations_total{attestor="once_test",outcome="accepted",reason="ok"} 2`,
		`sigil_server_node_attestations_total{attestor="once_test",outcome="refused",reason="refused"} 1`,
		`sigil_server_node_attestations_total{attestor="once_test",outcome="refused",reason="replayed"} 2`,
	} {
		if !strings.Contains(metrics, line+"\n") {
			t.Errorf("metrics lack %s", line)
		}
	}
}

// TestAttestUseOnceConcurrent: attestations racing with one use-once
// credential (the verifier leaves the check to the server, as on a
// follower that has not heard of the first use yet): exactly one wins,
// one node is recorded and the others are refused.
func TestAttestUseOnceConcurrent(t *testing.T) {
	h := startServerWith(t, clock.NewFake(time.Now()), nil)
	v := &onceVerifier{ttl: time.Hour}
	v.skipUsedCheck.Store(true)
	h.addVerifier(v)
	c := h.nodeClient(nil)
	before := h.nodeAttackState()
	const n = 8
	var wg sync.WaitGroup
	var won atomic.Int32
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := onceAttest(context.Background(), t, c, fmt.Sprintf("n%d", i), "shared")
			switch {
			case err == nil:
				won.Add(1)
			case status.Code(err) != codes.PermissionDenied:
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("loser refused with %v, want PermissionDenied", err)
	}
	if won.Load() != 1 {
		t.Fatalf("%d attestations won, want exactly 1", won.Load())
	}
	if got := h.nodeAttackState(); got.agents != before.agents+1 {
		t.Fatalf("%d agents recorded, want %d", got.agents, before.agents+1)
	}
}

// TestAttestBadConsumeRefused: a verifier that asks to consume a bad
// use-once credential (no expiry, one beyond 24 hours, an empty or
// overlong ID, a bad kind, one credential twice, too many) is refused
// with Internal before anything is signed or written, audited with the
// reason "internal".
func TestAttestBadConsumeRefused(t *testing.T) {
	clk := clock.NewFake(time.Now())
	h := startServerWith(t, clk, nil)
	v := &onceVerifier{ttl: time.Hour}
	h.addVerifier(v)
	c := h.nodeClient(nil)
	one := func(kind, id string, exp time.Duration) func(time.Time, string) []node.Credential {
		return func(now time.Time, _ string) []node.Credential {
			cred := node.Credential{Kind: kind, ID: id}
			if exp != 0 {
				cred.ExpiresAt = now.Add(exp)
			}
			return []node.Credential{cred}
		}
	}
	cases := map[string]func(time.Time, string) []node.Credential{
		"no expiry":   one(onceKind, "a", 0),
		"expired":     one(onceKind, "a", -time.Second),
		"beyond 24h":  one(onceKind, "a", 24*time.Hour+time.Second),
		"empty id":    one(onceKind, "", time.Hour),
		"overlong id": one(onceKind, strings.Repeat("i", 257), time.Hour),
		"bad kind":    one("once test", "a", time.Hour),
		"empty kind":  one("", "a", time.Hour),
		"twice": func(now time.Time, _ string) []node.Credential {
			cred := node.Credential{Kind: onceKind, ID: "a", ExpiresAt: now.Add(time.Hour)}
			return []node.Credential{cred, cred}
		},
		"too many": func(now time.Time, _ string) []node.Credential {
			var out []node.Credential
			for i := range 17 {
				out = append(out, node.Credential{Kind: onceKind, ID: fmt.Sprint(i), ExpiresAt: now.Add(time.Hour)})
			}
			return out
		},
	}
	before := h.nodeAttackState()
	for name, consume := range cases {
		v.consume = consume
		h.addVerifier(v) // under the guard's lock: the handler sees consume
		if _, err := onceAttest(context.Background(), t, c, "n1", "j"); status.Code(err) != codes.Internal {
			t.Errorf("%s: %v, want Internal", name, err)
		}
	}
	h.requireNodeAttackState("bad credentials", before)
	for _, r := range h.refusalReasons() {
		if r != "once_test/internal" {
			t.Errorf("refusal audited as %s, want once_test/internal", r)
		}
	}
	if got := len(h.refusalReasons()); got != len(cases) {
		t.Errorf("%d refusals audited, want %d", got, len(cases))
	}
	// The limits themselves pass.
	v.consume = one(onceKind, strings.Repeat("i", 256), 24*time.Hour)
	h.addVerifier(v)
	if _, err := onceAttest(context.Background(), t, c, "n1", "j"); err != nil {
		t.Fatalf("credential at the limits: %v", err)
	}
}

// TestAttestRefusalMetricsBounded: refusals are counted by attestor and a
// fixed reason: an unknown attestation type (whatever the caller wrote)
// under attestor "unknown", malformed evidence, and an oversized request;
// the caller's free text never becomes a label.
func TestAttestRefusalMetricsBounded(t *testing.T) {
	h := startServerWith(t, clock.NewFake(time.Now()), func(l *nodeLimits) { l.MaxAttestRequestSize = 4096 })
	h.addVerifier(&onceVerifier{ttl: time.Hour})
	c := h.nodeClient(nil)
	ctx := context.Background()
	for _, typ := range []string{"made-up-1", "made-up-2", strings.Repeat("x", 100)} {
		if _, err := c.Attest(ctx, &sigilv1.AttestRequest{AttestationType: typ, Csr: attackCSR(t)}); status.Code(err) != codes.InvalidArgument {
			t.Fatalf("unknown type %q: %v", typ, err)
		}
	}
	if _, err := c.Attest(ctx, &sigilv1.AttestRequest{AttestationType: onceName, Payload: []byte("no-jti"), Csr: attackCSR(t)}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("malformed evidence: %v", err)
	}
	if _, err := c.Attest(ctx, &sigilv1.AttestRequest{AttestationType: onceName, Payload: make([]byte, 5000), Csr: attackCSR(t)}); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("oversized request: %v", err)
	}
	if _, err := onceAttest(ctx, t, c, "n1", "j"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Attest(ctx, &sigilv1.AttestRequest{AttestationType: onceName, Payload: []byte("n2 j2"), Csr: []byte("not a CSR")}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("bad CSR: %v", err)
	}
	metrics := h.scrape()
	for _, line := range []string{
		`sigil_server_node_attestations_total{attestor="unknown",outcome="refused",reason="unknown_type"} 3`,
		`sigil_server_node_attestations_total{attestor="once_test",outcome="refused",reason="malformed"} 2`,
		`sigil_server_node_attestations_total{attestor="once_test",outcome="refused",reason="too_large"} 1`,
		`sigil_server_node_attestations_total{attestor="once_test",outcome="accepted",reason="ok"} 1`,
	} {
		if !strings.Contains(metrics, line+"\n") {
			t.Errorf("metrics lack %s", line)
		}
	}
	if strings.Contains(metrics, "made-up") || strings.Contains(metrics, "xxxx") {
		t.Error("a caller's attestation type became a label")
	}
	var series int
	for _, l := range strings.Split(metrics, "\n") {
		if strings.HasPrefix(l, "sigil_server_node_attestations_total{") {
			series++
		}
	}
	if series != 4 {
		t.Errorf("%d series, want 4:\n%s", series, metrics)
	}
	got := strings.Join(h.refusalReasons(), ",")
	want := "made-up-1/unknown_type,made-up-2/unknown_type," + strings.Repeat("x", 64) + "…/unknown_type,once_test/malformed,once_test/too_large,once_test/malformed"
	if got != want {
		t.Errorf("audited refusals\n%s, want\n%s", got, want)
	}
}
