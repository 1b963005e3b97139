package cluster

import (
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/sigil-id/sigil/internal/atomicfile"
	"github.com/sigil-id/sigil/internal/clusterpb"
	"github.com/sigil-id/sigil/internal/trustbundle"
	"github.com/sigil-id/sigil/raftstore"
)

// Run starts the background work of a member, until ctx ends: saving the
// peer bundle to Config.Dir whenever it changes, and probing the other
// members' health (every Config.HealthInterval, and at once when a peer
// connection is re-established or a server joins through this one).
// SetStore must have been called.
func (c *Cluster) Run(ctx context.Context) {
	go c.bundleLoop(ctx)
	go c.healthLoop(ctx)
}

// bundleLoop saves the peer bundle to disk whenever it changes.
func (c *Cluster) bundleLoop(ctx context.Context) {
	var seq uint64
	first := true
	store := c.store.Load()
	for {
		changed := store.Changed()
		if pb, err := store.Read().PeerBundle(c.cfg.TrustDomain.Name()); err == nil && (first || pb.SequenceNumber != seq) {
			var certs []*x509.Certificate
			for _, a := range pb.X509Authorities {
				if cert, err := x509.ParseCertificate(a.Certificate); err == nil {
					certs = append(certs, cert)
				}
			}
			if err := writePEMCerts(c.bundlePath(), certs); err != nil {
				c.log.Warn("saving cluster bundle", zap.Error(err))
			} else {
				seq, first = pb.SequenceNumber, false
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-c.clock.After(30 * time.Second): // retries a failed save
		}
	}
}

// healthLoop asks every other member for its status.
func (c *Cluster) healthLoop(ctx context.Context) {
	store := c.store.Load()
	for {
		if members, err := store.Members(); err == nil {
			c.probeAll(ctx, members)
		}
		select {
		case <-ctx.Done():
			return
		case <-c.clock.After(c.cfg.HealthInterval):
		case <-c.probeNow:
		}
	}
}

// probeAll probes every member but this one, forgets the health of
// servers that left, and closes pooled connections to addresses that are
// no longer a member's (a member that came back at a new address is
// reached on a new connection, the old one does not linger).
func (c *Cluster) probeAll(ctx context.Context, members []raftstore.Member) {
	keep := map[string]bool{}
	ids := map[string]bool{}
	var wg sync.WaitGroup
	for _, m := range members {
		ids[m.ID] = true
		keep[m.Address] = true
		if m.ID == c.cfg.NodeName {
			continue
		}
		wg.Add(1)
		go func(m raftstore.Member) {
			defer wg.Done()
			c.probe(ctx, m)
		}(m)
	}
	wg.Wait()
	if len(members) > 0 {
		c.dropConns(keep)
		c.healthMu.Lock()
		for id := range c.health {
			if !ids[id] {
				delete(c.health, id)
			}
		}
		c.healthMu.Unlock()
	}
	c.metrics.ObserveMembers(c.cfg.NodeName, c.store.Load().LastIndex(), members, c.MemberHealth)
}

func (c *Cluster) probe(ctx context.Context, m raftstore.Member) {
	h := MemberHealth{At: c.clock.Now()}
	cc, err := c.Conn(m.Address)
	if err == nil {
		pctx, cancel := context.WithTimeout(ctx, c.cfg.HealthInterval)
		var st *clusterpb.StatusResponse
		st, err = clusterpb.NewClusterClient(cc).Status(pctx, &clusterpb.StatusRequest{})
		cancel()
		h.Status = st
	}
	if err != nil {
		h.LastErr = err.Error()
	} else {
		h.OK = true
	}
	c.healthMu.Lock()
	c.health[m.ID] = h
	c.healthMu.Unlock()
}

// MemberHealth returns the outcome of the last probe of member id.
func (c *Cluster) MemberHealth(id string) (MemberHealth, bool) {
	c.healthMu.Lock()
	defer c.healthMu.Unlock()
	h, ok := c.health[id]
	return h, ok
}

// readPEMCerts reads the certificates saved at path; a damaged file is an
// error, not an empty bundle.
func readPEMCerts(path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	certs, err := trustbundle.ParsePEM(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return certs, nil
}

// writePEMCerts saves certs to path atomically; the bundle loop and a
// join may both write it.
func writePEMCerts(path string, certs []*x509.Certificate) error {
	return atomicfile.WriteFile(path, trustbundle.EncodePEM(certs), 0o644)
}
