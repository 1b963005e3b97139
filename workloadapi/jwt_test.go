package workloadapi

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/clock"
)

// jwtKey is a JWT signing key made for a test, with its signer.
type jwtKey struct {
	kid    string
	key    crypto.Signer
	signer *ca.JWTSigner
}

// newJWTKey makes an ES256 key for trust domain tdom whose tokens are
// minted at clk's time (nil: the wall clock) and live for ttl.
func newJWTKey(t testing.TB, tdom spiffeid.TrustDomain, clk clock.Clock, ttl time.Duration) *jwtKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	kid, err := ca.KeyIDOf(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ca.NewJWTSigner(tdom, kid, key, time.Now().Add(24*time.Hour), ttl, clk)
	if err != nil {
		t.Fatal(err)
	}
	return &jwtKey{kid: kid, key: key, signer: s}
}

func (k *jwtKey) mint(t testing.TB, id spiffeid.ID, aud ...string) string {
	t.Helper()
	tok, _, err := k.signer.SignJWTSVID(context.Background(), ca.JWTSVIDParams{SPIFFEID: id, Audience: aud})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func jwtBundleOf(keys ...*jwtKey) *jwtbundle.Bundle {
	b := jwtbundle.New(td)
	for _, k := range keys {
		if err := b.AddJWTAuthority(k.kid, k.key.Public()); err != nil {
			panic(err)
		}
	}
	return b
}

type jwtFetchCall struct {
	selectors []*sigilv1.Selector
	audience  []string
	spiffeID  string
}

type jwtEntry struct {
	selectors []*sigilv1.Selector
	id        spiffeid.ID
	hint      string
}

// fakeJWTCache is a MemoryCache that also serves JWT-SVIDs: it mints them
// with key for the entries the caller's selectors match, in the order
// they were added, and records every call.
type fakeJWTCache struct {
	*MemoryCache
	key *jwtKey

	mu      sync.Mutex
	entries []jwtEntry
	calls   []jwtFetchCall
	err     error // returned by FetchJWTSVIDs when set
	nothing bool  // FetchJWTSVIDs returns (nil, nil)
}

var _ JWTCache = (*fakeJWTCache)(nil)

func newFakeJWTCache(key *jwtKey) *fakeJWTCache {
	return &fakeJWTCache{MemoryCache: NewMemoryCache(), key: key}
}

func (c *fakeJWTCache) addEntry(sels []*sigilv1.Selector, path, hint string) spiffeid.ID {
	id := spiffeid.RequireFromPath(td, path)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.entries = append(c.entries, jwtEntry{selectors: sels, id: id, hint: hint})
	return id
}

func (c *fakeJWTCache) FetchJWTSVIDs(_ context.Context, selectors []*sigilv1.Selector, audience []string, spiffeID string) ([]JWTSVID, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls = append(c.calls, jwtFetchCall{selectors: selectors, audience: slices.Clone(audience), spiffeID: spiffeID})
	if c.err != nil {
		return nil, c.err
	}
	if c.nothing {
		return nil, nil
	}
	have := make(map[selectorKey]struct{}, len(selectors))
	for _, s := range selectors {
		have[selectorKey{s.GetType(), s.GetValue()}] = struct{}{}
	}
	var out []JWTSVID
	for _, e := range c.entries {
		if !matches(e.selectors, have) || (spiffeID != "" && e.id.String() != spiffeID) {
			continue
		}
		tok, exp, err := c.key.signer.SignJWTSVID(context.Background(), ca.JWTSVIDParams{SPIFFEID: e.id, Audience: audience})
		if err != nil {
			return nil, err
		}
		out = append(out, JWTSVID{SPIFFEID: e.id, Token: tok, Hint: e.hint, ExpiresAt: exp})
	}
	if len(out) == 0 {
		return nil, ErrNoIdentity
	}
	return out, nil
}

// setJWTBundles sets the own JWT bundle (the one of td) and the
// federated JWT bundles among bs, and signals a change (even when the
// bundles are the same). The embedded MemoryCache serves them
// (JWTBundles).
func (c *fakeJWTCache) setJWTBundles(bs ...*jwtbundle.Bundle) {
	for _, b := range bs {
		if b.TrustDomain() == td {
			c.MemoryCache.SetJWTBundle(b)
		} else {
			c.MemoryCache.SetFederatedJWTBundle(b.TrustDomain(), b)
		}
	}
}

func (c *fakeJWTCache) fetchCalls() []jwtFetchCall {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.calls)
}

func (c *fakeJWTCache) setErr(err error, nothing bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.err, c.nothing = err, nothing
}

type jwtFixture struct {
	*fixture
	jc  *fakeJWTCache
	key *jwtKey
	clk *clock.Fake // the server's clock
}

// startJWT runs a server whose cache serves JWT-SVIDs minted with a fresh
// key (published in the cache's JWT bundle) on the wall clock. The
// server's own clock is a fake set to now.
func startJWT(t *testing.T) *jwtFixture {
	t.Helper()
	key := newJWTKey(t, td, nil, 5*time.Minute)
	jc := newFakeJWTCache(key)
	jc.setJWTBundles(jwtBundleOf(key))
	clk := clock.NewFake(time.Now())
	f := start(t, func(s *Server) {
		s.cache = jc
		s.clk = clk
	})
	return &jwtFixture{fixture: f, jc: jc, key: key, clk: clk}
}

func wantCodeContains(t *testing.T, err error, code codes.Code, substr string) {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok || st.Code() != code || !strings.Contains(st.Message(), substr) {
		t.Fatalf("err = %v, want %v containing %q", err, code, substr)
	}
}

func mySelectors() []*sigilv1.Selector { return uidSelector(os.Geteuid()) }

func TestFetchJWTSVID(t *testing.T) {
	f := startJWT(t)
	want := f.jc.addEntry(mySelectors(), "/workload", "main")
	// An entry requiring a selector the test process lacks is not given.
	f.jc.addEntry(append(mySelectors(), &sigilv1.Selector{Type: "unix", Value: "uid:424242"}), "/other", "")

	c := f.client(t)
	svid, err := c.FetchJWTSVID(testCtx(t), jwtsvid.Params{Audience: "aud1", ExtraAudiences: []string{"aud2"}})
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID != want {
		t.Errorf("sub = %v, want %v", svid.ID, want)
	}
	if svid.Hint != "main" {
		t.Errorf("hint = %q, want main", svid.Hint)
	}
	if !slices.Equal(svid.Audience, []string{"aud1", "aud2"}) {
		t.Errorf("aud = %v, want [aud1 aud2]", svid.Audience)
	}
	// The token is a real JWT-SVID: it verifies against the bundle the
	// workload gets from the same API, for either audience.
	bundles, err := c.FetchJWTBundles(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, aud := range []string{"aud1", "aud2"} {
		got, err := jwtsvid.ParseAndValidate(svid.Marshal(), bundles, []string{aud})
		if err != nil {
			t.Fatalf("ParseAndValidate(%s): %v", aud, err)
		}
		if got.ID != want {
			t.Errorf("validated sub = %v", got.ID)
		}
	}

	calls := f.jc.fetchCalls()
	if len(calls) != 1 {
		t.Fatalf("cache called %d times, want 1", len(calls))
	}
	if !slices.Equal(calls[0].audience, []string{"aud1", "aud2"}) || calls[0].spiffeID != "" {
		t.Errorf("cache called with audience %v, SPIFFE ID %q", calls[0].audience, calls[0].spiffeID)
	}
	uid := fmt.Sprintf("uid:%d", os.Geteuid())
	if !slices.ContainsFunc(calls[0].selectors, func(s *sigilv1.Selector) bool {
		return s.GetType() == "unix" && s.GetValue() == uid
	}) {
		t.Errorf("cache called without the caller's attested selector %s: %v", uid, calls[0].selectors)
	}
	if n := f.meter.firstCount("FetchJWTSVID"); n != 1 {
		t.Errorf("first responses recorded for FetchJWTSVID = %d, want 1", n)
	}
}

func (m *countingMeter) firstCount(method string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.first[method]
}

func TestFetchJWTSVIDSeveralAndBySPIFFEID(t *testing.T) {
	f := startJWT(t)
	a := f.jc.addEntry(mySelectors(), "/a", "first")
	b := f.jc.addEntry(mySelectors(), "/b", "second")
	c := f.client(t)

	all, err := c.FetchJWTSVIDs(testCtx(t), jwtsvid.Params{Audience: "x"})
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 2 || all[0].ID != a || all[1].ID != b {
		t.Fatalf("SVIDs = %v, want [%v %v] in that order", svidIDs(all), a, b)
	}
	// FetchJWTSVID takes the first.
	first, err := c.FetchJWTSVID(testCtx(t), jwtsvid.Params{Audience: "x"})
	if err != nil {
		t.Fatal(err)
	}
	if first.ID != a {
		t.Errorf("default SVID = %v, want %v", first.ID, a)
	}

	// Asking for one SPIFFE ID gives only that one.
	only, err := c.FetchJWTSVIDs(testCtx(t), jwtsvid.Params{Audience: "x", Subject: b})
	if err != nil {
		t.Fatal(err)
	}
	if len(only) != 1 || only[0].ID != b || only[0].Hint != "second" {
		t.Fatalf("SVIDs for %v = %v", b, svidIDs(only))
	}
	calls := f.jc.fetchCalls()
	if got := calls[len(calls)-1].spiffeID; got != b.String() {
		t.Errorf("cache asked for SPIFFE ID %q, want %q", got, b)
	}

	// A SPIFFE ID the caller has no entry for: no identity.
	_, err = c.FetchJWTSVID(testCtx(t), jwtsvid.Params{Audience: "x", Subject: spiffeid.RequireFromPath(td, "/nope")})
	wantCode(t, err, codes.PermissionDenied, "no identity issued")
}

func svidIDs(svids []*jwtsvid.SVID) []string {
	var out []string
	for _, s := range svids {
		out = append(out, s.ID.String())
	}
	return out
}

func TestFetchJWTSVIDNoEntry(t *testing.T) {
	f := startJWT(t)
	f.jc.addEntry(uidSelector(424242), "/someone-else", "")
	_, err := f.client(t).FetchJWTSVID(testCtx(t), jwtsvid.Params{Audience: "x"})
	wantCode(t, err, codes.PermissionDenied, "no identity issued")
	if n := len(f.jc.fetchCalls()); n != 1 {
		t.Fatalf("cache called %d times, want 1", n)
	}
}

func TestFetchJWTSVIDInvalidArguments(t *testing.T) {
	f := startJWT(t)
	f.jc.addEntry(mySelectors(), "/workload", "")
	c := f.rawClient(t)
	ctx := withHeader(testCtx(t))

	_, err := c.FetchJWTSVID(ctx, &workloadpb.JWTSVIDRequest{})
	wantCode(t, err, codes.InvalidArgument, "audience must be specified")
	_, err = c.FetchJWTSVID(ctx, &workloadpb.JWTSVIDRequest{Audience: []string{"ok", ""}})
	wantCode(t, err, codes.InvalidArgument, "audience must not be empty")
	_, err = c.FetchJWTSVID(ctx, &workloadpb.JWTSVIDRequest{Audience: []string{"ok"}, SpiffeId: "not a spiffe id"})
	wantCodeContains(t, err, codes.InvalidArgument, "invalid requested SPIFFE ID")
	// go-spiffe's client: an empty audience is refused the same way.
	_, err = f.client(t).FetchJWTSVID(testCtx(t), jwtsvid.Params{})
	wantCode(t, err, codes.InvalidArgument, "audience must not be empty")

	if n := len(f.jc.fetchCalls()); n != 0 {
		t.Fatalf("cache called %d times for invalid requests, want 0", n)
	}
	// The same client with a valid request is served.
	resp, err := c.FetchJWTSVID(ctx, &workloadpb.JWTSVIDRequest{Audience: []string{"ok"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Svids) != 1 || resp.Svids[0].SpiffeId != "spiffe://example.org/workload" {
		t.Fatalf("response = %v", resp)
	}
}

func TestFetchJWTSVIDCacheErrors(t *testing.T) {
	f := startJWT(t)
	f.jc.addEntry(mySelectors(), "/workload", "")
	c := f.client(t)
	for _, tc := range []struct {
		name    string
		err     error
		nothing bool
		code    codes.Code
		msg     string
	}{
		{"plain error is unavailable", errors.New("server unreachable"), false, codes.Unavailable, "could not mint JWT-SVID: server unreachable"},
		{"status passes through", status.Error(codes.PermissionDenied, "entry revoked"), false, codes.PermissionDenied, "entry revoked"},
		{"wrapped no identity", fmt.Errorf("lookup: %w", ErrNoIdentity), false, codes.PermissionDenied, "no identity issued"},
		{"nothing returned", nil, true, codes.PermissionDenied, "no identity issued"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f.jc.setErr(tc.err, tc.nothing)
			_, err := c.FetchJWTSVID(testCtx(t), jwtsvid.Params{Audience: "x"})
			wantCode(t, err, tc.code, tc.msg)
		})
	}
}

func TestFetchJWTBundles(t *testing.T) {
	f := startJWT(t)
	// Bundles are public: a caller with no entry gets them too.
	set, err := f.client(t).FetchJWTBundles(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	b, ok := set.Get(td)
	if !ok {
		t.Fatalf("no JWT bundle for %v: %v", td, set.Bundles())
	}
	if set.Len() != 1 {
		t.Errorf("%d bundles, want 1", set.Len())
	}
	pub, ok := b.FindJWTAuthority(f.key.kid)
	if !ok {
		t.Fatalf("bundle lacks kid %q: %v", f.key.kid, b.JWTAuthorities())
	}
	if !f.key.key.Public().(*ecdsa.PublicKey).Equal(pub) {
		t.Error("published key differs from the signing key")
	}

	// Raw: the JWKS is keyed by the trust domain's SPIFFE ID.
	stream, err := f.rawClient(t).FetchJWTBundles(withHeader(testCtx(t)), &workloadpb.JWTBundlesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	doc, ok := resp.Bundles["spiffe://example.org"]
	if !ok || len(resp.Bundles) != 1 {
		t.Fatalf("bundles keyed %v, want [spiffe://example.org]", keys(resp.Bundles))
	}
	for _, want := range []string{`"kid":"` + f.key.kid + `"`, `"crv":"P-256"`} {
		if !strings.Contains(string(doc), want) {
			t.Errorf("JWKS %s lacks %s", doc, want)
		}
	}
}

type jwtBundleWatcher struct{ updates chan *jwtbundle.Set }

func (w *jwtBundleWatcher) OnJWTBundlesUpdate(s *jwtbundle.Set) { w.updates <- s }
func (w *jwtBundleWatcher) OnJWTBundlesWatchError(error)        {}

func (w *jwtBundleWatcher) next(t *testing.T) *jwtbundle.Bundle {
	t.Helper()
	select {
	case s := <-w.updates:
		b, ok := s.Get(td)
		if !ok {
			t.Fatal("update without the trust domain's bundle")
		}
		return b
	case <-time.After(10 * time.Second):
		t.Fatal("no JWT bundle update")
		return nil
	}
}

func kids(b *jwtbundle.Bundle) []string {
	var out []string
	for k := range b.JWTAuthorities() {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func TestFetchJWTBundlesPushesChanges(t *testing.T) {
	f := startJWT(t)
	second := newJWTKey(t, td, nil, time.Minute)

	ctx, cancel := context.WithCancel(testCtx(t))
	w := &jwtBundleWatcher{updates: make(chan *jwtbundle.Set, 10)}
	client := f.client(t)
	done := make(chan error, 1)
	go func() { done <- client.WatchJWTBundles(ctx, w) }()
	defer func() {
		cancel()
		<-done
	}()

	if got, want := kids(w.next(t)), []string{f.key.kid}; !slices.Equal(got, want) {
		t.Fatalf("first kids %v, want %v", got, want)
	}
	// A change signal with the same bundles sends nothing; the next
	// message is the next real change.
	f.jc.setJWTBundles(jwtBundleOf(f.key))
	f.jc.setJWTBundles(jwtBundleOf(f.key, second))
	got := kids(w.next(t))
	want := []string{f.key.kid, second.kid}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("after adding a key: kids %v, want %v", got, want)
	}
	f.jc.setJWTBundles(jwtBundleOf(second))
	if got, want := kids(w.next(t)), []string{second.kid}; !slices.Equal(got, want) {
		t.Fatalf("after removing a key: kids %v, want %v", got, want)
	}
}

func TestFetchJWTBundlesWaitsForFirstBundle(t *testing.T) {
	key := newJWTKey(t, td, nil, time.Minute)
	jc := newFakeJWTCache(key) // no bundle yet
	f := start(t, func(s *Server) { s.cache = jc })
	stream, err := f.rawClient(t).FetchJWTBundles(withHeader(testCtx(t)), &workloadpb.JWTBundlesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan *workloadpb.JWTBundlesResponse, 1)
	errc := make(chan error, 1)
	go func() {
		resp, err := stream.Recv()
		if err != nil {
			errc <- err
			return
		}
		got <- resp
	}()
	jc.setJWTBundles(jwtBundleOf(key))
	select {
	case resp := <-got:
		b, err := jwtbundle.Parse(td, resp.Bundles[td.IDString()])
		if err != nil {
			t.Fatal(err)
		}
		// Had the server sent an empty message first, this would be it.
		if !b.HasJWTAuthority(key.kid) {
			t.Fatalf("first message lacks kid %q: %s", key.kid, resp.Bundles[td.IDString()])
		}
	case err := <-errc:
		t.Fatal(err)
	case <-time.After(10 * time.Second):
		t.Fatal("no JWT bundles")
	}
}

func TestValidateJWTSVID(t *testing.T) {
	f := startJWT(t)
	id := spiffeid.RequireFromPath(td, "/workload")
	c := f.client(t)

	good := f.key.mint(t, id, "db", "cache")
	svid, err := c.ValidateJWTSVID(testCtx(t), good, "cache")
	if err != nil {
		t.Fatalf("good token refused: %v", err)
	}
	if svid.ID != id {
		t.Errorf("sub = %v", svid.ID)
	}
	// The server's own answer carries the SPIFFE ID and the claims.
	resp, err := f.rawClient(t).ValidateJWTSVID(withHeader(testCtx(t)), &workloadpb.ValidateJWTSVIDRequest{Audience: "db", Svid: good})
	if err != nil {
		t.Fatal(err)
	}
	if resp.SpiffeId != id.String() {
		t.Errorf("spiffe_id = %q", resp.SpiffeId)
	}
	claims := resp.Claims.AsMap()
	if claims["sub"] != id.String() {
		t.Errorf("sub claim = %v", claims["sub"])
	}
	if aud, _ := claims["aud"].([]any); len(aud) != 2 || aud[0] != "db" || aud[1] != "cache" {
		t.Errorf("aud claim = %v", claims["aud"])
	}
	if _, ok := claims["exp"].(float64); !ok {
		t.Errorf("exp claim = %v", claims["exp"])
	}

	other := newJWTKey(t, td, nil, time.Minute) // not in the bundle
	stale := newJWTKey(t, td, clock.NewFake(time.Now().Add(-2*time.Hour)), 5*time.Minute)
	f.jc.setJWTBundles(jwtBundleOf(f.key, stale))
	foreign := newJWTKey(t, spiffeid.RequireTrustDomainFromString("partner.test"), nil, time.Minute)
	// Same header and claims, signature of a different key.
	parts := strings.Split(good, ".")
	forged := parts[0] + "." + parts[1] + "." + strings.Split(other.mint(t, id, "db", "cache"), ".")[2]

	for _, tc := range []struct {
		name, token, audience, msg string
	}{
		{"wrong audience", good, "web", `expected audience in ["web"]`},
		{"expired", stale.mint(t, id, "db"), "db", "token has expired"},
		{"unknown kid", other.mint(t, id, "db"), "db", fmt.Sprintf("no JWT authority %q found", other.kid)},
		{"unknown trust domain", foreign.mint(t, spiffeid.RequireFromString("spiffe://partner.test/w"), "db"), "db", `no bundle found for trust domain "partner.test"`},
		{"bad signature", forged, "db", "unable to get claims from token"},
		{"malformed", "not-a.jwt", "db", "unable to parse JWT token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.ValidateJWTSVID(testCtx(t), tc.token, tc.audience)
			wantCodeContains(t, err, codes.InvalidArgument, "JWT-SVID is not valid: ")
			wantCodeContains(t, err, codes.InvalidArgument, tc.msg)
		})
	}
}

func TestValidateJWTSVIDExpiredByServerClock(t *testing.T) {
	f := startJWT(t)
	id := spiffeid.RequireFromPath(td, "/workload")
	tok, exp, err := f.key.signer.SignJWTSVID(context.Background(), ca.JWTSVIDParams{SPIFFEID: id, Audience: []string{"db"}})
	if err != nil {
		t.Fatal(err)
	}
	c := f.client(t)
	f.clk.Set(exp.Add(-time.Second))
	if _, err := c.ValidateJWTSVID(testCtx(t), tok, "db"); err != nil {
		t.Fatalf("a second before exp: %v", err)
	}
	// At exp the agent refuses, though go-jose's leeway would still
	// accept it for a minute.
	f.clk.Set(exp)
	_, err = c.ValidateJWTSVID(testCtx(t), tok, "db")
	wantCode(t, err, codes.InvalidArgument, "JWT-SVID is not valid: token has expired (at "+exp.UTC().Format(time.RFC3339)+")")
}

func TestValidateJWTSVIDInvalidArguments(t *testing.T) {
	f := startJWT(t)
	c := f.rawClient(t)
	ctx := withHeader(testCtx(t))
	tok := f.key.mint(t, spiffeid.RequireFromPath(td, "/workload"), "db")
	_, err := c.ValidateJWTSVID(ctx, &workloadpb.ValidateJWTSVIDRequest{Svid: tok})
	wantCode(t, err, codes.InvalidArgument, "audience must be specified")
	_, err = c.ValidateJWTSVID(ctx, &workloadpb.ValidateJWTSVIDRequest{Audience: "db"})
	wantCode(t, err, codes.InvalidArgument, "svid must be specified")
}

// TestJWTFederatedBundles: a caller whose entry federates with a trust
// domain gets that trust domain's JWT bundle on FetchJWTBundles (pushed
// when it starts federating and when the bundle changes) and validates
// its JWT-SVIDs; a caller whose entries do not federate with it does
// neither.
func TestJWTFederatedBundles(t *testing.T) {
	f := startJWT(t)
	partner := spiffeid.RequireTrustDomainFromString("partner.test")
	pkey := newJWTKey(t, partner, nil, 5*time.Minute)
	partnerBundle := func(keys ...*jwtKey) *jwtbundle.Bundle {
		b := jwtbundle.New(partner)
		for _, k := range keys {
			if err := b.AddJWTAuthority(k.kid, k.key.Public()); err != nil {
				t.Fatal(err)
			}
		}
		return b
	}
	f.jc.setJWTBundles(partnerBundle(pkey))
	f.jc.MemoryCache.SetIdentity(mySelectors(), f.ca.identity(t, "e1", "/workload"))
	tok := pkey.mint(t, spiffeid.RequireFromPath(partner, "/client"), "me")

	c := f.client(t)
	ctx, cancel := context.WithCancel(testCtx(t))
	w := &jwtBundleWatcher{updates: make(chan *jwtbundle.Set, 10)}
	done := make(chan error, 1)
	go func() { done <- c.WatchJWTBundles(ctx, w) }()
	defer func() {
		cancel()
		<-done
	}()
	nextSet := func() *jwtbundle.Set {
		t.Helper()
		select {
		case s := <-w.updates:
			return s
		case <-time.After(10 * time.Second):
			t.Fatal("no JWT bundle update")
			return nil
		}
	}

	// Not federating: the own bundle only, and the partner's token is
	// refused.
	if s := nextSet(); s.Len() != 1 || !s.Has(td) {
		t.Fatalf("bundles before federating: %v", s.Bundles())
	}
	_, err := c.ValidateJWTSVID(testCtx(t), tok, "me")
	wantCodeContains(t, err, codes.InvalidArgument, "JWT-SVID is not valid")

	// Federating: pushed, and the token validates.
	f.jc.MemoryCache.SetFederatesWith("e1", partner)
	s := nextSet()
	if s.Len() != 2 || !s.Has(td) || !s.Has(partner) {
		t.Fatalf("bundles after federating: %v", s.Bundles())
	}
	if b, _ := s.Get(partner); !b.HasJWTAuthority(pkey.kid) {
		t.Fatal("partner bundle lacks its key")
	}
	svid, err := c.ValidateJWTSVID(testCtx(t), tok, "me")
	if err != nil {
		t.Fatalf("partner token refused: %v", err)
	}
	if svid.ID.String() != "spiffe://partner.test/client" {
		t.Fatalf("validated %v", svid.ID)
	}
	// The audience is still checked.
	_, err = c.ValidateJWTSVID(testCtx(t), tok, "someone-else")
	wantCodeContains(t, err, codes.InvalidArgument, "JWT-SVID is not valid")

	// The partner rotates its key: pushed; the old key's tokens are
	// refused.
	pkey2 := newJWTKey(t, partner, nil, 5*time.Minute)
	f.jc.setJWTBundles(partnerBundle(pkey2))
	s = nextSet()
	if b, _ := s.Get(partner); b == nil || !b.HasJWTAuthority(pkey2.kid) || b.HasJWTAuthority(pkey.kid) {
		t.Fatalf("partner bundle after rotation: %v", b)
	}
	_, err = c.ValidateJWTSVID(testCtx(t), tok, "me")
	wantCodeContains(t, err, codes.InvalidArgument, "JWT-SVID is not valid")
	if _, err := c.ValidateJWTSVID(testCtx(t), pkey2.mint(t, spiffeid.RequireFromPath(partner, "/client"), "me"), "me"); err != nil {
		t.Fatalf("token of the partner's new key refused: %v", err)
	}

	// The entry stops federating: pushed without the partner.
	f.jc.MemoryCache.SetFederatesWith("e1")
	if s := nextSet(); s.Len() != 1 || s.Has(partner) {
		t.Fatalf("bundles after federating no more: %v", s.Bundles())
	}
}
