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

// x509CA returns the CA that signs X.509-SVIDs now.
func (s *Server) x509CA() *ca.CA { return s.ca }

// initCA loads or creates this node's CA and publishes its certificate in
// the replicated bundle before the CA signs anything.
func (s *Server) initCA(ctx context.Context) error {
	var km ca.KeyManager
	switch s.cfg.KeyManager {
	case "memory":
		km = memory.New()
	default:
		d, err := disk.New(filepath.Join(s.cfg.DataDir, "keys"))
		if err != nil {
			return fmt.Errorf("server: key manager: %w", err)
		}
		km = d
	}
	ccfg := ca.DefaultConfig()
	ccfg.TrustDomain = s.td
	ccfg.ServerID = s.cfg.NodeName
	ccfg.KeyManager = km
	ccfg.CertPath = filepath.Join(s.cfg.DataDir, "ca.pem")
	ccfg.CATTL = s.cfg.CATTL
	ccfg.X509SVIDTTL = s.cfg.X509SVIDTTL
	ccfg.Clock = s.cfg.Clock
	c, err := ca.New(ctx, ccfg)
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	cert := c.Certificate()
	_, err = s.apply(ctx, &sigilv1.Command{Op: &sigilv1.Command_PutX509Authority{PutX509Authority: &sigilv1.PutX509Authority{
		TrustDomain: s.td.Name(),
		Authority: &sigilv1.X509Authority{
			Certificate: cert.Raw,
			ServerId:    s.cfg.NodeName,
			NotAfter:    cert.NotAfter.Unix(),
		},
	}}})
	if err != nil {
		return fmt.Errorf("server: publishing CA certificate: %w", err)
	}
	b, err := s.currentBundle()
	if err != nil {
		return err
	}
	if !b.HasX509Authority(cert) {
		return errors.New("server: CA certificate is not in the bundle after publishing it")
	}
	s.ca = c
	s.log.Info("CA ready", zap.String("ca_serial", fmt.Sprintf("%x", cert.SerialNumber)), zap.Time("ca_not_after", cert.NotAfter))
	return nil
}
