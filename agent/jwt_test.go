package agent

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/workloadapi"
)

// jwtTTL is the lifetime of the JWT-SVIDs the fake server mints.
const jwtTTL = 10 * time.Minute

// testJWTKey is a JWT signing key of the fake server.
type testJWTKey struct {
	kid    string
	key    crypto.Signer
	signer *ca.JWTSigner
}

func newTestJWTKey(t *testing.T, clk clock.Clock) *testJWTKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	kid, err := ca.KeyIDOf(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ca.NewJWTSigner(testTD, kid, key, clk.Now().Add(24*time.Hour), jwtTTL, clk)
	if err != nil {
		t.Fatal(err)
	}
	return &testJWTKey{kid: kid, key: key, signer: s}
}

func (k *testJWTKey) authority(t *testing.T, tainted bool) *sigilv1.JWTAuthority {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(k.key.Public())
	if err != nil {
		t.Fatal(err)
	}
	return &sigilv1.JWTAuthority{KeyId: k.kid, PublicKey: der, Tainted: tainted}
}

type mintCall struct {
	entryID  string
	audience []string
}

// jwtFixture is a cache whose JWT minter is a fake server: it signs real
// ES256 JWT-SVIDs for the SPIFFE ID of the cached entry with its current
// key, on the fake clock.
type jwtFixture struct {
	t   *testing.T
	clk *clock.Fake
	c   *cache

	mu    sync.Mutex
	key   *testJWTKey
	calls []mintCall
	err   error
	// gate, when not nil, holds every mint until it is closed; started
	// receives the entry ID of each mint as it begins.
	gate    chan struct{}
	started chan string
}

func newJWTFixture(t *testing.T) *jwtFixture {
	// Near the wall clock, so that go-jose accepts the tokens' iat and exp.
	clk := clock.NewFake(time.Now().Truncate(time.Second))
	f := &jwtFixture{
		t:       t,
		clk:     clk,
		c:       newCache(testTD, zaptest.NewLogger(t), clk),
		started: make(chan string, 100),
	}
	f.key = newTestJWTKey(t, clk)
	f.c.setJWTMinter(f.mint)
	f.setAuthorities(f.key.authority(t, false))
	return f
}

func (f *jwtFixture) mint(ctx context.Context, entryID string, audience []string) (*sigilv1.NewJWTSVIDResponse, error) {
	// The server sees the entry as it is when the request arrives.
	f.c.mu.Lock()
	st := f.c.st.entries[entryID]
	var sid string
	if st != nil {
		sid = st.entry.GetSpiffeId()
	}
	f.c.mu.Unlock()
	f.mu.Lock()
	f.calls = append(f.calls, mintCall{entryID: entryID, audience: slices.Clone(audience)})
	gate, key, err := f.gate, f.key, f.err
	f.mu.Unlock()
	f.started <- entryID
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if err != nil {
		return nil, err
	}
	if st == nil {
		return nil, status.Error(codes.PermissionDenied, "no such entry")
	}
	iat := f.clk.Now()
	tok, exp, err := key.signer.SignJWTSVID(ctx, ca.JWTSVIDParams{SPIFFEID: spiffeid.RequireFromString(sid), Audience: audience})
	if err != nil {
		return nil, err
	}
	return &sigilv1.NewJWTSVIDResponse{Token: tok, IssuedAt: iat.Unix(), ExpiresAt: exp.Unix(), KeyId: key.kid}, nil
}

func (f *jwtFixture) mintCalls() []mintCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func (f *jwtFixture) wantCalls(n int) {
	f.t.Helper()
	if got := len(f.mintCalls()); got != n {
		f.t.Fatalf("server asked to mint %d times, want %d", got, n)
	}
}

func (f *jwtFixture) setErr(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.err = err
}

func (f *jwtFixture) setKey(k *testJWTKey) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.key = k
}

func (f *jwtFixture) setAuthorities(as ...*sigilv1.JWTAuthority) {
	f.t.Helper()
	if _, err := f.c.setAuthorities(&sigilv1.Bundle{TrustDomain: testTD.Name(), JwtAuthorities: as}, nil); err != nil {
		f.t.Fatal(err)
	}
}

func (f *jwtFixture) fetch(ctx context.Context, uid string, spiffeID string, aud ...string) ([]workloadapi.JWTSVID, error) {
	return f.c.FetchJWTSVIDs(ctx, []*sigilv1.Selector{sel(uid)}, aud, spiffeID)
}

// fetchOne fetches the single JWT-SVID of uid:1 for aud.
func (f *jwtFixture) fetchOne(aud ...string) workloadapi.JWTSVID {
	f.t.Helper()
	svids, err := f.fetch(context.Background(), "uid:1", "", aud...)
	if err != nil {
		f.t.Fatal(err)
	}
	if len(svids) != 1 {
		f.t.Fatalf("%d JWT-SVIDs, want 1", len(svids))
	}
	return svids[0]
}

func (f *jwtFixture) cachedTokens(entryID string) int {
	f.c.jwt.mu.Lock()
	defer f.c.jwt.mu.Unlock()
	n := 0
	for k := range f.c.jwt.tokens {
		if k.entryID == entryID {
			n++
		}
	}
	return n
}

func (f *jwtFixture) bundle() *jwtbundle.Bundle {
	bs, _ := f.c.JWTBundles(nil)
	return bs[testTD]
}

func TestJWTCacheServesFromCache(t *testing.T) {
	f := newJWTFixture(t)
	f.c.ReplaceEntries([]*sigilv1.Entry{entry("a", "web", 1, "uid:1")})

	first := f.fetchOne("b", "a")
	f.wantCalls(1)
	if got := f.mintCalls()[0]; got.entryID != "a" || !slices.Equal(got.audience, []string{"a", "b"}) {
		t.Fatalf("minted %+v, want entry a for [a b] (sorted)", got)
	}
	// A real JWT-SVID for the entry, valid against the agent's JWT bundle.
	for _, aud := range []string{"a", "b"} {
		svid, err := jwtsvid.ParseAndValidate(first.Token, jwtbundle.NewSet(f.bundle()), []string{aud})
		if err != nil {
			t.Fatalf("ParseAndValidate(%s): %v", aud, err)
		}
		if want := spiffeid.RequireFromString("spiffe://example.org/web"); svid.ID != want || first.SPIFFEID != want {
			t.Fatalf("sub = %v, SPIFFEID = %v, want %v", svid.ID, first.SPIFFEID, want)
		}
	}
	if want := f.clk.Now().Add(jwtTTL); !first.ExpiresAt.Equal(want) {
		t.Errorf("ExpiresAt = %v, want %v", first.ExpiresAt, want)
	}

	// The same audience set, in any order and with duplicates, is served
	// from the cache.
	f.clk.Add(time.Minute)
	if again := f.fetchOne("a", "b", "a"); again.Token != first.Token {
		t.Fatal("second fetch got a new token")
	}
	f.wantCalls(1)

	// Another audience set is another token.
	other := f.fetchOne("c")
	f.wantCalls(2)
	if other.Token == first.Token {
		t.Fatal("audience c got the token for [a b]")
	}
	if got := f.mintCalls()[1].audience; !slices.Equal(got, []string{"c"}) {
		t.Fatalf("minted for %v, want [c]", got)
	}
}

func TestJWTCacheRefreshesAtHalfLife(t *testing.T) {
	f := newJWTFixture(t)
	f.c.ReplaceEntries([]*sigilv1.Entry{entry("a", "web", 1, "uid:1")})
	first := f.fetchOne("x")

	f.clk.Add(jwtTTL/2 - time.Second)
	if got := f.fetchOne("x"); got.Token != first.Token {
		t.Fatal("refreshed before half its lifetime")
	}
	f.wantCalls(1)

	f.clk.Add(time.Second)
	second := f.fetchOne("x")
	f.wantCalls(2)
	if second.Token == first.Token {
		t.Fatal("not refreshed at half its lifetime")
	}
	if want := f.clk.Now().Add(jwtTTL); !second.ExpiresAt.Equal(want) {
		t.Errorf("new token expires %v, want %v", second.ExpiresAt, want)
	}
	// The new token is the cached one now.
	if got := f.fetchOne("x"); got.Token != second.Token {
		t.Fatal("refreshed token not cached")
	}
	f.wantCalls(2)
}

// joinCtx reports each time a fetch starts waiting on it.
type joinCtx struct {
	context.Context
	joined chan<- struct{}
}

func (c joinCtx) Done() <-chan struct{} {
	c.joined <- struct{}{}
	return c.Context.Done()
}

func (f *jwtFixture) hold() (release func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	gate := make(chan struct{})
	f.gate = gate
	var once sync.Once
	return func() {
		once.Do(func() {
			f.mu.Lock()
			f.gate = nil
			f.mu.Unlock()
			close(gate)
		})
	}
}

func waitFor[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		var zero T
		return zero
	}
}

func TestJWTCacheSingleFlight(t *testing.T) {
	f := newJWTFixture(t)
	f.c.ReplaceEntries([]*sigilv1.Entry{entry("a", "web", 1, "uid:1")})
	release := f.hold()
	defer release()

	const n = 8
	joined := make(chan struct{}, n)
	type result struct {
		svids []workloadapi.JWTSVID
		err   error
	}
	results := make(chan result, n)
	for i := 0; i < n; i++ {
		aud := []string{"x", "y"}
		if i%2 == 1 {
			aud = []string{"y", "x", "y"}
		}
		go func() {
			svids, err := f.fetch(joinCtx{context.Background(), joined}, "uid:1", "", aud...)
			results <- result{svids, err}
		}()
	}
	// Every fetch is waiting before the server answers.
	for i := 0; i < n; i++ {
		waitFor(t, joined, "fetches to wait on the mint")
	}
	waitFor(t, f.started, "the mint to start")
	release()

	var token string
	for i := 0; i < n; i++ {
		r := waitFor(t, results, "a fetch")
		if r.err != nil {
			t.Fatal(r.err)
		}
		if i == 0 {
			token = r.svids[0].Token
		} else if r.svids[0].Token != token {
			t.Fatal("concurrent fetches got different tokens")
		}
	}
	f.wantCalls(1)
}

func TestJWTCacheCallerGivesUp(t *testing.T) {
	f := newJWTFixture(t)
	f.c.ReplaceEntries([]*sigilv1.Entry{entry("a", "web", 1, "uid:1")})
	release := f.hold()
	defer release()

	joined := make(chan struct{}, 2)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := f.fetch(joinCtx{ctx, joined}, "uid:1", "", "x")
		errc <- err
	}()
	waitFor(t, joined, "the first fetch to wait")
	done := make(chan []workloadapi.JWTSVID, 1)
	go func() {
		svids, err := f.fetch(joinCtx{context.Background(), joined}, "uid:1", "", "x")
		if err != nil {
			t.Error(err)
		}
		done <- svids
	}()
	waitFor(t, joined, "the second fetch to wait")

	cancel()
	if err := waitFor(t, errc, "the cancelled fetch"); status.Code(err) != codes.Canceled {
		t.Fatalf("cancelled fetch: err = %v, want Canceled", err)
	}
	// The mint goes on for the other caller.
	release()
	if svids := waitFor(t, done, "the second fetch"); len(svids) != 1 || svids[0].Token == "" {
		t.Fatalf("second fetch got %v", svids)
	}
	f.wantCalls(1)
	if f.cachedTokens("a") != 1 {
		t.Fatal("token not cached")
	}
}

func TestJWTCacheEntryDeletedDropsToken(t *testing.T) {
	f := newJWTFixture(t)
	f.c.ReplaceEntries([]*sigilv1.Entry{entry("a", "web", 1, "uid:1"), entry("b", "db", 2, "uid:2")})
	first := f.fetchOne("x")
	if _, err := f.fetch(context.Background(), "uid:2", "", "x"); err != nil {
		t.Fatal(err)
	}
	f.wantCalls(2)

	f.c.ApplyDelta(nil, []string{"a"})
	if n := f.cachedTokens("a"); n != 0 {
		t.Fatalf("%d tokens of deleted entry a still cached", n)
	}
	if _, err := f.fetch(context.Background(), "uid:1", "", "x"); !errors.Is(err, workloadapi.ErrNoIdentity) {
		t.Fatalf("after delete: err = %v, want ErrNoIdentity", err)
	}
	// Back again, it gets a new token: the old one was forgotten.
	f.c.ApplyDelta([]*sigilv1.Entry{entry("a", "web", 1, "uid:1")}, nil)
	if got := f.fetchOne("x"); got.Token == first.Token {
		t.Fatal("re-added entry was served the deleted entry's token")
	}
	f.wantCalls(3)

	// ReplaceEntries deletes b the same way.
	f.c.ReplaceEntries([]*sigilv1.Entry{entry("a", "web", 1, "uid:1")})
	if n := f.cachedTokens("b"); n != 0 {
		t.Fatalf("%d tokens of removed entry b still cached", n)
	}
	if f.cachedTokens("a") != 1 {
		t.Fatal("token of kept entry a dropped")
	}
}

func TestJWTCacheEntryDeletedDuringMint(t *testing.T) {
	f := newJWTFixture(t)
	f.c.ReplaceEntries([]*sigilv1.Entry{entry("a", "web", 1, "uid:1")})
	release := f.hold()
	defer release()
	done := make(chan error, 1)
	go func() {
		_, err := f.fetch(context.Background(), "uid:1", "", "x")
		done <- err
	}()
	waitFor(t, f.started, "the mint")
	f.c.ApplyDelta(nil, []string{"a"})
	release()
	// The caller that asked before the deletion gets its token...
	if err := waitFor(t, done, "the fetch"); err != nil {
		t.Fatal(err)
	}
	// ...but it is not kept for an entry that no longer exists.
	if n := f.cachedTokens("a"); n != 0 {
		t.Fatalf("token minted for a deleted entry was cached (%d)", n)
	}
}

// A token whose mint began before its entry changed must not be cached for
// the changed entry: it carries the old SPIFFE ID.
func TestJWTCacheEntryChangedDuringMint(t *testing.T) {
	f := newJWTFixture(t)
	f.c.ReplaceEntries([]*sigilv1.Entry{entry("a", "web", 1, "uid:1")})
	release := f.hold()
	defer release()
	done := make(chan error, 1)
	go func() {
		_, err := f.fetch(context.Background(), "uid:1", "", "x")
		done <- err
	}()
	waitFor(t, f.started, "the mint")
	changed := entry("a", "web2", 1, "uid:1")
	changed.Revision = 2
	f.c.ApplyDelta([]*sigilv1.Entry{changed}, nil)
	release()
	if err := waitFor(t, done, "the fetch"); err != nil {
		t.Fatal(err)
	}

	got := f.fetchOne("x")
	svid, err := jwtsvid.ParseAndValidate(got.Token, jwtbundle.NewSet(f.bundle()), []string{"x"})
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID != got.SPIFFEID {
		t.Fatalf("after the entry changed to %v, served a token for %v (minted before the change)", got.SPIFFEID, svid.ID)
	}
}

func TestJWTCacheEntryChangeDropsToken(t *testing.T) {
	f := newJWTFixture(t)
	f.c.ReplaceEntries([]*sigilv1.Entry{entry("a", "web", 1, "uid:1")})
	first := f.fetchOne("x")

	// The same entry again changes nothing.
	f.c.ApplyDelta([]*sigilv1.Entry{entry("a", "web", 1, "uid:1")}, nil)
	if got := f.fetchOne("x"); got.Token != first.Token {
		t.Fatal("unchanged entry lost its token")
	}
	f.wantCalls(1)

	changed := entry("a", "web2", 1, "uid:1")
	changed.Revision = 2
	f.c.ApplyDelta([]*sigilv1.Entry{changed}, nil)
	got := f.fetchOne("x")
	f.wantCalls(2)
	want := spiffeid.RequireFromString("spiffe://example.org/web2")
	svid, err := jwtsvid.ParseAndValidate(got.Token, jwtbundle.NewSet(f.bundle()), []string{"x"})
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID != want || got.SPIFFEID != want {
		t.Fatalf("after change: sub %v, SPIFFEID %v, want %v", svid.ID, got.SPIFFEID, want)
	}
}

func TestJWTCacheTaintedKeyDropsToken(t *testing.T) {
	f := newJWTFixture(t)
	f.c.ReplaceEntries([]*sigilv1.Entry{entry("a", "web", 1, "uid:1")})
	k1 := f.key
	k2 := newTestJWTKey(t, f.clk)
	first := f.fetchOne("x")

	// A new key in the bundle does not drop tokens of the old one.
	f.setAuthorities(k1.authority(t, false), k2.authority(t, false))
	if got := f.fetchOne("x"); got.Token != first.Token {
		t.Fatal("token dropped when an unrelated key was added")
	}
	f.wantCalls(1)

	// k1 is tainted: its token is dropped and the next fetch mints with k2.
	f.setKey(k2)
	f.setAuthorities(k1.authority(t, true), k2.authority(t, false))
	if n := f.cachedTokens("a"); n != 0 {
		t.Fatalf("%d tokens of a tainted key still cached", n)
	}
	got := f.fetchOne("x")
	f.wantCalls(2)
	if got.Token == first.Token {
		t.Fatal("token of a tainted key served")
	}
	if _, err := jwtsvid.ParseAndValidate(got.Token, jwtbundle.NewSet(jwtbundle.FromJWTAuthorities(testTD, map[string]crypto.PublicKey{k2.kid: k2.key.Public()})), []string{"x"}); err != nil {
		t.Fatalf("new token is not signed by k2: %v", err)
	}
}

// A token signed with a key that is tainted while the mint is in flight
// must not be cached.
func TestJWTCacheKeyTaintedDuringMint(t *testing.T) {
	f := newJWTFixture(t)
	f.c.ReplaceEntries([]*sigilv1.Entry{entry("a", "web", 1, "uid:1")})
	release := f.hold()
	defer release()
	done := make(chan error, 1)
	go func() {
		_, err := f.fetch(context.Background(), "uid:1", "", "x")
		done <- err
	}()
	waitFor(t, f.started, "the mint")
	f.setAuthorities(f.key.authority(t, true))
	release()
	if err := waitFor(t, done, "the fetch"); err != nil {
		t.Fatal(err)
	}
	if n := f.cachedTokens("a"); n != 0 {
		t.Fatalf("token of a key tainted during its mint was cached (%d)", n)
	}
}

func TestJWTCacheRemovedKeyDropsToken(t *testing.T) {
	f := newJWTFixture(t)
	f.c.ReplaceEntries([]*sigilv1.Entry{entry("a", "web", 1, "uid:1")})
	first := f.fetchOne("x")
	k2 := newTestJWTKey(t, f.clk)
	f.setKey(k2)
	f.setAuthorities(k2.authority(t, false)) // k1 is gone
	if n := f.cachedTokens("a"); n != 0 {
		t.Fatalf("%d tokens of a removed key still cached", n)
	}
	if got := f.fetchOne("x"); got.Token == first.Token {
		t.Fatal("token of a removed key served")
	}
	f.wantCalls(2)
}

func TestJWTCacheOffline(t *testing.T) {
	f := newJWTFixture(t)
	f.c.ReplaceEntries([]*sigilv1.Entry{entry("a", "web", 1, "uid:1")})
	first := f.fetchOne("x")
	f.setErr(status.Error(codes.Unavailable, "server down"))

	// Past half-life: a refresh is tried, fails, and the cached token is
	// served.
	f.clk.Add(jwtTTL / 2)
	if got := f.fetchOne("x"); got.Token != first.Token {
		t.Fatal("offline: cached token not served")
	}
	f.wantCalls(2)
	f.clk.Set(first.ExpiresAt.Add(-jwtExpiryMargin - time.Second))
	if got := f.fetchOne("x"); got.Token != first.Token {
		t.Fatal("offline: cached token not served just before the margin")
	}
	f.wantCalls(3)

	// Within the margin of its expiry it is refused.
	f.clk.Set(first.ExpiresAt.Add(-jwtExpiryMargin))
	_, err := f.fetch(context.Background(), "uid:1", "", "x")
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("offline near expiry: err = %v, want Unavailable", err)
	}
	f.clk.Set(first.ExpiresAt.Add(time.Minute))
	if _, err := f.fetch(context.Background(), "uid:1", "", "x"); status.Code(err) != codes.Unavailable {
		t.Fatalf("offline after expiry: err = %v, want Unavailable", err)
	}

	// Back online: a new token.
	f.setErr(nil)
	if got := f.fetchOne("x"); got.Token == first.Token {
		t.Fatal("expired token served once online")
	}
}

func TestJWTCachePermissionDeniedNotServedFromCache(t *testing.T) {
	f := newJWTFixture(t)
	f.c.ReplaceEntries([]*sigilv1.Entry{entry("a", "web", 1, "uid:1")})
	f.fetchOne("x")
	f.setErr(status.Error(codes.PermissionDenied, "entry not authorized"))
	f.clk.Add(jwtTTL / 2)
	_, err := f.fetch(context.Background(), "uid:1", "", "x")
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("err = %v, want the server's PermissionDenied", err)
	}
}

func TestJWTCacheBadServerResponse(t *testing.T) {
	f := newJWTFixture(t)
	f.c.ReplaceEntries([]*sigilv1.Entry{entry("a", "web", 1, "uid:1")})
	for _, resp := range []*sigilv1.NewJWTSVIDResponse{
		{Token: "", IssuedAt: 1, ExpiresAt: 2},
		{Token: "t", IssuedAt: 2, ExpiresAt: 2},
	} {
		f.c.setJWTMinter(func(context.Context, string, []string) (*sigilv1.NewJWTSVIDResponse, error) { return resp, nil })
		if _, err := f.fetch(context.Background(), "uid:1", "", "x"); err == nil {
			t.Fatalf("response %v accepted", resp)
		}
		if f.cachedTokens("a") != 0 {
			t.Fatalf("response %v cached", resp)
		}
	}
}

func TestJWTCacheSelection(t *testing.T) {
	f := newJWTFixture(t)
	f.c.ReplaceEntries([]*sigilv1.Entry{
		entry("z", "late", 5, "uid:1"),
		entry("y", "early", 1, "uid:1"),
		entry("w", "other", 1, "uid:1", "gid:9"),
	})
	svids, err := f.fetch(context.Background(), "uid:1", "", "x")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range svids {
		got = append(got, s.SPIFFEID.Path())
	}
	if !slices.Equal(got, []string{"/early", "/late"}) {
		t.Fatalf("SVIDs %v, want [/early /late] (by creation)", got)
	}
	only, err := f.fetch(context.Background(), "uid:1", "spiffe://example.org/late", "x")
	if err != nil {
		t.Fatal(err)
	}
	if len(only) != 1 || only[0].SPIFFEID.Path() != "/late" {
		t.Fatalf("by SPIFFE ID: %v", only)
	}
	if _, err := f.fetch(context.Background(), "uid:1", "spiffe://example.org/other", "x"); !errors.Is(err, workloadapi.ErrNoIdentity) {
		t.Fatalf("SPIFFE ID of an entry not matched: err = %v, want ErrNoIdentity", err)
	}
	if _, err := f.fetch(context.Background(), "uid:3", "", "x"); !errors.Is(err, workloadapi.ErrNoIdentity) {
		t.Fatalf("no entry: err = %v, want ErrNoIdentity", err)
	}
	f.wantCalls(2)
}

func TestJWTCacheNotConnected(t *testing.T) {
	clk := clock.NewFake(t0)
	c := newCache(testTD, zaptest.NewLogger(t), clk)
	c.ReplaceEntries([]*sigilv1.Entry{entry("a", "web", 1, "uid:1")})
	_, err := c.FetchJWTSVIDs(context.Background(), []*sigilv1.Selector{sel("uid:1")}, []string{"x"}, "")
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("err = %v, want Unavailable", err)
	}
}

func TestJWTBundles(t *testing.T) {
	clk := clock.NewFake(t0)
	c := newCache(testTD, zaptest.NewLogger(t), clk)
	bs, changed := c.JWTBundles(nil)
	if bs != nil {
		t.Fatalf("bundles before the first: %v", bs)
	}
	k1, k2 := newTestJWTKey(t, clk), newTestJWTKey(t, clk)
	pb := &sigilv1.Bundle{TrustDomain: testTD.Name(), JwtAuthorities: []*sigilv1.JWTAuthority{k1.authority(t, false)}}
	if _, err := c.setAuthorities(pb, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-changed:
	default:
		t.Fatal("first bundle not signalled")
	}
	bs, changed = c.JWTBundles(nil)
	if b := bs[testTD]; b == nil || !b.HasJWTAuthority(k1.kid) || len(b.JWTAuthorities()) != 1 {
		t.Fatalf("bundles = %v", bs)
	}

	// The same bundle again (tainting does not change the published keys).
	pb.JwtAuthorities[0].Tainted = true
	if _, err := c.setAuthorities(pb, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-changed:
		t.Fatal("unchanged bundle signalled")
	default:
	}

	// A bad authority is reported; the good ones are kept.
	pb = &sigilv1.Bundle{TrustDomain: testTD.Name(), JwtAuthorities: []*sigilv1.JWTAuthority{
		k1.authority(t, false), {KeyId: "bad", PublicKey: []byte("junk")}, k2.authority(t, false),
	}}
	if _, err := c.setAuthorities(pb, nil); err == nil {
		t.Fatal("bad authority not reported")
	}
	select {
	case <-changed:
	default:
		t.Fatal("new key not signalled")
	}
	bs, _ = c.JWTBundles(nil)
	if b := bs[testTD]; !b.HasJWTAuthority(k1.kid) || !b.HasJWTAuthority(k2.kid) || b.HasJWTAuthority("bad") {
		t.Fatalf("kids = %v", b.JWTAuthorities())
	}
}

// An entry deleted and added again under the same ID (with a new SPIFFE
// ID) while a mint for the old one is in flight: the old token is handed
// to the caller that asked for it but never cached; the new entry's token
// is, whichever mint ends first.
func TestJWTCacheEntryReAddedDuringMint(t *testing.T) {
	f := newJWTFixture(t)
	f.c.ReplaceEntries([]*sigilv1.Entry{entry("a", "web", 1, "uid:1")})
	release := f.hold()
	defer release()
	done := make(chan error, 2)
	go func() {
		_, err := f.fetch(context.Background(), "uid:1", "", "x")
		done <- err
	}()
	waitFor(t, f.started, "the first mint")
	f.c.ApplyDelta(nil, []string{"a"})
	readded := entry("a", "web2", 1, "uid:1")
	readded.Revision = 2
	f.c.ApplyDelta([]*sigilv1.Entry{readded}, nil)
	go func() {
		_, err := f.fetch(context.Background(), "uid:1", "", "x")
		done <- err
	}()
	waitFor(t, f.started, "the second mint")
	release()
	for range 2 {
		if err := waitFor(t, done, "a fetch"); err != nil {
			t.Fatal(err)
		}
	}
	f.wantCalls(2)
	if n := f.cachedTokens("a"); n != 1 {
		t.Fatalf("%d tokens cached for a, want 1", n)
	}
	got := f.fetchOne("x")
	f.wantCalls(2) // served from the cache
	svid, err := jwtsvid.ParseAndValidate(got.Token, jwtbundle.NewSet(f.bundle()), []string{"x"})
	if err != nil {
		t.Fatal(err)
	}
	if want := spiffeid.RequireFromString("spiffe://example.org/web2"); svid.ID != want {
		t.Fatalf("cached token for %v, want %v", svid.ID, want)
	}
}
