package cluster

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
	"encoding/base64"
	"errors"
	"fmt"
	"math/big"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/internal/clusterpb"
	"github.com/sigil-id/sigil/internal/sourcelimit"
	"github.com/sigil-id/sigil/raftstore"
)

// Moved from server/join_test.go with the join protocol.

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
	n := l.srcs.Len()
	l.mu.Unlock()
	if n > joinMaxSources {
		t.Fatalf("%d sources tracked, bound is %d", n, joinMaxSources)
	}
}

// Moved from server/sourcelimit_test.go.
// A failed proof makes the buckets go below zero, but concurrent failures
// do not pile up debt beyond the penalty: that would lock out every
// joiner for long.
func TestJoinPenaltyDebtBounded(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	b := &joinBucket{bucket: sourcelimit.NewBucket(joinGlobalRate, joinGlobalBurst)}
	b.penalize(now)
	if got, want := b.bucket.TokensAt(now), joinGlobalBurst-joinFailPenalty; got != want {
		t.Fatalf("%v tokens after one penalty, want %v", got, want)
	}
	for range 20 {
		b.penalize(now)
	}
	if got := b.bucket.TokensAt(now); got != -joinFailPenalty {
		t.Fatalf("%v tokens after many penalties, want %v", got, -joinFailPenalty)
	}
	if w, want := b.wait(now), time.Duration((1+joinFailPenalty)/joinGlobalRate*float64(time.Second)); w != want {
		t.Fatalf("wait %v, want %v", w, want)
	}
}

// ---- wrong proofs -------------------------------------------------------

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
	clk := clock.NewFake(time.Now())
	tc := newTestCluster(t, clk)
	a := tc.mustStart("a", nodeOpts{bootstrap: true})
	bundleBefore := joinBundleDER(a)

	var denied, limited int
	for i := range 20 {
		err := joinAttack(t, "127.0.0.1", a.addr, i%2 == 0)
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
	if got, _ := a.store.Members(); len(got) != 1 {
		t.Fatalf("members changed: %v", got)
	}
	if !joinEqualDERs(joinBundleDER(a), bundleBefore) {
		t.Fatal("bundle changed")
	}

	// Another source is not locked out by the attacker.
	tc.mustStart("b", nodeOpts{addr: "127.0.0.2:0", join: []string{a.addr}})
	if got, _ := a.store.Members(); len(got) != 2 {
		t.Fatalf("members after b joined: %v", got)
	}

	// A rate, not a lockout.
	clk.Add(10 * time.Second)
	if err := joinAttack(t, "127.0.0.1", a.addr, false); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("attempt after the refill: %v, want a refused proof", err)
	}
}

// joinBundleDER is n's peer bundle, as DER.
func joinBundleDER(n *testNode) [][]byte {
	pb, err := n.store.Read().PeerBundle(testTD.Name())
	if err != nil {
		return nil
	}
	var out [][]byte
	for _, a := range pb.X509Authorities {
		out = append(out, a.Certificate)
	}
	return out
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

// joinSecretForTest is the encoded join secret of key, in the format of
// server.GenerateJoinSecret (the old protocol keyed its MAC with it).
func joinSecretForTest(key []byte) string {
	return "sigil-join-v1-" + base64.RawURLEncoding.EncodeToString(key)
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
	var keys [][]byte
	var perSecret [][]joinImpostorMsg
	for i := range 2 {
		key := make([]byte, 32)
		rand.Read(key)
		keys = append(keys, key)
		before := len(im.received())
		tc := newTestCluster(t, nil)
		// The joiner gives up at once: the endpoint did not prove the
		// secret, which retrying cannot change.
		j, err := tc.start("j", nodeOpts{addr: "127.0.0.4:0", join: []string{im.addr}, key: key})
		if err == nil {
			t.Fatalf("secret %d: joined an impostor", i)
		}
		if !errors.Is(err, ErrJoinRefused) || !strings.Contains(err.Error(), "did not prove that it holds the join secret") {
			t.Errorf("secret %d: joiner's error does not say why: %v", i, err)
		}
		if got, _ := j.store.Members(); len(got) != 0 {
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
			for _, key := range keys {
				s := joinSecretForTest(key)
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
