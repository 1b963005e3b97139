package integration

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/sigil-id/sigil/internal/eventually"
)

// Attacks on the cluster join (issue 8, finding 4). They use raw protobuf
// bytes on the wire, so they also run against servers that predate the
// fix.

// joinAttackRawCodec hands gRPC messages over as bytes.
type joinAttackRawCodec struct{}

func (joinAttackRawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(*v.(*[]byte))}, nil
}

func (joinAttackRawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	*v.(*[]byte) = data.Materialize()
	return nil
}

func (joinAttackRawCodec) Name() string { return "proto" }

type joinAttackMsg struct {
	method string
	body   []byte
	ekm    []byte
	source string
}

// joinAttackImpostor is an endpoint at a join address that does not hold
// the join secret: a TLS gRPC server that records every message and
// answers JoinChallenge with a random "proof".
type joinAttackImpostor struct {
	addr string
	mu   sync.Mutex
	msgs []joinAttackMsg
}

func startJoinAttackImpostor(t *testing.T, ip string) *joinAttackImpostor {
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
	im := &joinAttackImpostor{addr: ln.Addr().String()}
	gs := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS13,
			Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}})),
		grpc.ForceServerCodecV2(joinAttackRawCodec{}),
		grpc.UnknownServiceHandler(im.handle),
	)
	go gs.Serve(ln)
	t.Cleanup(gs.Stop)
	return im
}

func (im *joinAttackImpostor) handle(_ any, stream grpc.ServerStream) error {
	method, _ := grpc.MethodFromServerStream(stream)
	var body []byte
	if err := stream.RecvMsg(&body); err != nil {
		return err
	}
	m := joinAttackMsg{method: method, body: body}
	if p, ok := peer.FromContext(stream.Context()); ok {
		m.source = p.Addr.String()
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok {
			m.ekm, _ = ti.State.ExportKeyingMaterial("EXPORTER-sigil-cluster-join", nil, 32)
		}
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

func (im *joinAttackImpostor) received() []joinAttackMsg {
	im.mu.Lock()
	defer im.mu.Unlock()
	return append([]joinAttackMsg(nil), im.msgs...)
}

// joinAttackFields parses a protobuf message into field number -> raw
// value (bytes fields without their length).
func joinAttackFields(t *testing.T, b []byte) map[protowire.Number][]byte {
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

// joinAttackSecret makes a join secret with the CLI.
func joinAttackSecret(t *testing.T) string {
	t.Helper()
	s := strings.TrimSpace(sigil(t, "cluster", "secret", "generate"))
	if !strings.HasPrefix(s, "sigil-join-v1-") {
		t.Fatalf("generated secret %q", s)
	}
	return s
}

// joinAttackServerConfig writes the config of a server on ip that joins
// through join, with secret.
func joinAttackServerConfig(t *testing.T, dir, ip, secret, join string) (config, health, admin string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	config = filepath.Join(dir, "server.hcl")
	addrs := freeAddrsOn(t, ip, 3)
	health = addrs[0]
	admin = filepath.Join(dir, "admin", "admin.sock")
	cfg := fmt.Sprintf(`server {
  trust_domain    = %q
  node_name       = "joiner"
  data_dir        = %q
  bind_address    = %q
  admin_socket    = %q
  health_address  = %q
  cluster_address = %q
  join_secret     = %q
  retry_join      = [%q]
  log_level       = "info"
}
`, trustDomain, filepath.Join(dir, "data"), addrs[1], admin, health, addrs[2], secret, join)
	if err := os.WriteFile(config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return config, health, admin
}

func joinAttackReady(health string) bool {
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + health + "/ready")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// TestAttackJoinImpostorEndpoint: a real `sigil server` whose join
// address is answered by an impostor that does not hold the secret. The
// impostor gets no Join (the message that proves the secret), none of the
// proofs of the first protocol, and with the random nonce set aside the
// same bytes whichever secret the joiner holds; the joiner logs why it
// refuses and never becomes ready.
func TestAttackJoinImpostorEndpoint(t *testing.T) {
	im := startJoinAttackImpostor(t, "127.0.0.201")
	dir := haDir(t)
	secrets := []string{joinAttackSecret(t), joinAttackSecret(t)}
	normalized := map[string]bool{}
	for i, secret := range secrets {
		before := len(im.received())
		sd := filepath.Join(dir, fmt.Sprintf("joiner%d", i))
		config, health, _ := joinAttackServerConfig(t, sd, "127.0.0.202", secret, im.addr)
		logPath := filepath.Join(sd, "server.log")
		p := startProc(t, fmt.Sprintf("joiner%d", i), logPath, nil, sigilBin, "server", "-config", config)
		// Wait for two rounds of join attempts (bounded).
		var log string
		_ = eventually.Wait(30*time.Second, func() error {
			b, _ := os.ReadFile(logPath)
			log = string(b)
			if strings.Count(log, "join failed; retrying") >= 2 || p.exited() {
				return nil
			}
			return errors.New("fewer than two join attempts")
		})
		if joinAttackReady(health) {
			t.Fatalf("secret %d: the joiner became ready after joining an impostor", i)
		}
		p.stop()
		b, _ := os.ReadFile(logPath)
		log = string(b)
		if !strings.Contains(log, "did not prove that it holds the join secret") {
			t.Errorf("secret %d: the joiner's log does not say why it refused the endpoint:\n%s", i, tail(log, 2000))
		}
		msgs := im.received()[before:]
		if len(msgs) == 0 {
			t.Fatalf("secret %d: the impostor received nothing (the test proves nothing)", i)
		}
		for _, m := range msgs {
			if m.method != "/sigil.v1.Cluster/JoinChallenge" {
				t.Errorf("secret %d: the impostor received %s (%d bytes)", i, m.method, len(m.body))
			}
			f := joinAttackFields(t, m.body)
			// The first protocol's proof, which the impostor could test
			// guesses against offline.
			old := hmac.New(sha256.New, []byte(secret))
			old.Write([]byte("sigil join client\x00joiner\x00"))
			old.Write(m.ekm)
			for _, v := range f {
				if hmac.Equal(v, old.Sum(nil)) {
					t.Errorf("secret %d: the impostor received HMAC(secret, node, exporter)", i)
				}
			}
			var rest []byte
			for num := protowire.Number(1); num < 16; num++ {
				if v, ok := f[num]; ok && num != 2 { // 2: the random nonce
					rest = protowire.AppendBytes(protowire.AppendTag(rest, num, protowire.BytesType), v)
				}
			}
			normalized[m.method+":"+string(rest)] = true
		}
	}
	if len(normalized) != 1 {
		t.Fatalf("the impostor's messages depend on the secret: %d distinct messages once the nonce is set aside", len(normalized))
	}
}

// joinAttackGuess makes one Join call with a guessed proof from ip.
func joinAttackGuess(t *testing.T, ip, addr string) error {
	t.Helper()
	d := &tls.Dialer{NetDialer: &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second},
		Config: &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"}, InsecureSkipVerify: true}} //nolint:gosec // attacker
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(context.Context, string) (net.Conn, error) { return raw, nil }))
	if err != nil {
		raw.Close()
		return err
	}
	defer cc.Close()
	nonce, proof := make([]byte, 32), make([]byte, 32)
	rand.Read(nonce)
	rand.Read(proof)
	var req []byte
	req = protowire.AppendBytes(protowire.AppendTag(req, 1, protowire.BytesType), []byte("evil"))
	req = protowire.AppendBytes(protowire.AppendTag(req, 2, protowire.BytesType), []byte(ip+":1"))
	req = protowire.AppendBytes(protowire.AppendTag(req, 4, protowire.BytesType), proof)
	req = protowire.AppendBytes(protowire.AppendTag(req, 5, protowire.BytesType), nonce)
	var resp []byte
	return cc.Invoke(ctx, "/sigil.v1.Cluster/Join", &req, &resp, grpc.ForceCodecV2(joinAttackRawCodec{}))
}

// TestAttackJoinOnlineGuessing: 50 guesses of the join proof from one
// address against a real server. Past the first ones they are refused by
// the rate limit, every checked guess is logged with its source address,
// and the membership, bundle and Raft index are unchanged; a real server
// still joins afterwards.
func TestAttackJoinOnlineGuessing(t *testing.T) {
	c := newHACluster(t, haDir(t), 2, 203)
	s1 := c.nodes[0]
	s1.start()
	c.waitMembers(s1, 1, 30*time.Second)
	before, err := s1.members(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	bundleBefore := sigil(t, "bundle", "show", "-socket", s1.admin)

	const attempts = 50
	const attacker = "127.0.0.209"
	start := time.Now()
	var checked, limited int
	for i := 0; i < attempts; i++ {
		err := joinAttackGuess(t, attacker, s1.proxy.target)
		switch status.Code(err) {
		case codes.PermissionDenied:
			checked++
		case codes.ResourceExhausted:
			limited++
			if i == attempts-1 && !strings.Contains(err.Error(), "too many join attempts from "+attacker) {
				t.Errorf("rate-limit error does not say what happened: %v", err)
			}
		default:
			t.Fatalf("guess %d: %v", i, err)
		}
	}
	elapsed := time.Since(start)
	// Per source: a burst of 10 tokens, 2 a second, and 10 more for each
	// wrong guess.
	if bound := 1 + int(elapsed.Seconds()*2/11) + 1; checked > bound || limited == 0 {
		t.Fatalf("%d of %d guesses were checked in %v (%d rate-limited); want at most %d", checked, attempts, elapsed, limited, bound)
	}
	t.Logf("%d guesses in %v: %d checked, %d refused by the rate limit", attempts, elapsed.Round(time.Millisecond), checked, limited)

	after, err := s1.members(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(after.Members) != len(before.Members) || after.AppliedIndex != before.AppliedIndex {
		t.Fatalf("state changed: %d members at index %d, then %d at %d", len(before.Members), before.AppliedIndex, len(after.Members), after.AppliedIndex)
	}
	if got := sigil(t, "bundle", "show", "-socket", s1.admin); got != bundleBefore {
		t.Fatal("the bundle changed")
	}
	b, _ := os.ReadFile(filepath.Join(s1.dir, "server-1.log"))
	log := string(b)
	if n := strings.Count(log, "bad proof of the join secret"); n != checked {
		t.Errorf("%d failed guesses logged, want %d", n, checked)
	}
	if !strings.Contains(log, `"source":"`+attacker+`"`) {
		t.Errorf("failed guesses are not logged with their source address %s", attacker)
	}

	// The cluster still accepts a real server (through its proxy, from
	// another address).
	c.nodes[1].start()
	c.waitMembers(s1, 2, 30*time.Second)
}

// TestAttackJoinWeakSecret: a server refuses to start with a guessable
// join secret, from the config file or the environment, and says how to
// make a good one; it creates no state.
func TestAttackJoinWeakSecret(t *testing.T) {
	for _, tc := range []struct {
		name   string
		inFile bool
		secret string
	}{
		{"config password", true, "password"},
		{"config old style", true, "integration-join-secret"},
		{"env short", false, "sigil-join-v1-c2hvcnQ"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			config, _, admin := joinAttackServerConfig(t, dir, "127.0.0.208", tc.secret, "127.0.0.1:1")
			var env []string
			if !tc.inFile {
				src, _ := os.ReadFile(config)
				cfg := strings.Replace(string(src), fmt.Sprintf("join_secret     = %q\n", tc.secret), "", 1)
				if err := os.WriteFile(config, []byte(cfg), 0o600); err != nil {
					t.Fatal(err)
				}
				env = []string{"SIGIL_JOIN_SECRET=" + tc.secret}
			}
			logPath := filepath.Join(dir, "server.log")
			p := startProc(t, "weak", logPath, env, sigilBin, "server", "-config", config)
			select {
			case <-p.done:
			case <-time.After(20 * time.Second):
				t.Fatal("the server started with a weak join secret")
			}
			if p.err == nil {
				t.Fatal("the server exited 0 with a weak join secret")
			}
			out, _ := os.ReadFile(logPath)
			if !strings.Contains(string(out), "sigil cluster secret generate") {
				t.Fatalf("the error does not say how to make a secret:\n%s", out)
			}
			if strings.Contains(string(out), tc.secret) {
				t.Fatalf("the error repeats the secret:\n%s", out)
			}
			for _, path := range []string{filepath.Join(dir, "data"), admin} {
				if _, err := os.Stat(path); err == nil {
					t.Errorf("%s was created", path)
				}
			}
		})
	}
}
