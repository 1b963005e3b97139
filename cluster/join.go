package cluster

// The join protocol.
//
// A server joins a cluster through the cluster port of one of its members
// (the responder). It has no SVID yet, so the only credential the two
// share is the cluster join secret. The exchange, on one TLS 1.3
// connection whose certificate the joiner does not verify (it cannot: it
// holds no bundle yet), is:
//
//  1. joiner -> responder: JoinChallenge{node, nonce}, nonce = 32 fresh
//     random bytes. Nothing in it depends on the secret.
//  2. responder -> joiner: proof_r = HMAC(key, "sigil join v2 responder",
//     trust domain, node, nonce, EKM), EKM being the TLS exporter of this
//     connection (label ekmLabel).
//  3. The joiner checks proof_r and gives up on this connection unless it
//     is right. Only then: joiner -> responder: Join{node, address, CA
//     certificate, nonce, proof_j = HMAC(key, "sigil join v2 joiner", trust
//     domain, node, nonce, EKM)}.
//  4. The responder checks proof_j, puts the joiner's CA into the bundle,
//     adds it as a voter and returns the bundle (or a redirect to the
//     leader, where the joiner starts again at 1).
//
// Security argument:
//
//   - An impostor endpoint (anyone who answers a join address: a wrong
//     address, a hijacked name, a man in the middle that terminates TLS)
//     receives only step 1, which does not depend on the secret; so it
//     learns nothing that lets it test a guess of the secret offline. It
//     cannot produce proof_r without the key: proof_r is bound to the EKM of
//     the impostor's own connection with the joiner, so it can neither
//     replay a proof from an earlier connection nor relay one from a real
//     member (the EKM of the impostor's connection to the member differs),
//     and it cannot reflect the joiner's own responder (the joiner is a
//     server too) for the same reason. The joiner aborts, having sent
//     nothing secret-derived.
//   - Once proof_r is verified, the TLS connection is bound to a holder of
//     the secret (channel binding by the EKM), so what follows on it (the
//     bundle, a redirect) is authentic and confidential.
//   - An impostor joiner can obtain proof_r values from a real member; they
//     would allow an offline guess of a weak secret. That is why only
//     generated secrets of 256 bits are accepted (ParseJoinSecret): no
//     guess of those succeeds offline or online. proof_r and proof_j use
//     distinct labels, so a proof_r obtained from one member is never a
//     valid proof_j.
//   - Online guessing (Join with a guessed proof_j) is rate-limited per
//     source address and in total, and a wrong proof costs extra tokens
//     (joinLimiter); every wrong proof is logged with its source address.
//   - The secret itself never crosses the wire; the key is the decoded
//     random part of the secret.
//
// A PAKE would remove the offline test of proof_r for weak secrets; no
// well-kept Go PAKE module is available to this project, and with
// generated secrets there is nothing for it to protect further.

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/audit"
	"github.com/sigil-id/sigil/internal/clusterpb"
	"github.com/sigil-id/sigil/internal/sourcelimit"
	"github.com/sigil-id/sigil/internal/storepb"
	"github.com/sigil-id/sigil/raftstore"
)

const (
	// joinNonceLen is the length of the joiner's challenge nonce.
	joinNonceLen = 32
	// joinMaxNodeName bounds the node name a join message may carry.
	joinMaxNodeName    = 255
	joinLabelResponder = "sigil join v2 responder"
	joinLabelJoiner    = "sigil join v2 joiner"
)

// errJoinUnauthenticated is the joiner's error when the responder has not
// proved that it holds the join secret.
var errJoinUnauthenticated = errors.New("the server did not prove that it holds the join secret: " +
	"it is not a server of this cluster, or its join_secret differs from this server's " +
	"(nothing derived from the secret was sent to it)")

// joinMAC is HMAC-SHA256 over the label and the length-prefixed fields.
func joinMAC(key []byte, label, td, node string, nonce, ekm []byte) []byte {
	m := hmac.New(sha256.New, key)
	var n [4]byte
	for _, f := range [][]byte{[]byte(label), []byte(td), []byte(node), nonce, ekm} {
		binary.BigEndian.PutUint32(n[:], uint32(len(f)))
		m.Write(n[:])
		m.Write(f)
	}
	return m.Sum(nil)
}

// checkJoinHello checks the fields of a JoinChallenge or Join request
// that the proofs cover, before any proof is computed.
func checkJoinHello(td spiffeid.TrustDomain, node string, nonce []byte) error {
	if len(nonce) != joinNonceLen {
		return fmt.Errorf("nonce must be %d bytes, not %d", joinNonceLen, len(nonce))
	}
	if node == "" || len(node) > joinMaxNodeName {
		return fmt.Errorf("node name must be 1 to %d bytes", joinMaxNodeName)
	}
	if _, err := spiffeid.FromSegments(td, "sigil", "server", node); err != nil {
		return fmt.Errorf("node name %q is not valid: %v", node, err)
	}
	return nil
}

// joinGate runs the checks every join RPC starts with: joins enabled, the
// rate limit, a TLS connection. It returns the connection's exporter and
// the caller's source address.
func (c *Cluster) joinGate(ctx context.Context, method string) (ekm []byte, src string, err error) {
	if len(c.cfg.JoinKey) == 0 {
		return nil, "", status.Error(codes.PermissionDenied, "this server does not accept joins (no join_secret)")
	}
	if p, ok := peer.FromContext(ctx); ok {
		src = sourcelimit.Key(p.Addr)
	}
	if d := c.joinLimit.allow(src); !d.ok {
		scope := "from " + src
		if d.global {
			scope = "in total"
		}
		if d.first {
			c.audit.Audit(audit.Event{What: "cluster_join_rate_limited", Who: src, Outcome: audit.Denied, Message: "join attempts rate-limited",
				Fields: []audit.Field{audit.String("method", method), audit.String("source", src), audit.Bool("global", d.global)}})
		}
		return nil, src, status.Errorf(codes.ResourceExhausted, "too many join attempts %s; retry in %v", scope, max(d.retry, 100*time.Millisecond))
	}
	st, ok := tlsState(ctx)
	if !ok {
		return nil, src, status.Error(codes.Unauthenticated, "no TLS peer")
	}
	ekm, err = st.ExportKeyingMaterial(ekmLabel, nil, 32)
	if err != nil {
		return nil, src, status.Errorf(codes.Unauthenticated, "TLS exporter: %v", err)
	}
	return ekm, src, nil
}

// JoinChallenge proves to a joiner that this server holds the join secret
// (step 2 of the join protocol).
func (a *clusterAPI) JoinChallenge(ctx context.Context, req *clusterpb.JoinChallengeRequest) (*clusterpb.JoinChallengeResponse, error) {
	c := a.c
	ekm, _, err := c.joinGate(ctx, "JoinChallenge")
	if err != nil {
		return nil, err
	}
	if err := checkJoinHello(c.cfg.TrustDomain, req.NodeName, req.Nonce); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "join challenge: %v", err)
	}
	return &clusterpb.JoinChallengeResponse{
		Proof: joinMAC(c.cfg.JoinKey, joinLabelResponder, c.cfg.TrustDomain.Name(), req.NodeName, req.Nonce, ekm),
	}, nil
}

// Join adds a server that proved that it holds the join secret (step 4 of
// the join protocol).
func (a *clusterAPI) Join(ctx context.Context, req *clusterpb.JoinRequest) (*clusterpb.JoinResponse, error) {
	c := a.c
	ekm, src, err := c.joinGate(ctx, "Join")
	if err != nil {
		return nil, err
	}
	if err := checkJoinHello(c.cfg.TrustDomain, req.NodeName, req.Nonce); err != nil {
		c.joinLimit.penalize(src)
		c.audit.Audit(audit.Event{What: "cluster_join_refused", Who: src, Outcome: audit.Denied, Message: "join refused: bad request",
			Fields: []audit.Field{audit.String("source", src), audit.Err(err)}})
		return nil, status.Errorf(codes.InvalidArgument, "join: %v (is the joining server older than this one?)", err)
	}
	if !hmac.Equal(req.Proof, joinMAC(c.cfg.JoinKey, joinLabelJoiner, c.cfg.TrustDomain.Name(), req.NodeName, req.Nonce, ekm)) {
		c.joinLimit.penalize(src)
		c.audit.Audit(audit.Event{What: "cluster_join_refused", Who: src, Subject: req.NodeName, Outcome: audit.Denied,
			Message: "join refused: bad proof of the join secret",
			Fields:  []audit.Field{audit.String("source", src), audit.String("node_name", req.NodeName)}})
		return nil, status.Error(codes.PermissionDenied, "join refused: wrong join secret")
	}
	resp := &clusterpb.JoinResponse{}
	store, err := a.store()
	if err != nil {
		return nil, err
	}
	if _, _, err := net.SplitHostPort(req.ClusterAddress); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "cluster address %q: %v", req.ClusterAddress, err)
	}
	caCert, err := x509.ParseCertificate(req.CaCertificate)
	if err != nil || !caCert.IsCA {
		return nil, status.Error(codes.InvalidArgument, "CA certificate is not a CA certificate")
	}
	if len(caCert.URIs) != 1 || caCert.URIs[0].String() != c.cfg.TrustDomain.IDString() {
		return nil, status.Errorf(codes.InvalidArgument, "CA certificate is not for trust domain %s", c.cfg.TrustDomain)
	}
	if !store.IsLeader() {
		addr, _ := store.Leader()
		if addr == "" {
			return nil, status.Error(codes.Unavailable, "no leader to join; retry")
		}
		resp.Redirect = addr
		return resp, nil
	}
	// The joiner's CA enters the bundle before the joiner becomes a voter
	// (and so before any peer accepts an SVID it signed).
	_, err = store.Apply(ctx, &storepb.Command{Op: &storepb.Command_PutX509Authority{PutX509Authority: &storepb.PutX509Authority{
		TrustDomain: c.cfg.TrustDomain.Name(),
		Authority:   &sigilv1.X509Authority{Certificate: caCert.Raw, ServerId: IdentityAuthorityID(req.NodeName), NotAfter: caCert.NotAfter.Unix()},
	}}})
	if err != nil {
		return nil, storeStatus(err)
	}
	if err := store.AddVoter(ctx, req.NodeName, req.ClusterAddress); err != nil {
		return nil, status.Errorf(codes.Unavailable, "%v", err)
	}
	// The joiner checks its peers against this until its store catches
	// up: the peer bundle, with the members' identity CAs.
	pb, err := store.Read().PeerBundle(c.cfg.TrustDomain.Name())
	if err != nil {
		return nil, status.Errorf(codes.Internal, "bundle: %v", err)
	}
	for _, au := range pb.X509Authorities {
		resp.Bundle = append(resp.Bundle, au.Certificate)
	}
	_, resp.LeaderId = store.Leader()
	c.kickProbes()
	c.audit.Audit(audit.Event{What: "cluster_server_joined", Who: src, Subject: req.NodeName, Message: "server joined",
		Fields: []audit.Field{audit.String("node_name", req.NodeName), audit.String("address", req.ClusterAddress), audit.String("source", src)}})
	return resp, nil
}

// joinOnce runs the join protocol with the server at addr, following up
// to three redirects to the leader.
func (c *Cluster) joinOnce(ctx context.Context, addr string, depth int) error {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	d := &tls.Dialer{NetDialer: &net.Dialer{LocalAddr: c.mux.LocalDialAddr()}, Config: &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{raftstore.ALPNGRPC},
		// The server is authenticated by its proof of the join secret,
		// bound to this connection's exporter (see the join protocol
		// above), before anything secret-derived is sent.
		InsecureSkipVerify: true, //nolint:gosec // see above
	}}
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	tc := raw.(*tls.Conn)
	cs := tc.ConnectionState()
	ekm, err := cs.ExportKeyingMaterial(ekmLabel, nil, 32)
	if err != nil {
		tc.Close()
		return err
	}
	var used atomic.Bool
	cc, err := grpc.NewClient("passthrough:///"+addr,
		// The connection is the TLS connection above.
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(context.Context, string) (net.Conn, error) {
			if used.Swap(true) {
				return nil, errors.New("join connection lost")
			}
			return tc, nil
		}),
	)
	if err != nil {
		tc.Close()
		return err
	}
	defer cc.Close()
	client := clusterpb.NewClusterClient(cc)
	node, td := c.cfg.NodeName, c.cfg.TrustDomain.Name()
	nonce := make([]byte, joinNonceLen)
	if _, err := rand.Read(nonce); err != nil {
		return err
	}
	ch, err := client.JoinChallenge(ctx, &clusterpb.JoinChallengeRequest{NodeName: node, Nonce: nonce})
	if status.Code(err) == codes.Unimplemented {
		return errors.New("the server does not speak this version's join protocol (JoinChallenge); upgrade it first")
	}
	if err != nil {
		return err
	}
	if !hmac.Equal(ch.Proof, joinMAC(c.cfg.JoinKey, joinLabelResponder, td, node, nonce, ekm)) {
		return errJoinUnauthenticated
	}
	resp, err := client.Join(ctx, &clusterpb.JoinRequest{
		NodeName:       node,
		ClusterAddress: c.Advertise(),
		CaCertificate:  c.idCA.Certificate().Raw,
		Nonce:          nonce,
		Proof:          joinMAC(c.cfg.JoinKey, joinLabelJoiner, td, node, nonce, ekm),
	})
	if err != nil {
		return err
	}
	if resp.Redirect != "" {
		if depth >= 3 {
			return errors.New("too many redirects")
		}
		c.log.Info("join redirected to the leader", zap.String("leader", resp.Redirect))
		return c.joinOnce(ctx, resp.Redirect, depth+1)
	}
	var certs []*x509.Certificate
	for _, der := range resp.Bundle {
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return fmt.Errorf("join returned a bad bundle: %w", err)
		}
		certs = append(certs, cert)
	}
	c.TrustExtra(certs)
	if err := writePEMCerts(c.bundlePath(), certs); err != nil {
		c.log.Warn("saving cluster bundle", zap.Error(err))
	}
	c.audit.Audit(audit.Event{What: "cluster_joined", Subject: c.cfg.NodeName, Message: "joined the cluster",
		Fields: []audit.Field{audit.String("via", addr), audit.String("leader", resp.LeaderId)}})
	return nil
}

// ErrJoinRefused is returned (wrapped) by Join and JoinAtStart when every
// server asked refused in a way that retrying cannot change: it does not
// prove the join secret (its join_secret differs, or it is not a server
// of this cluster), it accepts no joins, or it refuses this server's
// request as invalid. (A server too old to speak the join protocol is
// retried: it may be upgraded meanwhile.) The error names each server's reason.
var ErrJoinRefused = errors.New("cluster: join refused")

// permanentJoinError reports whether err, from one server, would be the
// same on every retry.
func permanentJoinError(err error) bool {
	if errors.Is(err, errJoinUnauthenticated) {
		return true
	}
	switch status.Code(err) {
	case codes.PermissionDenied, codes.InvalidArgument:
		return true
	}
	return false
}

// JoinAtStart joins through Config.JoinAddresses: always (and until it
// succeeds or is refused for good) on a first start; on a restart only
// when this server's identity CA is new (it was down longer than its
// lifetime, or keeps keys in memory), in the background, as the members
// may need this server to form a quorum. SetStore must have been called.
func (c *Cluster) JoinAtStart(ctx context.Context) error {
	addrs := c.cfg.JoinAddresses
	if len(addrs) == 0 {
		return nil
	}
	if !c.store.Load().HadState() {
		return c.Join(ctx, addrs)
	}
	if !c.idTrusted {
		go func() {
			if err := c.Join(ctx, addrs); err != nil {
				c.log.Warn("re-join failed", zap.Error(err))
			}
		}()
	}
	return nil
}

// Join asks the servers at addrs, in turn and in rounds with a growing
// pause (up to Config.JoinRetryMax), to add this server, until one does,
// ctx ends, or every one of them refuses for good (ErrJoinRefused: a
// wrong join secret is not retried forever).
func (c *Cluster) Join(ctx context.Context, addrs []string) error {
	if len(c.cfg.JoinKey) == 0 {
		return errors.New("cluster: joining needs the cluster join secret (join_secret)")
	}
	wait := 200 * time.Millisecond
	for {
		var errs []error
		permanent := true
		for _, a := range addrs {
			err := c.joinOnce(ctx, a, 0)
			if err == nil {
				return nil
			}
			permanent = permanent && permanentJoinError(err)
			errs = append(errs, fmt.Errorf("%s: %w", a, err))
		}
		if permanent {
			err := fmt.Errorf("%w: %w", ErrJoinRefused, errors.Join(errs...))
			c.log.Error("join refused; not retrying", zap.Error(err))
			return err
		}
		c.log.Warn("join failed; retrying", zap.Duration("retry_in", wait), zap.Error(errors.Join(errs...)))
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster: join: %w (last: %w)", ctx.Err(), errors.Join(errs...))
		case <-time.After(wait):
		}
		wait = min(2*wait, c.cfg.JoinRetryMax)
	}
}
