package server

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/sigil-id/sigil/ca"
)

// authorityKeyManager opens the key manager of this node's CA and JWT
// signing keys (Config.KeyStore, scope ca.KeyScopeAuthorities). persist
// reports whether the keys outlive the process, and so whether the state
// of their slots is saved in DataDir.
func (s *Server) authorityKeyManager(ctx context.Context) (km ca.KeyManager, persist bool, err error) {
	km, err = s.cfg.KeyStore.OpenKeyManager(ctx, ca.KeyScopeAuthorities)
	if err != nil {
		return nil, false, fmt.Errorf("server: key manager: %w", err)
	}
	return km, s.cfg.KeyStore.Persistent(), nil
}

// identityKeyManager opens the key manager of this node's cluster
// identity CA (Config.KeyStore, scope ca.KeyScopeClusterIdentity) and
// returns where the CA's certificate is kept: DataDir/cluster/ca.pem, or
// "" when the keys do not outlive the process (the certificate is then
// not kept either).
func (s *Server) identityKeyManager(ctx context.Context) (ca.KeyManager, string, error) {
	km, err := s.cfg.KeyStore.OpenKeyManager(ctx, ca.KeyScopeClusterIdentity)
	if err != nil {
		return nil, "", fmt.Errorf("server: cluster key manager: %w", err)
	}
	if !s.cfg.KeyStore.Persistent() {
		return km, "", nil
	}
	return km, filepath.Join(s.cfg.DataDir, "cluster", "ca.pem"), nil
}
