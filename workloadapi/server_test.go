package workloadapi

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	spiffewl "github.com/spiffe/go-spiffe/v2/workloadapi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/attestor/workload"
	unixattestor "github.com/sigil-id/sigil/attestor/workload/unix"
)

const childEnv = "SIGIL_WORKLOADAPI_TEST_CHILD"

func TestMain(m *testing.M) {
	if sock := os.Getenv(childEnv); sock != "" {
		os.Exit(childMain(sock))
	}
	os.Exit(m.Run())
}

// childMain connects to the Workload API socket, hands the connection to
// its parent over fd 3 and waits to be killed. The server sees the child as
// the peer of the connection the parent uses.
func childMain(sock string) int {
	conn, err := net.Dial("unix", sock)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	f, err := conn.(*net.UnixConn).File()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// On SIGUSR1 the child executes the program named in childExecEnv;
	// the connection stays open in the parent. On SIGUSR2 it changes its
	// effective uid (only) to 65534 and waits (this needs root).
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1, syscall.SIGUSR2)
	if err := unix.Sendmsg(3, []byte{0}, unix.UnixRights(int(f.Fd())), nil, 0); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if sig := <-usr1; sig == syscall.SIGUSR2 {
		if err := syscall.Setreuid(-1, 65534); err != nil {
			fmt.Fprintln(os.Stderr, "setreuid:", err)
			return 1
		}
		select {}
	}
	prog := os.Getenv(childExecEnv)
	err = syscall.Exec(prog, []string{prog, "60"}, os.Environ())
	fmt.Fprintln(os.Stderr, "exec:", err)
	return 1
}

// childExecEnv names the program a child started by childConn executes
// when it receives SIGUSR1.
const childExecEnv = "SIGIL_WORKLOADAPI_TEST_CHILD_EXEC"

var td = spiffeid.RequireTrustDomainFromString("example.org")

type testCA struct {
	cert *x509.Certificate
	key  crypto.Signer
}

func newCA(t testing.TB) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test CA"},
		URIs:                  []*url.URL{td.ID().URL()},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key}
}

func (ca *testCA) bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(td, []*x509.Certificate{ca.cert})
}

var serial atomic.Int64

func (ca *testCA) identity(t testing.TB, entryID, path string) X509Identity {
	t.Helper()
	id := spiffeid.RequireFromPath(td, path)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(100 + serial.Add(1)),
		URIs:                  []*url.URL{id.URL()},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(time.Hour),
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return X509Identity{EntryID: entryID, SPIFFEID: id, Chain: []*x509.Certificate{cert}, PrivateKey: key}
}

func uidSelector(uid int) []*sigilv1.Selector {
	return []*sigilv1.Selector{{Type: "unix", Value: "uid:" + strconv.Itoa(uid)}}
}

// countingMeter counts calls by method.
type countingMeter struct {
	mu      sync.Mutex
	started map[string]int
	done    map[string][]codes.Code
	first   map[string]int
}

func newCountingMeter() *countingMeter {
	return &countingMeter{started: map[string]int{}, done: map[string][]codes.Code{}, first: map[string]int{}}
}

func (m *countingMeter) CallStarted(method string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.started[method]++
}

func (m *countingMeter) FirstResponse(method string, _ time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.first[method]++
}

func (m *countingMeter) CallDone(method string, code codes.Code, _ time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.done[method] = append(m.done[method], code)
}

func (m *countingMeter) startedCount(method string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.started[method]
}

type fixture struct {
	sock   string
	addr   string
	cache  *MemoryCache
	ca     *testCA
	server *Server
	meter  *countingMeter
}

// start runs a server with the unix attestor on a socket in a temporary
// directory. setup, if not nil, adjusts the server before it serves.
func start(t testing.TB, setup func(*Server)) *fixture {
	t.Helper()
	f := &fixture{cache: NewMemoryCache(), ca: newCA(t), meter: newCountingMeter()}
	f.cache.SetBundle(f.ca.bundle())
	var err error
	f.server, err = New(Config{
		Cache:     f.cache,
		Attestors: []workload.Attestor{unixattestor.New()},
		Meter:     f.meter,
	})
	if err != nil {
		t.Fatal(err)
	}
	if setup != nil {
		setup(f.server)
	}
	// Keep the path short: unix socket paths are limited to 108 bytes.
	dir, err := os.MkdirTemp("", "wlapi")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	f.sock = filepath.Join(dir, "public", "api.sock")
	f.addr = "unix://" + f.sock
	l, err := Listen(f.sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.server.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return f
}

func (f *fixture) client(t testing.TB) *spiffewl.Client {
	t.Helper()
	c, err := spiffewl.New(context.Background(), spiffewl.WithAddr(f.addr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func (f *fixture) rawClient(t testing.TB) workloadpb.SpiffeWorkloadAPIClient {
	t.Helper()
	cc, err := grpc.NewClient(f.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return workloadpb.NewSpiffeWorkloadAPIClient(cc)
}

func withHeader(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true")
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func wantCode(t *testing.T, err error, code codes.Code, msg string) {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok || st.Code() != code || (msg != "" && st.Message() != msg) {
		t.Fatalf("err = %v, want %v %q", err, code, msg)
	}
}

func checkSVID(t *testing.T, svid *x509svid.SVID, want X509Identity) {
	t.Helper()
	if svid.ID != want.SPIFFEID {
		t.Errorf("ID = %v, want %v", svid.ID, want.SPIFFEID)
	}
	if len(svid.Certificates) != len(want.Chain) {
		t.Fatalf("chain has %d certificates, want %d", len(svid.Certificates), len(want.Chain))
	}
	for i := range want.Chain {
		if !svid.Certificates[i].Equal(want.Chain[i]) {
			t.Errorf("certificate %d differs", i)
		}
	}
	pub, ok := svid.PrivateKey.Public().(*ecdsa.PublicKey)
	if !ok || !pub.Equal(svid.Certificates[0].PublicKey) {
		t.Error("private key does not match the certificate")
	}
}

func TestFetchX509SVID(t *testing.T) {
	f := start(t, nil)
	want := f.ca.identity(t, "e1", "/workload")
	want.Hint = "main"
	f.cache.SetIdentity(uidSelector(os.Geteuid()), want)
	// An entry requiring a selector the test process lacks is not given.
	f.cache.SetIdentity(append(uidSelector(os.Geteuid()), &sigilv1.Selector{Type: "unix", Value: "uid:424242"}),
		f.ca.identity(t, "e2", "/other"))

	c := f.client(t)
	x509ctx, err := c.FetchX509Context(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(x509ctx.SVIDs) != 1 {
		t.Fatalf("%d SVIDs, want 1", len(x509ctx.SVIDs))
	}
	checkSVID(t, x509ctx.SVIDs[0], want)
	if x509ctx.SVIDs[0].Hint != "main" {
		t.Errorf("hint = %q", x509ctx.SVIDs[0].Hint)
	}
	b, err := x509ctx.Bundles.GetX509BundleForTrustDomain(td)
	if err != nil {
		t.Fatal(err)
	}
	if !b.Equal(f.ca.bundle()) {
		t.Error("bundle differs")
	}
	// The SVID verifies against the bundle it came with.
	if _, _, err := x509svid.Verify(x509ctx.SVIDs[0].Certificates, x509ctx.Bundles); err != nil {
		t.Errorf("verify: %v", err)
	}

	svid, err := c.FetchX509SVID(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	checkSVID(t, svid, want)
}

func TestFederatedBundles(t *testing.T) {
	f := start(t, nil)
	f.cache.SetIdentity(uidSelector(os.Geteuid()), f.ca.identity(t, "e1", "/workload"))
	fedTD := spiffeid.RequireTrustDomainFromString("partner.test")
	fedCA := newCA(t)
	f.cache.SetFederatedBundle(fedTD, x509bundle.FromX509Authorities(fedTD, []*x509.Certificate{fedCA.cert}))

	// A workload whose entries do not federate with the trust domain
	// does not get its bundle.
	x509ctx, err := f.client(t).FetchX509Context(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if x509ctx.Bundles.Has(fedTD) {
		t.Fatal("got the federated bundle without federating with its trust domain")
	}

	f.cache.SetFederatesWith("e1", fedTD)
	x509ctx, err = f.client(t).FetchX509Context(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	b, err := x509ctx.Bundles.GetX509BundleForTrustDomain(fedTD)
	if err != nil {
		t.Fatal(err)
	}
	if !b.HasX509Authority(fedCA.cert) {
		t.Error("federated bundle lacks its CA")
	}
	bundles, err := f.client(t).FetchX509Bundles(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if bundles.Len() != 2 || !bundles.Has(fedTD) || !bundles.Has(td) {
		t.Errorf("bundles = %v", bundles.Bundles())
	}
}

func TestNoIdentityIssued(t *testing.T) {
	f := start(t, nil)
	f.cache.SetIdentity(uidSelector(424242), f.ca.identity(t, "e1", "/someone-else"))
	c := f.client(t)
	_, err := c.FetchX509SVID(testCtx(t))
	wantCode(t, err, codes.PermissionDenied, "no identity issued")
	_, err = c.FetchX509Bundles(testCtx(t))
	wantCode(t, err, codes.PermissionDenied, "no identity issued")
}

func TestSecurityHeaderMissing(t *testing.T) {
	f := start(t, nil)
	f.cache.SetIdentity(uidSelector(os.Geteuid()), f.ca.identity(t, "e1", "/workload"))
	c := f.rawClient(t)
	ctx := testCtx(t)

	stream, err := c.FetchX509SVID(ctx, &workloadpb.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = stream.Recv()
	wantCode(t, err, codes.InvalidArgument, "security header missing from request")

	bstream, err := c.FetchX509Bundles(ctx, &workloadpb.X509BundlesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = bstream.Recv()
	wantCode(t, err, codes.InvalidArgument, "security header missing from request")

	_, err = c.FetchJWTSVID(ctx, &workloadpb.JWTSVIDRequest{Audience: []string{"x"}})
	wantCode(t, err, codes.InvalidArgument, "security header missing from request")

	// A wrong value is as good as none.
	bad := metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "yes")
	stream, err = c.FetchX509SVID(bad, &workloadpb.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = stream.Recv()
	wantCode(t, err, codes.InvalidArgument, "security header missing from request")

	// With the header the same client gets its SVID.
	stream, err = c.FetchX509SVID(withHeader(ctx), &workloadpb.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
}

func TestJWTUnimplemented(t *testing.T) {
	f := start(t, nil)
	c := f.rawClient(t)
	ctx := withHeader(testCtx(t))
	_, err := c.FetchJWTSVID(ctx, &workloadpb.JWTSVIDRequest{Audience: []string{"x"}})
	wantCode(t, err, codes.Unimplemented, "this Workload API's cache does not serve JWT-SVIDs")
	_, err = c.ValidateJWTSVID(ctx, &workloadpb.ValidateJWTSVIDRequest{Audience: "x", Svid: "y"})
	wantCode(t, err, codes.Unimplemented, "this Workload API's cache does not serve JWT-SVIDs")
	s, err := c.FetchJWTBundles(ctx, &workloadpb.JWTBundlesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Recv()
	wantCode(t, err, codes.Unimplemented, "this Workload API's cache does not serve JWT-SVIDs")
}

func TestRotationAndRemoval(t *testing.T) {
	f := start(t, nil)
	first := f.ca.identity(t, "e1", "/workload")
	f.cache.SetIdentity(uidSelector(os.Geteuid()), first)

	ctx := testCtx(t)
	src, err := spiffewl.NewX509Source(ctx, spiffewl.WithClientOptions(spiffewl.WithAddr(f.addr)))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	svid, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	checkSVID(t, svid, first)

	updated := src.Updated()
	second := f.ca.identity(t, "e1", "/workload")
	f.cache.SetIdentity(uidSelector(os.Geteuid()), second)
	for {
		select {
		case <-updated:
		case <-ctx.Done():
			t.Fatal("X509Source did not see the rotated SVID")
		}
		svid, err = src.GetX509SVID()
		if err != nil {
			t.Fatal(err)
		}
		if svid.Certificates[0].Equal(second.Chain[0]) {
			break
		}
	}
	checkSVID(t, svid, second)
	if n := f.meter.startedCount("FetchX509SVID"); n != 1 {
		t.Errorf("%d FetchX509SVID calls, want 1 (no reconnect)", n)
	}

	// Removing the entry ends the stream with PermissionDenied.
	stream, err := f.rawClient(t).FetchX509SVID(withHeader(ctx), &workloadpb.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Svids) != 1 {
		t.Fatalf("%d SVIDs", len(resp.Svids))
	}
	f.cache.RemoveIdentity("e1")
	_, err = stream.Recv()
	wantCode(t, err, codes.PermissionDenied, "no identity issued")
}

// TestWatchEntryDeleted: go-spiffe's watcher is told about the lost
// identity as an error, and gets the identity back when it returns.
func TestWatchEntryDeleted(t *testing.T) {
	f := start(t, nil)
	f.cache.SetIdentity(uidSelector(os.Geteuid()), f.ca.identity(t, "e1", "/workload"))
	w := &watcher{updates: make(chan *spiffewl.X509Context, 10), errs: make(chan error, 10)}
	ctx, cancel := context.WithCancel(testCtx(t))
	done := make(chan error, 1)
	go func() { done <- f.client(t).WatchX509Context(ctx, w) }()
	defer func() {
		cancel()
		<-done
	}()
	select {
	case <-w.updates:
	case <-ctx.Done():
		t.Fatal("no update")
	}
	f.cache.RemoveIdentity("e1")
	select {
	case err := <-w.errs:
		wantCode(t, err, codes.PermissionDenied, "no identity issued")
	case <-ctx.Done():
		t.Fatal("no error after removal")
	}
	again := f.ca.identity(t, "e1", "/workload")
	f.cache.SetIdentity(uidSelector(os.Geteuid()), again)
	for {
		select {
		case u := <-w.updates:
			checkSVID(t, u.DefaultSVID(), again)
			return
		case <-w.errs: // retries before the entry was back
		case <-ctx.Done():
			t.Fatal("identity not restored")
		}
	}
}

type watcher struct {
	updates chan *spiffewl.X509Context
	errs    chan error
}

func (w *watcher) OnX509ContextUpdate(c *spiffewl.X509Context) { w.updates <- c }
func (w *watcher) OnX509ContextWatchError(err error) {
	if status.Code(err) != codes.Canceled {
		w.errs <- err
	}
}

// TestDedupe: an unchanged snapshot does not produce a new message.
func TestDedupe(t *testing.T) {
	f := start(t, nil)
	id := f.ca.identity(t, "e1", "/workload")
	f.cache.SetIdentity(uidSelector(os.Geteuid()), id)
	ctx := withHeader(testCtx(t))
	stream, err := f.rawClient(t).FetchX509SVID(ctx, &workloadpb.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	f.cache.SetIdentity(uidSelector(os.Geteuid()), id) // same content
	f.cache.SetBundle(f.ca.bundle())                   // equal bundle
	next := f.ca.identity(t, "e1", "/workload")
	f.cache.SetIdentity(uidSelector(os.Geteuid()), next)
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	got, err := x509.ParseCertificates(resp.Svids[0].X509Svid)
	if err != nil {
		t.Fatal(err)
	}
	if !got[0].Equal(next.Chain[0]) {
		t.Fatal("second message is not the rotated SVID: duplicates were sent")
	}
}

func TestFetchX509Bundles(t *testing.T) {
	f := start(t, nil)
	f.cache.SetIdentity(uidSelector(os.Geteuid()), f.ca.identity(t, "e1", "/workload"))
	ctx := withHeader(testCtx(t))
	stream, err := f.rawClient(t).FetchX509Bundles(ctx, &workloadpb.X509BundlesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := resp.Bundles["spiffe://example.org"]; !ok || len(resp.Bundles) != 1 {
		t.Fatalf("bundles keyed %v, want spiffe://example.org", keys(resp.Bundles))
	}
	// A bundle change is streamed.
	ca2 := newCA(t)
	f.cache.SetBundle(x509bundle.FromX509Authorities(td, []*x509.Certificate{f.ca.cert, ca2.cert}))
	resp, err = stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	certs, err := x509.ParseCertificates(resp.Bundles["spiffe://example.org"])
	if err != nil || len(certs) != 2 {
		t.Fatalf("bundle: %d certs, %v", len(certs), err)
	}

	// And go-spiffe parses it.
	set, err := f.client(t).FetchX509Bundles(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	b, err := set.GetX509BundleForTrustDomain(td)
	if err != nil {
		t.Fatal(err)
	}
	if !b.HasX509Authority(f.ca.cert) || !b.HasX509Authority(ca2.cert) {
		t.Error("bundle lacks an authority")
	}
}

func keys(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// childConn starts a child process that connects to the socket and hands
// the connection over, so the server's peer is the child. It returns the
// child and a raw client on the child's connection.
func childConn(t *testing.T, f *fixture) (*exec.Cmd, workloadpb.SpiffeWorkloadAPIClient) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	parentEnd := os.NewFile(uintptr(fds[0]), "parent")
	childEnd := os.NewFile(uintptr(fds[1]), "child")
	defer parentEnd.Close()

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+f.sock)
	cmd.ExtraFiles = []*os.File{childEnd}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	childEnd.Close()
	var once sync.Once
	reap := func() {
		once.Do(func() {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		})
	}
	t.Cleanup(reap)

	buf := make([]byte, 1)
	oob := make([]byte, unix.CmsgSpace(4))
	_, oobn, _, _, err := unix.Recvmsg(int(parentEnd.Fd()), buf, oob, 0)
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		t.Fatalf("control messages: %v %v", msgs, err)
	}
	rights, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(rights) != 1 {
		t.Fatalf("rights: %v %v", rights, err)
	}
	file := os.NewFile(uintptr(rights[0]), "conn")
	conn, err := net.FileConn(file)
	file.Close()
	if err != nil {
		t.Fatal(err)
	}
	var used atomic.Bool
	cc, err := grpc.NewClient("passthrough:///child",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(context.Context, string) (net.Conn, error) {
			if used.Swap(true) {
				return nil, errors.New("the child's connection is gone")
			}
			return conn, nil
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cmd, workloadpb.NewSpiffeWorkloadAPIClient(cc)
}

// TestCallerDiesDuringAttestation: the caller process dies (and its pid
// could be reused) after the attestors ran; it gets nothing.
func TestCallerDiesDuringAttestation(t *testing.T) {
	var (
		kill  atomic.Bool
		child atomic.Pointer[exec.Cmd]
	)
	f := start(t, func(s *Server) {
		s.afterAttest = func(pid int32) {
			if cmd := child.Load(); kill.Load() && cmd != nil && int32(cmd.Process.Pid) == pid {
				_ = cmd.Process.Kill()
				_ = cmd.Wait() // reaped: the pid is free for reuse
			}
		}
	})
	f.cache.SetIdentity(uidSelector(os.Geteuid()), f.ca.identity(t, "e1", "/workload"))
	cmd, c := childConn(t, f)
	child.Store(cmd)
	ctx := withHeader(testCtx(t))

	// Alive, the child is entitled to the SVID.
	stream, err := c.FetchX509SVID(ctx, &workloadpb.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if resp, err := stream.Recv(); err != nil || len(resp.Svids) != 1 {
		t.Fatalf("live child: %v", err)
	}

	kill.Store(true)
	stream, err = c.FetchX509SVID(ctx, &workloadpb.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if resp != nil {
		t.Fatal("dead caller got an SVID")
	}
	wantCode(t, err, codes.PermissionDenied, "caller process exited or was replaced during attestation")
	if cmd.ProcessState == nil {
		t.Fatal("the hook did not kill the child")
	}

	// Later calls on the connection of the dead process get nothing
	// either.
	bstream, err := c.FetchX509Bundles(ctx, &workloadpb.X509BundlesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = bstream.Recv()
	wantCode(t, err, codes.PermissionDenied, "")
}

// TestPIDReusedDuringAttestation: the pid now belongs to a process with
// another start time; the caller gets nothing.
func TestPIDReusedDuringAttestation(t *testing.T) {
	var reused atomic.Bool
	f := start(t, func(s *Server) {
		s.proc.startTime = func(p *PeerInfo) (uint64, error) {
			st, err := procStartTime(p)
			if reused.Load() {
				st++
			}
			return st, err
		}
		s.afterAttest = func(int32) { reused.Store(true) }
	})
	f.cache.SetIdentity(uidSelector(os.Geteuid()), f.ca.identity(t, "e1", "/workload"))
	_, err := f.client(t).FetchX509SVID(testCtx(t))
	wantCode(t, err, codes.PermissionDenied, "caller process exited or was replaced during attestation")
}

func TestParseStat(t *testing.T) {
	line := "1234 (we(ird) )name) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100 18446744073709551615\n"
	st, err := parseStat([]byte(line))
	if err != nil || st != 987654 {
		t.Fatalf("parseStat = %d, %v", st, err)
	}
	zombie := "1234 (x) Z 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100\n"
	if _, err := parseStat([]byte(zombie)); err == nil {
		t.Error("zombie: no error")
	}
	if _, err := parseStat([]byte("1234 (x) S 1")); err == nil {
		t.Error("short: no error")
	}
	own, err := pidStartTime(int32(os.Getpid()))
	if err != nil || own == 0 {
		t.Fatalf("own start time: %d, %v", own, err)
	}
}

type failingAttestor struct{ err error }

func (failingAttestor) Name() string { return "failing" }
func (a failingAttestor) Attest(context.Context, workload.Caller) ([]*sigilv1.Selector, error) {
	return nil, a.err
}

func TestAttestorErrors(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code codes.Code
	}{
		{fmt.Errorf("x: %w", workload.ErrProcessGone), codes.PermissionDenied},
		{errors.New("kubelet unreachable"), codes.Internal},
	} {
		f := start(t, func(s *Server) {
			s.attestors = append(s.attestors, failingAttestor{tc.err})
		})
		f.cache.SetIdentity(uidSelector(os.Geteuid()), f.ca.identity(t, "e1", "/workload"))
		_, err := f.client(t).FetchX509SVID(testCtx(t))
		wantCode(t, err, tc.code, "")
	}
}

func TestNewValidates(t *testing.T) {
	if _, err := New(Config{Attestors: []workload.Attestor{unixattestor.New()}}); err == nil {
		t.Error("no cache: no error")
	}
	if _, err := New(Config{Cache: NewMemoryCache()}); err == nil {
		t.Error("no attestors: no error")
	}
}

func TestServeStopsOpenStreams(t *testing.T) {
	s, err := New(Config{Cache: NewMemoryCache(), Attestors: []workload.Attestor{unixattestor.New()}})
	if err != nil {
		t.Fatal(err)
	}
	ca := newCA(t)
	cache := s.cache.(*MemoryCache)
	cache.SetBundle(ca.bundle())
	cache.SetIdentity(uidSelector(os.Geteuid()), ca.identity(t, "e1", "/workload"))
	sock := filepath.Join(t.TempDir(), "api.sock")
	l, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, l) }()

	f := &fixture{addr: "unix://" + sock}
	stream, err := f.rawClient(t).FetchX509SVID(withHeader(testCtx(t)), &workloadpb.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("Serve did not stop")
	}
	_, err = stream.Recv()
	wantCode(t, err, codes.Unavailable, "")
	if err := s.Serve(context.Background(), l); err == nil {
		t.Error("second Serve: no error")
	}
}

func TestListen(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "b")
	sock := filepath.Join(dir, "api.sock")
	l, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o777 || fi.Mode().Type() != os.ModeSocket {
		t.Errorf("socket mode %v", fi.Mode())
	}
	di, err := os.Stat(dir)
	if err != nil || di.Mode().Perm() != 0o755 {
		t.Errorf("dir mode %v, %v", di.Mode(), err)
	}
	// A live socket is not taken over.
	if _, err := Listen(sock); err == nil {
		t.Error("Listen on a live socket: no error")
	}
	// Closing removes our own socket.
	l.Close()
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket left after Close: %v", err)
	}
	// A stale one, left by a process that died, is replaced.
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ul.SetUnlinkOnClose(false)
	ul.Close()
	if _, err := os.Stat(sock); err != nil {
		t.Fatalf("stale socket missing: %v", err)
	}
	l, err = Listen(sock)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	l.Close()
	// A regular file is never removed.
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(file); err == nil {
		t.Error("Listen over a regular file: no error")
	}
}

func TestMemoryCacheDropsStaleSnapshots(t *testing.T) {
	c := NewMemoryCache()
	ca := newCA(t)
	sub := c.SubscribeX509(uidSelector(7))
	defer sub.Close()
	for i := range 5 {
		c.SetIdentity(uidSelector(7), ca.identity(t, "e1", fmt.Sprintf("/w%d", i)))
	}
	snap := <-sub.Updates()
	if len(snap.Identities) != 1 || snap.Identities[0].SPIFFEID.Path() != "/w4" {
		t.Fatalf("snapshot %+v, want only the latest", snap.Identities)
	}
	select {
	case s := <-sub.Updates():
		t.Fatalf("extra snapshot %+v", s)
	default:
	}
	// Entries without selectors match nothing; extra caller selectors do
	// not hurt.
	c.SetIdentity(nil, ca.identity(t, "e0", "/none"))
	sub2 := c.SubscribeX509(append(uidSelector(7), &sigilv1.Selector{Type: "unix", Value: "gid:1"}))
	defer sub2.Close()
	if snap := <-sub2.Updates(); len(snap.Identities) != 1 || snap.Identities[0].EntryID != "e1" {
		t.Fatalf("snapshot %+v", snap.Identities)
	}
	sub.Close()
	select {
	case <-sub.Updates(): // sent before Close
	default:
	}
	c.RemoveIdentity("e1")
	select {
	case s := <-sub.Updates():
		t.Fatalf("closed subscription got %+v", s)
	default:
	}
}
