package agent

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/registration"
	"github.com/sigil-id/sigil/workloadapi"
)

var _ workloadapi.JWTCache = (*cache)(nil)

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
}

// jwtCall is one in-flight mint that concurrent fetches of the same
// JWT-SVID share.
type jwtCall struct {
	done chan struct{}
	tok  *jwtToken
	err  error
	// gen is the entry's JWT generation when the call started: a token
	// minted for an older generation is handed to the callers that were
	// waiting for it but never cached.
	gen uint64
}

// jwtMinter asks a server for a JWT-SVID.
type jwtMinter func(ctx context.Context, entryID string, audience []string) (*sigilv1.NewJWTSVIDResponse, error)

// jwtState is the JWT part of the cache, guarded by cache.mu.
type jwtState struct {
	tokens   map[jwtKey]*jwtToken
	inflight map[jwtKey]*jwtCall
	mint     jwtMinter
	// bundle is the own trust domain's JWT bundle; changed is closed and
	// replaced when it changes.
	bundle  *jwtbundle.Bundle
	changed chan struct{}
	// tainted authorities: X.509 by SubjectKeyId (raw bytes as string),
	// JWT by key ID.
	taintedX509 map[string]bool
	taintedJWT  map[string]bool
	// agentTaint is signalled when the agent's own SVID's signer is
	// tainted; buffered 1.
	agentTaint chan struct{}
	lastSweep  time.Time
	// gen counts the times an entry's JWT-SVIDs were dropped (the entry
	// changed or was deleted), from genSeq.
	gen    map[string]uint64
	genSeq uint64
}

func newJWTState() jwtState {
	return jwtState{
		tokens:     make(map[jwtKey]*jwtToken),
		inflight:   make(map[jwtKey]*jwtCall),
		gen:        make(map[string]uint64),
		changed:    make(chan struct{}),
		agentTaint: make(chan struct{}, 1),
	}
}

func (c *cache) setJWTMinter(m jwtMinter) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.jwt.mint = m
}

// dropJWTLocked forgets the JWT-SVIDs of an entry.
func (c *cache) dropJWTLocked(entryID string) {
	for k := range c.jwt.tokens {
		if k.entryID == entryID {
			delete(c.jwt.tokens, k)
		}
	}
	// Mints in flight were asked for the entry as it was: later fetches
	// start new ones, and what the old ones return is not cached.
	for k := range c.jwt.inflight {
		if k.entryID == entryID {
			delete(c.jwt.inflight, k)
		}
	}
	c.jwt.genSeq++
	c.jwt.gen[entryID] = c.jwt.genSeq
}

// setAuthorities takes the JWT authorities and the tainted flags of a
// bundle from the server. SVIDs signed by a newly tainted key become due
// at once; cached JWT-SVIDs of a tainted key are dropped. It reports
// whether the agent's own SVID, signed by authority key ID agentAKI, is
// now signed by a tainted key.
func (c *cache) setAuthorities(pb *sigilv1.Bundle, agentAKI []byte) (agentTainted bool, err error) {
	jb := jwtbundle.New(c.td)
	taintedJWT := make(map[string]bool)
	for _, a := range pb.GetJwtAuthorities() {
		pub, perr := x509.ParsePKIXPublicKey(a.GetPublicKey())
		if perr != nil {
			err = fmt.Errorf("JWT authority %q: %w", a.GetKeyId(), perr)
			continue
		}
		if aerr := jb.AddJWTAuthority(a.GetKeyId(), pub); aerr != nil {
			err = aerr
			continue
		}
		if a.GetTainted() {
			taintedJWT[a.GetKeyId()] = true
		}
	}
	taintedX509 := make(map[string]bool)
	for _, a := range pb.GetX509Authorities() {
		if !a.GetTainted() {
			continue
		}
		if cert, perr := x509.ParseCertificate(a.GetCertificate()); perr == nil {
			taintedX509[string(cert.SubjectKeyId)] = true
		}
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	if c.jwt.bundle == nil || !c.jwt.bundle.Equal(jb) {
		c.jwt.bundle = jb
		close(c.jwt.changed)
		c.jwt.changed = make(chan struct{})
	}
	c.jwt.taintedJWT = taintedJWT
	c.jwt.taintedX509 = taintedX509
	for k, t := range c.jwt.tokens {
		if taintedJWT[t.keyID] || !jb.HasJWTAuthority(t.keyID) {
			delete(c.jwt.tokens, k)
		}
	}
	marked := 0
	for _, st := range c.entries {
		if st.svid != nil && !st.svid.tainted && taintedX509[string(st.svid.chain[0].AuthorityKeyId)] {
			st.svid.tainted = true
			marked++
		}
	}
	if marked > 0 {
		c.log.Info("SVIDs signed by a tainted authority are being replaced", zap.Int("svids", marked))
		c.wake()
	}
	return len(agentAKI) > 0 && taintedX509[string(agentAKI)], err
}

// JWTBundles implements workloadapi.JWTCache.
func (c *cache) JWTBundles() (map[spiffeid.TrustDomain]*jwtbundle.Bundle, <-chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.jwt.bundle == nil {
		return nil, c.jwt.changed
	}
	return map[spiffeid.TrustDomain]*jwtbundle.Bundle{c.td: c.jwt.bundle}, c.jwt.changed
}

// canonicalAudience sorts and deduplicates an audience list.
func canonicalAudience(aud []string) []string {
	out := slices.Clone(aud)
	slices.Sort(out)
	return slices.Compact(out)
}

type jwtTarget struct {
	entryID  string
	spiffeID spiffeid.ID
	hint     string
}

// FetchJWTSVIDs implements workloadapi.JWTCache: a cached JWT-SVID is
// reused until half its lifetime has passed; after that a new one is
// minted, and the cached one is still served while it is valid if no
// server can be reached.
func (c *cache) FetchJWTSVIDs(ctx context.Context, selectors []*sigilv1.Selector, audience []string, spiffeID string) ([]workloadapi.JWTSVID, error) {
	aud := canonicalAudience(audience)
	audKey := strings.Join(aud, "\x00")
	sels := registration.NewSelectorSet(selectors)

	c.mu.Lock()
	var targets []jwtTarget
	var createdAt []int64
	for id, st := range c.entries {
		e := st.entry
		if !sels.Contains(e.GetSelectors()) {
			continue
		}
		if spiffeID != "" && e.GetSpiffeId() != spiffeID {
			continue
		}
		sid, err := spiffeid.FromString(e.GetSpiffeId())
		if err != nil {
			continue
		}
		targets = append(targets, jwtTarget{entryID: id, spiffeID: sid, hint: e.GetHint()})
		createdAt = append(createdAt, e.GetCreatedAt())
	}
	c.sweepJWTLocked()
	c.mu.Unlock()
	if len(targets) == 0 {
		return nil, workloadapi.ErrNoIdentity
	}
	idx := make([]int, len(targets))
	for i := range idx {
		idx[i] = i
	}
	slices.SortFunc(idx, func(a, b int) int {
		if createdAt[a] != createdAt[b] {
			if createdAt[a] < createdAt[b] {
				return -1
			}
			return 1
		}
		return strings.Compare(targets[a].entryID, targets[b].entryID)
	})
	out := make([]workloadapi.JWTSVID, 0, len(targets))
	for _, i := range idx {
		t := targets[i]
		tok, err := c.jwtFor(ctx, jwtKey{entryID: t.entryID, audience: audKey}, aud)
		if err != nil {
			return nil, err
		}
		out = append(out, workloadapi.JWTSVID{SPIFFEID: t.spiffeID, Token: tok.token, Hint: t.hint, ExpiresAt: tok.expiresAt})
	}
	return out, nil
}

// sweepJWTLocked drops expired JWT-SVIDs, at most once a minute.
func (c *cache) sweepJWTLocked() {
	now := c.clk.Now()
	if now.Sub(c.jwt.lastSweep) < time.Minute {
		return
	}
	c.jwt.lastSweep = now
	for k, t := range c.jwt.tokens {
		if !now.Before(t.expiresAt) {
			delete(c.jwt.tokens, k)
		}
	}
	// Generations of deleted entries matter only while a mint for them
	// may still be running.
	busy := make(map[string]bool, len(c.jwt.inflight))
	for k := range c.jwt.inflight {
		busy[k.entryID] = true
	}
	for id := range c.jwt.gen {
		if _, ok := c.entries[id]; !ok && !busy[id] {
			delete(c.jwt.gen, id)
		}
	}
}

// jwtFor returns the cached JWT-SVID for k or mints one, merging
// concurrent mints of the same one.
func (c *cache) jwtFor(ctx context.Context, k jwtKey, aud []string) (*jwtToken, error) {
	c.mu.Lock()
	now := c.clk.Now()
	cached := c.jwt.tokens[k]
	if cached != nil && now.Before(cached.renewAt) {
		c.mu.Unlock()
		return cached, nil
	}
	call := c.jwt.inflight[k]
	if call == nil {
		if c.jwt.mint == nil {
			c.mu.Unlock()
			return nil, status.Error(codes.Unavailable, "agent is not connected to a server yet")
		}
		call = &jwtCall{done: make(chan struct{}), gen: c.jwt.gen[k.entryID]}
		c.jwt.inflight[k] = call
		mint := c.jwt.mint
		go c.runJWTMint(call, k, aud, mint)
	}
	c.mu.Unlock()

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
	if cached != nil && c.clk.Now().Add(jwtExpiryMargin).Before(cached.expiresAt) {
		return cached, nil
	}
	return nil, call.err
}

// runJWTMint mints outside any caller's context, so that a caller that
// gives up does not fail the others waiting on the same call.
func (c *cache) runJWTMint(call *jwtCall, k jwtKey, aud []string, mint jwtMinter) {
	ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
	defer cancel()
	resp, err := mint(ctx, k.entryID, aud)
	var tok *jwtToken
	if err == nil {
		tok, err = c.checkJWT(resp)
	}
	c.mu.Lock()
	if c.jwt.inflight[k] == call {
		delete(c.jwt.inflight, k)
	}
	if err == nil && c.cacheableJWTLocked(k.entryID, call.gen, tok) {
		c.jwt.tokens[k] = tok
	}
	c.mu.Unlock()
	if err != nil {
		c.log.Warn("minting JWT-SVID failed", zap.String("entry_id", k.entryID), zap.Error(err))
	}
	call.tok, call.err = tok, err
	close(call.done)
}

// cacheableJWTLocked reports whether a token minted for entryID at JWT
// generation gen may be cached: the entry is unchanged since, and the
// signing key is neither tainted nor gone from the bundle.
func (c *cache) cacheableJWTLocked(entryID string, gen uint64, tok *jwtToken) bool {
	if _, ok := c.entries[entryID]; !ok || c.jwt.gen[entryID] != gen {
		return false
	}
	if c.jwt.taintedJWT[tok.keyID] {
		return false
	}
	return c.jwt.bundle == nil || c.jwt.bundle.HasJWTAuthority(tok.keyID)
}

func (c *cache) checkJWT(resp *sigilv1.NewJWTSVIDResponse) (*jwtToken, error) {
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
		case a.cache.jwt.agentTaint <- struct{}{}:
		default:
		}
	}
}
