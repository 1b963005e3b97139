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
	"github.com/sigil-id/sigil/raftstore"
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
	firstUse      bool // admit each name once (Result.FirstAttestation), consuming nothing
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
	if v.firstUse {
		consume = nil
	}
	return &node.Result{ID: name, Selectors: []*sigilv1.Selector{{Type: onceName, Value: name}}, Consume: consume, FirstAttestation: v.firstUse}, nil
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
	if _, err := (nodeState{s: h.srv, attestor: "oidc"}).Used(ctx, node.Credential{Kind: onceKind, ID: "jti-1"}); err == nil {
		t.Fatal("State.Used answered for another attestor's kind")
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
// overlong ID, a bad kind, another attestor's kind, one credential twice,
// too many) is refused
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
		"no expiry":               one(onceKind, "a", 0),
		"expired":                 one(onceKind, "a", -time.Second),
		"beyond 24h":              one(onceKind, "a", 24*time.Hour+time.Second),
		"empty id":                one(onceKind, "", time.Hour),
		"overlong id":             one(onceKind, strings.Repeat("i", 257), time.Hour),
		"bad kind":                one("once test", "a", time.Hour),
		"empty kind":              one("", "a", time.Hour),
		"another attestor's kind": one("oidc:jti", "a", time.Hour),
		"a kind with a prefix":    one("once_test2", "a", time.Hour),
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

// TestAttestApplyRefusalReasons: how a refused or failed AttestNode write
// is told to the caller and counted: a use-once credential another
// server recorded first (AlreadyExists in the state machine) is
// "replayed" with the replay message; a node banned meanwhile is
// "banned"; a join token consumed meanwhile "replayed"; another refusal
// of the state machine (a server bug) "internal"; a write that timed out
// "deadline", one that could not be made "unavailable".
func TestAttestApplyRefusalReasons(t *testing.T) {
	h := startServerWith(t, clock.NewFake(time.Now()), nil)
	n := &nodeAPI{s: h.srv}
	banned := h.attest()
	if _, err := h.admin.BanAgent(context.Background(), &sigilv1.BanAgentRequest{SpiffeId: banned.id}); err != nil {
		t.Fatal(err)
	}
	other := "spiffe://example.org/sigil/agent/once_test/n1"
	cases := []struct {
		name     string
		agent    string
		useOnce  bool
		err      error
		reason   string
		code     codes.Code
		contains string
	}{
		{"use-once recorded first", other, true, &raftstore.CommandError{Code: codes.AlreadyExists, Msg: `a credential of kind "x" was already used`},
			reasonReplayed, codes.PermissionDenied, replayedMessage},
		{"banned", banned.id, false, &raftstore.CommandError{Code: codes.PermissionDenied, Msg: "node is banned"},
			reasonBanned, codes.PermissionDenied, "banned"},
		{"join token consumed", other, false, &raftstore.CommandError{Code: codes.PermissionDenied, Msg: "join token is invalid or expired"},
			reasonReplayed, codes.PermissionDenied, "join token"},
		{"state machine bug", other, true, &raftstore.CommandError{Code: codes.InvalidArgument, Msg: "bad"},
			reasonInternal, codes.InvalidArgument, "bad"},
		{"timed out", other, false, fmt.Errorf("cluster: write: %w", context.DeadlineExceeded), reasonDeadline, codes.DeadlineExceeded, ""},
		{"no leader", other, false, errors.New("cluster: write not accepted"), reasonUnavailable, codes.Unavailable, "not accepted"},
	}
	for _, tc := range cases {
		reason, public := n.applyRefusal(tc.agent, tc.useOnce, tc.err)
		if reason != tc.reason || status.Code(public) != tc.code || !strings.Contains(status.Convert(public).Message(), tc.contains) {
			t.Errorf("%s: reason %s, status %v; want %s, %v containing %q", tc.name, reason, public, tc.reason, tc.code, tc.contains)
		}
	}
}

// TestClusterUseOnceCredentialReplicated: on a cluster of two servers,
// the record of a use-once credential used through one server (a
// follower, whose write is forwarded) reaches the other, which refuses a
// replay; attestations racing with one credential through both servers
// at once (verifiers that leave the check to the Raft apply) yield
// exactly one agent.
func TestClusterUseOnceCredentialReplicated(t *testing.T) {
	v := &onceVerifier{ttl: time.Hour}
	addV := func(c *Config) { c.NodeVerifiers = append(c.NodeVerifiers, v) }
	mc := newMemCluster(t)
	first := mc.start("s1", mc.config("s1", "", addV))
	first.waitReady()
	mc.start("s2", mc.config("s2", "", func(c *Config) {
		addV(c)
		c.JoinAddresses = []string{first.cfg.ClusterAddress}
	})).waitReady()
	l := mc.leader()
	var f *memNode
	for _, n := range mc.live() {
		if n != l {
			f = n
		}
	}
	ctx := context.Background()
	leaderC := (&harness{t: t, srv: l.srv}).nodeClient(nil)
	followerC := (&harness{t: t, srv: f.srv}).nodeClient(nil)

	if _, err := onceAttest(ctx, t, followerC, "n1", "j1"); err != nil {
		t.Fatalf("attestation through the follower: %v", err)
	}
	clusterWait(t, "the record on the leader", func() bool {
		used, err := (nodeState{s: l.srv, attestor: onceName}).Used(ctx, node.Credential{Kind: onceKind, ID: "j1"})
		return err == nil && used
	})
	v.skipUsedCheck.Store(true)
	if _, err := onceAttest(ctx, t, leaderC, "n2", "j1"); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("replay through the leader: %v", err)
	}

	const n = 8
	var wg sync.WaitGroup
	var won atomic.Int32
	errs := make(chan error, n)
	for i := range n {
		c := leaderC
		if i%2 == 1 {
			c = followerC
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := onceAttest(ctx, t, c, fmt.Sprintf("r%d", i), "shared")
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
	agents := 0
	for i := range n {
		if _, err := l.srv.store.Read().Node(fmt.Sprintf("spiffe://example.org/sigil/agent/once_test/r%d", i)); err == nil {
			agents++
		}
	}
	if agents != 1 {
		t.Fatalf("%d racing agents recorded, want 1", agents)
	}
}

// TestAttestStreamRefusalReasons: refusals of the attestation in rounds
// are audited and counted with their reasons: a wrong answer ("refused"),
// the unary Attest of an attestor that needs a round ("rounds"), a
// verifier asking for more rounds than allowed ("rounds"), and a first
// message that is not the attestation request ("malformed", attestor
// "unknown").
func TestAttestStreamRefusalReasons(t *testing.T) {
	key := []byte("test hmac key")
	h := startServerWith(t, clock.NewFake(time.Now()), func(l *nodeLimits) { l.MaxAttestRounds = 1 })
	h.addVerifier(hmacVerifier{key: key, rounds: 1})
	c := h.nodeClient(nil)
	ctx := context.Background()
	req := &sigilv1.AttestRequest{AttestationType: hmacName, Payload: []byte("node-1"), Csr: attackCSR(t)}

	if _, _, err := streamAttest(ctx, c, req, func([]byte) []byte { return make([]byte, 32) }); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("wrong answer: %v", err)
	}
	if _, err := c.Attest(ctx, req); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("unary Attest of a challenge attestor: %v", err)
	}
	h.addVerifier(hmacVerifier{key: key, rounds: 2})
	right := func(nonce []byte) []byte { return hmacAnswer(key, nonce, "node-1") }
	if _, _, err := streamAttest(ctx, c, req, right); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("too many rounds: %v", err)
	}
	stream, err := c.AttestStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&sigilv1.AttestStreamRequest{Step: &sigilv1.AttestStreamRequest_Answer{Answer: []byte("x")}}); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("answer first: %v", err)
	}
	got := strings.Join(h.refusalReasons(), ",")
	if want := "hmac_test/refused,hmac_test/rounds,hmac_test/rounds,/malformed"; got != want {
		t.Errorf("audited refusals %s, want %s", got, want)
	}
	metrics := h.scrape()
	for _, line := range []string{
		`sigil_server_node_attestations_total{attestor="hmac_test",outcome="refused",reason="refused"} 1`,
		`sigil_server_node_attestations_total{attestor="hmac_test",outcome="refused",reason="rounds"} 2`,
		`sigil_server_node_attestations_total{attestor="unknown",outcome="refused",reason="malformed"} 1`,
	} {
		if !strings.Contains(metrics, line+"\n") {
			t.Errorf("metrics lack %s", line)
		}
	}
}

// TestAttestFirstAttestationConcurrent: of concurrent first attestations
// of one node (trust on first use) exactly one gets in, whatever each
// verifier saw; the others are refused with PermissionDenied and the
// reason "replayed"; after an eviction the node attests again.
func TestAttestFirstAttestationConcurrent(t *testing.T) {
	h := startServerWith(t, clock.NewFake(time.Now()), nil)
	v := &onceVerifier{ttl: time.Hour, firstUse: true}
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
			_, err := onceAttest(context.Background(), t, c, "node", fmt.Sprintf("j%d", i))
			switch {
			case err == nil:
				won.Add(1)
			case status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "already attested"):
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("loser refused with %v, want PermissionDenied: already attested", err)
	}
	if won.Load() != 1 {
		t.Fatalf("%d first attestations won, want exactly 1", won.Load())
	}
	if got := h.nodeAttackState(); got.agents != before.agents+1 {
		t.Fatalf("%d agents recorded, want %d", got.agents, before.agents+1)
	}
	if _, err := onceAttest(context.Background(), t, c, "node", "later"); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("a later first attestation: %v, want PermissionDenied", err)
	}
	id := "spiffe://" + testTD.Name() + "/sigil/agent/" + onceName + "/node"
	if _, err := h.admin.EvictAgent(context.Background(), &sigilv1.EvictAgentRequest{SpiffeId: id}); err != nil {
		t.Fatal(err)
	}
	if _, err := onceAttest(context.Background(), t, c, "node", "after-evict"); err != nil {
		t.Fatalf("first attestation after eviction: %v", err)
	}
}
