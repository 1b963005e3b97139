// Package memory is a ca.KeyManager that keeps keys in process memory only:
// they are lost when the process exits. It suits tests and `sigil dev`.
package memory

import (
	"context"
	"crypto"
	"fmt"
	"sync"

	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/ca/internal/keygen"
)

// KeyManager holds keys in memory. It is safe for concurrent use.
type KeyManager struct {
	mu   sync.RWMutex
	keys map[string]crypto.Signer
}

var _ ca.KeyManager = (*KeyManager)(nil)

// New returns an empty KeyManager.
func New() *KeyManager {
	return &KeyManager{keys: make(map[string]crypto.Signer)}
}

// GenerateKey creates (replacing any existing) the key named id.
func (m *KeyManager) GenerateKey(ctx context.Context, id string, kt ca.KeyType) (crypto.Signer, error) {
	if id == "" {
		return nil, fmt.Errorf("ca/keymanager/memory: key id is empty")
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	k, err := keygen.Generate(kt)
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	m.keys[id] = k
	m.mu.Unlock()
	return k, nil
}

// GetKey returns the key named id, or an error wrapping ca.ErrKeyNotFound.
func (m *KeyManager) GetKey(ctx context.Context, id string) (crypto.Signer, error) {
	m.mu.RLock()
	k, ok := m.keys[id]
	m.mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("%w: %q", ca.ErrKeyNotFound, id)
	}
	return k, nil
}

// DeleteKey forgets the key named id; a missing key is not an error.
func (m *KeyManager) DeleteKey(ctx context.Context, id string) error {
	m.mu.Lock()
	delete(m.keys, id)
	m.mu.Unlock()
	return nil
}

// Store is the memory key manager as a server opens it (ca.KeyStore).
// Each OpenKeyManager returns a new, empty KeyManager: nothing outlives a
// run of the server.
type Store struct{}

var _ ca.KeyStore = Store{}

// NewStore returns a Store.
func NewStore() Store { return Store{} }

// OpenKeyManager returns a new, empty KeyManager for scope.
func (Store) OpenKeyManager(ctx context.Context, scope ca.KeyScope) (ca.KeyManager, error) {
	if scope == "" {
		return nil, fmt.Errorf("ca/keymanager/memory: key scope is empty")
	}
	return New(), nil
}

// Persistent reports false: the keys die with the process.
func (Store) Persistent() bool { return false }
