package mtls_test

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/attestor/workload"
	unixattestor "github.com/sigil-id/sigil/attestor/workload/unix"
	"github.com/sigil-id/sigil/internal/eventually"
	"github.com/sigil-id/sigil/mtls"
	"github.com/sigil-id/sigil/mtls/mtlstest"
	"github.com/sigil-id/sigil/mtls/policy"
	"github.com/sigil-id/sigil/workloadapi"
)

// sigilWorkloadAPI runs Sigil's own Workload API server (the unix
// attestor, an in-memory cache) on a socket, with one identity for this
// process: serverID of e.ca, entry "srv". It returns the cache, to
// change federation mid-test, and the socket address.
func sigilWorkloadAPI(t *testing.T, e *env) (*workloadapi.MemoryCache, string) {
	t.Helper()
	cache := workloadapi.NewMemoryCache()
	cache.SetBundle(e.ca.Bundle())
	cache.SetFederatedBundle(e.partner.TrustDomain(), e.partner.Bundle())
	svid := e.ca.SVID(serverID, time.Hour)
	me := []*sigilv1.Selector{{Type: "unix", Value: "uid:" + strconv.Itoa(os.Geteuid())}}
	cache.SetIdentity(me, workloadapi.X509Identity{
		EntryID:    "srv",
		SPIFFEID:   svid.ID,
		Chain:      svid.Certificates,
		PrivateKey: svid.PrivateKey,
	})
	srv, err := workloadapi.New(workloadapi.Config{Cache: cache, Attestors: []workload.Attestor{unixattestor.New()}})
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "mtlsfed") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "public", "api.sock")
	l, err := workloadapi.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return cache, "unix://" + sock
}

// TestFederatedPeerThroughSigilWorkloadAPI: a server whose Source reads
// Sigil's Workload API accepts a peer of a federated trust domain when
// its entry federates with that trust domain and the policy names the
// peer; the policy alone refuses it otherwise; and once the entry stops
// federating, the peer's handshake fails whatever the policy says.
func TestFederatedPeerThroughSigilWorkloadAPI(t *testing.T) {
	e := newEnv(t)
	cache, addr := sigilWorkloadAPI(t, e)
	partnerTD := e.partner.TrustDomain()

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// Not federating yet: the source has the own bundle only.
	src, err := mtls.NewSource(ctx, mtls.WithSocket(addr))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if _, err := src.GetX509BundleForTrustDomain(partnerTD); err == nil {
		t.Fatal("source has partner.org's bundle before the entry federates with it")
	}
	cache.SetFederatesWith("srv", partnerTD)
	eventually.NoError(t, 10*time.Second, func() error {
		_, err := src.GetX509BundleForTrustDomain(partnerTD)
		return err
	})

	pol, err := policy.Parse([]byte(`
rule "partner-reads-hello" {
  from = ["`+partnerID+`"]
  to   = ["http:GET /hello"]
}
rule "web-reads-hello" {
  from = ["`+clientID+`"]
  to   = ["http:GET /hello"]
}
`), "policy.hcl")
	if err != nil {
		t.Fatal(err)
	}
	enf := mtls.NewEnforcer(pol, mtls.WithServiceName("users"))
	url, _ := serveHTTP(t, src, mtls.HTTPMiddleware(enf.Authorize)(http.HandlerFunc(hello)))

	// Named by the policy: accepted, and the handler sees the partner ID.
	partner := httpClient(e.source(partnerID))
	if code, body := get(t, partner, url+"/hello"); code != 200 || body != "hello "+partnerID {
		t.Fatalf("federated peer named by the policy: %d %q", code, body)
	}
	// Another partner workload the policy does not name: refused by the
	// policy, after a successful handshake.
	code, body := get(t, httpClient(e.source("spiffe://partner.org/batch")), url+"/hello")
	if code != 403 || !strings.Contains(body, "spiffe://partner.org/batch may not call GET /hello") {
		t.Fatalf("federated peer the policy does not name: %d %q", code, body)
	}

	// The entry no longer federates with partner.org: its bundle leaves
	// the source and new handshakes fail, policy or not.
	cache.SetFederatesWith("srv")
	eventually.NoError(t, 10*time.Second, func() error {
		if _, err := src.GetX509BundleForTrustDomain(partnerTD); err == nil {
			return errors.New("source still has partner.org's bundle")
		}
		return nil
	})
	fresh := httpClient(e.source(partnerID)) // no pooled connection
	if resp, err := fresh.Get(url + "/hello"); err == nil {
		resp.Body.Close()
		t.Fatalf("federated peer accepted after the entry stopped federating: %d", resp.StatusCode)
	}
	// The own trust domain is unaffected.
	if code, body := get(t, httpClient(e.source(clientID)), url+"/hello"); code != 200 {
		t.Fatalf("own peer: %d %q", code, body)
	}
}

// TestFederatedPeerTLSAuthorizers: at the TLS layer, a federated peer is
// accepted by AuthorizeAny (its bundle is in the source: the operator
// federated with its trust domain) and by AuthorizeMemberOf or
// AuthorizeID naming it, and refused by AuthorizeMemberOf of the own
// trust domain only; a client accepts a server of a federated trust
// domain it names with WithServerID.
func TestFederatedPeerTLSAuthorizers(t *testing.T) {
	e := newEnv(t)
	exampleTD := e.ca.TrustDomain()
	for _, tc := range []struct {
		name  string
		authz mtls.Authorizer
		ok    bool
	}{
		{"any", mtls.AuthorizeAny(), true},
		{"member of partner.org", mtls.AuthorizeMemberOf(exampleTD, e.partner.TrustDomain()), true},
		{"exact ID", mtls.AuthorizeID(spiffeid.RequireFromString(partnerID)), true},
		{"member of example.org only", mtls.AuthorizeMemberOf(exampleTD), false},
		{"another ID", mtls.AuthorizeID(spiffeid.RequireFromString(clientID)), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := mtls.Listen("tcp", "127.0.0.1:0", e.server, mtls.WithAuthorizer(tc.authz))
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			accepted := make(chan error, 1)
			go func() {
				c, err := l.Accept()
				if err != nil {
					accepted <- err
					return
				}
				defer c.Close()
				accepted <- c.(interface{ HandshakeContext(context.Context) error }).HandshakeContext(context.Background())
			}()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			conn, err := mtls.Dial(ctx, "tcp", l.Addr().String(), e.source(partnerID), mtls.WithServerID(spiffeid.RequireFromString(serverID)))
			if err == nil {
				// TLS 1.3: the client learns of a refusal at its first read.
				conn.SetReadDeadline(time.Now().Add(5 * time.Second))
				_, err = conn.Read(make([]byte, 1))
				conn.Close()
			}
			serr := <-accepted
			if tc.ok {
				if serr != nil {
					t.Fatalf("server refused the federated peer: %v", serr)
				}
				return
			}
			if serr == nil || !strings.Contains(serr.Error(), partnerID) {
				t.Fatalf("server handshake: %v; want a refusal naming %s", serr, partnerID)
			}
			if err == nil {
				t.Fatal("client saw no refusal")
			}
		})
	}

	// A client in example.org calling a partner.org server it names.
	psrc := mtlstest.NewSource(e.partner.SVID("spiffe://partner.org/api", time.Hour), e.partner.Bundle(), e.ca.Bundle())
	url, _ := serveHTTP(t, psrc, mtls.HTTPMiddleware(mtls.AuthorizeMemberOf(exampleTD))(http.HandlerFunc(hello)))
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: mtls.ClientConfig(e.source(clientID), mtls.WithServerID(spiffeid.RequireFromString("spiffe://partner.org/api"))),
	}}
	if code, body := get(t, c, url+"/hello"); code != 200 || body != "hello "+clientID {
		t.Fatalf("client to a federated server: %d %q", code, body)
	}
}
