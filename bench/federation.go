package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// Federation benchmark bounds.
const (
	fedChanges      = 10               // rounds of bundle changes in B (a prepare and a taint each)
	fedChangeBudget = 35 * time.Second // at most this long for all of them
	fedRateDuration = 2 * time.Second  // each requests/s measurement
	fedClients      = 8                // concurrent clients of each rate measurement
)

var (
	fedTDA = spiffeid.RequireTrustDomainFromString("aws.bench.sigil.local")
	fedTDB = spiffeid.RequireTrustDomainFromString("gcp.bench.sigil.local")
)

// benchFederation runs two trust domains as real processes on loopback:
// A (server with an https_web bundle endpoint, and an agent whose
// workload is this process, with an entry that federates with B) and B
// (server with an https_spiffe bundle endpoint, publishing a 1 s refresh
// hint). It prints the time from a bundle change in B (a CA key prepared,
// then tainted, which discards it, through B's admin API; each at a
// random point of A's refresh interval) to the changed bundle in A's
// workload (go-spiffe watcher), and the bundle endpoints' requests per
// second with a new TLS connection per request and with keep-alive,
// beside plain TLS handshakes and keep-alive HTTPS requests per second of
// a plain Go HTTPS server in its own process, measured in the same run.
func benchFederation(ctx context.Context) error {
	dir, err := os.MkdirTemp("", "sigil-bench-fed-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin, err := buildSigil(ctx, dir)
	if err != nil {
		return err
	}
	var procs []*exec.Cmd
	defer func() {
		for _, p := range procs {
			_ = p.Process.Kill()
			_ = p.Wait()
		}
	}()
	start := func(name string, args ...string) error {
		logf, err := os.Create(filepath.Join(dir, name+".log"))
		if err != nil {
			return err
		}
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("starting %s: %w", name, err)
		}
		procs = append(procs, cmd)
		return nil
	}
	cli := func(args ...string) (string, error) {
		out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("sigil %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return string(out), nil
	}

	webPool, err := fedBenchWebCert(dir)
	if err != nil {
		return err
	}
	type domain struct {
		td                      spiffeid.TrustDomain
		admin, node, health, ep string
		endpointBlock           string
	}
	var addrs [7]string
	for i := range addrs {
		if addrs[i], err = benchFreeAddr(); err != nil {
			return err
		}
	}
	a := domain{td: fedTDA, admin: filepath.Join(dir, "a", "admin", "admin.sock"), node: addrs[0], health: addrs[1], ep: addrs[2]}
	a.endpointBlock = fmt.Sprintf(`profile = "https_web"
      cert_file = %q
      key_file = %q`, filepath.Join(dir, "web.pem"), filepath.Join(dir, "web.key"))
	b := domain{td: fedTDB, admin: filepath.Join(dir, "b", "admin", "admin.sock"), node: addrs[3], health: addrs[4], ep: addrs[5]}
	b.endpointBlock = `profile = "https_spiffe"`
	for _, d := range []domain{a, b} {
		name := strings.SplitN(d.td.Name(), ".", 2)[0]
		cfg := fmt.Sprintf(`server {
  trust_domain   = %q
  node_name      = "s1"
  data_dir       = %q
  bind_address   = %q
  admin_socket   = %q
  health_address = %q
  log_level      = "warn"
  federation {
    bundle_endpoint {
      address      = %q
      %s
      refresh_hint = "1s"
    }
    min_refresh           = "1s"
    partner_refresh_bound = "1s"
  }
}
`, d.td.Name(), filepath.Join(dir, name, "data"), d.node, d.admin, d.health, d.ep, d.endpointBlock)
		path := filepath.Join(dir, name+".hcl")
		if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
			return err
		}
		if err := start("server-"+name, "server", "-config", path); err != nil {
			return err
		}
		if err := waitHTTP(ctx, "http://"+d.health+"/ready", time.Minute); err != nil {
			return fmt.Errorf("server %s: %w\n%s", d.td.Name(), err, fedLogTail(filepath.Join(dir, "server-"+name+".log")))
		}
	}

	// A federates with B (https_spiffe, bootstrapped with B's bundle).
	bDoc, err := cli("bundle", "show", "-format", "spiffe", "-socket", b.admin)
	if err != nil {
		return err
	}
	bDocPath := filepath.Join(dir, "b.bundle.json")
	if err := os.WriteFile(bDocPath, []byte(bDoc), 0o644); err != nil {
		return err
	}
	if _, err := cli("federation", "create", "-socket", a.admin, "-trust-domain", b.td.Name(),
		"-bundle-endpoint-url", "https://"+b.ep, "-profile", "https_spiffe",
		"-endpoint-spiffe-id", spiffeid.RequireFromPath(b.td, "/sigil/server").String(), "-bundle-file", bDocPath); err != nil {
		return err
	}

	// A's agent; this process is its workload.
	tokOut, err := cli("token", "generate", "-socket", a.admin)
	if err != nil {
		return err
	}
	var token, agentID string
	for _, l := range strings.Split(tokOut, "\n") {
		f := strings.Fields(l)
		switch {
		case len(f) == 3 && f[0] == "Token":
			token = f[2]
		case len(f) == 5 && f[0] == "Agent":
			agentID = f[4]
		}
	}
	aPEM, err := cli("bundle", "show", "-socket", a.admin)
	if err != nil {
		return err
	}
	aPEMPath := filepath.Join(dir, "a.bundle.pem")
	if err := os.WriteFile(aPEMPath, []byte(aPEM), 0o644); err != nil {
		return err
	}
	socket := filepath.Join(dir, "a", "public", "api.sock")
	if err := start("agent-a", "agent", "-trust-domain", a.td.Name(), "-server-address", a.node,
		"-data-dir", filepath.Join(dir, "a", "agent"), "-socket-path", socket, "-join-token", token,
		"-trust-bundle-path", aPEMPath, "-health-address", addrs[6], "-log-level", "warn"); err != nil {
		return err
	}
	if err := waitHTTP(ctx, "http://"+addrs[6]+"/ready", time.Minute); err != nil {
		return fmt.Errorf("agent: %w\n%s", err, fedLogTail(filepath.Join(dir, "agent-a.log")))
	}
	u, err := user.Current()
	if err != nil {
		return err
	}
	if _, err := cli("entry", "create", "-socket", a.admin, "-spiffe-id", spiffeid.RequireFromPath(a.td, "/bench/fed").String(),
		"-parent-id", agentID, "-selector", "unix:uid:"+u.Uid, "-federates-with", b.td.Name()); err != nil {
		return err
	}

	// (a) Bundle change in B -> A's workload.
	client, err := workloadapi.New(ctx, workloadapi.WithAddr("unix://"+socket))
	if err != nil {
		return err
	}
	defer client.Close()
	updates := make(chan fedUpdate, 64)
	wctx, wstop := context.WithCancel(ctx)
	defer wstop()
	go client.WatchX509Context(wctx, fedWatcher{wctx, updates})
	latest := map[string]bool{}
	// wait consumes updates until cond holds on B's authorities in the
	// workload's bundle set, and returns when the satisfying update arrived.
	wait := func(cond func(map[string]bool) bool, within time.Duration) (time.Time, error) {
		if cond(latest) {
			return time.Now(), nil
		}
		timeout := time.After(within)
		for {
			select {
			case u := <-updates:
				latest = u.authorities
				if cond(latest) {
					return u.at, nil
				}
			case <-timeout:
				return time.Time{}, fmt.Errorf("B's bundle in A's workload did not change within %v (holds %d authorities of B)", within, len(latest))
			}
		}
	}
	if _, err := wait(func(m map[string]bool) bool { return len(m) > 0 }, 30*time.Second); err != nil {
		return fmt.Errorf("A's workload never got B's bundle: %w", err)
	}
	bconn, err := grpc.NewClient("unix://"+b.admin, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer bconn.Close()
	auth := sigilv1.NewAuthorityAdminClient(bconn)
	var lat []time.Duration
	deadline := time.Now().Add(fedChangeBudget)
	// A change made just after a fetch waits a whole refresh interval, one
	// made just before it almost none: spread the changes over the
	// interval rather than lock them to the fetches.
	jitter := func() { time.Sleep(time.Duration(mrand.Int64N(int64(time.Second)))) }
	for i := 0; i < fedChanges && time.Now().Before(deadline); i++ {
		jitter()
		t0 := time.Now()
		resp, err := auth.PrepareAuthority(ctx, &sigilv1.AuthorityRequest{Kind: "x509"})
		if err != nil {
			return fmt.Errorf("prepare in B: %w", err)
		}
		id := resp.Slot.Id
		at, err := wait(func(m map[string]bool) bool { return m[id] }, 10*time.Second)
		if err != nil {
			return err
		}
		lat = append(lat, at.Sub(t0))
		// A tainted prepared key is discarded at once: it leaves the
		// bundle.
		jitter()
		t0 = time.Now()
		if _, err := auth.TaintAuthority(ctx, &sigilv1.AuthorityRequest{Kind: "x509", Id: id}); err != nil {
			return fmt.Errorf("taint in B: %w", err)
		}
		at, err = wait(func(m map[string]bool) bool { return !m[id] }, 10*time.Second)
		if err != nil {
			return err
		}
		lat = append(lat, at.Sub(t0))
	}
	if len(lat) == 0 {
		return fmt.Errorf("no bundle change measured within %v", fedChangeBudget)
	}
	p50, p99 := percentiles(lat)
	fmt.Printf("fed    bundle change in B -> A's workload:  p50 %8.2f ms  p99 %8.2f ms  (%d changes, 1 s refresh hint; goal p99 < 1500 ms)\n", ms(p50), ms(p99), len(lat))

	// (b) Bundle endpoint requests/s beside plain TLS on this machine.
	bBundle, err := spiffebundle.Parse(b.td, []byte(bDoc))
	if err != nil {
		return fmt.Errorf("B's bundle document: %w", err)
	}
	spiffeTLS := tlsconfig.TLSClientConfig(bBundle, tlsconfig.AuthorizeID(spiffeid.RequireFromPath(b.td, "/sigil/server")))
	webTLS := &tls.Config{RootCAs: webPool, MinVersion: tls.VersionTLS12}
	plainAddr, stopPlain, err := fedPlainServer(ctx, dir)
	if err != nil {
		return err
	}
	defer stopPlain()
	// getBundle reads the whole document, decoding it (as a partner
	// would) only on the first request so that the rates compare the
	// servers, not the client's parsing.
	getBundle := func(url string, td spiffeid.TrustDomain) func(*http.Client) error {
		var checked atomic.Bool
		return func(c *http.Client) error {
			resp, err := c.Get(url)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("%s: %s", url, resp.Status)
			}
			if checked.Load() {
				_, err = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
				return err
			}
			if _, err := spiffebundle.Read(td, io.LimitReader(resp.Body, 1<<20)); err != nil {
				return fmt.Errorf("%s: %w", url, err)
			}
			checked.Store(true)
			return nil
		}
	}
	plainGet := func(c *http.Client) error {
		resp, err := c.Get("https://" + plainAddr + "/")
		if err != nil {
			return err
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return err
	}
	handshakes, err := fedHandshakeRate(ctx, plainAddr, webTLS)
	if err != nil {
		return fmt.Errorf("plain TLS handshakes: %w", err)
	}
	plainKeepAlive, err := fedRate(ctx, webTLS, true, plainGet)
	if err != nil {
		return fmt.Errorf("plain HTTPS GETs: %w", err)
	}
	fmt.Printf("limit  plain TLS handshakes (P-256):         %9.0f /s  (a Go server in its own process, %d clients)\n", handshakes, fedClients)
	fmt.Printf("limit  plain HTTPS GETs, keep-alive:         %9.0f /s  (same server, 55-byte body)\n", plainKeepAlive)
	for _, m := range []struct {
		what      string
		op        func(*http.Client) error
		cfg       *tls.Config
		keepAlive bool
	}{
		{"https_spiffe, new connection", getBundle("https://"+b.ep, b.td), spiffeTLS, false},
		{"https_spiffe, keep-alive", getBundle("https://"+b.ep, b.td), spiffeTLS, true},
		{"https_web, new connection", getBundle("https://"+a.ep, a.td), webTLS, false},
		{"https_web, keep-alive", getBundle("https://"+a.ep, a.td), webTLS, true},
	} {
		r, err := fedRate(ctx, m.cfg, m.keepAlive, m.op)
		if err != nil {
			return fmt.Errorf("bundle endpoint %s: %w", m.what, err)
		}
		limit, of := handshakes, "plain handshakes"
		if m.keepAlive {
			limit, of = plainKeepAlive, "plain keep-alive GETs"
		}
		fmt.Printf("fed    endpoint %-29s %9.0f /s  (%.2f of %s; %d clients)\n", m.what+":", r, r/limit, of, fedClients)
	}
	return nil
}

// fedUpdate is one X.509 context update: B's authorities (hex SKI) in
// it, and when it arrived.
type fedUpdate struct {
	authorities map[string]bool
	at          time.Time
}

type fedWatcher struct {
	ctx context.Context
	ch  chan fedUpdate
}

func (w fedWatcher) OnX509ContextUpdate(c *workloadapi.X509Context) {
	u := fedUpdate{authorities: map[string]bool{}, at: time.Now()}
	if b, ok := c.Bundles.Get(fedTDB); ok {
		for _, cert := range b.X509Authorities() {
			u.authorities[hex.EncodeToString(cert.SubjectKeyId)] = true
		}
	}
	select {
	case w.ch <- u:
	case <-w.ctx.Done():
	}
}

func (fedWatcher) OnX509ContextWatchError(error) {}

// fedRate runs op with fedClients concurrent HTTP clients for
// fedRateDuration and returns the successful operations per second; a
// client without keep-alive opens a new TLS connection per request.
func fedRate(ctx context.Context, cfg *tls.Config, keepAlive bool, op func(*http.Client) error) (float64, error) {
	var n atomic.Int64
	var firstErr atomic.Value
	deadline := time.Now().Add(fedRateDuration)
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < fedClients; i++ {
		tr := &http.Transport{TLSClientConfig: cfg.Clone(), DisableKeepAlives: !keepAlive, MaxIdleConnsPerHost: 1}
		c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer tr.CloseIdleConnections()
			for j := 0; j < 1_000_000 && time.Now().Before(deadline) && ctx.Err() == nil; j++ {
				if err := op(c); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		return 0, err
	}
	return float64(n.Load()) / time.Since(start).Seconds(), nil
}

// fedHandshakeRate is full TLS handshakes per second (no session
// resumption) against addr, with fedClients concurrent clients.
func fedHandshakeRate(ctx context.Context, addr string, cfg *tls.Config) (float64, error) {
	var n atomic.Int64
	var firstErr atomic.Value
	deadline := time.Now().Add(fedRateDuration)
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < fedClients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 1_000_000 && time.Now().Before(deadline) && ctx.Err() == nil; j++ {
				conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg.Clone())
				if err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				conn.Close()
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		return 0, err
	}
	return float64(n.Load()) / time.Since(start).Seconds(), nil
}

// fedPlainServer runs this program as a separate process (as the
// endpoints are) serving a small static body over HTTPS with the
// certificate in dir/web.pem and dir/web.key on loopback: the baseline of
// the endpoint rates.
func fedPlainServer(ctx context.Context, dir string) (addr string, stop func(), err error) {
	cmd := exec.CommandContext(ctx, os.Args[0], "-plain-tls-server", dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return "", nil, err
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	stop = func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		stop()
		return "", nil, fmt.Errorf("plain TLS server: %w", err)
	}
	return strings.TrimSpace(line), stop, nil
}

// plainTLSServer is the process fedPlainServer starts: it prints its
// address and serves until killed.
func plainTLSServer(dir string) error {
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "web.pem"), filepath.Join(dir, "web.key"))
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	body := []byte(`{"keys":[],"spiffe_sequence":1,"spiffe_refresh_hint":1}`)
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.Write(body)
		}),
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		ReadHeaderTimeout: 10 * time.Second,
	}
	fmt.Println(l.Addr().String())
	return srv.ServeTLS(l, "", "")
}

// fedBenchWebCert makes a self-signed P-256 certificate for 127.0.0.1 (the
// https_web endpoint's and the plain TLS server's), writes it to
// dir/web.pem and dir/web.key, and returns a pool that trusts it.
func fedBenchWebCert(dir string) (*x509.CertPool, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "sigil bench bundle endpoint"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	if err := os.WriteFile(filepath.Join(dir, "web.pem"), certPEM, 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "web.key"), keyPEM, 0o600); err != nil {
		return nil, err
	}
	leaf, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return pool, nil
}

// fedLogTail is the end of a process log, for an error message.
func fedLogTail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}
