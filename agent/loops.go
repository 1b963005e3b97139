package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// isAuthError reports whether the server refused the agent itself: it was
// evicted or banned, or its SVID is no longer accepted.
func isAuthError(err error) bool {
	c := status.Code(err)
	return c == codes.PermissionDenied || c == codes.Unauthenticated
}

// syncLoop keeps one Sync stream open, reconnecting with capped
// exponential backoff and jitter.
func (a *Agent) syncLoop(ctx context.Context) {
	a.cache.setJWTMinter(a.mintJWT)
	attempt := 0
	for {
		progressed, err := a.syncOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		a.mu.Lock()
		a.syncUp = false
		a.syncErr = err
		a.mu.Unlock()
		if progressed {
			attempt = 0
		}
		if errors.Is(err, errConnReplaced) {
			// A new agent SVID: reconnect at once with it.
			a.log.Debug("sync stream moved to the new connection")
			continue
		}
		if isAuthError(err) {
			a.setAuthErr(err)
			a.log.Error("agent was evicted or banned: server refused the sync stream", zap.Error(err))
		}
		d := backoff(syncRetryBase, syncRetryMax, attempt)
		attempt++
		a.log.Warn("sync stream ended; reconnecting", zap.Duration("retry_in", d), zap.Error(err))
		select {
		case <-ctx.Done():
			return
		case <-a.clk.After(d):
		}
		// Our own backoff paces the retries: do not let the connection's
		// (up to two minutes) delay a server that has come back.
		a.mu.Lock()
		if a.conn != nil {
			a.conn.ResetConnectBackoff()
		}
		a.mu.Unlock()
	}
}

// errConnReplaced ends a stream whose connection was replaced.
var errConnReplaced = errors.New("connection replaced")

// syncOnce runs one Sync stream until it fails. It reports whether any
// message arrived.
func (a *Agent) syncOnce(ctx context.Context) (progressed bool, err error) {
	client, changed := a.client()
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		select {
		case <-changed:
			cancel(errConnReplaced)
		case <-ctx.Done():
		}
	}()
	stream, err := client.Sync(ctx, &sigilv1.SyncRequest{})
	if err != nil {
		return false, err
	}
	var full map[string]*sigilv1.Entry
	inFull := false
	for {
		msg, err := stream.Recv()
		if err != nil {
			if cause := context.Cause(ctx); errors.Is(cause, errConnReplaced) {
				return progressed, cause
			}
			return progressed, err
		}
		if !progressed {
			progressed = true
			a.mu.Lock()
			a.syncUp = true
			a.syncErr = nil
			a.authErr = nil
			a.mu.Unlock()
			a.log.Info("sync stream established")
			// Back online: entries that failed to mint while the
			// servers were away are tried again at once.
			a.cache.resetRetries()
		}
		if msg.GetBundle() != nil {
			a.applyServerBundle(msg.GetBundle())
		}
		if msg.GetReset_() {
			inFull = true
			full = make(map[string]*sigilv1.Entry)
		}
		if inFull {
			for _, e := range msg.GetUpserted() {
				full[e.GetId()] = e
			}
			for _, id := range msg.GetDeleted() {
				delete(full, id)
			}
		} else {
			a.cache.ApplyDelta(msg.GetUpserted(), msg.GetDeleted())
		}
		if msg.GetSynced() && inFull {
			entries := make([]*sigilv1.Entry, 0, len(full))
			for _, e := range full {
				entries = append(entries, e)
			}
			full, inFull = nil, false
			a.cache.ReplaceEntries(entries)
			a.log.Info("entries synced", zap.Int("entries", len(entries)), zap.Uint64("index", msg.GetIndex()))
			a.maybeReady()
		}
	}
}

// mintLoop mints SVIDs for entries that need one, in batches, at most
// maxBatchesInFlight at a time. It also drives renewal: it sleeps until
// the next SVID is due by the injected clock.
func (a *Agent) mintLoop(ctx context.Context) {
	slots := make(chan struct{}, maxBatchesInFlight)
	idle := 0
	for {
		dispatched := false
		for len(slots) < cap(slots) {
			jobs := a.cache.takeDue(a.clk.Now(), a.cfg.SyncBatchSize)
			if len(jobs) == 0 {
				break
			}
			dispatched = true
			slots <- struct{}{}
			go func() {
				defer func() {
					<-slots
					a.cache.wake()
				}()
				a.mintBatch(ctx, jobs)
			}()
		}
		var timer <-chan time.Time
		if len(slots) < cap(slots) {
			if next := a.cache.nextEvent(); !next.IsZero() {
				d := next.Sub(a.clk.Now())
				if d <= 0 && !dispatched {
					// Something is due but nothing was taken; this
					// should not happen, but never spin on it.
					if idle++; idle > 3 {
						d = 10 * time.Millisecond
					}
				} else {
					idle = 0
				}
				timer = a.clk.After(max(d, 0))
			}
		}
		select {
		case <-ctx.Done():
			// Let running batches finish recording their outcome.
			for range cap(slots) {
				slots <- struct{}{}
			}
			return
		case <-a.cache.kick:
		case <-timer:
		}
	}
}

// mintBatch generates a key and CSR per job and has them signed in one
// call.
func (a *Agent) mintBatch(ctx context.Context, jobs []*mintJob) {
	req := &sigilv1.BatchNewX509SVIDRequest{Requests: make([]*sigilv1.X509SVIDRequest, 0, len(jobs))}
	sent := jobs[:0:0]
	for _, j := range jobs {
		key, csr, err := newKeyAndCSR()
		if err != nil {
			a.cache.finish(j, mintOutcome{err: err})
			continue
		}
		j.key = key
		req.Requests = append(req.Requests, &sigilv1.X509SVIDRequest{EntryId: j.id, Csr: csr})
		sent = append(sent, j)
	}
	if len(sent) == 0 {
		return
	}
	client, _ := a.client()
	cctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	start := a.clk.Now()
	resp, err := client.BatchNewX509SVID(cctx, req)
	if err != nil {
		if isAuthError(err) {
			a.setAuthErr(err)
			a.log.Error("agent was evicted or banned: server refused to mint SVIDs", zap.Error(err))
		}
		for _, j := range sent {
			a.cache.finish(j, mintOutcome{err: err})
		}
		return
	}
	results := make(map[string]*sigilv1.X509SVIDResult, len(resp.GetResults()))
	for _, r := range resp.GetResults() {
		results[r.GetEntryId()] = r
	}
	outs := make([]mintOutcome, len(sent))
	for i, j := range sent {
		r := results[j.id]
		var out mintOutcome
		switch {
		case r == nil:
			out.err = errors.New("server returned no result for the entry")
		case codes.Code(r.GetStatus().GetCode()) != codes.OK:
			c := codes.Code(r.GetStatus().GetCode())
			out.err = status.Error(c, r.GetStatus().GetMessage())
			out.denied = c == codes.PermissionDenied
		default:
			out.chain, out.err = parseDERChain(r.GetChain())
		}
		outs[i] = out
	}
	minted := a.cache.finishBatch(sent, outs)
	a.log.Debug("minted batch", zap.Int("requested", len(sent)), zap.Int("cached", minted),
		zap.Duration("took", a.clk.Now().Sub(start)))
}

// agentLoop renews the agent SVID at half its lifetime, and re-attests if
// it has expired.
func (a *Agent) agentLoop(ctx context.Context) {
	failures := 0
	for {
		ident := a.identity()
		now := a.clk.Now()
		wait := ident.renewAt.Sub(now)
		if failures > 0 {
			wait = backoff(agentRetryBase, agentRetryMax, failures-1)
			if untilExpiry := ident.notAfter.Sub(now); untilExpiry > 0 && untilExpiry < wait {
				wait = untilExpiry
			}
		}
		if wait > 0 {
			select {
			case <-ctx.Done():
				return
			case <-a.clk.After(wait):
			case <-a.cache.jwt.agentTaint:
				// The key that signed our SVID is tainted: renew now.
			}
		} else if ctx.Err() != nil {
			return
		}
		var err error
		if !a.clk.Now().Before(ident.notAfter) {
			err = a.reattest(ctx)
		} else {
			err = a.renewAgent(ctx)
		}
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			failures++
			continue
		}
		failures = 0
	}
}

// renewAgent replaces the agent SVID with one over a new key.
func (a *Agent) renewAgent(ctx context.Context) error {
	cur := a.identity()
	key, csr, err := newKeyAndCSR()
	if err != nil {
		return err
	}
	client, _ := a.client()
	cctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	resp, err := client.RenewAgent(cctx, &sigilv1.RenewAgentRequest{Csr: csr})
	if err != nil {
		if isAuthError(err) {
			a.setAuthErr(err)
			a.log.Error("agent was evicted or banned: server refused to renew the agent SVID",
				zap.String("spiffe_id", cur.id.String()), zap.Error(err))
		} else {
			a.log.Warn("agent SVID renewal failed", zap.Error(err))
		}
		return err
	}
	chain, err := parseDERChain(resp.GetSvidChain())
	if err == nil {
		var id = cur.id
		id, err = checkAgentSVID(a.cfg.TrustDomain, chain, key)
		if err == nil && id != cur.id {
			err = fmt.Errorf("renewed SVID has ID %q, want %q", id, cur.id)
		}
	}
	if err == nil {
		_, _, err = x509svid.Verify(chain, a.cache, x509svid.WithTime(a.clk.Now()))
	}
	if err != nil {
		a.log.Error("server returned a bad agent SVID", zap.Error(err))
		return err
	}
	next := newIdentity(chain, key)
	if err := saveIdentity(a.cfg.DataDir, next); err != nil {
		a.log.Error("could not save the renewed agent SVID", zap.Error(err))
		return err
	}
	a.setIdentity(next)
	if err := a.replaceConn(); err != nil {
		a.log.Error("could not reconnect with the renewed agent SVID", zap.Error(err))
	}
	a.log.Info("agent SVID renewed", zap.String("spiffe_id", next.id.String()),
		zap.String("serial", chain[0].SerialNumber.Text(16)), zap.Time("expires_at", next.notAfter))
	return nil
}

// reattest attests the node again after the agent SVID expired.
func (a *Agent) reattest(ctx context.Context) error {
	ident, bundle, err := a.attest(ctx)
	if err != nil {
		if spent, ok := a.spentMessage(); !retryable(err) && ok {
			// The attestor works once (a join token): it was spent
			// on the first attestation, so this agent cannot prove
			// itself again.
			err = fmt.Errorf("%s: %w", spent, err)
		}
		a.mu.Lock()
		a.reattestErr = err
		a.mu.Unlock()
		a.log.Error("agent SVID expired and cannot re-attest", zap.Error(err))
		return err
	}
	a.cache.SetBundle(bundle)
	a.mu.Lock()
	a.ident = ident
	a.reattestErr = nil
	a.authErr = nil
	a.mu.Unlock()
	return a.replaceConn()
}
