package server

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/ca/keymanager/disk"
	"github.com/sigil-id/sigil/ca/keymanager/memory"
)

// identityKeyManager returns the key manager of this server's cluster
// identity CA and the path its certificate is kept at ("" for none): the
// disk manager under DataDir/cluster/keys and DataDir/cluster/ca.pem, or
// the memory manager, which keeps neither.
func (s *Server) identityKeyManager(context.Context) (ca.KeyManager, string, error) {
	dir := filepath.Join(s.cfg.DataDir, "cluster")
	switch s.cfg.KeyManager {
	case "memory":
		return memory.New(), "", nil
	default:
		d, err := disk.New(filepath.Join(dir, "keys"))
		if err != nil {
			return nil, "", fmt.Errorf("server: cluster key manager: %w", err)
		}
		return d, filepath.Join(dir, "ca.pem"), nil
	}
}
