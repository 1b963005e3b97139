package main

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"sort"
	"time"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/raftstore"
)

// run is one size: a fresh cluster, entries, agents and every measurement.
type run struct {
	o     options
	bin   string
	dir   string
	res   *Result
	w     io.Writer
	log   func(format string, args ...any)
	nodes []*server
	lead  *server
	roots *x509.CertPool

	probe   *simAgent           // the agent every bulk entry is parented to
	agents  []*simAgent         // the simulated agents
	bulkIDs []string            // bulk entry ids, creation order
	bulk    map[string]string   // bulk entry id -> SPIFFE ID
	want    []map[string]string // per agent: entry id -> SPIFFE ID it must hold
	group   map[string]string   // entries parented to the group: id -> SPIFFE ID
}

// groupID is the SPIFFE ID every simulated agent reaches through one
// entry of its own: entries parented to it go to every agent.
const groupID = "spiffe://" + trustDomain + "/scale/group"

// Workers of the setup loops (tokens, attestations); the machine has few
// cores, more would only queue.
const setupWorkers = 16

func (r *run) do(parent context.Context) (err error) {
	start := time.Now()
	ctx, cancel := context.WithCancelCause(parent)
	defer cancel(nil)
	defer func() {
		// A run stopped by the RSS guard says so, not "context canceled".
		if c := context.Cause(ctx); err != nil && c != nil && c != context.Canceled && parent.Err() == nil {
			err = c
		}
	}()
	res := r.res
	fmt.Fprintf(r.w, "\nscale: %d server(s), %d bulk entries, %d agents\n", r.o.servers, res.Entries, res.Agents)
	r.nodes, err = startCluster(ctx, r.bin, r.dir, r.o.servers)
	defer func() {
		for _, a := range r.agents {
			a.stop()
		}
		if r.probe != nil {
			r.probe.stop()
		}
		for _, n := range r.nodes {
			n.close()
		}
	}()
	if err != nil {
		return err
	}
	go r.guardRSS(ctx, cancel)
	if r.lead, err = leader(ctx, r.nodes); err != nil {
		return err
	}
	for _, n := range r.nodes {
		res.Server = append(res.Server, &ServerFigures{Name: n.name})
	}
	r.log("%d server(s) ready, leader %s", len(r.nodes), r.lead.name)
	b, err := r.lead.adminAPI.GetBundle(ctx, &sigilv1.GetBundleRequest{})
	if err != nil {
		return fmt.Errorf("get bundle: %w", err)
	}
	r.roots = x509.NewCertPool()
	for _, a := range b.X509Authorities {
		c, err := x509.ParseCertificate(a.Certificate)
		if err != nil {
			return fmt.Errorf("bundle: %w", err)
		}
		r.roots.AddCert(c)
	}

	if err := r.makeAgents(ctx); err != nil {
		return err
	}
	r.log("%d join tokens created", res.Agents+1)
	if err := r.measure(ctx, func(f *ServerFigures) *Mem { return &f.Idle }); err != nil {
		return fmt.Errorf("idle memory: %w", err)
	}
	if err := r.createEntries(ctx); err != nil {
		return err
	}
	r.log("%d entries created (%.0f/s in batches of %d)", res.TotalEntries, res.CreatePerSecond, batchSize)
	if err := r.measure(ctx, func(f *ServerFigures) *Mem { return &f.Entries }); err != nil {
		return fmt.Errorf("memory with entries: %w", err)
	}
	if err := r.probeSync(ctx); err != nil {
		return err
	}
	r.log("one agent's full sync of %d entries: %.3f s", res.Entries, res.FullSyncSeconds)
	if err := r.measure(ctx, func(f *ServerFigures) *Mem { return &f.BeforeAgents }); err != nil {
		return fmt.Errorf("memory before agents: %w", err)
	}
	if err := r.connectAgents(ctx); err != nil {
		return err
	}
	r.log("%d agents attested and synced in %.2f s", res.Agents, res.ConnectSeconds)
	if err := r.measure(ctx, func(f *ServerFigures) *Mem { return &f.Agents }); err != nil {
		return fmt.Errorf("memory with agents: %w", err)
	}
	if err := r.propagation(ctx); err != nil {
		return err
	}
	r.log("propagation to %d agents: p50 %.1f ms, p99 %.1f ms", res.Agents, res.PropagationP50Ms, res.PropagationP99Ms)
	if err := r.snapshot(ctx); err != nil {
		return err
	}
	r.log("snapshot: %d bytes in %.3f s", res.SnapshotBytes, res.SnapshotSeconds)
	for _, a := range r.agents {
		a.stop()
	}
	if err := r.restart(ctx); err != nil {
		return err
	}
	r.log("restart of %s: ready %.2f s, full sync %.2f s", r.nodes[0].name, res.RestartReadySeconds, res.RestartSyncSeconds)
	if err := r.deleteHalf(ctx); err != nil {
		return err
	}
	res.Seconds = time.Since(start).Seconds()
	return nil
}

// guardRSS stops the run when a server's RSS exceeds the bound.
func (r *run) guardRSS(ctx context.Context, stop context.CancelCauseFunc) {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, n := range r.nodes {
			rss, err := n.rss()
			if err == nil {
				n.raisePeak(rss)
			}
			if err == nil && rss > r.o.maxRSS {
				stop(fmt.Errorf("%s RSS %.0f MiB exceeds -max-server-rss %.0f MiB", n.name, mib(rss), mib(r.o.maxRSS)))
				return
			}
		}
	}
}

// makeAgents creates one join token for the probe and for each simulated
// agent (whose SPIFFE ID the token names, so entries can be parented to
// it before it attests).
func (r *run) makeAgents(ctx context.Context) error {
	all := make([]*simAgent, r.res.Agents+1)
	idx := make([]int, len(all))
	for i := range idx {
		idx[i] = i
	}
	err := forEach(ctx, idx, setupWorkers, func(i int) error {
		tok, err := r.lead.adminAPI.CreateJoinToken(ctx, &sigilv1.CreateJoinTokenRequest{Ttl: 24 * 3600})
		if err != nil {
			return fmt.Errorf("create join token: %w", err)
		}
		srv := r.nodes[i%len(r.nodes)]
		if i == 0 {
			srv = r.nodes[0]
		}
		all[i] = &simAgent{id: tok.AgentId, token: tok.Token, addr: srv.nodeAddr, roots: r.roots, src: loopbackSource(i)}
		return nil
	})
	if err != nil {
		return err
	}
	r.probe, r.agents = all[0], all[1:]
	return nil
}

// createEntries creates the bulk entries (parented to the probe agent),
// then for each simulated agent its group link and one entry of its own,
// through BatchCreateEntry in batches of batchSize.
func (r *run) createEntries(ctx context.Context) error {
	res := r.res
	r.bulk = make(map[string]string, res.Entries)
	var batch []*sigilv1.Entry
	var created int
	start := time.Now()
	flush := func(onCreated func(i int, e *sigilv1.Entry)) error {
		if len(batch) == 0 {
			return nil
		}
		resp, err := r.lead.adminAPI.BatchCreateEntry(ctx, &sigilv1.BatchCreateEntryRequest{Entries: batch})
		if err != nil {
			return fmt.Errorf("batch create entry: %w", err)
		}
		if len(resp.Results) != len(batch) {
			return fmt.Errorf("batch create entry: %d results for %d entries", len(resp.Results), len(batch))
		}
		for i, x := range resp.Results {
			if x.Status.GetCode() != 0 {
				return fmt.Errorf("create entry %s: %s", batch[i].SpiffeId, x.Status.GetMessage())
			}
			onCreated(i, x.Entry)
		}
		created += len(batch)
		batch = batch[:0]
		return nil
	}
	onBulk := func(_ int, e *sigilv1.Entry) {
		r.bulkIDs = append(r.bulkIDs, e.Id)
		r.bulk[e.Id] = e.SpiffeId
	}
	for i := 0; i < res.Entries; i++ {
		batch = append(batch, &sigilv1.Entry{
			SpiffeId: fmt.Sprintf("spiffe://%s/scale/bulk/ns-%d/sa-%d", trustDomain, i%50, i),
			ParentId: r.probe.id,
			Selectors: []*sigilv1.Selector{
				{Type: "k8s", Value: fmt.Sprintf("ns:ns-%d", i%50)},
				{Type: "k8s", Value: fmt.Sprintf("sa:sa-%d", i)},
			},
		})
		if len(batch) == batchSize {
			if err := flush(onBulk); err != nil {
				return err
			}
		}
	}
	if err := flush(onBulk); err != nil {
		return err
	}
	res.CreatePerSecond = float64(created) / time.Since(start).Seconds()

	// Per agent: the link to the group and one entry of its own.
	r.want = make([]map[string]string, len(r.agents))
	owner := make([]int, 0, batchSize)
	onAgent := func(i int, e *sigilv1.Entry) {
		r.want[owner[i]][e.Id] = e.SpiffeId
	}
	for j, a := range r.agents {
		r.want[j] = make(map[string]string, 2)
		batch = append(batch,
			&sigilv1.Entry{SpiffeId: groupID, ParentId: a.id, Selectors: []*sigilv1.Selector{{Type: "k8s", Value: "ns:scale"}}},
			&sigilv1.Entry{SpiffeId: fmt.Sprintf("spiffe://%s/scale/agent/%d", trustDomain, j), ParentId: a.id,
				Selectors: []*sigilv1.Selector{{Type: "k8s", Value: fmt.Sprintf("sa:own-%d", j)}}},
		)
		owner = append(owner, j, j)
		if len(batch) >= batchSize-1 {
			if err := flush(onAgent); err != nil {
				return err
			}
			owner = owner[:0]
		}
	}
	if err := flush(onAgent); err != nil {
		return err
	}
	res.TotalEntries = created
	r.group = make(map[string]string)
	return nil
}

// measure takes the live heap and the settled RSS of every server and
// stores them where at says.
func (r *run) measure(ctx context.Context, at func(*ServerFigures) *Mem) error {
	within := heapWithin(r.res.TotalEntries + r.res.Entries)
	for i, n := range r.nodes {
		heap, err := n.liveHeap(ctx, within)
		if err != nil {
			return err
		}
		rss, err := n.settledRSS(ctx, 5*time.Second)
		if err != nil {
			return err
		}
		*at(r.res.Server[i]) = Mem{RSS: rss, Heap: heap}
	}
	return nil
}

// heapWithin bounds a live-heap measurement: the server may have to
// allocate as much as it holds before it collects, and the Go runtime
// forces a collection at least every 2 minutes (a collection of a large
// heap takes tens of seconds on this kind of machine).
func heapWithin(entries int) time.Duration {
	return 2*time.Minute + 15*time.Second + time.Duration(entries/5000)*time.Second
}

// syncWithin bounds a full sync of n entries.
func syncWithin(n int) time.Duration {
	return 60*time.Second + time.Duration(n/2000)*time.Second
}

// probeSync attests the probe agent and times its full sync of every bulk
// entry, from the Sync call to the message that completes the set.
func (r *run) probeSync(ctx context.Context) error {
	p := r.probe
	if err := p.attest(ctx); err != nil {
		return fmt.Errorf("probe agent: %w", err)
	}
	// Connect first: the sync is timed, not the TLS handshake.
	if err := p.connect(ctx, 30*time.Second); err != nil {
		return fmt.Errorf("probe agent: %w", err)
	}
	t0 := time.Now()
	if err := p.sync(ctx); err != nil {
		return fmt.Errorf("probe agent: %w", err)
	}
	if err := p.waitSynced(ctx, syncWithin(r.res.Entries)); err != nil {
		return err
	}
	r.res.FullSyncSeconds = p.syncedAt.Sub(t0).Seconds()
	if err := p.checkEntries(r.bulk); err != nil {
		return fmt.Errorf("probe agent: %w", err)
	}
	p.stop()
	return nil
}

// connectAgents attests every simulated agent and opens its sync stream,
// each synced before it counts, and checks what each received.
func (r *run) connectAgents(ctx context.Context) error {
	idx := make([]int, len(r.agents))
	for i := range idx {
		idx[i] = i
	}
	start := time.Now()
	err := forEach(ctx, idx, setupWorkers, func(i int) error {
		a := r.agents[i]
		if err := a.attest(ctx); err != nil {
			return fmt.Errorf("agent %d: %w", i, err)
		}
		if err := a.sync(ctx); err != nil {
			return fmt.Errorf("agent %d: %w", i, err)
		}
		return a.waitSynced(ctx, time.Minute)
	})
	if err != nil {
		return err
	}
	r.res.ConnectSeconds = time.Since(start).Seconds()
	return r.checkAgents()
}

// checkAgents checks that every agent holds exactly the entries it is
// authorized for: its own two and those parented to the group.
func (r *run) checkAgents() error {
	for j, a := range r.agents {
		want := make(map[string]string, len(r.want[j])+len(r.group))
		for id, sid := range r.want[j] {
			want[id] = sid
		}
		for id, sid := range r.group {
			want[id] = sid
		}
		if err := a.checkEntries(want); err != nil {
			return err
		}
	}
	return nil
}

// propagation creates probes entries parented to the group, one at a
// time, and records when each reached each agent.
func (r *run) propagation(ctx context.Context) error {
	if len(r.agents) == 0 {
		return nil
	}
	var lat []time.Duration
	for k := 0; k < r.o.probes; k++ {
		sid := fmt.Sprintf("%s/probe-%d", groupID, k)
		t0 := time.Now()
		resp, err := r.lead.adminAPI.BatchCreateEntry(ctx, &sigilv1.BatchCreateEntryRequest{Entries: []*sigilv1.Entry{{
			SpiffeId: sid, ParentId: groupID, Selectors: []*sigilv1.Selector{{Type: "k8s", Value: fmt.Sprintf("sa:probe-%d", k)}},
		}}})
		if err != nil {
			return fmt.Errorf("propagation: create: %w", err)
		}
		if c := resp.Results[0].Status.GetCode(); c != 0 {
			return fmt.Errorf("propagation: create: %s", resp.Results[0].Status.GetMessage())
		}
		r.group[resp.Results[0].Entry.Id] = sid
		deadline := time.Now().Add(time.Minute)
		got := make([]time.Duration, len(r.agents))
		left := len(r.agents)
		for left > 0 {
			for i, a := range r.agents {
				if got[i] != 0 {
					continue
				}
				if t, ok := a.arrival(sid); ok {
					got[i] = max(t.Sub(t0), time.Nanosecond)
					left--
				}
			}
			if left == 0 {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("propagation: %s reached %d of %d agents within a minute", sid, len(r.agents)-left, len(r.agents))
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(10 * time.Millisecond):
			}
		}
		lat = append(lat, got...)
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	r.res.PropagationSamples = len(lat)
	r.res.PropagationP50Ms = ms(lat[len(lat)/2])
	r.res.PropagationP99Ms = ms(lat[(len(lat)*99)/100])
	r.res.PropagationMaxMs = ms(lat[len(lat)-1])
	return r.checkAgents()
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// snapshot times admin SnapshotSave on the leader, read to the end.
func (r *run) snapshot(ctx context.Context) error {
	t0 := time.Now()
	st, err := r.lead.clusterAPI.SnapshotSave(ctx, &sigilv1.SnapshotSaveRequest{})
	if err != nil {
		return fmt.Errorf("snapshot save: %w", err)
	}
	var n int64
	for i := 0; i < 1<<24; i++ {
		c, err := st.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("snapshot save: %w", err)
		}
		n += int64(len(c.Data))
	}
	r.res.SnapshotSeconds = time.Since(t0).Seconds()
	r.res.SnapshotBytes = n
	if n == 0 {
		return errors.New("snapshot save: empty snapshot")
	}
	return nil
}

// restart kills the first server (kill -9), starts it again on the same
// data and times /ready and a full sync of the probe agent over its node
// API.
func (r *run) restart(ctx context.Context) error {
	s := r.nodes[0]
	s.kill()
	t0 := time.Now()
	if err := s.start(ctx); err != nil {
		return fmt.Errorf("restart: %w", err)
	}
	within := syncWithin(r.res.Entries) + time.Minute
	if err := s.waitReady(ctx, within); err != nil {
		return fmt.Errorf("restart: %w", err)
	}
	r.res.RestartReadySeconds = time.Since(t0).Seconds()
	deadline := t0.Add(within)
	var last error
	for attempt := 0; time.Now().Before(deadline); attempt++ {
		if err := r.probe.dial(); err != nil {
			return err
		}
		err := r.probe.sync(ctx)
		if err == nil {
			err = r.probe.waitSynced(ctx, time.Until(deadline))
		}
		if err == nil {
			r.res.RestartSyncSeconds = r.probe.syncedAt.Sub(t0).Seconds()
			break
		}
		last = err
		r.probe.stop()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	if r.res.RestartSyncSeconds == 0 {
		return fmt.Errorf("restart: no full sync within %v: %v", within, last)
	}
	if err := r.probe.checkEntries(r.bulk); err != nil {
		return fmt.Errorf("restart: %w", err)
	}
	r.probe.stop()
	var err error
	r.lead, err = leader(ctx, r.nodes)
	return err
}

// deleteHalf deletes the first half of the bulk entries and measures the
// servers' memory before and after (live heap after a collection, RSS
// once it settles), then checks with a sync that the probe agent holds
// exactly the other half.
func (r *run) deleteHalf(ctx context.Context) error {
	if err := r.measure(ctx, func(f *ServerFigures) *Mem { return &f.BeforeDelete }); err != nil {
		return fmt.Errorf("memory before delete: %w", err)
	}
	half := r.bulkIDs[:len(r.bulkIDs)/2]
	for i := 0; i < len(half); i += batchSize {
		ids := half[i:min(i+batchSize, len(half))]
		resp, err := r.lead.adminAPI.BatchDeleteEntry(ctx, &sigilv1.BatchDeleteEntryRequest{Ids: ids})
		if err != nil {
			return fmt.Errorf("batch delete entry: %w", err)
		}
		for _, x := range resp.Results {
			if x.Status.GetCode() != 0 {
				return fmt.Errorf("delete entry %s: %s", x.Id, x.Status.GetMessage())
			}
		}
		for _, id := range ids {
			delete(r.bulk, id)
		}
	}
	// The server's entry change feed keeps the deleted entries' records
	// (its records of the deletions share their memory) until no entry
	// changed for raftstore.EntryFeedQuiet, then returns the memory:
	// measured after that, as a server left alone would be. (Read at
	// once, the live heap could not drop when fewer entries were deleted
	// than the feed holds, 16,384: TestScaleSmoke deletes 15,000, and
	// read 17 → 17 MiB in a CI run.)
	wait := raftstore.EntryFeedQuiet + 5*time.Second
	r.log("waiting %v for the servers' entry change feeds to drop the deletions", wait)
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(wait):
	}
	within := heapWithin(r.res.TotalEntries)
	for i, n := range r.nodes {
		// A reader may still hold the deleted records at the first
		// collection: measure again, at most 4 more collections, until
		// the live heap is below the one before.
		heap, err := n.liveHeap(ctx, within)
		for k := 0; k < 4 && err == nil && heap >= r.res.Server[i].BeforeDelete.Heap; k++ {
			heap, err = n.liveHeap(ctx, within)
		}
		if err != nil {
			return err
		}
		rss, err := n.settledRSS(ctx, 20*time.Second)
		if err != nil {
			return err
		}
		r.res.Server[i].AfterDelete = Mem{RSS: rss, Heap: heap}
		n.notePeak()
		r.res.Server[i].PeakRSS = n.peak.Load()
	}
	r.log("deleted %d bulk entries", len(half))
	if err := r.probe.dial(); err != nil {
		return err
	}
	if err := r.probe.sync(ctx); err != nil {
		return err
	}
	if err := r.probe.waitSynced(ctx, syncWithin(len(r.bulk))); err != nil {
		return err
	}
	if err := r.probe.checkEntries(r.bulk); err != nil {
		return fmt.Errorf("after deleting half: %w", err)
	}
	r.probe.stop()
	return nil
}
