package agent

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/registration"
	"github.com/sigil-id/sigil/workloadapi"
)

// jwtExpiryMargin: a cached JWT-SVID is not handed out when it has less
// than this left, even when the server cannot be reached for a new one.
const jwtExpiryMargin = 5 * time.Second

// jwtKey names the cached JWT-SVID of one entry for one audience set.
type jwtKey struct {
	entryID  string
	audience string // sorted, deduplicated, NUL-separated
}

type jwtToken struct {
	token     string
	keyID     string
	expiresAt time.Time
	renewAt   time.Time
	// gen is the entry's generation (entryState.gen) the token was
	// minted for: it is handed out for that version of the entry only.
	gen uint64
}

// jwtCall is one in-flight mint that concurrent fetches of the same
// JWT-SVID share.
type jwtCall struct {
	done chan struct{}
	tok  *jwtToken
	err  error
	// gen is the entry's generation when the call started: a token
	// minted for an older generation is handed to the callers that were
	// waiting for it but never cached.
	gen uint64
}

// jwtMinter asks a server for a JWT-SVID.
type jwtMinter func(ctx context.Context, entryID string, audience []string) (*sigilv1.NewJWTSVIDResponse, error)

// jwtTarget is an entry a JWT-SVID is fetched for.
type jwtTarget struct {
	entryID   string
	gen       uint64
	spiffeID  spiffeid.ID
	hint      string
	createdAt int64
}

// jwtCache holds the JWT-SVIDs minted for workloads, merges concurrent
// mints of the same one (single flight) and keeps the JWT bundle. It has
// its own lock; it learns the entries from targets (the X.509 state's
// entry set) and is told by the cache when entries change or go
// (entriesChanged).
type jwtCache struct {
	log     *zap.Logger
	clk     clock.Clock
	td      spiffeid.TrustDomain
	targets func(sels registration.SelectorSet, spiffeID string) []jwtTarget

	mu       sync.Mutex
	tokens   map[jwtKey]*jwtToken
	inflight map[jwtKey]*jwtCall
	mint     jwtMinter
	// bundle is the own trust domain's JWT bundle; changed is closed and
	// replaced when it changes.
	bundle  *jwtbundle.Bundle
	changed chan struct{}
	// taintedJWT are the tainted JWT authorities by key ID.
	taintedJWT map[string]bool
	lastSweep  time.Time
	// floor is, for entries that changed or were deleted, the lowest
	// generation still current: a token minted for an older one is not
	// cached. running counts the mints in flight per entry; floors are
	// forgotten when none runs. fetching counts the fetches under way
	// (which may hold targets of older generations): floors are kept
	// only while a fetch or a mint of the entry may need them, so that
	// deleting many entries leaves none behind.
	floor    map[string]uint64
	running  map[string]int
	fetching int
}

func newJWTCache(td spiffeid.TrustDomain, log *zap.Logger, clk clock.Clock,
	targets func(registration.SelectorSet, string) []jwtTarget) *jwtCache {
	return &jwtCache{
		log:      log,
		clk:      clk,
		td:       td,
		targets:  targets,
		tokens:   make(map[jwtKey]*jwtToken),
		inflight: make(map[jwtKey]*jwtCall),
		changed:  make(chan struct{}),
		floor:    make(map[string]uint64),
		running:  make(map[string]int),
	}
}

func (c *cache) setJWTMinter(m jwtMinter) {
	c.jwt.mu.Lock()
	defer c.jwt.mu.Unlock()
	c.jwt.mint = m
}

// JWTBundles implements workloadapi.JWTCache: the own trust domain's JWT
// bundle and the federated JWT bundles named in federates_with by the
// entries the selectors match.
func (c *cache) JWTBundles(selectors []*sigilv1.Selector) (map[spiffeid.TrustDomain]*jwtbundle.Bundle, <-chan struct{}) {
	sels := registration.NewSelectorSet(selectors)
	c.mu.Lock()
	defer c.mu.Unlock()
	// Both parts are read under c.mu, and the channel with the own
	// bundle under j.mu: a federated change (made under c.mu) or an own
	// change after this point closes the channel returned.
	own, changed := c.jwt.bundles()
	var out map[spiffeid.TrustDomain]*jwtbundle.Bundle
	if len(c.st.federated) > 0 {
		var matched []*entryState
		for _, st := range c.st.matchEntries(sels) {
			if len(st.entry.GetFederatesWith()) > 0 {
				matched = append(matched, st)
			}
		}
		c.st.federatedOf(matched, func(b *fedBundle) {
			if b.jwt == nil {
				return
			}
			if out == nil {
				out = make(map[spiffeid.TrustDomain]*jwtbundle.Bundle, len(own)+1)
				for td, jb := range own {
					out[td] = jb
				}
			}
			out[b.td] = b.jwt
		})
	}
	if out == nil {
		out = own
	}
	return out, changed
}

// FetchJWTSVIDs implements workloadapi.JWTCache.
func (c *cache) FetchJWTSVIDs(ctx context.Context, selectors []*sigilv1.Selector, audience []string, spiffeID string) ([]workloadapi.JWTSVID, error) {
	return c.jwt.fetch(ctx, selectors, audience, spiffeID)
}

// entriesChanged forgets the JWT-SVIDs of entries that changed or were
// deleted. gens holds each one's new generation, or 0 when it was
// deleted.
func (j *jwtCache) entriesChanged(gens map[string]uint64, genSeq uint64) {
	j.mu.Lock()
	defer j.mu.Unlock()
	for k := range j.tokens {
		if _, ok := gens[k.entryID]; ok {
			delete(j.tokens, k)
		}
	}
	// Mints in flight were asked for the entry as it was: later fetches
	// start new ones, and what the old ones return is not cached.
	for k := range j.inflight {
		if _, ok := gens[k.entryID]; ok {
			delete(j.inflight, k)
		}
	}
	for id, g := range gens {
		if j.fetching == 0 && j.running[id] == 0 {
			// No fetch or mint can hold an older generation.
			continue
		}
		if g == 0 {
			// Deleted: every generation issued so far is gone; an entry
			// added again under the same ID gets a later one.
			g = genSeq + 1
		}
		if g > j.floor[id] {
			j.floor[id] = g
		}
	}
}

// authorities is what a bundle from the server says about signing keys.
type authorities struct {
	jwt         *jwtbundle.Bundle
	taintedJWT  map[string]bool // by key ID
	taintedX509 map[string]bool // by SubjectKeyId (raw bytes as string)
}

// parseAuthorities reads the JWT authorities and the tainted flags of a
// bundle. A bad JWT authority is reported and left out; the others are
// kept.
func parseAuthorities(td spiffeid.TrustDomain, pb *sigilv1.Bundle) (authorities, error) {
	var err error
	a := authorities{jwt: jwtbundle.New(td), taintedJWT: make(map[string]bool), taintedX509: make(map[string]bool)}
	for _, ja := range pb.GetJwtAuthorities() {
		pub, perr := x509.ParsePKIXPublicKey(ja.GetPublicKey())
		if perr != nil {
			err = fmt.Errorf("JWT authority %q: %w", ja.GetKeyId(), perr)
			continue
		}
		if aerr := a.jwt.AddJWTAuthority(ja.GetKeyId(), pub); aerr != nil {
			err = aerr
			continue
		}
		if ja.GetTainted() {
			a.taintedJWT[ja.GetKeyId()] = true
		}
	}
	// The servers' CA certificates signed by an upstream authority are
	// not trust anchors, but SVIDs they signed are replaced when they
	// are tainted just the same.
	for _, list := range [][]*sigilv1.X509Authority{pb.GetX509Authorities(), pb.GetX509Intermediates()} {
		for _, xa := range list {
			if !xa.GetTainted() {
				continue
			}
			if cert, perr := x509.ParseCertificate(xa.GetCertificate()); perr == nil {
				a.taintedX509[string(cert.SubjectKeyId)] = true
			}
		}
	}
	return a, err
}

// setAuthorities installs the JWT bundle and the tainted JWT keys: cached
// JWT-SVIDs of a tainted key or of a key gone from the bundle are
// dropped.
func (j *jwtCache) setAuthorities(jb *jwtbundle.Bundle, tainted map[string]bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.bundle == nil || !j.bundle.Equal(jb) {
		j.bundle = jb
		close(j.changed)
		j.changed = make(chan struct{})
	}
	j.taintedJWT = tainted
	for k, t := range j.tokens {
		if tainted[t.keyID] || !jb.HasJWTAuthority(t.keyID) {
			delete(j.tokens, k)
		}
	}
}

// bundlesChanged wakes the watchers of JWT bundle sets: a federated
// bundle or the federates_with of an entry changed.
func (j *jwtCache) bundlesChanged() {
	j.mu.Lock()
	defer j.mu.Unlock()
	close(j.changed)
	j.changed = make(chan struct{})
}

func (j *jwtCache) bundles() (map[spiffeid.TrustDomain]*jwtbundle.Bundle, <-chan struct{}) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.bundle == nil {
		return nil, j.changed
	}
	return map[spiffeid.TrustDomain]*jwtbundle.Bundle{j.td: j.bundle}, j.changed
}

// canonicalAudience sorts and deduplicates an audience list.
func canonicalAudience(aud []string) []string {
	out := slices.Clone(aud)
	slices.Sort(out)
	return slices.Compact(out)
}

// fetch returns a JWT-SVID for every matching entry: a cached JWT-SVID
// is reused until half its lifetime has passed; after that a new one is
// minted, and the cached one is still served while it is valid if no
// server can be reached.
func (j *jwtCache) fetch(ctx context.Context, selectors []*sigilv1.Selector, audience []string, spiffeID string) ([]workloadapi.JWTSVID, error) {
	aud := canonicalAudience(audience)
	audKey := strings.Join(aud, "\x00")
	j.mu.Lock()
	j.fetching++
	j.mu.Unlock()
	defer func() {
		j.mu.Lock()
		if j.fetching--; j.fetching == 0 {
			for id := range j.floor {
				if j.running[id] == 0 {
					delete(j.floor, id)
				}
			}
		}
		j.mu.Unlock()
	}()
	targets := j.targets(registration.NewSelectorSet(selectors), spiffeID)
	j.mu.Lock()
	j.sweepLocked()
	j.mu.Unlock()
	if len(targets) == 0 {
		return nil, workloadapi.ErrNoIdentity
	}
	slices.SortFunc(targets, func(a, b jwtTarget) int {
		if a.createdAt != b.createdAt {
			if a.createdAt < b.createdAt {
				return -1
			}
			return 1
		}
		return strings.Compare(a.entryID, b.entryID)
	})
	out := make([]workloadapi.JWTSVID, 0, len(targets))
	for _, t := range targets {
		tok, err := j.tokenFor(ctx, jwtKey{entryID: t.entryID, audience: audKey}, t.gen, aud)
		if err != nil {
			return nil, err
		}
		out = append(out, workloadapi.JWTSVID{SPIFFEID: t.spiffeID, Token: tok.token, Hint: t.hint, ExpiresAt: tok.expiresAt})
	}
	return out, nil
}

// sweepLocked drops expired JWT-SVIDs, at most once a minute.
func (j *jwtCache) sweepLocked() {
	now := j.clk.Now()
	if now.Sub(j.lastSweep) < time.Minute {
		return
	}
	j.lastSweep = now
	for k, t := range j.tokens {
		if !now.Before(t.expiresAt) {
			delete(j.tokens, k)
		}
	}
	// Floors matter only while a mint for an older generation may still
	// be running.
	for id := range j.floor {
		if j.running[id] == 0 {
			delete(j.floor, id)
		}
	}
}

// tokenFor returns the cached JWT-SVID for k, minted for generation gen
// of its entry, or mints one, merging concurrent mints of the same one.
func (j *jwtCache) tokenFor(ctx context.Context, k jwtKey, gen uint64, aud []string) (*jwtToken, error) {
	j.mu.Lock()
	now := j.clk.Now()
	cached := j.tokens[k]
	if cached != nil && cached.gen != gen {
		cached = nil // minted for another version of the entry
	}
	if cached != nil && now.Before(cached.renewAt) {
		j.mu.Unlock()
		return cached, nil
	}
	call := j.inflight[k]
	if call == nil || call.gen < gen {
		if j.mint == nil {
			j.mu.Unlock()
			return nil, status.Error(codes.Unavailable, "agent is not connected to a server yet")
		}
		call = &jwtCall{done: make(chan struct{}), gen: gen}
		j.inflight[k] = call
		j.running[k.entryID]++
		go j.run(call, k, aud, j.mint)
	}
	j.mu.Unlock()

	select {
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	case <-call.done:
	}
	if call.err == nil {
		return call.tok, nil
	}
	if status.Code(call.err) == codes.PermissionDenied {
		return nil, call.err
	}
	// Offline: serve the cached token while it is still good.
	if cached != nil && j.clk.Now().Add(jwtExpiryMargin).Before(cached.expiresAt) {
		return cached, nil
	}
	return nil, call.err
}

// run mints outside any caller's context, so that a caller that gives up
// does not fail the others waiting on the same call.
func (j *jwtCache) run(call *jwtCall, k jwtKey, aud []string, mint jwtMinter) {
	ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
	defer cancel()
	resp, err := mint(ctx, k.entryID, aud)
	var tok *jwtToken
	if err == nil {
		tok, err = checkJWT(resp, call.gen)
	}
	j.mu.Lock()
	if j.inflight[k] == call {
		delete(j.inflight, k)
	}
	last := false
	if j.running[k.entryID]--; j.running[k.entryID] <= 0 {
		delete(j.running, k.entryID)
		last = true
	}
	if err == nil && j.cacheableLocked(k, tok) {
		j.tokens[k] = tok
	}
	if last && j.fetching == 0 {
		delete(j.floor, k.entryID)
	}
	j.mu.Unlock()
	if err != nil {
		j.log.Warn("minting JWT-SVID failed", zap.String("entry_id", k.entryID), zap.Error(err))
	}
	call.tok, call.err = tok, err
	close(call.done)
}

// cacheableLocked reports whether tok may be cached under k: its entry has
// not changed or gone since the mint started, no token for a newer
// version is cached, and the signing key is neither tainted nor gone from
// the bundle.
func (j *jwtCache) cacheableLocked(k jwtKey, tok *jwtToken) bool {
	if tok.gen < j.floor[k.entryID] {
		return false
	}
	if cur := j.tokens[k]; cur != nil && cur.gen > tok.gen {
		return false
	}
	if j.taintedJWT[tok.keyID] {
		return false
	}
	return j.bundle == nil || j.bundle.HasJWTAuthority(tok.keyID)
}

func checkJWT(resp *sigilv1.NewJWTSVIDResponse, gen uint64) (*jwtToken, error) {
	if resp.GetToken() == "" {
		return nil, errors.New("server returned an empty JWT-SVID")
	}
	iat, exp := time.Unix(resp.GetIssuedAt(), 0), time.Unix(resp.GetExpiresAt(), 0)
	if !exp.After(iat) {
		return nil, errors.New("server returned a JWT-SVID that expires before it is issued")
	}
	return &jwtToken{
		token:     resp.GetToken(),
		keyID:     resp.GetKeyId(),
		expiresAt: exp,
		renewAt:   iat.Add(exp.Sub(iat) / 2),
		gen:       gen,
	}, nil
}

// mintJWT asks the server for a JWT-SVID over the current connection.
func (a *Agent) mintJWT(ctx context.Context, entryID string, audience []string) (*sigilv1.NewJWTSVIDResponse, error) {
	client, _ := a.client()
	resp, err := client.NewJWTSVID(ctx, &sigilv1.NewJWTSVIDRequest{EntryId: entryID, Audience: audience})
	if err != nil && isAuthError(err) && status.Code(err) != codes.PermissionDenied {
		a.setAuthErr(err)
	}
	return resp, err
}

// applyServerBundle installs a bundle from the server: the X.509
// authorities (applyBundle), then the JWT authorities and taints.
func (a *Agent) applyServerBundle(pb *sigilv1.Bundle) {
	a.applyBundle(pb)
	var aki []byte
	if id := a.identity(); id != nil {
		aki = id.chain[0].AuthorityKeyId
	}
	tainted, err := a.cache.setAuthorities(pb, aki)
	if err != nil {
		a.log.Error("ignoring bad JWT authority from server", zap.Error(err))
	}
	if tainted {
		a.log.Warn("the agent's own SVID is signed by a tainted authority; renewing it now")
		select {
		case a.cache.agentTaint <- struct{}{}:
		default:
		}
	}
}
