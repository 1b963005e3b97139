package integration

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/sigil-id/sigil/internal/eventually"
	"github.com/sigil-id/sigil/mtls"
	"github.com/sigil-id/sigil/mtls/policy"
)

// TestMTLSLibrary drives the mtls library against a real server and agent:
// three identities issued to this test process (told apart with
// WithSVIDID), an HTTP/2 service enforcing a policy file, a policy edit
// and a broken edit on disk, and a server SVID with a 6 s TTL that the
// agent rotates under a long-lived connection.
func TestMTLSLibrary(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	root := t.TempDir()
	s := newServer(t, filepath.Join(root, "server"))
	s.start()
	a := newAgent(t, s, filepath.Join(root, "agent"))
	a.start()

	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	td := "spiffe://" + trustDomain
	srvID, cliID, otherID := td+"/mtls/server", td+"/mtls/client", td+"/mtls/other"
	s.cli("entry", "create", "-spiffe-id", srvID, "-parent-id", a.id, "-selector", uidSelector(t),
		"-selector", "unix:path:"+exe, "-x509-svid-ttl", "6s")
	createEntry(t, s, cliID, a.id, uidSelector(t), "unix:path:"+exe)
	createEntry(t, s, otherID, a.id, uidSelector(t), "unix:path:"+exe)

	// Wait until the agent serves all three, so that NewSource does not
	// meet "no identity issued" while the entries are on their way.
	for _, id := range []string{srvID, cliID, otherID} {
		fetchID(t, a.socket, id)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rotated := make(chan *x509svid.SVID, 8)
	newSource := func(id string, opts ...mtls.SourceOption) *mtls.Source {
		t.Helper()
		opts = append(opts, mtls.WithSocket(a.socket), mtls.WithSVIDID(spiffeid.RequireFromString(id)))
		src, err := mtls.NewSource(ctx, opts...)
		if err != nil {
			t.Fatalf("source for %s: %v", id, err)
		}
		t.Cleanup(func() { src.Close() })
		return src
	}
	srvSrc := newSource(srvID, mtls.WithOnRotate(func(s *x509svid.SVID) { rotated <- s }))
	cliSrc := newSource(cliID)
	otherSrc := newSource(otherID)

	// A missing socket is a clear error.
	if _, err := mtls.NewSource(ctx, mtls.WithSocket(filepath.Join(root, "nope.sock"))); !errors.Is(err, mtls.ErrSocketMissing) {
		t.Fatalf("missing socket: %v", err)
	}

	// The service: policy file on disk, hot-reloaded.
	polPath := filepath.Join(root, "policy.hcl")
	mtlsWriteFile(t, polPath, `
rule "client-says-hello" {
  from = ["`+cliID+`"]
  to   = ["http:GET /hello"]
}
`)
	watcher, err := policy.Watch(polPath, policy.WithInterval(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer watcher.Close()
	reg := prometheus.NewRegistry()
	enf := mtls.NewEnforcer(watcher, mtls.WithServiceName("greeter"), mtls.WithMetrics(reg))
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		caller, _ := mtls.PeerIDFromContext(r.Context())
		io.WriteString(w, "hello "+caller.String())
	})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mtls.HTTPMiddleware(enf.Authorize)(handler), TLSConfig: mtls.ServerConfig(srvSrc)}
	go srv.ServeTLS(l, "", "")
	defer srv.Close()
	url := "https://" + l.Addr().String() + "/hello"

	client := func(src *mtls.Source) *http.Client {
		return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			TLSClientConfig:   mtls.ClientConfig(src, mtls.WithServerID(spiffeid.RequireFromString(srvID))),
			ForceAttemptHTTP2: true,
		}}
	}
	type result struct {
		code   int
		body   string
		serial string
		reused bool
	}
	call := func(c *http.Client) result {
		t.Helper()
		var r result
		req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
			GotConn: func(i httptrace.GotConnInfo) { r.reused = i.Reused },
		}), "GET", url, nil)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.ProtoMajor != 2 {
			t.Fatalf("protocol %s, want HTTP/2", resp.Proto)
		}
		r.code, r.body = resp.StatusCode, strings.TrimSpace(string(b))
		r.serial = resp.TLS.PeerCertificates[0].SerialNumber.String()
		return r
	}

	// Allowed and refused peers.
	cli := client(cliSrc)
	first := call(cli)
	if first.code != 200 || first.body != "hello "+cliID {
		t.Fatalf("allowed peer: %+v", first)
	}
	other := client(otherSrc)
	if r := call(other); r.code != 403 || !strings.Contains(r.body, otherID+" may not call GET /hello on service greeter: no rule in "+polPath) {
		t.Fatalf("refused peer: %+v", r)
	}

	// The policy file edited on disk takes effect without a restart.
	mtlsWriteFile(t, polPath, `
rule "client-says-hello" {
  from = ["`+cliID+`", "`+otherID+`"]
  to   = ["http:GET /hello"]
}
`)
	mtlsWaitUntil(t, 10*time.Second, func() bool { return call(other).code == 200 })
	// A broken edit is rejected; the last good policy stays.
	mtlsWriteFile(t, polPath, `rule "client-says-hello" { from = [`)
	mtlsWaitUntil(t, 10*time.Second, func() bool { return watcher.Err() != nil })
	if r := call(other); r.code != 200 {
		t.Fatalf("broken edit replaced the policy: %+v", r)
	}

	// The agent rotates the 6 s server SVID; the open HTTP/2 connection
	// keeps working and a new connection sees the new SVID.
	var next *x509svid.SVID
	select {
	case next = <-rotated:
	case <-time.After(20 * time.Second):
		t.Fatal("the server SVID did not rotate within 20s")
	}
	if r := call(cli); r.code != 200 || !r.reused || r.serial != first.serial {
		t.Fatalf("long-lived connection after rotation: %+v (first %+v)", r, first)
	}
	cli.CloseIdleConnections()
	r := call(cli)
	if r.code != 200 || r.reused || r.serial == first.serial {
		t.Fatalf("new connection after rotation: %+v (first serial %s)", r, first.serial)
	}
	now, _ := srvSrc.GetX509SVID()
	if r.serial != now.Certificates[0].SerialNumber.String() && r.serial != next.Certificates[0].SerialNumber.String() {
		t.Fatalf("new connection presented serial %s, not a rotated SVID", r.serial)
	}

	// Policy as code: the same questions through the CLI.
	mtlsWriteFile(t, polPath, `
rule "client-says-hello" {
  from = ["`+cliID+`"]
  to   = ["http:GET /hello"]
}
`)
	sigil(t, "policy", "test", "-policy", polPath, "-from", cliID, "-to", "http:GET /hello")
	if out, err := sigilErr("policy", "test", "-policy", polPath, "-from", otherID, "-to", "http:GET /hello"); err == nil || !strings.Contains(out, "DENY: "+otherID) {
		t.Fatalf("policy test deny: %v\n%s", err, out)
	}
	sigil(t, "policy", "lint", polPath)
}

func mtlsWriteFile(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func mtlsWaitUntil(t *testing.T, d time.Duration, cond func() bool) {
	t.Helper()
	eventually.True(t, d, cond, "condition not met")
}
