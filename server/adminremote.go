package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/audit"
	"github.com/sigil-id/sigil/registration"
)

// Remote administration. The admin services (Admin, ClusterAdmin,
// AuthorityAdmin, FederationAdmin, AlertAdmin: registerAdminServices) are
// served on the admin unix socket, whose 0700 directory is their access
// control, and, with Config.AdminAddress, also on a TCP listener with
// mutual TLS:
//
//   - The server presents its server SVID (the node API's certificate,
//     chain included).
//   - The caller must present a client certificate chain that verifies as
//     an X.509-SVID of the trust domain against the current bundle, at the
//     server's clock: no certificate, a certificate of another trust
//     domain or of a CA outside the bundle, and an expired SVID are
//     refused with Unauthenticated.
//   - Its SPIFFE ID must be in Config.AdminIDs, or be the spiffe_id of a
//     registration entry marked admin; the IDs under /sigil/ (agents,
//     servers) only in the first way. Any other valid SVID is refused
//     with PermissionDenied naming its ID.
//
// Authorization is checked on every call (an entry unmarked, an SVID
// expired since the connection opened, count from the next call on). The
// listener is guarded as the node API is (nodeGuard, nodeapi_limits.go):
// a connection whose handshake presented no admin SVID reads a bounded
// number of bytes, lives a minute, counts against per-source and global
// caps, and each of its calls is refused on its headers, before its
// message is read. The TCP listener serves once the server has its CA and
// SVID (a server waiting for `sigil cluster join` serves the cluster
// admin API on the socket only).
//
// Every admin call on either listener is one admin_call audit event with
// the caller: on TCP the caller's SPIFFE ID as Who (empty when it
// presented none) and the fields transport "tcp", caller_id and
// remote_addr; on the socket Who audit.Admin and the fields transport
// "unix" and caller_uid (the peer's uid, -1 if unknown). The audit events
// of the operations themselves (entry_created, ...) carry the same Who
// and fields.

// Transports of admin calls, in the "transport" audit field.
const (
	adminTransportUnix = "unix"
	adminTransportTCP  = "tcp"
)

// checkAdminRemote checks the remote administration settings.
func checkAdminRemote(td spiffeid.TrustDomain, addr string, ids []spiffeid.ID) error {
	if addr != "" {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return fmt.Errorf("server: admin_address %q: want host:port: %w", addr, err)
		}
	}
	for _, id := range ids {
		if id.IsZero() {
			return fmt.Errorf("server: admin_ids: an empty SPIFFE ID")
		}
		if id.TrustDomain() != td {
			return fmt.Errorf("server: admin_ids: %s is not of trust domain %q (only SVIDs of the trust domain are accepted)", id, td.Name())
		}
	}
	return nil
}

// registerAdminServices registers the admin services on srv: the same set
// on the unix socket and on the TCP admin listener.
func (s *Server) registerAdminServices(srv *grpc.Server) {
	sigilv1.RegisterClusterAdminServer(srv, &clusterAdminAPI{s: s})
	sigilv1.RegisterAdminServer(srv, &adminAPI{s: s})
	sigilv1.RegisterAuthorityAdminServer(srv, &authorityAdmin{s: s})
	sigilv1.RegisterFederationAdminServer(srv, &federationAdmin{s: s})
	sigilv1.RegisterAlertAdminServer(srv, &alertAdmin{s: s})
}

// adminCaller is who made an admin call.
type adminCaller struct {
	transport string
	// uid is the unix peer's uid; -1 when unknown (or on TCP).
	uid int
	// id is the TCP caller's SPIFFE ID, zero when it presented no valid
	// SVID; remote its address.
	id     spiffeid.ID
	remote string
}

// who is the caller in an audit event's Who.
func (c adminCaller) who() string {
	if c.transport == adminTransportUnix {
		return audit.Admin
	}
	if c.id.IsZero() {
		return ""
	}
	return c.id.String()
}

// fields are the caller's audit fields.
func (c adminCaller) fields() []audit.Field {
	if c.transport == adminTransportUnix {
		return []audit.Field{audit.String("transport", adminTransportUnix), audit.Int("caller_uid", c.uid)}
	}
	fs := []audit.Field{audit.String("transport", adminTransportTCP)}
	if !c.id.IsZero() {
		fs = append(fs, audit.String("caller_id", c.id.String()))
	}
	return append(fs, audit.String("remote_addr", c.remote))
}

type adminCallerKey struct{}

// adminCallerFrom returns the caller of the admin call of ctx.
func adminCallerFrom(ctx context.Context) (adminCaller, bool) {
	c, ok := ctx.Value(adminCallerKey{}).(adminCaller)
	return c, ok
}

// auditAdmin emits ev, an operation of an admin call, with the caller of
// ctx: its Who (in place of audit.Admin) and fields. An operation without
// one (forwarded from another server) keeps ev as it is.
func (s *Server) auditAdmin(ctx context.Context, ev audit.Event) {
	if c, ok := adminCallerFrom(ctx); ok {
		ev.Who = c.who()
		ev.Fields = append(ev.Fields, c.fields()...)
	}
	s.audit(ev)
}

// auditAdminCall records one admin call of method by c that ended with
// err.
func (s *Server) auditAdminCall(c adminCaller, method string, err error) {
	st := status.Convert(err)
	outcome := audit.Success
	switch st.Code() {
	case codes.OK:
	case codes.Unauthenticated, codes.PermissionDenied:
		outcome = audit.Denied
	default:
		outcome = audit.Failure
	}
	fs := append([]audit.Field{audit.String("method", method), audit.String("code", st.Code().String())}, c.fields()...)
	if err != nil {
		fs = append(fs, audit.Err(err))
	}
	s.audit(audit.Event{What: "admin_call", Who: c.who(), Subject: method, Outcome: outcome, Message: "admin call", Fields: fs})
}

// adminCallerOf identifies (on TCP: authenticates and authorizes) the
// caller of an admin call on transport.
func (s *Server) adminCallerOf(ctx context.Context, transport string) (adminCaller, error) {
	if transport == adminTransportTCP {
		return s.authenticateAdmin(ctx)
	}
	c := adminCaller{transport: adminTransportUnix, uid: -1}
	if p, ok := peer.FromContext(ctx); ok {
		if ui, ok := p.AuthInfo.(unixPeerInfo); ok {
			c.uid = ui.uid
		}
	}
	return c, nil
}

// adminUnary is the admin servers' first unary interceptor: it identifies
// the caller (refusing an unauthorized one on TCP), hands it to the
// handler in the context and audits the call.
func (s *Server) adminUnary(transport string) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		c, err := s.adminCallerOf(ctx, transport)
		if err != nil {
			s.auditAdminCall(c, info.FullMethod, err)
			return nil, err
		}
		resp, err := handler(context.WithValue(ctx, adminCallerKey{}, c), req)
		s.auditAdminCall(c, info.FullMethod, err)
		return resp, err
	}
}

// adminStream is adminUnary for streams.
func (s *Server) adminStream(transport string) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ctx := ss.Context()
		c, err := s.adminCallerOf(ctx, transport)
		if err != nil {
			s.auditAdminCall(c, info.FullMethod, err)
			return err
		}
		err = handler(srv, &adminServerStream{ServerStream: ss, ctx: context.WithValue(ctx, adminCallerKey{}, c)})
		s.auditAdminCall(c, info.FullMethod, err)
		return err
	}
}

// adminServerStream is a server stream with the caller in its context.
type adminServerStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (a *adminServerStream) Context() context.Context { return a.ctx }

// authenticateAdmin authenticates and authorizes a call on the TCP admin
// listener (see the top of this file). The caller it returns names what
// is known of it, also when it is refused.
func (s *Server) authenticateAdmin(ctx context.Context) (adminCaller, error) {
	c := adminCaller{transport: adminTransportTCP, uid: -1}
	p, ok := peer.FromContext(ctx)
	if !ok {
		return c, status.Error(codes.Unauthenticated, "no peer information")
	}
	if p.Addr != nil {
		c.remote = p.Addr.String()
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.PeerCertificates) == 0 {
		return c, status.Error(codes.Unauthenticated, "an admin X.509-SVID is required: the connection presented no client certificate")
	}
	bundle, err := s.currentBundle()
	if err != nil {
		return c, status.Error(codes.Unavailable, err.Error())
	}
	id, _, err := x509svid.Verify(ti.State.PeerCertificates, bundle, x509svid.WithTime(s.cfg.Clock.Now()))
	if err != nil {
		return c, status.Errorf(codes.Unauthenticated, "client certificate is not a valid X.509-SVID of trust domain %q: %v", s.td.Name(), err)
	}
	c.id = id
	return c, s.authorizeAdmin(id)
}

// authorizeAdmin returns nil if id may call the admin API over TCP, or
// the PermissionDenied status that refuses it.
func (s *Server) authorizeAdmin(id spiffeid.ID) error {
	if slices.Contains(s.cfg.AdminIDs, id) {
		return nil
	}
	switch {
	case registration.IsAgentID(id):
		return status.Errorf(codes.PermissionDenied, "%s is an agent: not an admin unless listed in admin_ids", id)
	case registration.IsServerID(id):
		return status.Errorf(codes.PermissionDenied, "%s is a server: not an admin unless listed in admin_ids", id)
	case registration.IsReserved(id):
		return status.Errorf(codes.PermissionDenied, "%s is reserved to Sigil: not an admin unless listed in admin_ids", id)
	}
	for _, e := range s.store.Read().EntriesBySPIFFEID(id.String()) {
		if e.Admin {
			return nil
		}
	}
	return status.Errorf(codes.PermissionDenied, "%s is not an admin: it is not in admin_ids and not the spiffe_id of any entry marked admin", id)
}

// verifiedAdmin reports whether certs are a valid admin SVID now: the
// admin guard's test of an authenticated connection. Each call checks
// again.
func (s *Server) verifiedAdmin(certs []*x509.Certificate) bool {
	bundle, err := s.currentBundle()
	if err != nil {
		return false
	}
	id, _, err := x509svid.Verify(certs, bundle, x509svid.WithTime(s.cfg.Clock.Now()))
	return err == nil && s.authorizeAdmin(id) == nil
}

// refuseAdmin is the admin guard's answer to a call on a connection that
// presented no admin SVID at its handshake: the refusal, audited, or nil
// if the caller is an admin by now (the interceptor checks it again).
func (s *Server) refuseAdmin(ctx context.Context, method string) error {
	c, err := s.authenticateAdmin(ctx)
	if err != nil {
		s.auditAdminCall(c, method, err)
	}
	return err
}

// adminTLSConfig is the TCP admin listener's TLS configuration: the
// server SVID, and a client certificate requested (checked per call, so
// that a refusal is a clear gRPC status).
func (s *Server) adminTLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return s.svid.Load(), nil
		},
		ClientAuth: tls.RequestClientCert,
	}
}

// newAdminTCPServer builds the gRPC server of the TCP admin listener.
func (s *Server) newAdminTCPServer() *grpc.Server {
	lim := s.nodeLimits
	g := newNodeGuard(lim, s.cfg.Clock, s.log.Named("admin_api"), s.verifiedAdmin, s.refuseAdmin)
	g.isOpen = func(string) bool { return false }
	s.adminGuard = g
	srv := grpc.NewServer(
		grpc.Creds(g.credentials(credentials.NewTLS(s.adminTLSConfig()))),
		grpc.InTapHandle(g.tap),
		grpc.ChainUnaryInterceptor(s.adminUnary(adminTransportTCP), s.adminStarting, s.adminConsistency),
		grpc.ChainStreamInterceptor(s.adminStream(adminTransportTCP), s.adminStartingStream),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.MaxRecvMsgSize(lim.MaxRecvMsgSize),
		grpc.MaxConcurrentStreams(lim.MaxConcurrentStreams),
		grpc.MaxHeaderListSize(lim.MaxHeaderListSize),
		grpc.ConnectionTimeout(lim.HandshakeTimeout),
	)
	s.registerAdminServices(srv)
	return srv
}

// AdminAddr is the TCP admin listener's address; nil without
// AdminAddress. Valid after Ready.
func (s *Server) AdminAddr() net.Addr {
	a, _ := s.adminAddr.Load().(net.Addr)
	return a
}
