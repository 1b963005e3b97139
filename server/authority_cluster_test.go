package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/internal/storepb"
	"github.com/sigil-id/sigil/raftstore"
)

// Helpers of this file are prefixed "ac" (authority, cluster-wide).

type acHarness struct {
	srv   *Server
	clk   *clock.Fake
	auth  sigilv1.AuthorityAdminClient
	grace time.Duration
}

// startACServer runs a single server on a fake clock (set to now, so that
// certificates are valid for the TLS stack as well).
func startACServer(t *testing.T) *acHarness {
	t.Helper()
	dir := t.TempDir()
	clk := clock.NewFake(time.Now())
	cfg := DefaultConfig()
	cfg.TrustDomain = testTD
	cfg.NodeName = "s1"
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.BindAddress = "127.0.0.1:0"
	cfg.AdminSocket = filepath.Join(dir, "admin", "admin.sock")
	cfg.Logger = zap.NewNop()
	cfg.Clock = clk
	cfg.RemovedServerGrace = 10 * time.Minute
	withPlugins(t, &cfg, "disk")
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	select {
	case <-srv.Ready():
	case err := <-done:
		t.Fatalf("server exited: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("server not ready")
	}
	conn, err := grpc.NewClient("unix://"+cfg.AdminSocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("server did not stop")
		}
	})
	return &acHarness{srv: srv, clk: clk, auth: sigilv1.NewAuthorityAdminClient(conn), grace: cfg.RemovedServerGrace}
}

// acForeignCA makes a CA certificate of the trust domain, as another
// server's CA would be, and returns it with its authority ID.
func acForeignCA(t *testing.T, now time.Time) ([]byte, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(testTD.IDString())
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(7),
		Subject:               pkix.Name{CommonName: "other server CA"},
		URIs:                  []*url.URL{u},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(24 * time.Hour),
		BasicConstraintsValid: true,
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return der, raftstore.X509AuthorityID(cert)
}

func acIDOf(c *ca.CA) string { return raftstore.X509AuthorityID(c.Certificate()) }

func acPubDER(t *testing.T) []byte {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.MarshalPKIXPublicKey(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// acPublishForeign puts another server's CA, JWT key and identity CA into
// the bundle, as that server would have.
func (h *acHarness) acPublishForeign(t *testing.T, node string) (caID, kid string) {
	t.Helper()
	ctx := context.Background()
	now := h.clk.Now()
	der, caID := acForeignCA(t, now)
	idDER, _ := acForeignCA(t, now)
	kid = "kid-" + node
	for _, cmd := range []*storepb.Command{
		{Op: &storepb.Command_PutX509Authority{PutX509Authority: &storepb.PutX509Authority{TrustDomain: testTD.Name(),
			Authority: &sigilv1.X509Authority{Certificate: der, ServerId: node}}}},
		{Op: &storepb.Command_PutX509Authority{PutX509Authority: &storepb.PutX509Authority{TrustDomain: testTD.Name(),
			Authority: &sigilv1.X509Authority{Certificate: idDER, ServerId: raftstore.IdentityAuthorityPrefix + node}}}},
		{Op: &storepb.Command_PutJwtAuthority{PutJwtAuthority: &storepb.PutJWTAuthority{TrustDomain: testTD.Name(),
			Authority: &sigilv1.JWTAuthority{KeyId: kid, PublicKey: acPubDER(t), ExpiresAt: now.Add(24 * time.Hour).Unix(), ServerId: node}}}},
	} {
		if _, err := h.srv.apply(ctx, cmd); err != nil {
			t.Fatal(err)
		}
	}
	return caID, kid
}

// acOf returns the authorities of serverID (identity CA included) in the
// peer bundle, keyed by ID, with their taint.
func (h *acHarness) acOf(t *testing.T, serverID string) map[string]bool {
	t.Helper()
	pb, err := h.srv.store.Read().PeerBundle(testTD.Name())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, a := range pb.X509Authorities {
		if a.ServerId == serverID || a.ServerId == raftstore.IdentityAuthorityPrefix+serverID {
			c, _ := x509.ParseCertificate(a.Certificate)
			out[raftstore.X509AuthorityID(c)] = a.Tainted
		}
	}
	for _, a := range pb.JwtAuthorities {
		if a.ServerId == serverID {
			out[a.KeyId] = a.Tainted
		}
	}
	return out
}

// TestRemoveMemberTaintsThenRevokesAuthorities: the first step of a
// removal taints the member's CA and JWT keys and drops its identity CA at
// once, leaves this server's keys alone, and refuses the member's puts;
// after the grace period the leader revokes its keys: they leave the
// bundle and cannot come back.
func TestRemoveMemberTaintsThenRevokesAuthorities(t *testing.T) {
	h := startACServer(t)
	ctx := context.Background()
	caID, kid := h.acPublishForeign(t, "s9")
	if got := h.acOf(t, "s9"); len(got) != 3 {
		t.Fatalf("setup: s9 authorities %v", got)
	}
	own := h.acOf(t, "s1")
	if len(own) == 0 {
		t.Fatal("setup: this server has no authorities")
	}

	if err := h.srv.removeMemberAuthorities(ctx, "s9"); err != nil {
		t.Fatal(err)
	}
	got := h.acOf(t, "s9")
	if len(got) != 2 || !got[caID] || !got[kid] {
		t.Fatalf("after removal s9 has %v; want its CA and JWT key tainted and its identity CA gone", got)
	}
	for id, tainted := range h.acOf(t, "s1") {
		if tainted {
			t.Fatalf("this server's key %s was tainted", id)
		}
	}
	// The removed server cannot put its key back untainted.
	pb, _ := h.srv.store.Read().Bundle(testTD.Name())
	var caDER []byte
	for _, a := range pb.X509Authorities {
		if a.ServerId == "s9" {
			caDER = a.Certificate
		}
	}
	_, err := h.srv.apply(ctx, &storepb.Command{Op: &storepb.Command_PutX509Authority{PutX509Authority: &storepb.PutX509Authority{
		TrustDomain: testTD.Name(), Authority: &sigilv1.X509Authority{Certificate: caDER, ServerId: "s9"}}}})
	if ce := (*raftstore.CommandError)(nil); !errors.As(err, &ce) || ce.Code != codes.PermissionDenied {
		t.Fatalf("put by a removed server: %v, want PermissionDenied", err)
	}

	// Within the grace period nothing is revoked; the next step is due at
	// its end.
	next := h.srv.finishRetirements(ctx)
	if want := h.clk.Now().Add(h.grace); next.IsZero() || next.Sub(want) > 2*time.Second || want.Sub(next) > 2*time.Second {
		t.Fatalf("next retirement step at %v, want about %v", next, want)
	}
	if got := h.acOf(t, "s9"); len(got) != 2 {
		t.Fatalf("revoked before the grace period: %v", got)
	}
	h.clk.Add(h.grace + time.Second)
	if next := h.srv.finishRetirements(ctx); !next.IsZero() {
		t.Fatalf("another retirement step due at %v", next)
	}
	if got := h.acOf(t, "s9"); len(got) != 0 {
		t.Fatalf("after the grace period s9 still has %v in the bundle", got)
	}
	if rs := h.srv.store.Read().RemovedServers(); len(rs) != 0 {
		t.Fatalf("removal records left: %v", rs)
	}
	if !h.srv.store.Read().IsRevoked(raftstore.AuthorityKindX509, caID) || !h.srv.store.Read().IsRevoked(raftstore.AuthorityKindJWT, kid) {
		t.Fatal("s9's keys are not recorded as revoked")
	}
}

// TestClusterWideTaintAndRevoke: `authority taint|revoke -authority ID`
// acts on another server's key; revoke refuses an untainted key; unknown
// IDs and this server's active key are refused; refusals change nothing.
func TestClusterWideTaintAndRevoke(t *testing.T) {
	h := startACServer(t)
	ctx := context.Background()
	caID, kid := h.acPublishForeign(t, "s9")
	seq := func() uint64 {
		pb, _ := h.srv.store.Read().PeerBundle(testTD.Name())
		return pb.SequenceNumber
	}

	before := seq()
	for name, tc := range map[string]struct {
		req  *sigilv1.AuthorityRequest
		op   string
		want codes.Code
		msg  string
	}{
		"revoke untainted": {&sigilv1.AuthorityRequest{Authority: caID}, "revoke", codes.FailedPrecondition, "taint -authority"},
		"taint unknown":    {&sigilv1.AuthorityRequest{Authority: "00ff00"}, "taint", codes.NotFound, "authority show"},
		"revoke unknown":   {&sigilv1.AuthorityRequest{Authority: "00ff00"}, "revoke", codes.NotFound, "authority show"},
		"taint own active": {&sigilv1.AuthorityRequest{Authority: acIDOf(h.srv.x509CA())}, "taint", codes.FailedPrecondition, "active key"},
		"too long":         {&sigilv1.AuthorityRequest{Authority: strings.Repeat("a", 300)}, "taint", codes.InvalidArgument, "longer"},
	} {
		var err error
		if tc.op == "taint" {
			_, err = h.auth.TaintAuthority(ctx, tc.req)
		} else {
			_, err = h.auth.RevokeAuthority(ctx, tc.req)
		}
		if status.Code(err) != tc.want || !strings.Contains(status.Convert(err).Message(), tc.msg) {
			t.Errorf("%s: %v, want %v mentioning %q", name, err, tc.want, tc.msg)
		}
	}
	if seq() != before {
		t.Fatal("a refused operation changed the bundle")
	}

	for _, id := range []string{caID, kid} {
		resp, err := h.auth.TaintAuthority(ctx, &sigilv1.AuthorityRequest{Authority: id})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Authorities) != 1 || !resp.Authorities[0].Tainted || resp.Authorities[0].ServerId != "s9" {
			t.Fatalf("taint response %v", resp)
		}
	}
	if got := h.acOf(t, "s9"); !got[caID] || !got[kid] {
		t.Fatalf("s9's keys after taint: %v", got)
	}
	for _, id := range []string{caID, kid} {
		if _, err := h.auth.RevokeAuthority(ctx, &sigilv1.AuthorityRequest{Authority: id}); err != nil {
			t.Fatal(err)
		}
	}
	got := h.acOf(t, "s9")
	if _, ok := got[caID]; ok {
		t.Fatalf("revoked CA still in the bundle: %v", got)
	}
	if _, ok := got[kid]; ok {
		t.Fatalf("revoked JWT key still in the bundle: %v", got)
	}
}

// TestOwnKeyRevokedClusterWideIsReplaced: when this server's active CA key
// is tainted and revoked cluster-wide (as after a removal), the server
// drops it, activates a new key at once and never publishes the revoked
// one again.
func TestOwnKeyRevokedClusterWideIsReplaced(t *testing.T) {
	h := startACServer(t)
	ctx := context.Background()
	old := acIDOf(h.srv.x509CA())
	for _, cmd := range []*storepb.Command{
		{Op: &storepb.Command_TaintAuthority{TaintAuthority: &storepb.TaintAuthority{TrustDomain: testTD.Name(), AuthorityId: old}}},
		{Op: &storepb.Command_RevokeAuthority{RevokeAuthority: &storepb.RevokeAuthority{TrustDomain: testTD.Name(), AuthorityId: old}}},
	} {
		if _, err := h.srv.apply(ctx, cmd); err != nil {
			t.Fatal(err)
		}
	}
	h.srv.rotateOnce(ctx)
	cur := h.srv.x509CA()
	if cur == nil || acIDOf(cur) == old {
		t.Fatalf("active CA key is still the revoked %s", old)
	}
	for _, sl := range h.srv.auth.x509.Slots() {
		if sl.ID == old {
			t.Fatalf("revoked key still in the slots: %+v", sl)
		}
	}
	h.srv.rotateOnce(ctx)
	got := h.acOf(t, "s1")
	if _, ok := got[old]; ok {
		t.Fatal("the revoked key was published again")
	}
	if tainted, ok := got[acIDOf(cur)]; !ok || tainted {
		t.Fatalf("the new key is not in the bundle untainted: %v", got)
	}
}
