package svidfiles

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/sigil-id/sigil/clock"
)

// fakeSource stands in for the Workload API or the agent's cache.
type fakeSource struct {
	clk     clock.Clock
	updates chan *Update
	fetches chan string // audience of each JWT fetch
	mu      sync.Mutex
	n       int
	failJWT int // fail this many fetches first
}

func newFakeSource(clk clock.Clock) *fakeSource {
	return &fakeSource{clk: clk, updates: make(chan *Update), fetches: make(chan string, 100)}
}

func (s *fakeSource) WatchX509(ctx context.Context, update func(*Update)) error {
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case u := <-s.updates:
			update(u)
		}
	}
}

func (s *fakeSource) FetchJWT(_ context.Context, id spiffeid.ID, aud string) (string, time.Time, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fetches <- aud
	if s.failJWT > 0 {
		s.failJWT--
		return "", time.Time{}, errors.New("no JWT now")
	}
	s.n++
	return fmt.Sprintf("%s|%s|%d", id, aud, s.n), s.clk.Now().Add(10 * time.Minute), nil
}

// recorder is a Notifier that reads the files it is told about.
type recorder struct {
	dir     string
	rotated chan string // serial of svid.pem's leaf when told
	stopped chan struct{}
}

func (r *recorder) Rotated(context.Context) error {
	b, err := os.ReadFile(filepath.Join(r.dir, CertFile))
	if err != nil {
		return err
	}
	certs, err := parseCerts(b)
	if err != nil {
		return err
	}
	r.rotated <- certs[0].SerialNumber.String()
	return nil
}
func (r *recorder) Exited() <-chan error { return nil }
func (r *recorder) Stop()                { close(r.stopped) }

func update(ca *testCA, svids ...*x509svid.SVID) *Update {
	return &Update{SVIDs: svids, Bundles: map[spiffeid.TrustDomain][]*x509.Certificate{ca.td: {ca.root}}}
}

func TestRunWritesNotifiesAndRefreshesJWTs(t *testing.T) {
	ca := newTestCA(t, "example.org")
	fed := newTestCA(t, "other.org")
	clk := clock.NewFake(time.Now())
	dir := t.TempDir()
	w, err := NewWriter(dir, NoOwner)
	if err != nil {
		t.Fatal(err)
	}
	src := newFakeSource(clk)
	src.failJWT = 1
	rec := &recorder{dir: dir, rotated: make(chan string, 10), stopped: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{Writer: w, JWTAudiences: []string{"db", "spiffe://example.org/q"},
			SPIFFEID: spiffeid.RequireFromString("spiffe://example.org/web"),
			Notifier: rec, Clock: clk, RetryInterval: time.Second}, src)
	}()

	other, web := ca.svid(t, "/other"), ca.svid(t, "/web")
	u := update(ca, other, web)
	u.Bundles[fed.td] = []*x509.Certificate{fed.root}
	src.updates <- u
	// The first JWT fetch fails: the consumer is not told before the
	// retry has written every token.
	if got := <-src.fetches; got != "db" {
		t.Fatalf("first fetch for %q", got)
	}
	for clk.Waiters() == 0 {
		time.Sleep(time.Millisecond)
	}
	select {
	case s := <-rec.rotated:
		t.Fatalf("consumer told (serial %s) before the JWT-SVIDs were written", s)
	default:
	}
	clk.Add(time.Second)
	if got := <-rec.rotated; got != web.Certificates[0].SerialNumber.String() {
		t.Fatalf("consumer saw serial %s, want the chosen SVID's %s", got, web.Certificates[0].SerialNumber)
	}
	tok, err := os.ReadFile(filepath.Join(dir, JWTFileName("spiffe://example.org/q")))
	if err != nil || !strings.HasPrefix(string(tok), "spiffe://example.org/web|spiffe://example.org/q|") {
		t.Fatalf("JWT file: %q %v", tok, err)
	}
	if _, err := os.Stat(filepath.Join(dir, FederatedDir, "other.org.pem")); err != nil {
		t.Fatalf("federated bundle not written: %v", err)
	}

	// A rotation is written and told.
	web2 := ca.svid(t, "/web")
	src.updates <- update(ca, web2)
	if got := <-rec.rotated; got != web2.Certificates[0].SerialNumber.String() {
		t.Fatalf("after rotation the consumer saw serial %s, want %s", got, web2.Certificates[0].SerialNumber)
	}

	// Tokens are refreshed at half their lifetime, without telling the
	// consumer.
	for len(src.fetches) > 0 {
		<-src.fetches
	}
	for clk.Waiters() == 0 {
		time.Sleep(time.Millisecond)
	}
	clk.Add(5*time.Minute + time.Second)
	got := map[string]bool{<-src.fetches: true, <-src.fetches: true}
	if !got["db"] || !got["spiffe://example.org/q"] {
		t.Fatalf("refresh fetched %v", got)
	}
	select {
	case s := <-rec.rotated:
		t.Fatalf("a JWT refresh told the consumer (serial %s)", s)
	default:
	}

	// An update without the configured SPIFFE ID is not written.
	src.updates <- update(ca, ca.svid(t, "/other"))
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run returned %v after cancel, want nil", err)
	}
	<-rec.stopped
	certs := readCerts(t, filepath.Join(dir, CertFile))
	if !certs[0].Equal(web2.Certificates[0]) {
		t.Fatal("an SVID of another SPIFFE ID replaced the configured one")
	}
}

func TestRunRefusesBadConfig(t *testing.T) {
	w, err := NewWriter(t.TempDir(), NoOwner)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{}, "no writer"},
		{Config{Writer: w, JWTAudiences: []string{"a", "a"}}, "given twice"},
		{Config{Writer: w, RetryInterval: -1}, "negative"},
	} {
		if err := Run(context.Background(), tc.cfg, newFakeSource(clock.New())); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Run(%+v) = %v, want %q", tc.cfg, err, tc.want)
		}
	}
}

// exitingNotifier reports a consumer that ended on its own.
type exitingNotifier struct{ ch chan error }

func (e *exitingNotifier) Rotated(context.Context) error { return nil }
func (e *exitingNotifier) Exited() <-chan error          { return e.ch }
func (e *exitingNotifier) Stop()                         {}

func TestRunEndsWhenTheConsumerExits(t *testing.T) {
	w, err := NewWriter(t.TempDir(), NoOwner)
	if err != nil {
		t.Fatal(err)
	}
	n := &exitingNotifier{ch: make(chan error, 1)}
	n.ch <- &ExitError{Code: 3, Err: errors.New("exit status 3")}
	err = Run(context.Background(), Config{Writer: w, Notifier: n}, newFakeSource(clock.New()))
	var ee *ExitError
	if !errors.As(err, &ee) || ee.Code != 3 {
		t.Fatalf("Run = %v, want the consumer's exit status 3", err)
	}
}
