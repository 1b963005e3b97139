package server

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/hashicorp/raft"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/audit"
	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/cluster"
	"github.com/sigil-id/sigil/internal/storepb"
	"github.com/sigil-id/sigil/raftstore"
)

// authorities are this node's signing keys: X.509 CA keys and JWT keys,
// each kind in prepared → active → retired slots (ca.Manager).
type authorities struct {
	x509 *ca.Manager
	jwt  *ca.Manager
	// kick wakes the rotation loop after an admin change; buffered 1.
	kick chan struct{}
}

// x509CA returns the CA that signs X.509-SVIDs now.
func (s *Server) x509CA() *ca.CA { return s.auth.x509.X509CA() }

// jwtSigner returns the key that signs JWT-SVIDs now.
func (s *Server) jwtSigner() *ca.JWTSigner { return s.auth.jwt.JWTSigner() }

// initCA loads this node's key slots (or creates the first keys) and
// brings them up to date with the schedule: every key is published in the
// replicated bundle, and that write committed, before it signs anything
// (a transient failure of that write is retried: startKeys).
func (s *Server) initCA(ctx context.Context) error {
	// Keys that die with the process take their slot state with them.
	km, persist, err := s.authorityKeyManager(ctx)
	if err != nil {
		return err
	}
	base := ca.DefaultConfig()
	base.TrustDomain = s.td
	base.ServerID = s.cfg.NodeName
	base.KeyManager = km
	base.CATTL = s.cfg.CATTL
	base.X509SVIDTTL = s.cfg.X509SVIDTTL
	base.Clock = s.cfg.Clock
	base.KeyObserver = s.keys
	base.Upstream = s.cfg.UpstreamAuthority
	base.AllowIntermediates = s.cfg.AllowDownstream
	base.X509SVIDTemplate, base.CATemplate = s.cfg.X509SVIDTemplate, s.cfg.CATemplate
	pub := &bundlePublisher{s: s}
	managers := make(map[ca.SlotKind]*ca.Manager, 2)
	for _, kind := range []ca.SlotKind{ca.KindX509, ca.KindJWT} {
		mcfg := ca.ManagerConfig{
			Kind:        kind,
			CA:          base,
			JWTSVIDTTL:  s.cfg.JWTSVIDTTL,
			Propagation: s.propagationDelay(),
			Publisher:   pub,
		}
		if persist {
			mcfg.StatePath = filepath.Join(s.cfg.DataDir, "authorities-"+string(kind)+".json")
		}
		m, err := ca.NewManager(ctx, mcfg)
		if err != nil {
			return fmt.Errorf("server: %w", err)
		}
		for _, n := range m.LoadNotes() {
			s.log.Warn("key slot state", zap.String("note", n))
		}
		managers[kind] = m
	}
	s.auth = &authorities{x509: managers[ca.KindX509], jwt: managers[ca.KindJWT], kick: make(chan struct{}, 1)}
	if err := s.startKeys(ctx); err != nil {
		return err
	}
	cert := s.x509CA().Certificate()
	s.log.Info("CA ready", zap.String("ca_serial", fmt.Sprintf("%x", cert.SerialNumber)),
		zap.String("authority_id", fmt.Sprintf("%x", cert.SubjectKeyId)), zap.Time("ca_not_after", cert.NotAfter),
		zap.String("jwt_key_id", s.jwtSigner().KeyID()))
	return nil
}

// Bounds of startKeys.
const (
	// startKeyRounds bounds the rotation rounds a starting server runs
	// to get its keys active and published.
	startKeyRounds = 8
	// startKeyRoundFor bounds one round (wall clock): a write to a
	// leader that does not answer counts as a transient failure.
	startKeyRoundFor = 30 * time.Second
	// startKeysFor bounds all the rounds together (wall clock).
	startKeysFor = 2 * time.Minute
)

// startKeys runs the key schedule at start until both kinds of keys have
// an active key, published in the replicated bundle. Publishing is one
// Raft write per key (forwarded to the leader on a follower), and a
// restarted server often meets a cluster in motion: no leader yet, a
// leadership lost or changing, a leader unreachable or too busy to answer
// in time. Such transient failures are retried, after waiting for a
// leader, at most startKeyRounds rounds and startKeysFor in all; any
// other failure (a write the state machine refuses, a key that cannot be
// made), or the bounds, end the start with an error naming the last
// cause.
//
// A retry writes the same authority again (the Manager publishes the slot
// it prepared, Plan's ActPublish; it does not make a new key), and that is
// safe because publishing is idempotent: PutX509Authority replaces the
// authority with the same server ID and certificate, PutJWTAuthority the
// one with the same key ID (a taint is kept either way), so a write that
// committed although its caller saw an error (a timeout, a leadership
// lost after the commit) leaves the bundle's authorities as a single
// write would; only its sequence number moves again.
//
// The bounds are on the wall clock, not on the injectable clock: what is
// awaited (an election, a busy leader) runs on Raft's timers, and the
// injectable clock only schedules keys; no round sleeps on it.
func (s *Server) startKeys(ctx context.Context) error {
	start := time.Now()
	bctx, cancel := context.WithTimeout(ctx, startKeysFor)
	defer cancel()
	for round := 1; ; round++ {
		rctx, rcancel := context.WithTimeout(bctx, startKeyRoundFor)
		_, failed := s.rotate(rctx)
		rcancel()
		missing := ""
		switch {
		case s.x509CA() == nil:
			missing = "no active CA key"
		case s.jwtSigner() == nil:
			missing = "no active JWT key"
		default:
			if round > 1 {
				s.log.Info("keys published after transient failures", zap.Int("rounds", round))
			}
			return nil
		}
		cause := errors.Join(failed...)
		if cause == nil {
			cause = errors.New("the key schedule made no key active")
		}
		if ctx.Err() != nil {
			return fmt.Errorf("server: %s: start canceled: %w", missing, cause)
		}
		if !allTransient(failed) {
			return fmt.Errorf("server: %s: %w", missing, cause)
		}
		if round >= startKeyRounds || bctx.Err() != nil {
			return fmt.Errorf("server: %s after %d rounds in %s (transient failures; the last): %w",
				missing, round, time.Since(start).Round(time.Millisecond), cause)
		}
		s.log.Warn("publishing this server's keys failed; retrying once there is a leader",
			zap.Int("round", round), zap.Error(cause))
		if err := s.store.WaitForLeader(bctx); err != nil {
			return fmt.Errorf("server: %s after %d rounds in %s: %w (the last cause: %w)",
				missing, round, time.Since(start).Round(time.Millisecond), err, cause)
		}
	}
}

// allTransient reports whether errs is not empty and each error is a
// replicated write's failure that may pass without anything changing
// here: no leader yet or a leadership lost or changing, the leader
// unreachable, a write that timed out or was aborted. A command the state
// machine refused (*raftstore.CommandError) is not transient: the same
// write is refused again.
func allTransient(errs []error) bool {
	for _, err := range errs {
		if !transientWrite(err) {
			return false
		}
	}
	return len(errs) > 0
}

func transientWrite(err error) bool {
	if ce := (*raftstore.CommandError)(nil); errors.As(err, &ce) {
		return false
	}
	if errors.Is(err, ca.ErrUpstream) {
		// Not a write: the upstream authority's failures have their own
		// backoff (ca.Manager), on the injectable clock.
		return false
	}
	for _, t := range []error{raft.ErrNotLeader, raft.ErrLeadershipLost, raft.ErrLeadershipTransferInProgress,
		raft.ErrEnqueueTimeout, raft.ErrAbortedByRestore, cluster.ErrNoLeader, context.DeadlineExceeded} {
		if errors.Is(err, t) {
			return true
		}
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.Aborted, codes.DeadlineExceeded:
		// The leader unreachable, or the forwarded write aborted by a
		// leadership change or timed out (cluster.Cluster.Apply).
		return true
	case codes.FailedPrecondition:
		// A forwarded write refused before the log by a server that is no
		// longer the leader: refusals of the state machine came back as a
		// *raftstore.CommandError above.
		return true
	}
	return false
}

// bundlePublisher writes this node's authorities to the replicated bundle.
// Publish is idempotent (see startKeys).
type bundlePublisher struct{ s *Server }

// Publish adds or replaces sl's authority in the bundle; publishing the
// same slot again leaves the bundle's authorities as they were.
func (p *bundlePublisher) Publish(ctx context.Context, sl ca.Slot) error {
	s := p.s
	var cmd *storepb.Command
	switch sl.Kind {
	case ca.KindX509:
		cmd = &storepb.Command{Op: &storepb.Command_PutX509Authority{PutX509Authority: &storepb.PutX509Authority{
			TrustDomain: s.td.Name(),
			Authority: &sigilv1.X509Authority{
				Certificate:  sl.Certificate,
				ServerId:     s.cfg.NodeName,
				NotAfter:     sl.NotAfter.Unix(),
				Tainted:      sl.Tainted,
				Intermediate: sl.Upstream(),
			},
		}}}
	case ca.KindJWT:
		cmd = &storepb.Command{Op: &storepb.Command_PutJwtAuthority{PutJwtAuthority: &storepb.PutJWTAuthority{
			TrustDomain: s.td.Name(),
			Authority: &sigilv1.JWTAuthority{
				KeyId:     sl.ID,
				PublicKey: sl.PublicKey,
				ExpiresAt: sl.NotAfter.Unix(),
				ServerId:  s.cfg.NodeName,
				Tainted:   sl.Tainted,
			},
		}}}
	default:
		return fmt.Errorf("unknown authority kind %q", sl.Kind)
	}
	_, err := s.apply(ctx, cmd)
	return err
}

// PublishUpstreamRoots adds the roots of the upstream authority to the
// bundle (ca.RootPublisher).
func (p *bundlePublisher) PublishUpstreamRoots(ctx context.Context, roots []*x509.Certificate) error {
	return p.s.setUpstreamRoots(ctx, roots, false)
}

// setUpstreamRoots records roots as the bundle's upstream roots: added to
// those there, or replacing them.
func (s *Server) setUpstreamRoots(ctx context.Context, roots []*x509.Certificate, replace bool) error {
	ders := make([][]byte, len(roots))
	for i, c := range roots {
		ders[i] = c.Raw
	}
	_, err := s.apply(ctx, &storepb.Command{Op: &storepb.Command_SetUpstreamRoots{SetUpstreamRoots: &storepb.SetUpstreamRoots{
		TrustDomain: s.td.Name(), Certificates: ders, Replace: replace,
	}}})
	return err
}

func (p *bundlePublisher) Unpublish(ctx context.Context, sl ca.Slot) error {
	s := p.s
	rm := &storepb.RemoveAuthority{TrustDomain: s.td.Name()}
	if sl.Kind == ca.KindX509 {
		rm.X509Certificate = sl.Certificate
	} else {
		rm.JwtKeyId = sl.ID
	}
	_, err := s.apply(ctx, &storepb.Command{Op: &storepb.Command_RemoveAuthority{RemoveAuthority: rm}})
	return err
}

// DefaultRemovedServerGrace is the grace period of a removed server's keys
// when none is configured: twice the JWT-SVID lifetime, at least 5
// minutes. Agents replace what a tainted key signed within a second when
// they are connected; the rest covers JWT-SVIDs the removed server signed
// just before (they live jwtTTL and cannot be re-minted under the
// holder's feet) and agents that were briefly disconnected.
func DefaultRemovedServerGrace(jwtTTL time.Duration) time.Duration {
	return max(2*jwtTTL, 5*time.Minute)
}

// removeMemberAuthorities is the first step of removing a server: its CA
// and JWT keys are tainted cluster-wide (agents replace at once what they
// signed, from other servers' keys, which every bundle holds already), its
// cluster identity CA is revoked, and no authority of it is accepted any
// more. The caller then takes it out of the Raft configuration;
// finishRetirements revokes its keys after the grace period.
func (s *Server) removeMemberAuthorities(ctx context.Context, node string) error {
	_, err := s.apply(ctx, &storepb.Command{Op: &storepb.Command_RetireServer{RetireServer: &storepb.RetireServer{
		TrustDomain: s.td.Name(), ServerId: node,
	}}})
	if err != nil {
		return fmt.Errorf("server: tainting the authorities of %s: %w", node, err)
	}
	return nil
}

// finishRetirements revokes, on the leader, the authorities of every
// server removed at least RemovedServerGrace ago: they leave the bundle
// for good. It returns when the next one is due (zero when none is).
func (s *Server) finishRetirements(ctx context.Context) time.Time {
	if !s.store.IsLeader() {
		return time.Time{}
	}
	var next time.Time
	now := s.cfg.Clock.Now()
	for _, rs := range s.store.Read().RemovedServers() {
		due := time.Unix(rs.RemovedAt, 0).Add(s.cfg.RemovedServerGrace)
		if now.Before(due) {
			if next.IsZero() || due.Before(next) {
				next = due
			}
			continue
		}
		_, err := s.apply(ctx, &storepb.Command{Op: &storepb.Command_RetireServer{RetireServer: &storepb.RetireServer{
			TrustDomain: s.td.Name(), ServerId: rs.ServerId, Revoke: true,
		}}})
		if ce := (*raftstore.CommandError)(nil); errors.As(err, &ce) && ce.Code == codes.FailedPrecondition {
			continue // revoked meanwhile by another call (a previous leader)
		}
		if err != nil {
			s.log.Warn("revoking the authorities of a removed server", zap.String("node_name", rs.ServerId), zap.Error(err))
			retry := now.Add(5 * time.Second)
			if next.IsZero() || retry.Before(next) {
				next = retry
			}
			continue
		}
		s.audit(audit.Event{What: "removed_server_authorities_revoked", Subject: rs.ServerId,
			Message: "authorities of a removed server revoked: they left the bundle",
			Fields:  []audit.Field{audit.String("node_name", rs.ServerId), audit.Duration("grace", s.cfg.RemovedServerGrace)}})
	}
	return next
}

// adoptClusterChanges brings this server's key slots in line with
// cluster-wide decisions taken anywhere: a key tainted in the bundle is
// tainted here too (so that it is not published again untainted and an
// active one is succeeded), and a revoked key is forgotten (its slot and
// private key dropped; an active one is replaced by the Tick that
// follows). It reports whether anything changed.
func (s *Server) adoptClusterChanges(ctx context.Context) bool {
	r := s.store.Read()
	pb, err := r.PeerBundle(s.td.Name())
	if err != nil {
		return false
	}
	tainted := map[string]bool{}
	for _, a := range pb.X509Authorities {
		if a.ServerId == s.cfg.NodeName && a.Tainted {
			if c, err := x509.ParseCertificate(a.Certificate); err == nil {
				tainted["x509/"+raftstore.X509AuthorityID(c)] = true
			}
		}
	}
	for _, a := range pb.JwtAuthorities {
		if a.ServerId == s.cfg.NodeName && a.Tainted {
			tainted["jwt/"+a.KeyId] = true
		}
	}
	changed := false
	for _, m := range []*ca.Manager{s.auth.x509, s.auth.jwt} {
		for _, sl := range m.Slots() {
			kind := string(sl.Kind)
			switch {
			case !sl.PublishedAt.IsZero() && r.IsRevoked(kind, sl.ID):
				if _, err := m.Forget(ctx, sl.ID); err != nil {
					s.log.Error("forgetting a revoked key", zap.String("authority_id", sl.ID), zap.Error(err))
					continue
				}
				changed = true
				s.audit(audit.Event{What: "authority_revoked_adopted", Subject: sl.ID, Message: "own key revoked cluster-wide: dropped",
					Fields: []audit.Field{audit.String("kind", kind), audit.String("authority_id", sl.ID), audit.String("state", string(sl.State))}})
			case !sl.Tainted && tainted[kind+"/"+sl.ID]:
				if _, ok, err := m.AdoptTaint(sl.ID); err != nil {
					s.log.Error("recording a cluster-wide taint", zap.String("authority_id", sl.ID), zap.Error(err))
					continue
				} else if ok {
					changed = true
					s.audit(audit.Event{What: "authority_taint_adopted", Subject: sl.ID, Message: "own key tainted cluster-wide",
						Fields: []audit.Field{audit.String("kind", kind), audit.String("authority_id", sl.ID), audit.String("state", string(sl.State))}})
				}
			}
		}
	}
	return changed
}

// authorityChanges returns a channel that fires when the bundle or the
// revocation or removal records change (a taint, revoke or removal decided
// on another server, which this server may have to adopt), or ctx ends.
func (s *Server) authorityChanges(ctx context.Context) <-chan error {
	r := s.store.Read()
	_, _ = r.PeerBundle(s.td.Name())
	r.RevokedAuthorities()
	r.RemovedServers()
	return r.WatchSet().WatchCh(ctx)
}
