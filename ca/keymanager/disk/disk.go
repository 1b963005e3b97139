// Package disk is a ca.KeyManager that keeps each key as a PKCS#8 PEM file
// <dir>/<id>.key.pem (mode 0600, in a directory created with mode 0700), so
// a server's CA key survives restarts without leaving the node.
//
// # Encryption at rest
//
// With a passphrase (WithPassphrase; in configuration passphrase_file or
// passphrase_env, never inline), each key file is an "ENCRYPTED PRIVATE
// KEY" PEM block: PKCS#8 encrypted with PBES2 as go.step.sm/crypto/pemutil
// writes it, the key derived from the passphrase by PBKDF2-HMAC-SHA256
// with 600,000 iterations and a random 16-byte salt per file, the key
// encrypted with AES-256-CBC under a random IV. PBES2 carries no MAC: a
// wrong passphrase is detected by the padding and the PKCS#8 structure
// that decryption yields, and a file an attacker rewrote is not detected
// as such (but one who can write the key directory can replace the key in
// any case). A store never mixes the two forms: with a passphrase, a key
// file in clear is refused (and the error gives the `sigil keys encrypt`
// command that migrates the directory); without one, an encrypted key file
// is refused. EncryptFiles and DecryptFiles are that migration.
//
// Where the key lives and what root obtains: the key is a file in the
// server's data directory (keys/ and cluster/keys/ by default), and, once
// read, in the server's memory. Without a passphrase, anyone who can read
// the file (root, or the sigil user) holds the CA key. With one, a copy of
// the directory alone (a backup, a stolen disk) yields nothing without the
// passphrase, but root on a running server reads the passphrase from its
// file or the process environment, or the key from the process memory, and
// so obtains the CA key: encryption at rest protects copies of the data,
// not a compromised host. After a compromise, rotate the authorities
// (`sigil authority prepare`, `activate`, then `taint` and `revoke` the
// old one) and change the passphrase with the server stopped (`sigil keys
// decrypt` with the old one, then `sigil keys encrypt` with the new one;
// the keys are in clear on disk in between).
package disk

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/ca/internal/keygen"
	"github.com/sigil-id/sigil/internal/atomicfile"
)

const (
	fileSuffix = ".key.pem"
	pemType    = "PRIVATE KEY"
	// encPEMType is the PEM type of a key file encrypted with a passphrase.
	encPEMType = "ENCRYPTED PRIVATE KEY"
)

// KeyManager stores keys in a directory. It is safe for concurrent use
// within one process; keys are cached in memory after their first use.
type KeyManager struct {
	dir string
	enc options

	mu    sync.Mutex
	cache map[string]crypto.Signer
}

var _ ca.KeyManager = (*KeyManager)(nil)

// New returns a KeyManager that keeps its keys in dir, creating dir with
// mode 0700 if it does not exist. With WithPassphrase the keys are
// encrypted at rest; New then refuses a directory holding a key file in
// clear, and checks the passphrase against one of the encrypted files.
// Without it, New refuses a directory holding an encrypted key file.
func New(dir string, opts ...Option) (*KeyManager, error) {
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
	m := &KeyManager{dir: dir, enc: newOptions(opts), cache: make(map[string]crypto.Signer)}
	if err := m.check(); err != nil {
		return nil, err
	}
	return m, nil
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
	data, err := encodeKey(k, m.enc.passphrase)
	if err != nil {
		return nil, fmt.Errorf("ca/keymanager/disk: encoding key %q: %w", id, err)
	}

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
	k, err := m.decodeFile(path, data)
	if err != nil {
		return nil, err
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
	opts []Option
}

var _ ca.KeyStore = (*Store)(nil)

// NewStore returns a Store keeping the keys of each scope in dirs[scope],
// each scope's KeyManager built with opts (WithPassphrase encrypts both
// scopes). Nothing is created until OpenKeyManager. Two scopes may not
// share a directory.
func NewStore(dirs map[ca.KeyScope]string, opts ...Option) (*Store, error) {
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
	return &Store{dirs: maps.Clone(dirs), opts: slices.Clone(opts)}, nil
}

// OpenKeyManager returns a KeyManager over the scope's directory,
// creating the directory (mode 0700) if needed.
func (s *Store) OpenKeyManager(_ context.Context, scope ca.KeyScope) (ca.KeyManager, error) {
	dir, ok := s.dirs[scope]
	if !ok {
		return nil, fmt.Errorf("ca/keymanager/disk: no directory for key scope %q", scope)
	}
	return New(dir, s.opts...)
}

// Persistent reports true: keys are files that outlive the process.
func (s *Store) Persistent() bool { return true }

// Dir returns the directory of scope ("" if the store has none).
func (s *Store) Dir(scope ca.KeyScope) string { return s.dirs[scope] }

// Encrypted reports whether the store encrypts its keys at rest.
func (s *Store) Encrypted() bool { return len(newOptions(s.opts).passphrase) > 0 }
