package jointoken_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-id/sigil/attestor/node"
	"github.com/sigil-id/sigil/attestor/node/jointoken"
	"github.com/sigil-id/sigil/clock"
)

const known = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// memState is an in-memory node.State: join token hashes and their
// expiry, and a fake clock (at t0 unless a test moves it).
type memState struct {
	mu      sync.Mutex
	clk     *clock.Fake
	tokens  map[string]time.Time
	lookups int
	err     error
}

func newMemState(tokens ...string) *memState {
	m := &memState{clk: clock.NewFake(t0), tokens: map[string]time.Time{}}
	for _, t := range tokens {
		m.tokens[jointoken.Hash(t)] = t0.Add(10 * time.Minute)
	}
	return m
}

func (m *memState) Now() time.Time { return m.clk.Now() }

// Used: join tokens are pre-issued records, never use-once ones.
func (m *memState) Used(context.Context, node.Credential) (bool, error) {
	return false, errors.New("memState keeps no use-once records")
}

// Agent: the join-token verifier does not look agents up.
func (m *memState) Agent(context.Context, string) (node.AgentRecord, error) {
	return node.AgentRecord{}, node.ErrNotFound
}

func (m *memState) CredentialExpiry(_ context.Context, c node.Credential) (time.Time, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.lookups++
	if m.err != nil {
		return time.Time{}, m.err
	}
	if c.Kind != node.CredentialJoinToken {
		return time.Time{}, node.ErrNotFound
	}
	exp, ok := m.tokens[c.ID]
	if !ok {
		return time.Time{}, node.ErrNotFound
	}
	return exp, nil
}

// payloadOnly is a node.Exchange that carries a payload and allows no
// challenge round, as the server's unary Attest; it counts the
// challenges a verifier tried to send.
type payloadOnly struct {
	payload    []byte
	challenges int
}

func (p *payloadOnly) Payload() []byte { return p.payload }

func (p *payloadOnly) Challenge(context.Context, []byte) ([]byte, error) {
	p.challenges++
	return nil, node.ErrRoundsExhausted
}

// verify runs v on payload against st and fails the test if the verifier
// tried to send a challenge (the join token verifier sends none).
func verify(t testing.TB, ctx context.Context, v node.Verifier, st node.State, payload []byte) (*node.Result, error) {
	t.Helper()
	ex := &payloadOnly{payload: payload}
	res, err := v.Verify(ctx, st, ex)
	if ex.challenges != 0 {
		t.Fatalf("the join token verifier sent %d challenges", ex.challenges)
	}
	return res, err
}

func (m *memState) count() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lookups
}

func TestGenerate(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 100; i++ {
		tok, err := jointoken.Generate()
		if err != nil {
			t.Fatal(err)
		}
		if err := jointoken.Validate(tok); err != nil {
			t.Fatalf("generated token is malformed: %v", err)
		}
		if seen[tok] {
			t.Fatal("duplicate token")
		}
		seen[tok] = true
	}
}

func TestHashAndSegment(t *testing.T) {
	sum := sha256.Sum256([]byte(known))
	want := hex.EncodeToString(sum[:])
	if got := jointoken.Hash(known); got != want {
		t.Errorf("Hash = %s, want %s", got, want)
	}
	if got := jointoken.AgentIDSegment(known); got != want[:32] || len(got) != 32 {
		t.Errorf("AgentIDSegment = %s, want %s", got, want[:32])
	}
	if jointoken.Hash(known) == jointoken.Hash(strings.Replace(known, "0", "1", 1)) {
		t.Error("different tokens hash alike")
	}
	// The segment must be a valid SPIFFE ID path segment.
	if _, err := spiffeid.FromSegments(spiffeid.RequireTrustDomainFromString("example.org"),
		"sigil", "agent", jointoken.Name, jointoken.AgentIDSegment(known)); err != nil {
		t.Errorf("segment is not a valid path segment: %v", err)
	}
}

func TestVerify(t *testing.T) {
	st := newMemState(known)
	v := jointoken.NewVerifier()
	if v.Name() != "join_token" {
		t.Errorf("Name = %q", v.Name())
	}
	tests := []struct {
		name    string
		payload string
		wantErr bool
	}{
		{"valid", known, false},
		{"empty", "", true},
		{"short", known[:63], true},
		{"long", known + "0", true},
		{"uppercase", strings.ToUpper(known), true},
		{"non hex", strings.Replace(known, "a", "g", 1), true},
		{"trailing newline", known[:63] + "\n", true},
		{"surrounding space", " " + known + " ", true},
		{"multibyte", strings.Repeat("é", 32), true},
		{"nul", known[:63] + "\x00", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lookups := st.count()
			res, err := verify(t, context.Background(), v, st, []byte(tt.payload))
			if tt.wantErr {
				if err == nil {
					t.Fatalf("accepted %q: %+v", tt.payload, res)
				}
				if !errors.Is(err, jointoken.ErrMalformed) {
					t.Errorf("err = %v, want ErrMalformed", err)
				}
				if n := st.count() - lookups; n != 0 {
					t.Errorf("a malformed token cost %d state lookups", n)
				}
				if len(tt.payload) > 8 && strings.Contains(err.Error(), strings.TrimSpace(tt.payload)) {
					t.Errorf("error echoes the token: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			seg := jointoken.AgentIDSegment(tt.payload)
			if res.ID != seg {
				t.Errorf("ID = %q, want %q", res.ID, seg)
			}
			if len(res.Selectors) != 1 || res.Selectors[0].GetType() != "join_token" || res.Selectors[0].GetValue() != seg {
				t.Errorf("Selectors = %v", res.Selectors)
			}
			want := []node.Credential{{Kind: node.CredentialJoinToken, ID: jointoken.Hash(tt.payload)}}
			if !slices.Equal(res.Consume, want) {
				t.Errorf("Consume = %+v, want %+v", res.Consume, want)
			}
			if strings.Contains(res.ID, tt.payload) || strings.Contains(res.Consume[0].ID, tt.payload) {
				t.Error("result reveals the token")
			}
		})
	}
}

func TestVerifyCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := verify(t, ctx, jointoken.NewVerifier(), newMemState(known), []byte(known)); err == nil {
		t.Error("Verify ignored a canceled context")
	}
}

func TestAttestor(t *testing.T) {
	tests := []struct {
		name    string
		token   string
		want    string
		wantErr string
	}{
		{"valid", known, known, ""},
		{"trailing newline from a file", known + "\n", known, ""},
		{"empty", "", "", "no join token"},
		{"blank", " \n", "", "no join token"},
		{"malformed", "not-a-token", "", "malformed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := jointoken.NewAttestor(tt.token)
			if a.Name() != jointoken.Name {
				t.Errorf("Name = %q", a.Name())
			}
			p, err := a.Payload(context.Background())
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if string(p) != tt.want {
				t.Errorf("payload = %q, want %q", p, tt.want)
			}
			// Round trip: the server accepts what the agent sends.
			res, err := verify(t, context.Background(), jointoken.NewVerifier(), newMemState(tt.want), p)
			if err != nil {
				t.Fatal(err)
			}
			if res.ID != jointoken.AgentIDSegment(tt.want) {
				t.Errorf("round trip ID = %q", res.ID)
			}
		})
	}
}

// TestVerifyChecksState: a well-formed token that the state does not hold,
// or holds expired, is refused with one public message whatever the
// reason; the precise reason is only in the error's Reason.
func TestVerifyChecksState(t *testing.T) {
	expired := strings.Repeat("ab", 32)
	st := newMemState(known)
	st.tokens[jointoken.Hash(expired)] = t0
	clk := st.clk
	v := jointoken.NewVerifier()

	unknown := strings.Repeat("cd", 32)
	var reasons []string
	for _, tok := range []string{unknown, expired} {
		res, err := verify(t, context.Background(), v, st, []byte(tok))
		var re *node.RefusedError
		if !errors.As(err, &re) {
			t.Fatalf("token %s…: got %v, %+v; want a RefusedError", tok[:4], err, res)
		}
		if re.Public != jointoken.RefusedMessage {
			t.Errorf("public message %q, want %q", re.Public, jointoken.RefusedMessage)
		}
		if strings.Contains(err.Error(), tok) || strings.Contains(err.Error(), jointoken.Hash(tok)) {
			t.Errorf("error reveals the token or its hash: %v", err)
		}
		reasons = append(reasons, re.Reason)
	}
	if reasons[0] == reasons[1] || !strings.Contains(reasons[1], "expired") {
		t.Errorf("reasons do not tell unknown from expired: %q", reasons)
	}
	// Valid until just before its expiry, not at it.
	clk.Set(t0.Add(10*time.Minute - time.Second))
	if _, err := verify(t, context.Background(), v, st, []byte(known)); err != nil {
		t.Fatalf("valid token refused: %v", err)
	}
	clk.Set(t0.Add(10 * time.Minute))
	if _, err := verify(t, context.Background(), v, st, []byte(known)); !errors.As(err, new(*node.RefusedError)) {
		t.Fatalf("token at its expiry: got %v, want refused", err)
	}
	// A state failure is not a refusal of the token.
	st.err = errors.New("store closed")
	if _, err := verify(t, context.Background(), v, st, []byte(known)); err == nil || errors.As(err, new(*node.RefusedError)) {
		t.Fatalf("state failure: got %v, want a plain error", err)
	}
	if _, err := verify(t, context.Background(), jointoken.NewVerifier(), nil, []byte(known)); err == nil {
		t.Fatal("a verifier without state accepted a token")
	}
}

// TestAttestorProperties: the agent half needs no challenge (so an agent
// may fall back to the unary Attest of an older server), refuses to answer
// one, and says that it cannot attest again once its token is spent, with
// the message that tells the operator what to do.
func TestAttestorProperties(t *testing.T) {
	a := jointoken.NewAttestor(known)
	cf, ok := a.(node.ChallengeFree)
	if !ok || !cf.ChallengeFree() {
		t.Error("the join token attestor does not report that it needs no challenge")
	}
	su, ok := a.(node.SingleUse)
	if !ok {
		t.Fatal("the join token attestor does not report that it works once")
	}
	if msg := su.SpentMessage(); !strings.Contains(msg, "sigil token generate") || !strings.Contains(msg, "cannot re-attest") {
		t.Errorf("SpentMessage = %q, want how to recover", msg)
	}
	if ans, err := a.Answer(context.Background(), []byte("nonce")); err == nil || ans != nil {
		t.Errorf("Answer = %q, %v; want an error", ans, err)
	}
}
