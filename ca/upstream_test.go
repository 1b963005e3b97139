package ca_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/ca/keymanager/memory"
	upmemory "github.com/sigil-id/sigil/ca/upstream/memory"
	"github.com/sigil-id/sigil/clock"
)

func newTestUpstream(t *testing.T, clk clock.Clock, withIntermediate bool) *upmemory.Authority {
	t.Helper()
	u, err := upmemory.New(clk, upmemory.Options{Intermediate: withIntermediate})
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func selfSignedCA(t *testing.T, key crypto.Signer, cn string, nb, na time.Time, pathLen int) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn}, NotBefore: nb, NotAfter: na,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true, MaxPathLen: pathLen,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// rootBundle records, in order, what a Manager publishes: upstream roots
// and slots.
type rootBundle struct {
	fakeBundle
	log   []string
	roots []*x509.Certificate
}

func (b *rootBundle) Publish(ctx context.Context, s ca.Slot) error {
	b.log = append(b.log, "slot")
	return b.fakeBundle.Publish(ctx, s)
}

func (b *rootBundle) PublishUpstreamRoots(_ context.Context, roots []*x509.Certificate) error {
	b.log = append(b.log, "roots")
	b.roots = append(b.roots, roots...)
	return nil
}

// countingKM counts the keys generated.
type countingKM struct {
	*memory.KeyManager
	generated int
}

func (k *countingKM) GenerateKey(ctx context.Context, id string, kt ca.KeyType) (crypto.Signer, error) {
	k.generated++
	return k.KeyManager.GenerateKey(ctx, id, kt)
}

func upstreamManager(t *testing.T, u ca.UpstreamAuthority, km ca.KeyManager, clk clock.Clock, state string, pub ca.Publisher) *ca.Manager {
	t.Helper()
	cfg := ca.DefaultConfig()
	cfg.TrustDomain = spiffeid.RequireTrustDomainFromString("example.org")
	cfg.ServerID = "s1"
	cfg.KeyManager = km
	cfg.CATTL = 24 * time.Hour
	cfg.X509SVIDTTL = time.Hour
	cfg.Clock = clk
	cfg.Upstream = u
	m, err := ca.NewManager(context.Background(), ca.ManagerConfig{Kind: ca.KindX509, CA: cfg, Propagation: time.Hour, StatePath: state, Publisher: pub})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestUpstreamSignedCA: with an upstream authority the CA certificate is
// an intermediate: the roots are published before the slot, SVIDs carry
// the CA certificate and the upstream intermediate, and they verify
// against a bundle of the upstream root alone.
func TestUpstreamSignedCA(t *testing.T) {
	for _, withInter := range []bool{false, true} {
		ctx := context.Background()
		clk := clock.NewFake(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
		u := newTestUpstream(t, clk, withInter)
		b := &rootBundle{fakeBundle: fakeBundle{entries: map[string]string{}}}
		state := filepath.Join(t.TempDir(), "slots.json")
		km := memory.New()
		m := upstreamManager(t, u, km, clk, state, b)
		for _, ev := range tick(ctx, m) {
			if ev.Err != nil {
				t.Fatalf("tick: %v", ev.Err)
			}
		}
		if len(b.log) < 2 || b.log[0] != "roots" || b.log[1] != "slot" {
			t.Fatalf("publication order %v, want the roots before the slot", b.log)
		}
		act, ok := m.Active()
		if !ok || !act.Upstream() || len(act.UpstreamChain) != map[bool]int{false: 0, true: 1}[withInter] {
			t.Fatalf("active slot %+v", act)
		}
		c := m.X509CA()
		if !c.Upstream() || len(c.Chain()) != 1+len(act.UpstreamChain) {
			t.Fatalf("CA chain of %d", len(c.Chain()))
		}
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		id := spiffeid.RequireFromString("spiffe://example.org/w")
		chain, err := c.SignX509SVID(ctx, ca.X509SVIDParams{PublicKey: key.Public(), SPIFFEID: id})
		if err != nil {
			t.Fatal(err)
		}
		if len(chain) != 2+len(act.UpstreamChain) {
			t.Fatalf("SVID chain of %d certificates", len(chain))
		}
		bundle := x509bundle.FromX509Authorities(id.TrustDomain(), []*x509.Certificate{u.Root()})
		got, _, err := x509svid.Verify(chain, bundle, x509svid.WithTime(clk.Now()))
		if err != nil || got != id {
			t.Fatalf("SVID does not verify against the upstream root alone: %v", err)
		}
		// Without the chain, the leaf alone does not verify: the server CA
		// is not a trust anchor.
		if _, _, err := x509svid.Verify(chain[:1], bundle, x509svid.WithTime(clk.Now())); err == nil {
			t.Fatal("leaf verified without its chain")
		}

		// The slot survives a restart, chain and all.
		m2 := upstreamManager(t, u, km, clk, state, b)
		if n := m2.LoadNotes(); len(n) != 0 {
			t.Fatalf("reload notes: %v", n)
		}
		if c2 := m2.X509CA(); c2 == nil || len(c2.Chain()) != len(c.Chain()) {
			t.Fatal("chained CA not restored")
		}
	}
}

func tick(ctx context.Context, m *ca.Manager) []ca.Event {
	evs, _ := m.Tick(ctx)
	return evs
}

// TestUpstreamDownDelaysPreparation: an upstream that fails delays the
// preparation of the next key, with backoff and one key generated for all
// attempts, while the active key keeps signing; when it is back the
// prepared key chains to it.
func TestUpstreamDownDelaysPreparation(t *testing.T) {
	ctx := context.Background()
	start := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	clk := clock.NewFake(start)
	u := newTestUpstream(t, clk, false)
	b := &rootBundle{fakeBundle: fakeBundle{entries: map[string]string{}}}
	km := &countingKM{KeyManager: memory.New()}
	m := upstreamManager(t, u, km, clk, "", b)
	tick(ctx, m)
	act, ok := m.Active()
	if !ok {
		t.Fatal("no active key")
	}
	gen := km.generated

	u.SetFailure(errors.New("connection refused"))
	clk.Set(ca.PrepareAt(act))
	var delays []time.Duration
	for range 4 {
		evs, next := m.Tick(ctx)
		if len(evs) != 1 || evs[0].Action != ca.ActPrepare || !errors.Is(evs[0].Err, ca.ErrUpstream) ||
			!strings.Contains(evs[0].Err.Error(), "connection refused") {
			t.Fatalf("events %+v", evs)
		}
		delays = append(delays, next.Sub(clk.Now()))
		// Ticks before the retry time (the server's loop wakes on its
		// own) do not call the upstream.
		calls := u.Calls()
		clk.Add(next.Sub(clk.Now()) / 2)
		if evs, n := m.Tick(ctx); len(evs) != 0 || !n.Equal(next) || u.Calls() != calls {
			t.Fatalf("a tick within the backoff acted: %+v, next %v (want %v), %d calls", evs, n, next, u.Calls()-calls)
		}
		// The active key signs all along.
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if _, err := m.X509CA().SignX509SVID(ctx, ca.X509SVIDParams{PublicKey: key.Public(), SPIFFEID: spiffeid.RequireFromString("spiffe://example.org/w")}); err != nil {
			t.Fatalf("signing while the upstream is down: %v", err)
		}
		clk.Set(next)
	}
	for i := 1; i < len(delays); i++ {
		if delays[i] != 2*delays[i-1] {
			t.Fatalf("retry delays %v do not double", delays)
		}
	}
	if km.generated != gen+1 {
		t.Fatalf("%d keys generated for 4 attempts, want 1", km.generated-gen)
	}
	if len(m.Slots()) != 1 {
		t.Fatalf("a failed preparation left %d slots", len(m.Slots()))
	}

	u.SetFailure(nil)
	evs, _ := m.Tick(ctx)
	if len(evs) == 0 || evs[0].Action != ca.ActPrepare || evs[0].Err != nil {
		t.Fatalf("after recovery: %+v", evs)
	}
	if km.generated != gen+1 {
		t.Fatal("recovery generated another key")
	}
	if s := m.Slots(); len(s) != 2 || !s[1].Upstream() || s[1].State != ca.StatePrepared {
		t.Fatalf("slots after recovery %+v", s)
	}
}

// TestUpstreamBadAnswers: answers that do not check are refused and
// nothing is prepared.
func TestUpstreamBadAnswers(t *testing.T) {
	ctx := context.Background()
	clk := clock.NewFake(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	otherRoot := selfSignedCA(t, other, "Other", clk.Now().Add(-time.Hour), clk.Now().Add(time.Hour*48), 1)
	for name, tc := range map[string]struct {
		mangle func(*ca.X509CAResponse)
		want   string
	}{
		"empty chain": {func(r *ca.X509CAResponse) { r.Chain = nil }, "empty CA chain"},
		"no roots":    {func(r *ca.X509CAResponse) { r.Roots = nil }, "no roots"},
		"other root":  {func(r *ca.X509CAResponse) { r.Roots = []*x509.Certificate{otherRoot} }, "does not verify"},
		"wrong key":   {func(r *ca.X509CAResponse) { r.Chain = []*x509.Certificate{otherRoot} }, "not for the new CA key"},
		"long chain": {func(r *ca.X509CAResponse) {
			r.Chain = append(r.Chain, make([]*x509.Certificate, ca.MaxUpstreamChain)...)
		}, "at most"},
		"root not a CA": {func(r *ca.X509CAResponse) { r.Roots = []*x509.Certificate{{Raw: []byte{1}}} }, "root 1 is not a CA"},
	} {
		u := newTestUpstream(t, clk, false)
		u.SetMangle(tc.mangle)
		b := &rootBundle{fakeBundle: fakeBundle{entries: map[string]string{}}}
		m := upstreamManager(t, u, memory.New(), clk, "", b)
		evs := tick(ctx, m)
		if len(evs) == 0 || evs[0].Err == nil || !errors.Is(evs[0].Err, ca.ErrUpstream) || !strings.Contains(evs[0].Err.Error(), tc.want) {
			t.Errorf("%s: events %+v, want an upstream error with %q", name, evs, tc.want)
			continue
		}
		if len(m.Slots()) != 0 || len(b.log) != 0 || m.X509CA() != nil {
			t.Errorf("%s: a refused answer prepared or published something", name)
		}
	}
}

// TestUpstreamRootExpiredDropsSlot: a persisted chained slot whose chain
// no longer verifies (its upstream root expired) is dropped at load with a
// note, not used.
func TestUpstreamRootExpiredDropsSlot(t *testing.T) {
	ctx := context.Background()
	clk := clock.NewFake(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
	// A root that expires in 2 hours: the CA certificate is cut at it.
	u, err := upmemory.New(clk, upmemory.Options{RootTTL: 2 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	b := &rootBundle{fakeBundle: fakeBundle{entries: map[string]string{}}}
	state := filepath.Join(t.TempDir(), "slots.json")
	km := memory.New()
	m := upstreamManager(t, u, km, clk, state, b)
	tick(ctx, m)
	act, ok := m.Active()
	if !ok || !act.NotAfter.Equal(u.Root().NotAfter) {
		t.Fatalf("CA certificate not cut at the upstream's NotAfter: %+v", act)
	}
	clk.Add(3 * time.Hour)
	m2 := upstreamManager(t, u, km, clk, state, b)
	if len(m2.LoadNotes()) != 1 || m2.X509CA() != nil {
		t.Fatalf("expired chained slot kept: notes %v", m2.LoadNotes())
	}
}

// TestAllowIntermediates: a self-signed CA that signs downstream CAs
// allows one level below it; one that does not allows none.
func TestAllowIntermediates(t *testing.T) {
	for _, allow := range []bool{false, true} {
		cfg := ca.DefaultConfig()
		cfg.TrustDomain = spiffeid.RequireTrustDomainFromString("example.org")
		cfg.ServerID = "s1"
		cfg.KeyManager = memory.New()
		cfg.AllowIntermediates = allow
		m, err := ca.NewManager(context.Background(), ca.ManagerConfig{Kind: ca.KindX509, CA: cfg, Publisher: &fakeBundle{entries: map[string]string{}}})
		if err != nil {
			t.Fatal(err)
		}
		tick(context.Background(), m)
		cert := m.X509CA().Certificate()
		want := 0
		if allow {
			want = 1
		}
		if cert.MaxPathLen != want || cert.MaxPathLenZero == allow {
			t.Fatalf("allow %v: MaxPathLen %d zero %v", allow, cert.MaxPathLen, cert.MaxPathLenZero)
		}
		if m.X509CA().Upstream() {
			t.Fatal("self-signed CA reports an upstream")
		}
	}
}

// TestUpstreamNeedsRootPublisher: an upstream with a publisher that
// cannot record roots is refused at NewManager.
func TestUpstreamNeedsRootPublisher(t *testing.T) {
	clk := clock.NewFake(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
	cfg := ca.DefaultConfig()
	cfg.TrustDomain = spiffeid.RequireTrustDomainFromString("example.org")
	cfg.ServerID = "s1"
	cfg.KeyManager = memory.New()
	cfg.Upstream = newTestUpstream(t, clk, false)
	_, err := ca.NewManager(context.Background(), ca.ManagerConfig{Kind: ca.KindX509, CA: cfg, Publisher: &fakeBundle{entries: map[string]string{}}})
	if err == nil || !strings.Contains(err.Error(), "upstream roots") {
		t.Fatalf("err %v", err)
	}
}

func TestUpstreamRetryDelay(t *testing.T) {
	for _, tc := range []struct {
		n    int
		want time.Duration
	}{{0, 5 * time.Second}, {1, 5 * time.Second}, {2, 10 * time.Second}, {3, 20 * time.Second}, {7, 5 * time.Minute}, {100, 5 * time.Minute}} {
		if got := ca.UpstreamRetryDelay(5*time.Second, tc.n); got != tc.want {
			t.Errorf("UpstreamRetryDelay(5s, %d) = %v, want %v", tc.n, got, tc.want)
		}
	}
}

// TestUpstreamCATemplate: the template an upstream signs copies the CSR's
// subject, carries the trust domain ID, signs leaves only within the trust
// domain, and is cut at the signer's NotAfter; bad requests are refused.
func TestUpstreamCATemplate(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr := func(uris ...string) []byte {
		req := &x509.CertificateRequest{Subject: pkix.Name{CommonName: "Sigil CA s1", SerialNumber: "s1"}}
		for _, u := range uris {
			req.URIs = append(req.URIs, spiffeid.RequireFromString(u).URL())
		}
		der, err := x509.CreateCertificateRequest(rand.Reader, req, key)
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	tmpl, pub, err := ca.UpstreamCATemplate(ca.X509CARequest{CSR: csr("spiffe://example.org"), TrustDomain: td, TTL: 48 * time.Hour}, now, time.Second, now.Add(24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if !key.PublicKey.Equal(pub) || tmpl.Subject.CommonName != "Sigil CA s1" || tmpl.Subject.SerialNumber != "s1" ||
		!tmpl.IsCA || !tmpl.MaxPathLenZero || len(tmpl.URIs) != 1 || tmpl.URIs[0].String() != "spiffe://example.org" ||
		len(tmpl.PermittedURIDomains) != 1 || tmpl.PermittedURIDomains[0] != "example.org" || !tmpl.NotAfter.Equal(now.Add(24*time.Hour)) ||
		tmpl.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign || len(tmpl.SubjectKeyId) != 20 {
		t.Fatalf("template %+v", tmpl)
	}
	bad := csr("spiffe://example.org")
	bad[len(bad)-1] ^= 1
	for name, tc := range map[string]struct {
		req   ca.X509CARequest
		limit time.Time
		want  string
	}{
		"no URI":         {ca.X509CARequest{CSR: csr(), TrustDomain: td, TTL: time.Hour}, now.Add(time.Hour), "exactly one URI SAN"},
		"workload URI":   {ca.X509CARequest{CSR: csr("spiffe://example.org/w"), TrustDomain: td, TTL: time.Hour}, now.Add(time.Hour), "exactly one URI SAN"},
		"other domain":   {ca.X509CARequest{CSR: csr("spiffe://other.org"), TrustDomain: td, TTL: time.Hour}, now.Add(time.Hour), "exactly one URI SAN"},
		"two URIs":       {ca.X509CARequest{CSR: csr("spiffe://example.org", "spiffe://example.org/x"), TrustDomain: td, TTL: time.Hour}, now.Add(time.Hour), "exactly one URI SAN"},
		"bad signature":  {ca.X509CARequest{CSR: bad, TrustDomain: td, TTL: time.Hour}, now.Add(time.Hour), "CSR"},
		"garbage":        {ca.X509CARequest{CSR: []byte("junk"), TrustDomain: td, TTL: time.Hour}, now.Add(time.Hour), "CSR"},
		"zero TTL":       {ca.X509CARequest{CSR: csr("spiffe://example.org"), TrustDomain: td}, now.Add(time.Hour), "not positive"},
		"signer expired": {ca.X509CARequest{CSR: csr("spiffe://example.org"), TrustDomain: td, TTL: time.Hour}, now, "expires"},
		"no domain":      {ca.X509CARequest{CSR: csr("spiffe://example.org"), TTL: time.Hour}, now.Add(time.Hour), "no trust domain"},
	} {
		if _, _, err := ca.UpstreamCATemplate(tc.req, now, time.Second, tc.limit); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", name, err, tc.want)
		}
	}
}

// TestUpstreamCSRSubjectFromCATemplate: the operator's CA template gives
// the subject of the CSR sent upstream, which the upstream copies.
func TestUpstreamCSRSubjectFromCATemplate(t *testing.T) {
	tmpl, err := ca.ParseCATemplate(`{"subject": {"organization": "Example Corp", "commonName": {{ printf "Example CA %s" .NodeName | toJson }}}}`)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	clk := clock.NewFake(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
	u := newTestUpstream(t, clk, false)
	cfg := ca.DefaultConfig()
	cfg.TrustDomain = spiffeid.RequireTrustDomainFromString("example.org")
	cfg.ServerID = "s1"
	cfg.KeyManager = memory.New()
	cfg.Clock = clk
	cfg.Upstream = u
	cfg.CATemplate = tmpl
	m, err := ca.NewManager(ctx, ca.ManagerConfig{Kind: ca.KindX509, CA: cfg, Publisher: &rootBundle{fakeBundle: fakeBundle{entries: map[string]string{}}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range tick(ctx, m) {
		if ev.Err != nil {
			t.Fatal(ev.Err)
		}
	}
	got := m.X509CA().Certificate().Subject
	want := pkix.Name{Organization: []string{"Example Corp"}, CommonName: "Example CA s1", SerialNumber: "s1"}
	if got.String() != want.String() || !m.X509CA().Upstream() {
		t.Fatalf("upstream-signed CA subject %s, want %s", got, want)
	}
}
