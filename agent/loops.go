package agent

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// releaseAfterSync is the least number of entries of a full sync after
// which the agent returns its free heap to the kernel at once
// (debug.FreeOSMemory, one forced collection). A full sync of many
// entries grows the heap with the messages it decodes, and the runtime
// keeps free heap up to about its heap goal rather than returning it;
// the agent mints its first SVIDs right after the sync, its busiest
// moment. With 1,000,000 entries and 1,000 active workloads: VmHWM 102.3
// -> 98.3 MiB, settled VmRSS 87.8 -> 84.6 MiB (docs/memory.md).
const releaseAfterSync = 10_000

// isAuthError reports whether the server refused the agent itself: it was
// evicted or banned, or its SVID is no longer accepted.
func isAuthError(err error) bool {
	c := status.Code(err)
	return c == codes.PermissionDenied || c == codes.Unauthenticated
}

// syncLoop keeps one Sync stream open, reconnecting with capped
// exponential backoff and jitter. When the server refuses the agent
// itself and the node attestor can attest again, it waits instead for the
// connection that agentLoop opens after attesting again: the
// re-attestation's own backoff paces the calls to the server.
func (a *Agent) syncLoop(ctx context.Context) {
	a.cache.setJWTMinter(a.mintJWT)
	attempt := 0
	for {
		client, changed := a.client()
		progressed, err := a.syncOnce(ctx, client, changed)
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
			a.refused(err, "server refused the sync stream")
			if a.canReattest() {
				select {
				case <-ctx.Done():
					return
				case <-changed:
					attempt = 0
					continue
				}
			}
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

// syncOnce runs one Sync stream on client until it fails or changed is
// closed (the connection was replaced). It reports whether any message
// arrived.
func (a *Agent) syncOnce(ctx context.Context, client sigilv1.NodeClient, changed <-chan struct{}) (progressed bool, err error) {
	ctx, cancel := context.WithCancelCause(ctx)
	// The report loop runs on this stream's connection while it is up.
	var reports sync.WaitGroup
	reportStarted := false
	defer func() {
		cancel(nil)
		reports.Wait()
	}()
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
	// full collects a full set of entries until it ends, packed as they
	// arrive: no decoded message outlives the one that carried it.
	var full *entryStage
	// fedFull collects the federated bundles of a full set, by trust
	// domain, until it ends.
	var fedFull map[string]*sigilv1.Bundle
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
			full = newEntryStage()
			fedFull = make(map[string]*sigilv1.Bundle)
		}
		if inFull {
			for _, e := range msg.GetUpserted() {
				if err := full.put(e); err != nil {
					return progressed, err
				}
			}
			for _, id := range msg.GetDeleted() {
				full.del(id)
			}
			for _, b := range msg.GetFederatedBundles() {
				fedFull[b.GetTrustDomain()] = b
			}
			for _, td := range msg.GetRemovedFederatedBundles() {
				delete(fedFull, td)
			}
		} else {
			// Bundles first: an entry that names a new federated trust
			// domain finds its bundle.
			a.cache.SetFederated(false, msg.GetFederatedBundles(), msg.GetRemovedFederatedBundles())
			a.cache.ApplyDelta(msg.GetUpserted(), msg.GetDeleted())
		}
		if msg.GetSynced() && inFull {
			staged, n := full, full.len()
			bundles := make([]*sigilv1.Bundle, 0, len(fedFull))
			for _, b := range fedFull {
				bundles = append(bundles, b)
			}
			full, fedFull, inFull = nil, nil, false
			a.cache.SetFederated(true, bundles, nil)
			a.cache.replaceStaged(staged)
			if n >= releaseAfterSync {
				a.releaseHeap()
			}
			a.log.Info("entries synced", zap.Int("entries", n), zap.Uint64("index", msg.GetIndex()))
			a.maybeReady()
			if !reportStarted {
				reportStarted = true
				reports.Go(func() { a.reportLoop(ctx, client) })
			}
		}
	}
}

// mintLoop mints SVIDs for entries that need one, in batches, at most
// maxBatchesInFlight at a time; the last free slot is left to the SVIDs
// that waiting workloads need, which go in a batch of their own. It also drives renewal: it sleeps until
// the next SVID is due by the injected clock. Each batch enters the cache
// twice: once to take its jobs (takeBatch) and once to hand back their
// outcomes (finishBatch).
func (a *Agent) mintLoop(ctx context.Context) {
	slots := make(chan struct{}, maxBatchesInFlight)
	idle := 0
	for {
		dispatched := false
		var next time.Time
		for len(slots) < cap(slots) {
			// The last free slot is kept for the SVIDs waiting
			// workloads need: they go alone, never behind batches
			// of others.
			bulk := len(slots) < cap(slots)-1 || cap(slots) == 1
			jobs, n, waiting := a.cache.takeNext(a.clk.Now(), a.cfg.SyncBatchSize, bulk)
			next = n
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
			if waiting {
				continue // then the rest, as before
			}
			if len(jobs) < a.cfg.SyncBatchSize {
				break // every due entry was taken; next is set
			}
			next = time.Time{}
		}
		var timer <-chan time.Time
		if len(slots) < cap(slots) && !next.IsZero() {
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

// mintBatch generates a key and CSR per job, has them signed in one call
// and hands every outcome back to the cache in one call.
func (a *Agent) mintBatch(ctx context.Context, jobs []*mintJob) {
	outs := make([]mintOutcome, len(jobs))
	req := &sigilv1.BatchNewX509SVIDRequest{Requests: make([]*sigilv1.X509SVIDRequest, 0, len(jobs))}
	// The requests in one allocation; each is used through its pointer
	// only.
	reqs := make([]sigilv1.X509SVIDRequest, len(jobs))
	sent := make([]int, 0, len(jobs)) // indexes of the jobs in req
	for i, j := range jobs {
		key, spki, csr, err := newMintRequest()
		if err != nil {
			outs[i].err = err
			continue
		}
		j.key, j.spki = key, spki
		r := &reqs[i]
		r.EntryId, r.Csr = j.id, csr
		req.Requests = append(req.Requests, r)
		sent = append(sent, i)
	}
	start := a.clk.Now()
	if len(sent) > 0 {
		a.mintRPC(ctx, req, jobs, sent, outs)
	}
	minted := a.cache.finishBatch(jobs, outs)
	a.log.Debug("minted batch", zap.Int("requested", len(sent)), zap.Int("cached", minted),
		zap.Duration("took", a.clk.Now().Sub(start)))
}

// mintRPC sends req and fills in outs[i] for each job index i in sent.
func (a *Agent) mintRPC(ctx context.Context, req *sigilv1.BatchNewX509SVIDRequest, jobs []*mintJob, sent []int, outs []mintOutcome) {
	client, _ := a.client()
	cctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	resp, err := client.BatchNewX509SVID(cctx, req)
	if err != nil {
		if isAuthError(err) {
			a.refused(err, "server refused to mint SVIDs")
		}
		for _, i := range sent {
			outs[i].err = err
		}
		return
	}
	matchResults(resp.GetResults(), jobs, sent, outs)
}

// matchResults fills in outs[i] for each job index i in sent from got,
// the server's results. The server answers in the order of the requests:
// each result is matched by position when its entry ID is the job's, and
// otherwise by entry ID, through a map built only then (the last result
// for an entry ID wins). A job with no result is a bad response.
func matchResults(got []*sigilv1.X509SVIDResult, jobs []*mintJob, sent []int, outs []mintOutcome) {
	var results map[string]*sigilv1.X509SVIDResult
	for k, i := range sent {
		var r *sigilv1.X509SVIDResult
		if k < len(got) && got[k].GetEntryId() == jobs[i].id {
			r = got[k]
		} else {
			if results == nil {
				results = make(map[string]*sigilv1.X509SVIDResult, len(got))
				for _, g := range got {
					results[g.GetEntryId()] = g
				}
			}
			r = results[jobs[i].id]
		}
		out := &outs[i]
		switch {
		case r == nil:
			out.err = errors.New("server returned no result for the entry")
			out.badResponse = true
		case codes.Code(r.GetStatus().GetCode()) != codes.OK:
			c := codes.Code(r.GetStatus().GetCode())
			out.err = status.Error(c, r.GetStatus().GetMessage())
			out.denied = c == codes.PermissionDenied
		default:
			// Parsed with the rest of the batch, against the
			// issuers verified so far (checkMints).
			out.der = r.GetChain()
		}
	}
}

// agentLoop renews the agent SVID at half its lifetime, and attests the
// node again if the SVID has expired or if the server refused the agent
// (evicted, or forgotten by a restore from an older snapshot) and the
// node attestor can attest again. Failures are retried with capped
// exponential backoff (agentRetryBase to agentRetryMax): a banned agent,
// whose attestations the server refuses, asks at most once per
// agentRetryMax.
func (a *Agent) agentLoop(ctx context.Context) {
	failures := 0
	for {
		ident := a.identity()
		now := a.clk.Now()
		refused := a.mustReattest()
		wait := ident.renewAt.Sub(now)
		if refused {
			wait = 0
		}
		if failures > 0 {
			wait = backoff(agentRetryBase, agentRetryMax, failures-1)
			if untilExpiry := ident.notAfter.Sub(now); !refused && untilExpiry > 0 && untilExpiry < wait {
				wait = untilExpiry
			}
		}
		kicked := false
		if wait > 0 {
			// A refusal seen by another loop wakes this one, unless it
			// is backing off after a failure.
			var kick <-chan struct{}
			if failures == 0 {
				kick = a.reattestKick
			}
			select {
			case <-ctx.Done():
				return
			case <-a.clk.After(wait):
			case <-a.cache.agentTaint:
				// The key that signed our SVID is tainted: renew now.
			case <-kick:
				kicked = true
			}
		} else if ctx.Err() != nil {
			return
		}
		var err error
		attemptAt := a.clk.Now()
		switch {
		case a.mustReattest():
			err = a.reattest(ctx, "the server refused the agent")
		case !a.clk.Now().Before(ident.notAfter):
			err = a.reattest(ctx, "the agent SVID expired")
		case kicked:
			continue // the refusal has cleared since
		default:
			err = a.renewAgent(ctx)
			if err != nil && isAuthError(err) && a.canReattest() && ctx.Err() == nil {
				err = a.reattest(ctx, "the server refused to renew the agent SVID")
			}
		}
		if ctx.Err() != nil {
			return
		}
		a.recordAgentAttempt(attemptAt, err)
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
			a.refused(err, "server refused to renew the agent SVID "+cur.id.String())
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

// reattest attests the node again, for the reason given (the agent SVID
// expired, or the server refused the agent). On success the agent uses
// its new identity and bundle, drops its authentication and attestation
// errors and reconnects, so that the sync stream resumes; the workload
// SVIDs it holds stay in the cache (the trust domain signed them, and
// they are withdrawn as usual if the resumed sync no longer carries their
// entries).
func (a *Agent) reattest(ctx context.Context, reason string) error {
	old := a.identity()
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
		a.log.Error("cannot re-attest", zap.String("reason", reason), zap.Error(err))
		return err
	}
	a.cache.SetBundle(bundle)
	a.mu.Lock()
	a.ident = ident
	a.reattestErr = nil
	a.authErr = nil
	a.mu.Unlock()
	select {
	case <-a.reattestKick: // a refusal seen before this attestation
	default:
	}
	if old != nil && old.id != ident.id {
		a.log.Warn("re-attested under a different agent ID", zap.String("old_spiffe_id", old.id.String()),
			zap.String("spiffe_id", ident.id.String()))
	}
	a.log.Info("re-attested", zap.String("reason", reason), zap.String("spiffe_id", ident.id.String()),
		zap.String("serial", ident.chain[0].SerialNumber.Text(16)), zap.Time("expires_at", ident.notAfter))
	return a.replaceConn()
}
