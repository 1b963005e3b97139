package server

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/audit"
	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/internal/storepb"
	"github.com/sigil-id/sigil/raftstore"
)

// maxRotationSleep bounds the rotation loop's sleep, so that a jump of the
// wall clock or an authority another server left behind is noticed soon.
const maxRotationSleep = 30 * time.Second

// rotationLoop runs the key schedule of both kinds of keys and prunes
// expired authorities from the bundle, until ctx is done.
func (s *Server) rotationLoop(ctx context.Context) {
	for {
		next := s.rotateOnce(ctx)
		now := s.cfg.Clock.Now()
		d := maxRotationSleep
		if !next.IsZero() {
			d = min(max(next.Sub(now), 0), maxRotationSleep)
		}
		wctx, cancel := context.WithCancel(ctx)
		select {
		case <-ctx.Done():
			cancel()
			return
		case <-s.auth.kick:
		case <-s.authorityChanges(wctx):
		case <-s.cfg.Clock.After(d):
		}
		cancel()
	}
}

// kickRotation wakes the rotation loop.
func (s *Server) kickRotation() {
	select {
	case s.auth.kick <- struct{}{}:
	default:
	}
}

// rotateOnce applies every due rotation step and returns when the next one
// is due.
func (s *Server) rotateOnce(ctx context.Context) time.Time {
	next, _ := s.rotate(ctx)
	return next
}

// rotate is rotateOnce that also returns the errors of the rotation steps
// that failed: at most one per kind of key, since a Manager's Tick stops
// at its first failed step (the start path decides on them: startKeys).
func (s *Server) rotate(ctx context.Context) (next time.Time, failed []error) {
	earliest := func(t time.Time) {
		if !t.IsZero() && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	// Taints and revocations of this server's keys decided cluster-wide
	// first, so that the Tick below replaces a revoked active key at once.
	s.adoptClusterChanges(ctx)
	for _, m := range []*ca.Manager{s.auth.x509, s.auth.jwt} {
		events, n := m.Tick(ctx)
		earliest(n)
		activated := false
		for _, ev := range events {
			s.logRotation(ev)
			if ev.Err != nil {
				failed = append(failed, ev.Err)
			}
			if ev.Err == nil && ev.Action == ca.ActActivate {
				activated = true
			}
			if m.Kind() == ca.KindX509 && ev.Action == ca.ActPrepare && s.cfg.UpstreamAuthority != nil {
				switch {
				case errors.Is(ev.Err, ca.ErrUpstream):
					s.upstream.mintFailed(s.cfg.Clock.Now(), ev.Err)
				case ev.Err == nil:
					s.upstream.mintOK()
				}
			}
		}
		if activated && m.Kind() == ca.KindX509 && s.svid.Load() != nil {
			// The node API's own certificate moves to the new key too, so
			// that revoking the old one never cuts agents off.
			if err := s.rotateServerSVID(ctx); err != nil {
				s.log.Error("server SVID rotation after CA activation failed", zap.Error(err))
			}
		}
	}
	earliest(s.republishAndPrune(ctx))
	earliest(s.finishRetirements(ctx))
	s.mirrorUpstreamRoots(ctx)
	return next, failed
}

// mirrorUpstreamRoots makes the bundle's upstream roots, on the leader,
// those the upstream authority has now: a root it added (its own
// rotation) is trusted before anything chains to it, one it dropped
// leaves the bundle. The rotation loop calls it at least every
// maxRotationSleep. The store refuses to remove every root while a CA
// certificate chained to them is in the bundle.
func (s *Server) mirrorUpstreamRoots(ctx context.Context) {
	if s.cfg.UpstreamAuthority == nil || !s.store.IsLeader() {
		return
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	roots, err := s.cfg.UpstreamAuthority.Roots(rctx)
	cancel()
	if err == nil && len(roots) == 0 {
		err = errors.New("the upstream authority has no roots")
	}
	if err == nil && len(roots) > raftstore.MaxUpstreamRoots {
		err = fmt.Errorf("the upstream authority has %d roots (at most %d)", len(roots), raftstore.MaxUpstreamRoots)
	}
	if err != nil {
		s.upstream.rootsFailed(s.cfg.Clock.Now(), err)
		s.log.Warn("reading the upstream authority's roots", zap.Error(err))
		return
	}
	s.upstream.rootsOK()
	pb, err := s.store.Read().PeerBundle(s.td.Name())
	if err == nil && sameUpstreamRoots(pb, roots) {
		return
	}
	if err := s.setUpstreamRoots(ctx, roots, true); err != nil {
		s.log.Warn("recording the upstream authority's roots", zap.Error(err))
		return
	}
	s.audit(audit.Event{What: "upstream_roots_updated", Who: s.id.String(), Subject: s.td.Name(),
		Message: "the bundle's upstream roots follow the upstream authority", Fields: []audit.Field{audit.Int("roots", len(roots))}})
}

// sameUpstreamRoots reports whether pb's upstream roots are exactly roots.
func sameUpstreamRoots(pb *sigilv1.Bundle, roots []*x509.Certificate) bool {
	n := 0
	for _, a := range pb.GetX509Authorities() {
		if !a.Upstream {
			continue
		}
		n++
		found := false
		for _, r := range roots {
			found = found || bytes.Equal(r.Raw, a.Certificate)
		}
		if !found {
			return false
		}
	}
	return n == len(roots)
}

func (s *Server) logRotation(ev ca.Event) {
	e := audit.Event{What: "authority_" + string(ev.Action), Who: s.id.String(), Subject: ev.Slot.ID, Message: "authority " + string(ev.Action),
		Fields: []audit.Field{
			audit.String("kind", string(ev.Slot.Kind)),
			audit.Int("slot", ev.Slot.Seq),
			audit.String("authority_id", ev.Slot.ID),
			audit.String("state", string(ev.Slot.State)),
			audit.Time("not_after", ev.Slot.NotAfter),
		}}
	if ev.Err != nil {
		e.What, e.Message, e.Outcome = "authority_rotation_failed", "authority rotation step failed", audit.Failure
		e.Fields = append(e.Fields, audit.String("action", string(ev.Action)), audit.Err(ev.Err))
	}
	s.audit(e)
}

// republishAndPrune puts back this node's published keys if the bundle
// lost them (a restored or rebuilt store), and removes every expired
// authority, of any server, with a PruneBundle command whose outcome is
// decided by its timestamp. It returns when the next authority expires.
func (s *Server) republishAndPrune(ctx context.Context) time.Time {
	pb, err := s.store.Read().Bundle(s.td.Name())
	if err != nil {
		s.log.Warn("reading bundle for pruning", zap.Error(err))
		return time.Time{}
	}
	pub := &bundlePublisher{s: s}
	for _, m := range []*ca.Manager{s.auth.x509, s.auth.jwt} {
		for _, sl := range m.Slots() {
			if sl.PublishedAt.IsZero() || inBundle(pb, sl) {
				continue
			}
			s.log.Warn("authority missing from the bundle; publishing it again",
				zap.String("kind", string(sl.Kind)), zap.String("authority_id", sl.ID))
			if err := pub.Publish(ctx, sl); err != nil {
				s.log.Error("republishing authority", zap.String("authority_id", sl.ID), zap.Error(err))
			}
		}
	}
	now := s.cfg.Clock.Now().Unix()
	var next int64
	expired := false
	note := func(notAfter int64) {
		if notAfter <= now {
			expired = true
		} else if next == 0 || notAfter < next {
			next = notAfter
		}
	}
	for _, a := range pb.GetX509Authorities() {
		note(a.NotAfter)
	}
	for _, a := range pb.GetX509Intermediates() {
		note(a.NotAfter)
	}
	for _, a := range pb.GetJwtAuthorities() {
		note(a.ExpiresAt)
	}
	if expired {
		_, err := s.apply(ctx, &storepb.Command{Op: &storepb.Command_PruneBundle{PruneBundle: &storepb.PruneBundle{TrustDomain: s.td.Name()}}})
		if err != nil {
			s.log.Warn("pruning expired authorities from the bundle", zap.Error(err))
			return s.cfg.Clock.Now().Add(5 * time.Second)
		}
		s.audit(audit.Event{What: "bundle_pruned", Who: s.id.String(), Subject: s.td.Name(), Message: "pruned expired authorities from the bundle"})
	}
	if next == 0 {
		return time.Time{}
	}
	return time.Unix(next, 0)
}

func inBundle(pb *sigilv1.Bundle, sl ca.Slot) bool {
	if sl.Kind == ca.KindX509 {
		for _, list := range [][]*sigilv1.X509Authority{pb.GetX509Authorities(), pb.GetX509Intermediates()} {
			for _, a := range list {
				if bytes.Equal(a.Certificate, sl.Certificate) && a.Tainted == sl.Tainted {
					return true
				}
			}
		}
		return false
	}
	for _, a := range pb.GetJwtAuthorities() {
		if a.KeyId == sl.ID && a.Tainted == sl.Tainted {
			return true
		}
	}
	return false
}
