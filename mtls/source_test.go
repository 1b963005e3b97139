package mtls_test

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/sigil-id/sigil/internal/eventually"
	"github.com/sigil-id/sigil/mtls"
	"github.com/sigil-id/sigil/mtls/mtlstest"
)

func startFake(t *testing.T) *mtlstest.WorkloadAPI {
	t.Helper()
	dir, err := os.MkdirTemp("", "mtls")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	w, err := mtlstest.StartWorkloadAPI(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
	return w
}

func TestSourceFromWorkloadAPI(t *testing.T) {
	e := newEnv(t)
	w := startFake(t)
	if err := w.SetX509([]*x509svid.SVID{e.ca.SVID(serverID, time.Hour)}, e.ca.Bundle(), e.partner.Bundle()); err != nil {
		t.Fatal(err)
	}
	t.Setenv(mtls.SocketEnv, w.Addr())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rotated := make(chan *x509svid.SVID, 4)
	src, err := mtls.NewSource(ctx, mtls.WithOnRotate(func(s *x509svid.SVID) { rotated <- s }))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if src.ID().String() != serverID {
		t.Fatalf("ID %s", src.ID())
	}
	// Own and federated bundles; an unknown trust domain is a clear error.
	for _, td := range []string{"example.org", "partner.org"} {
		if _, err := src.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString(td)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := src.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString("evil.org")); err == nil ||
		!strings.Contains(err.Error(), `mtls: no trust bundle for trust domain "evil.org"`) {
		t.Fatalf("unknown trust domain: %v", err)
	}

	// An mTLS server on the source serves a client; after the agent
	// pushes a new SVID, the callback fires and new handshakes use it.
	url, _ := serveHTTP(t, src, httpHandler())
	c := httpClient(e.source(clientID))
	first := serverSerial(t, c, url)
	next := e.ca.SVID(serverID, time.Hour)
	if err := w.SetX509([]*x509svid.SVID{next}, e.ca.Bundle(), e.partner.Bundle()); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-rotated:
		if !got.Certificates[0].Equal(next.Certificates[0]) {
			t.Fatal("callback got another SVID")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no rotation callback")
	}
	c.CloseIdleConnections()
	if s := serverSerial(t, c, url); s == first || s != next.Certificates[0].SerialNumber.String() {
		t.Fatalf("after rotation the server presents %s (first %s)", s, first)
	}

	// After Close the source refuses to hand out SVIDs.
	if err := src.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := src.GetX509SVID(); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Fatalf("after Close: %v", err)
	}
	if err := src.Close(); err != nil {
		t.Fatal("second Close:", err)
	}
}

func TestSourceErrors(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	t.Run("missing socket", func(t *testing.T) {
		missing := filepath.Join(t.TempDir(), "nope.sock")
		_, err := mtls.NewSource(ctx, mtls.WithSocket(missing))
		if !errors.Is(err, mtls.ErrSocketMissing) || !strings.Contains(err.Error(), missing+" does not exist (is the sigil agent running? set SPIFFE_ENDPOINT_SOCKET") {
			t.Fatalf("%v", err)
		}
		t.Setenv(mtls.SocketEnv, "unix://"+missing)
		if _, err := mtls.NewSource(ctx); !errors.Is(err, mtls.ErrSocketMissing) {
			t.Fatalf("from env: %v", err)
		}
	})
	t.Run("no identity", func(t *testing.T) {
		w := startFake(t)
		w.DenyIdentity()
		_, err := mtls.NewSource(ctx, mtls.WithSocket(w.Path()))
		if !errors.Is(err, mtls.ErrNoIdentity) || !strings.Contains(err.Error(), "(no identity issued); register it, e.g. sigil entry create") {
			t.Fatalf("%v", err)
		}
	})
	t.Run("not the wanted SVID", func(t *testing.T) {
		e := newEnv(t)
		w := startFake(t)
		w.SetX509([]*x509svid.SVID{e.ca.SVID(clientID, time.Hour)}, e.ca.Bundle())
		short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		_, err := mtls.NewSource(short, mtls.WithSocket(w.Addr()), mtls.WithSVIDID(spiffeid.RequireFromString(serverID)))
		if !errors.Is(err, mtls.ErrNoIdentity) || !strings.Contains(err.Error(), "("+clientID+") is the one asked for") {
			t.Fatalf("%v", err)
		}
	})
	t.Run("wanted SVID arrives later", func(t *testing.T) {
		e := newEnv(t)
		w := startFake(t)
		w.SetX509([]*x509svid.SVID{e.ca.SVID(clientID, time.Hour)}, e.ca.Bundle())
		go func() {
			// The new SVID comes after the source has the first
			// response, which lacks it.
			if err := eventually.Wait(10*time.Second, func() error {
				if w.SentX509SVIDs() == 0 {
					return errors.New("no response sent yet")
				}
				return nil
			}); err != nil {
				t.Error(err)
			}
			w.SetX509([]*x509svid.SVID{e.ca.SVID(clientID, time.Hour), e.ca.SVID(serverID, time.Hour)}, e.ca.Bundle())
		}()
		src, err := mtls.NewSource(ctx, mtls.WithSocket(w.Addr()), mtls.WithSVIDID(spiffeid.RequireFromString(serverID)))
		if err != nil {
			t.Fatal(err)
		}
		defer src.Close()
		if src.ID().String() != serverID {
			t.Fatalf("picked %s", src.ID())
		}
	})
	t.Run("pick among several", func(t *testing.T) {
		e := newEnv(t)
		w := startFake(t)
		w.SetX509([]*x509svid.SVID{e.ca.SVID(clientID, time.Hour), e.ca.SVID(serverID, time.Hour)}, e.ca.Bundle())
		src, err := mtls.NewSource(ctx, mtls.WithSocket(w.Addr()), mtls.WithSVIDID(spiffeid.RequireFromString(serverID)))
		if err != nil {
			t.Fatal(err)
		}
		defer src.Close()
		if src.ID().String() != serverID || len(src.SVIDs()) != 2 {
			t.Fatalf("picked %s of %d", src.ID(), len(src.SVIDs()))
		}
	})
	t.Run("nobody answers", func(t *testing.T) {
		// A socket file nobody listens on: the source retries until ctx ends.
		path := filepath.Join(t.TempDir(), "dead.sock")
		os.WriteFile(path, nil, 0o600)
		short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		_, err := mtls.NewSource(short, mtls.WithSocket(path))
		if err == nil || !strings.Contains(err.Error(), "mtls: no X.509-SVID from the Workload API at unix://"+path) {
			t.Fatalf("%v", err)
		}
	})
}

func httpHandler() http.Handler { return http.HandlerFunc(hello) }

func serverSerial(t *testing.T, c *http.Client, url string) string {
	t.Helper()
	resp, err := c.Get(url + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.TLS.PeerCertificates[0].SerialNumber.String()
}
