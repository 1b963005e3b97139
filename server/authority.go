package server

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"go.uber.org/zap"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/ca/keymanager/disk"
	"github.com/sigil-id/sigil/ca/keymanager/memory"
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
// replicated bundle, and that write committed, before it signs anything.
func (s *Server) initCA(ctx context.Context) error {
	var km ca.KeyManager
	persist := true
	switch s.cfg.KeyManager {
	case "memory":
		km = memory.New()
		persist = false // the keys die with the process; so does their state
	default:
		d, err := disk.New(filepath.Join(s.cfg.DataDir, "keys"))
		if err != nil {
			return fmt.Errorf("server: key manager: %w", err)
		}
		km = d
	}
	base := ca.DefaultConfig()
	base.TrustDomain = s.td
	base.ServerID = s.cfg.NodeName
	base.KeyManager = km
	base.CATTL = s.cfg.CATTL
	base.X509SVIDTTL = s.cfg.X509SVIDTTL
	base.Clock = s.cfg.Clock
	pub := &bundlePublisher{s: s}
	managers := make(map[ca.SlotKind]*ca.Manager, 2)
	for _, kind := range []ca.SlotKind{ca.KindX509, ca.KindJWT} {
		mcfg := ca.ManagerConfig{
			Kind:        kind,
			CA:          base,
			JWTSVIDTTL:  s.cfg.JWTSVIDTTL,
			Propagation: s.cfg.CAPropagationDelay,
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
	s.rotateOnce(ctx)
	if s.x509CA() == nil {
		return errors.New("server: no active CA key: publishing it in the bundle failed (see the log)")
	}
	if s.jwtSigner() == nil {
		return errors.New("server: no active JWT key: publishing it in the bundle failed (see the log)")
	}
	cert := s.x509CA().Certificate()
	s.log.Info("CA ready", zap.String("ca_serial", fmt.Sprintf("%x", cert.SerialNumber)),
		zap.String("authority_id", fmt.Sprintf("%x", cert.SubjectKeyId)), zap.Time("ca_not_after", cert.NotAfter),
		zap.String("jwt_key_id", s.jwtSigner().KeyID()))
	return nil
}

// bundlePublisher writes this node's authorities to the replicated bundle.
type bundlePublisher struct{ s *Server }

func (p *bundlePublisher) Publish(ctx context.Context, sl ca.Slot) error {
	s := p.s
	var cmd *sigilv1.Command
	switch sl.Kind {
	case ca.KindX509:
		cmd = &sigilv1.Command{Op: &sigilv1.Command_PutX509Authority{PutX509Authority: &sigilv1.PutX509Authority{
			TrustDomain: s.td.Name(),
			Authority: &sigilv1.X509Authority{
				Certificate: sl.Certificate,
				ServerId:    s.cfg.NodeName,
				NotAfter:    sl.NotAfter.Unix(),
				Tainted:     sl.Tainted,
			},
		}}}
	case ca.KindJWT:
		cmd = &sigilv1.Command{Op: &sigilv1.Command_PutJwtAuthority{PutJwtAuthority: &sigilv1.PutJWTAuthority{
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

func (p *bundlePublisher) Unpublish(ctx context.Context, sl ca.Slot) error {
	s := p.s
	rm := &sigilv1.RemoveAuthority{TrustDomain: s.td.Name()}
	if sl.Kind == ca.KindX509 {
		rm.X509Certificate = sl.Certificate
	} else {
		rm.JwtKeyId = sl.ID
	}
	_, err := s.apply(ctx, &sigilv1.Command{Op: &sigilv1.Command_RemoveAuthority{RemoveAuthority: rm}})
	return err
}
