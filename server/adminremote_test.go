package server

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	grpcstatus "google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/audit"
	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/internal/eventually"
	"github.com/sigil-id/sigil/mtls/mtlstest"
)

const (
	adminListed = "spiffe://example.org/ops/alice" // in admin_ids
	adminByEnt  = "spiffe://example.org/ops/ci"    // the spiffe_id of an entry marked admin
	notAdmin    = "spiffe://example.org/web"       // the spiffe_id of an entry not marked admin
)

// startRemoteAdminServer starts a server with the TCP admin listener on
// loopback, adminListed in admin_ids, an entry marked admin for adminByEnt
// and one not marked for notAdmin, with the clock clk and its audit events
// in log.
func startRemoteAdminServer(t *testing.T, clk clock.Clock, log *auditLog) *harness {
	t.Helper()
	h := startServerConfig(t, clk, nil, func(c *Config) {
		c.AdminAddress = "127.0.0.1:0"
		c.AdminIDs = []spiffeid.ID{spiffeid.RequireFromString(adminListed)}
		c.AuditSink = log
	})
	for id, admin := range map[string]bool{adminByEnt: true, notAdmin: false} {
		h.createAdminEntry(id, admin)
	}
	return h
}

// createAdminEntry creates an entry for spiffeID over the unix socket,
// marked admin or not.
func (h *harness) createAdminEntry(spiffeID string, admin bool) *sigilv1.Entry {
	h.t.Helper()
	e := &sigilv1.Entry{SpiffeId: spiffeID, ParentId: "spiffe://example.org/node/1", Admin: admin,
		Selectors: []*sigilv1.Selector{{Type: "unix", Value: "uid:1000"}}}
	resp, err := h.admin.BatchCreateEntry(context.Background(), &sigilv1.BatchCreateEntryRequest{Entries: []*sigilv1.Entry{e}})
	if err != nil {
		h.t.Fatal(err)
	}
	if st := resp.Results[0].Status; st.Code != 0 {
		h.t.Fatalf("create entry: %s", st.Message)
	}
	if resp.Results[0].Entry.Admin != admin {
		h.t.Fatalf("stored entry's admin = %v, want %v", resp.Results[0].Entry.Admin, admin)
	}
	return resp.Results[0].Entry
}

// remoteAdminConn dials the TCP admin listener with real TLS, presenting
// cert (none when nil) and accepting only a server SVID of the trust
// domain that chains to the bundle.
func (h *harness) remoteAdminConn(cert *tls.Certificate) *grpc.ClientConn {
	h.t.Helper()
	pool := h.pool()
	tc := &tls.Config{InsecureSkipVerify: true, // verified below, as a server SVID of the bundle
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			certs, err := parseCerts(raw)
			if err != nil {
				return err
			}
			inter := x509.NewCertPool()
			for _, c := range certs[1:] {
				inter.AddCert(c)
			}
			if _, err := certs[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
				return err
			}
			if len(certs[0].URIs) != 1 || certs[0].URIs[0].String() != h.srv.ID().String() {
				return &url.Error{Op: "verify", URL: "server SVID", Err: os.ErrInvalid}
			}
			return nil
		}}
	if cert != nil {
		tc.Certificates = []tls.Certificate{*cert}
	}
	addr := h.srv.AdminAddr()
	if addr == nil {
		h.t.Fatal("no TCP admin listener")
	}
	if !strings.HasPrefix(addr.String(), "127.0.0.1:") {
		h.t.Fatalf("admin listener on %s, want loopback", addr)
	}
	conn, err := grpc.NewClient(addr.String(), grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { conn.Close() })
	return conn
}

// createOverTCP creates an entry for spiffeID through conn.
func createOverTCP(conn *grpc.ClientConn, spiffeID string) (*sigilv1.Entry, error) {
	resp, err := sigilv1.NewAdminClient(conn).BatchCreateEntry(context.Background(), &sigilv1.BatchCreateEntryRequest{Entries: []*sigilv1.Entry{{
		SpiffeId: spiffeID, ParentId: "spiffe://example.org/node/1", Selectors: []*sigilv1.Selector{{Type: "unix", Value: "uid:1001"}},
	}}})
	if err != nil {
		return nil, err
	}
	if st := resp.Results[0].Status; st.Code != 0 {
		return nil, &url.Error{Op: "create", URL: spiffeID, Err: os.ErrInvalid}
	}
	return resp.Results[0].Entry, nil
}

// find returns the recorded events named what.
func (l *auditLog) find(what string) []audit.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []audit.Event
	for _, ev := range l.events {
		if ev.What == what {
			out = append(out, ev)
		}
	}
	return out
}

func fieldOf(ev audit.Event, key string) (any, bool) {
	for _, f := range ev.Fields {
		if f.Key == key {
			return f.Value, true
		}
	}
	return nil, false
}

// TestRemoteAdminCreatesEntryWithAdminSVID: over TCP with mutual TLS, an
// SVID listed in admin_ids and an SVID of an entry marked admin both
// create entries, and the audit records name them.
func TestRemoteAdminCreatesEntryWithAdminSVID(t *testing.T) {
	log := &auditLog{}
	h := startRemoteAdminServer(t, nil, log)
	for _, caller := range []string{adminListed, adminByEnt} {
		t.Run(caller, func(t *testing.T) {
			target := "spiffe://example.org/created-by/" + caller[len("spiffe://example.org/ops/"):]
			e, err := createOverTCP(h.remoteAdminConn(h.mintSVID(caller)), target)
			if err != nil {
				t.Fatalf("create over TCP: %v", err)
			}
			got, err := h.admin.GetEntry(context.Background(), &sigilv1.GetEntryRequest{Id: e.Id})
			if err != nil || got.SpiffeId != target {
				t.Fatalf("entry over the socket: %v %v", got, err)
			}
			var created *audit.Event
			for _, ev := range log.find("entry_created") {
				if ev.Subject == e.Id {
					created = &ev
				}
			}
			if created == nil {
				t.Fatal("no entry_created event")
			}
			if created.Who != caller {
				t.Errorf("entry_created Who %q, want %q", created.Who, caller)
			}
			if v, _ := fieldOf(*created, "transport"); v != "tcp" {
				t.Errorf("entry_created transport %v, want tcp", v)
			}
			var call *audit.Event
			for _, ev := range log.find("admin_call") {
				if ev.Who == caller && ev.Subject == sigilv1.Admin_BatchCreateEntry_FullMethodName {
					call = &ev
				}
			}
			if call == nil || call.Outcome != audit.Success {
				t.Fatalf("admin_call of %s: %+v, want one, successful", caller, call)
			}
			if v, _ := fieldOf(*call, "caller_id"); v != caller {
				t.Errorf("admin_call caller_id %v", v)
			}
		})
	}
	// The other admin services are on the listener too.
	conn := h.remoteAdminConn(h.mintSVID(adminListed))
	if _, err := sigilv1.NewClusterAdminClient(conn).Members(context.Background(), &sigilv1.MembersRequest{}); err != nil {
		t.Errorf("ClusterAdmin.Members over TCP: %v", err)
	}
	if _, err := sigilv1.NewAuthorityAdminClient(conn).ShowAuthorities(context.Background(), &sigilv1.ShowAuthoritiesRequest{}); err != nil {
		t.Errorf("AuthorityAdmin.ShowAuthorities over TCP: %v", err)
	}
	if _, err := sigilv1.NewFederationAdminClient(conn).ListRelationships(context.Background(), &sigilv1.ListRelationshipsRequest{}); err != nil {
		t.Errorf("FederationAdmin.ListRelationships over TCP: %v", err)
	}
	if _, err := sigilv1.NewAlertAdminClient(conn).List(context.Background(), &sigilv1.AlertListRequest{}); err != nil {
		t.Errorf("AlertAdmin.List over TCP: %v", err)
	}
}

// selfSigned is a self-signed certificate with the URI SAN id.
func selfSigned(t *testing.T, id string) *tls.Certificate {
	t.Helper()
	key := newKey(t)
	u, _ := url.Parse(id)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "self"}, URIs: []*url.URL{u},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return tlsCert([]*x509.Certificate{c}, key)
}

// TestRemoteAdminRefusesCallers: a caller without a certificate, with a
// certificate of another trust domain, of a CA outside the bundle or
// self-signed, with a valid SVID that is not an admin (an agent's and a
// server's included) is refused, nothing is written, and the refusal is
// audited with what is known of the caller.
func TestRemoteAdminRefusesCallers(t *testing.T) {
	log := &auditLog{}
	h := startRemoteAdminServer(t, nil, log)
	other := mtlstest.NewCA("other.org").SVID("spiffe://other.org/ops/alice", time.Hour)
	forged := mtlstest.NewCA("example.org").SVID(adminListed, time.Hour)
	for _, tc := range []struct {
		name string
		cert *tls.Certificate
		code codes.Code
		msg  string
		who  string
	}{
		{"no certificate", nil, codes.Unauthenticated, "presented no client certificate", ""},
		{"another trust domain", svidCert(other), codes.Unauthenticated, "not a valid X.509-SVID", ""},
		{"a CA outside the bundle", svidCert(forged), codes.Unauthenticated, "not a valid X.509-SVID", ""},
		{"self-signed", selfSigned(t, adminListed), codes.Unauthenticated, "not a valid X.509-SVID", ""},
		{"SVID not admin", h.mintSVID(notAdmin), codes.PermissionDenied, notAdmin + " is not an admin", notAdmin},
		{"SVID without an entry", h.mintSVID("spiffe://example.org/nobody"), codes.PermissionDenied, "spiffe://example.org/nobody is not an admin", "spiffe://example.org/nobody"},
		{"agent SVID", h.agentCert(), codes.PermissionDenied, "is an agent", "spiffe://example.org/sigil/agent/"},
		{"server SVID", h.serverCert(), codes.PermissionDenied, "is a server", h.srv.ID().String()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(log.find("admin_call"))
			_, err := createOverTCP(h.remoteAdminConn(tc.cert), "spiffe://example.org/intruder")
			wantStatus(t, err, tc.code, tc.msg)
			calls := log.find("admin_call")
			if len(calls) != before+1 {
				t.Fatalf("%d admin_call events for the refusal, want 1", len(calls)-before)
			}
			ev := calls[len(calls)-1]
			if ev.Outcome != audit.Denied || ev.Subject != sigilv1.Admin_BatchCreateEntry_FullMethodName || !strings.HasPrefix(ev.Who, tc.who) || (tc.who == "") != (ev.Who == "") {
				t.Errorf("refusal audited as %+v, want denied, the method, who %q", ev, tc.who)
			}
			if v, _ := fieldOf(ev, "remote_addr"); !strings.HasPrefix(v.(string), "127.0.0.1:") {
				t.Errorf("remote_addr %v", v)
			}
		})
	}
	resp, err := h.admin.ListEntries(context.Background(), &sigilv1.ListEntriesRequest{SpiffeId: "spiffe://example.org/intruder"})
	if err != nil || len(resp.Entries) != 0 {
		t.Fatalf("entries of the intruder: %v %v, want none", resp, err)
	}
	if n := len(log.find("entry_created")); n != 2 {
		t.Errorf("%d entries created, want the 2 of the setup", n)
	}
	// The agent and server IDs are admins only when listed.
	for _, id := range []string{"spiffe://example.org/sigil/agent/x/y", h.srv.ID().String()} {
		if err := h.srv.authorizeAdmin(spiffeid.RequireFromString(id)); grpcstatus.Code(err) != codes.PermissionDenied {
			t.Errorf("authorizeAdmin(%s) = %v, want PermissionDenied", id, err)
		}
	}
}

// TestRemoteAdminChecksEveryCall: the authorization is checked on every
// call: an entry unmarked admin, and an SVID expired since the connection
// opened, are refused on the open connection.
func TestRemoteAdminChecksEveryCall(t *testing.T) {
	log := &auditLog{}
	clk := clock.NewFake(time.Now())
	h := startRemoteAdminServer(t, clk, log)

	conn := h.remoteAdminConn(h.mintSVID(adminByEnt))
	if _, err := createOverTCP(conn, "spiffe://example.org/a"); err != nil {
		t.Fatalf("admin entry's SVID: %v", err)
	}
	ents, err := h.admin.ListEntries(context.Background(), &sigilv1.ListEntriesRequest{SpiffeId: adminByEnt})
	if err != nil || len(ents.Entries) != 1 {
		t.Fatalf("list: %v %v", ents, err)
	}
	e := ents.Entries[0]
	e.Admin = false
	if _, err := h.admin.BatchUpdateEntry(context.Background(), &sigilv1.BatchUpdateEntryRequest{Entries: []*sigilv1.Entry{e}}); err != nil {
		t.Fatal(err)
	}
	_, err = createOverTCP(conn, "spiffe://example.org/b")
	wantStatus(t, err, codes.PermissionDenied, adminByEnt+" is not an admin")

	// An SVID that expires while its connection is open.
	key := newKey(t)
	chain, err := h.srv.x509CA().SignX509SVID(context.Background(), ca.X509SVIDParams{PublicKey: key.Public(), SPIFFEID: spiffeid.RequireFromString(adminListed), TTL: 2 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	conn = h.remoteAdminConn(tlsCert(chain, key))
	if _, err := createOverTCP(conn, "spiffe://example.org/c"); err != nil {
		t.Fatalf("listed admin: %v", err)
	}
	clk.Add(3 * time.Minute)
	_, err = createOverTCP(conn, "spiffe://example.org/d")
	wantStatus(t, err, codes.Unauthenticated, "not a valid X.509-SVID")
}

// TestAdminSocketCallsAuditUID: on the unix socket, every admin call and
// every operation it does is audited with the peer's uid.
func TestAdminSocketCallsAuditUID(t *testing.T) {
	log := &auditLog{}
	h := startServerConfig(t, nil, nil, func(c *Config) { c.AuditSink = log })
	e := h.createAdminEntry("spiffe://example.org/web", false)
	if _, err := h.admin.GetEntry(context.Background(), &sigilv1.GetEntryRequest{Id: e.Id}); err != nil {
		t.Fatal(err)
	}
	uid := os.Getuid()
	check := func(ev audit.Event) {
		t.Helper()
		if ev.Who != audit.Admin {
			t.Errorf("%s Who %q, want %q", ev.What, ev.Who, audit.Admin)
		}
		if v, _ := fieldOf(ev, "transport"); v != "unix" {
			t.Errorf("%s transport %v", ev.What, v)
		}
		if v, _ := fieldOf(ev, "caller_uid"); v != uid {
			t.Errorf("%s caller_uid %v, want %d", ev.What, v, uid)
		}
	}
	created := log.find("entry_created")
	if len(created) != 1 {
		t.Fatalf("%d entry_created", len(created))
	}
	check(created[0])
	methods := map[string]bool{}
	for _, ev := range log.find("admin_call") {
		check(ev)
		methods[ev.Subject] = true
		if ev.Outcome != audit.Success {
			t.Errorf("%s outcome %s", ev.Subject, ev.Outcome)
		}
	}
	for _, m := range []string{sigilv1.Admin_BatchCreateEntry_FullMethodName, sigilv1.Admin_GetEntry_FullMethodName} {
		if !methods[m] {
			t.Errorf("no admin_call for %s; got %v", m, methods)
		}
	}
	// A failed call is audited as such.
	_, err := h.admin.GetEntry(context.Background(), &sigilv1.GetEntryRequest{Id: strings.Repeat("f", 32)})
	wantStatus(t, err, codes.NotFound, "")
	calls := log.find("admin_call")
	if last := calls[len(calls)-1]; last.Outcome != audit.Failure || last.Subject != sigilv1.Admin_GetEntry_FullMethodName {
		t.Errorf("failed call audited as %+v", last)
	}
	if h.srv.AdminAddr() != nil {
		t.Errorf("TCP admin listener without admin_address: %v", h.srv.AdminAddr())
	}
}

// TestConfigAdminRemote: admin_address must be host:port and admin_ids
// of the trust domain.
func TestConfigAdminRemote(t *testing.T) {
	for _, tc := range []struct {
		addr string
		ids  []string
		err  string
	}{
		{"127.0.0.1:8443", []string{"spiffe://example.org/ops"}, ""},
		{"", []string{"spiffe://example.org/sigil/agent/x/y"}, ""},
		{"8443", nil, `admin_address "8443": want host:port`},
		{"127.0.0.1:8443", []string{"spiffe://other.org/ops"}, `admin_ids: spiffe://other.org/ops is not of trust domain "example.org"`},
	} {
		var ids []spiffeid.ID
		for _, s := range tc.ids {
			ids = append(ids, spiffeid.RequireFromString(s))
		}
		err := checkAdminRemote(testTD, tc.addr, ids)
		if (err == nil) != (tc.err == "") || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("%q %v: %v, want %q", tc.addr, tc.ids, err, tc.err)
		}
		if err != nil && strings.Count(err.Error(), "server:") != 1 {
			t.Errorf("error %q: want one package prefix", err)
		}
	}
}

// adminDialTLS opens a TLS connection to the TCP admin listener,
// presenting cert (none when nil), and completes the handshake.
func adminDialTLS(addr string, cert *tls.Certificate) (*tls.Conn, error) {
	raw, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	tc := &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}} //nolint:gosec // test client
	if cert != nil {
		tc.Certificates = []tls.Certificate{*cert}
	}
	c := tls.Client(raw, tc)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if err := c.Handshake(); err != nil {
		raw.Close()
		return nil, err
	}
	return c, nil
}

// TestRemoteAdminGuardsUnauthenticated: connections to the TCP admin
// listener without an admin SVID (none, or a valid SVID that is not an
// admin) are bounded per source like the node API's; one with an admin
// SVID is not counted.
func TestRemoteAdminGuardsUnauthenticated(t *testing.T) {
	log := &auditLog{}
	h := startServerConfig(t, nil, func(l *nodeLimits) { l.MaxUnauthConnsPerSource = 2 }, func(c *Config) {
		c.AdminAddress = "127.0.0.1:0"
		c.AdminIDs = []spiffeid.ID{spiffeid.RequireFromString(adminListed)}
		c.AuditSink = log
	})
	addr := h.srv.AdminAddr().String()
	g := h.srv.adminGuard
	c1, err := adminDialTLS(addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	c2, err := adminDialTLS(addr, h.mintSVID(notAdmin))
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	eventually.NoError(t, 10*time.Second, func() error {
		if n := g.unauthConnCount(); n != 2 {
			return fmt.Errorf("%d unauthenticated admin connections counted, want 2", n)
		}
		return nil
	})
	if c3, err := adminDialTLS(addr, nil); err == nil {
		// The server closes it right after accepting it.
		c3.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, rerr := c3.Read(make([]byte, 1))
		c3.Close()
		if ne, ok := rerr.(net.Error); ok && ne.Timeout() {
			t.Fatal("a third unauthenticated connection from one source was kept")
		}
	}
	c1.Close()
	// Room again once the server notices; an admin connection is not
	// counted against the limits.
	eventually.NoError(t, 10*time.Second, func() error {
		_, err := createOverTCP(h.remoteAdminConn(h.mintSVID(adminListed)), "spiffe://example.org/after")
		return err
	})
	if n := g.unauthConnCount(); n != 1 {
		t.Errorf("%d unauthenticated admin connections counted, want 1 (the non-admin SVID's)", n)
	}
	if n := h.srv.nodeGuard.unauthConnCount(); n != 0 {
		t.Errorf("the node API's guard counts %d of the admin listener's connections", n)
	}
}
