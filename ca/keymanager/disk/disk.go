// Package disk is a ca.KeyManager that keeps each key as a PKCS#8 PEM file
// <dir>/<id>.key.pem (mode 0600, in a directory created with mode 0700), so
// a server's CA key survives restarts without leaving the node.
package disk

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/ca/internal/keygen"
	"github.com/sigil-id/sigil/internal/atomicfile"
)

const (
	fileSuffix = ".key.pem"
	pemType    = "PRIVATE KEY"
)

// KeyManager stores keys in a directory. It is safe for concurrent use
// within one process; keys are cached in memory after their first use.
type KeyManager struct {
	dir string

	mu    sync.Mutex
	cache map[string]crypto.Signer
}

var _ ca.KeyManager = (*KeyManager)(nil)

// New returns a KeyManager that keeps its keys in dir, creating dir with
// mode 0700 if it does not exist.
func New(dir string) (*KeyManager, error) {
	if dir == "" {
		return nil, errors.New("ca/keymanager/disk: directory is empty")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("ca/keymanager/disk: creating key directory: %w", err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("ca/keymanager/disk: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("ca/keymanager/disk: %s is not a directory", dir)
	}
	return &KeyManager{dir: dir, cache: make(map[string]crypto.Signer)}, nil
}

// path returns the file that holds (or would hold) the key named id.
func (m *KeyManager) path(id string) (string, error) {
	if err := checkID(id); err != nil {
		return "", err
	}
	return filepath.Join(m.dir, id+fileSuffix), nil
}

// GenerateKey creates the key named id, replacing any existing one, and
// writes it atomically (temporary file, fsync, rename).
func (m *KeyManager) GenerateKey(ctx context.Context, id string, kt ca.KeyType) (crypto.Signer, error) {
	path, err := m.path(id)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	k, err := keygen.Generate(kt)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("ca/keymanager/disk: encoding key %q: %w", id, err)
	}
	data := pem.EncodeToMemory(&pem.Block{Type: pemType, Bytes: der})
	clear(der)

	m.mu.Lock()
	defer m.mu.Unlock()
	err = atomicfile.WriteFile(path, data, 0o600)
	clear(data)
	if err != nil {
		return nil, fmt.Errorf("ca/keymanager/disk: writing key %q: %w", id, err)
	}
	m.cache[id] = k
	return k, nil
}

// GetKey returns the key named id, reading it from disk on first use, or an
// error wrapping ca.ErrKeyNotFound if there is no such file.
func (m *KeyManager) GetKey(ctx context.Context, id string) (crypto.Signer, error) {
	path, err := m.path(id)
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if k, ok := m.cache[id]; ok {
		return k, nil
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %q", ca.ErrKeyNotFound, id)
	}
	if err != nil {
		return nil, fmt.Errorf("ca/keymanager/disk: reading key %q: %w", id, err)
	}
	defer clear(data)
	block, rest := pem.Decode(data)
	if block == nil || block.Type != pemType || len(strings.TrimSpace(string(rest))) != 0 {
		return nil, fmt.Errorf("ca/keymanager/disk: key file %s is not a single PEM %q block", path, pemType)
	}
	defer clear(block.Bytes)
	parsed, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("ca/keymanager/disk: key file %s: %w", path, err)
	}
	k, ok := parsed.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("ca/keymanager/disk: key file %s holds a %T, not a signing key", path, parsed)
	}
	m.cache[id] = k
	return k, nil
}

// checkID refuses ids that are empty or could name a file outside the key
// directory.
func checkID(id string) error {
	switch {
	case id == "":
		return errors.New("ca/keymanager/disk: key id is empty")
	case strings.ContainsAny(id, `/\`+string(os.PathSeparator)+"\x00"),
		strings.Contains(id, ".."),
		id == ".":
		return fmt.Errorf("ca/keymanager/disk: invalid key id %q: path separators and \"..\" are not allowed", id)
	}
	return nil
}

// DeleteKey removes the key named id; a missing key is not an error.
func (m *KeyManager) DeleteKey(ctx context.Context, id string) error {
	path, err := m.path(id)
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.cache, id)
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("ca/keymanager/disk: deleting key %q: %w", id, err)
	}
	return nil
}

// Store is the disk key manager as a server opens it (ca.KeyStore): one
// directory per scope, each a KeyManager.
type Store struct {
	dirs map[ca.KeyScope]string
}

var _ ca.KeyStore = (*Store)(nil)

// NewStore returns a Store keeping the keys of each scope in dirs[scope].
// Nothing is created until OpenKeyManager. Two scopes may not share a
// directory.
func NewStore(dirs map[ca.KeyScope]string) (*Store, error) {
	seen := map[string]ca.KeyScope{}
	for scope, dir := range dirs {
		if dir == "" {
			return nil, fmt.Errorf("ca/keymanager/disk: the directory of scope %s is empty", scope)
		}
		clean := filepath.Clean(dir)
		if other, dup := seen[clean]; dup {
			return nil, fmt.Errorf("ca/keymanager/disk: scopes %s and %s share the directory %s", other, scope, dir)
		}
		seen[clean] = scope
	}
	return &Store{dirs: maps.Clone(dirs)}, nil
}

// OpenKeyManager returns a KeyManager over the scope's directory,
// creating the directory (mode 0700) if needed.
func (s *Store) OpenKeyManager(_ context.Context, scope ca.KeyScope) (ca.KeyManager, error) {
	dir, ok := s.dirs[scope]
	if !ok {
		return nil, fmt.Errorf("ca/keymanager/disk: no directory for key scope %q", scope)
	}
	return New(dir)
}

// Persistent reports true: keys are files that outlive the process.
func (s *Store) Persistent() bool { return true }

// Dir returns the directory of scope ("" if the store has none).
func (s *Store) Dir(scope ca.KeyScope) string { return s.dirs[scope] }
