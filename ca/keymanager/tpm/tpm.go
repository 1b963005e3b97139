// Package tpm is a ca.KeyStore whose keys are created in, and used
// through, the server's TPM 2.0 (go.step.sm/crypto/kms/tpmkms).
//
// Where the key lives: each key is generated inside the TPM under its
// storage root key (the SRK, persisted by the TPM at handle 0x81000001)
// and never leaves it in the clear. What is kept on disk, one file
// key-<name>.tpmobj per key in the storage directory (mode 0700, files
// 0600), is the key's public part and its private part wrapped
// (encrypted and integrity-protected) by the SRK: only the TPM that
// created it can load it, so the blob is useless on another machine, in
// a backup, or on the same machine after the TPM was cleared (then every
// key is lost and the server must start a new CA). What an attacker with
// root on the server obtains: the use of the keys for as long as they
// keep root on that host (the keys have no authorization value, so
// anyone who can reach the TPM device and read the blobs can make the
// TPM sign), but not the private keys themselves: they cannot be copied
// off the host, and signing stops once the attacker loses access.
// After a compromise, rotate the authorities (sigil authority prepare,
// then activate) so that the keys the attacker could use are retired;
// this manager then deletes their blobs.
//
// Key names: the TPM store names the key of scope s and id i on a server
// of trust domain td and node name n
//
//	<s>.<i>.<h>
//
// where h is the first 16 hex digits of SHA-256(td NUL n NUL s NUL i):
// deterministic, unique per server even in a storage directory shared by
// several servers on one host, and a valid file name (ids are limited to
// 128 characters of [A-Za-z0-9._-]).
//
// The TPM is reached through the configured device: a character device
// (/dev/tpmrm0, the kernel's resource manager, by default) or the unix
// socket of a software TPM (swtpm socket --server type=unixio), which
// is what the tests use. The device is opened for each operation and
// closed after it, so a Store holds no descriptor between operations.
package tpm

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sync"

	"go.step.sm/crypto/kms/apiv1"
	"go.step.sm/crypto/kms/tpmkms"
	steptpm "go.step.sm/crypto/tpm"
	"go.step.sm/crypto/tpm/storage"

	"github.com/sigil-id/sigil/ca"
)

// DefaultDevice is the TPM device used when none is configured: the
// kernel's TPM resource manager.
const DefaultDevice = "/dev/tpmrm0"

// Config is what a Store is built from.
type Config struct {
	// Device is the TPM: a character device (/dev/tpmrm0, /dev/tpm0) or
	// the unix socket of a software TPM.
	Device string
	// StorageDirectory holds the wrapped key blobs. It is created (mode
	// 0700) when a scope is first opened.
	StorageDirectory string
	// TrustDomain and NodeName name this server's keys (see the package
	// doc).
	TrustDomain string
	NodeName    string
}

// DefaultConfig returns a Config with the default device; the storage
// directory, trust domain and node name are left for the caller.
func DefaultConfig() Config {
	return Config{Device: DefaultDevice}
}

// Validate reports whether c can build a Store.
func (c Config) Validate() error {
	switch {
	case c.Device == "":
		return errors.New("tpm: device is empty")
	case c.StorageDirectory == "":
		return errors.New("tpm: storage directory is empty")
	case c.TrustDomain == "":
		return errors.New("tpm: trust domain is empty")
	}
	return nil
}

// Store is the TPM key manager as a server opens it (ca.KeyStore). It is
// safe for concurrent use. Close it after the server stopped: the
// signers it returned fail from then on.
type Store struct {
	cfg Config

	mu     sync.Mutex
	kms    *tpmkms.TPMKMS // built by the first OpenKeyManager
	ch     *channel
	closed bool
}

var (
	_ ca.KeyStore = (*Store)(nil)
	_ io.Closer   = (*Store)(nil)
)

// NewStore returns a Store for cfg. It neither touches the TPM nor
// writes anything: OpenKeyManager does.
func NewStore(cfg Config) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Store{cfg: cfg}, nil
}

// Persistent reports true: the key blobs and the TPM's storage root key
// outlive the process.
func (s *Store) Persistent() bool { return true }

// OpenKeyManager checks the device, creates the storage directory (mode
// 0700) and returns the KeyManager of scope.
func (s *Store) OpenKeyManager(_ context.Context, scope ca.KeyScope) (ca.KeyManager, error) {
	switch scope {
	case ca.KeyScopeAuthorities, ca.KeyScopeClusterIdentity:
	default:
		return nil, fmt.Errorf("tpm: unknown key scope %q", scope)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errClosed
	}
	if s.kms == nil {
		if err := s.open(); err != nil {
			return nil, err
		}
	}
	return &KeyManager{store: s, scope: scope, cache: map[string]crypto.Signer{}}, nil
}

// open builds the TPM KMS over the device and the storage directory.
func (s *Store) open() error {
	if err := checkDevice(s.cfg.Device); err != nil {
		return err
	}
	dir := s.cfg.StorageDirectory
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("tpm: creating storage directory: %w", err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("tpm: storage directory: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("tpm: storage directory %s is not a directory", dir)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("tpm: storage directory %s has mode %#o: anyone who can read the key blobs and reach the TPM can sign with them; chmod 0700 it", dir, fi.Mode().Perm())
	}
	s.ch = &channel{path: s.cfg.Device}
	t, err := steptpm.New(
		steptpm.WithDeviceName(s.cfg.Device),
		steptpm.WithCommandChannel(s.ch),
		// Every read reflects the directory: no cache to go stale.
		steptpm.WithStore(storage.NewDirstore(dir, storage.WithCacheSize(0))),
		steptpm.WithDisableDownload(),
	)
	if err != nil {
		return fmt.Errorf("tpm: %w", err)
	}
	k, err := tpmkms.NewWithTPM(context.Background(), t)
	if err != nil {
		return fmt.Errorf("tpm: %w", err)
	}
	s.kms = k
	return nil
}

// checkDevice refuses a device that is missing or is neither a character
// device nor a unix socket.
func checkDevice(dev string) error {
	fi, err := os.Stat(dev)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("tpm: TPM device %s does not exist (no TPM 2.0, or its driver is not loaded)", dev)
	}
	if err != nil {
		return fmt.Errorf("tpm: TPM device: %w", err)
	}
	m := fi.Mode()
	if m&fs.ModeCharDevice == 0 && m&fs.ModeSocket == 0 {
		return fmt.Errorf("tpm: TPM device %s is neither a character device nor a unix socket (mode %s)", dev, m)
	}
	return nil
}

// Close releases the TPM: the device is not opened again, and every
// KeyManager and signer of s fails from now on. Closing twice is not an
// error.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	var err error
	if s.ch != nil {
		err = s.ch.shut()
	}
	if s.kms != nil {
		err = errors.Join(err, s.kms.Close())
	}
	if err != nil {
		return fmt.Errorf("tpm: closing: %w", err)
	}
	return nil
}

// backend returns the KMS, or errClosed.
func (s *Store) backend() (*tpmkms.TPMKMS, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errClosed
	}
	return s.kms, nil
}

var errClosed = errors.New("tpm: key manager closed")

// KeyManager holds the keys of one scope of a Store in the TPM. It is
// safe for concurrent use; signers are cached after their first use.
type KeyManager struct {
	store *Store
	scope ca.KeyScope

	mu    sync.Mutex
	cache map[string]crypto.Signer
}

var (
	_ ca.KeyManager = (*KeyManager)(nil)
	_ ca.KeyDeleter = (*KeyManager)(nil)
)

// validID is the shape of a key id; it is at most maxIDLen bytes long
// (checked apart: a counted repetition {0,127} compiles to a program of
// about 100 KiB that every sigil process would build at start).
var validID = regexp.MustCompile(`^[A-Za-z0-9_-][A-Za-z0-9._-]*$`)

const maxIDLen = 128

// Name returns the name of the key id of scope in the TPM store of a
// server of trust domain td and node name node (see the package doc).
func Name(td, node string, scope ca.KeyScope, id string) (string, error) {
	if len(id) > maxIDLen || !validID.MatchString(id) {
		return "", fmt.Errorf("tpm: invalid key id %q: want 1 to 128 characters of [A-Za-z0-9._-], not starting with a dot", id)
	}
	sum := sha256.Sum256([]byte(td + "\x00" + node + "\x00" + string(scope) + "\x00" + id))
	return string(scope) + "." + id + "." + hex.EncodeToString(sum[:8]), nil
}

func (m *KeyManager) name(id string) (string, error) {
	return Name(m.store.cfg.TrustDomain, m.store.cfg.NodeName, m.scope, id)
}

func uriOf(name string) string { return "tpmkms:name=" + name }

// blobPath is the file the TPM store keeps the key of name in.
func (m *KeyManager) blobPath(name string) string {
	return filepath.Join(m.store.cfg.StorageDirectory, "key-"+name+".tpmobj")
}

// GenerateKey creates the key named id in the TPM, replacing any existing
// one: the old blob is deleted first, so if creation then fails the old
// key is gone too (the server only regenerates keys it discards).
func (m *KeyManager) GenerateKey(ctx context.Context, id string, kt ca.KeyType) (crypto.Signer, error) {
	name, err := m.name(id)
	if err != nil {
		return nil, err
	}
	req := &apiv1.CreateKeyRequest{Name: uriOf(name)}
	switch kt {
	case ca.KeyTypeECP256:
		req.SignatureAlgorithm = apiv1.ECDSAWithSHA256
	case ca.KeyTypeECP384:
		req.SignatureAlgorithm = apiv1.ECDSAWithSHA384
	case ca.KeyTypeRSA2048:
		req.SignatureAlgorithm, req.Bits = apiv1.SHA256WithRSA, 2048
	default:
		return nil, fmt.Errorf("tpm: key type %q is not supported by the TPM key manager (want %q, %q or %q)", kt, ca.KeyTypeECP256, ca.KeyTypeECP384, ca.KeyTypeRSA2048)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	k, err := m.store.backend()
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.cache, id)
	if err := k.DeleteKey(&apiv1.DeleteKeyRequest{Name: uriOf(name)}); err != nil && !notFound(err) {
		return nil, fmt.Errorf("tpm: replacing key %q: %w", id, err)
	}
	resp, err := k.CreateKey(req)
	if err != nil {
		return nil, fmt.Errorf("tpm: generate %s key %q: %w", kt, id, err)
	}
	if err := os.Chmod(m.blobPath(name), 0o600); err != nil {
		return nil, fmt.Errorf("tpm: key %q: %w", id, err)
	}
	s := m.wrap(id, resp.CreateSignerRequest.Signer)
	m.cache[id] = s
	return s, nil
}

// GetKey returns the key named id, loading its blob into the TPM on first
// use, or an error wrapping ca.ErrKeyNotFound if there is no blob.
func (m *KeyManager) GetKey(_ context.Context, id string) (crypto.Signer, error) {
	name, err := m.name(id)
	if err != nil {
		return nil, err
	}
	k, err := m.store.backend()
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if s, ok := m.cache[id]; ok {
		return s, nil
	}
	signer, err := k.CreateSigner(&apiv1.CreateSignerRequest{SigningKey: uriOf(name)})
	if notFound(err) {
		return nil, fmt.Errorf("%w: %q", ca.ErrKeyNotFound, id)
	}
	if err != nil {
		return nil, fmt.Errorf("tpm: load key %q (blob %s; a blob loads only in the TPM that created it): %w", id, m.blobPath(name), err)
	}
	s := m.wrap(id, signer)
	m.cache[id] = s
	return s, nil
}

// DeleteKey removes the blob of the key named id (the key exists nowhere
// else: the TPM holds it only while it signs); a missing key is not an
// error.
func (m *KeyManager) DeleteKey(_ context.Context, id string) error {
	name, err := m.name(id)
	if err != nil {
		return err
	}
	k, err := m.store.backend()
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.cache, id)
	if err := k.DeleteKey(&apiv1.DeleteKeyRequest{Name: uriOf(name)}); err != nil && !notFound(err) {
		return fmt.Errorf("tpm: delete key %q: %w", id, err)
	}
	return nil
}

// notFound reports whether err says the TPM store has no such key.
func notFound(err error) bool {
	var nf apiv1.NotFoundError
	return err != nil && (errors.As(err, &nf) || errors.Is(err, steptpm.ErrNotFound))
}

// signer is a TPM key as the server uses it: it fails once the store is
// closed, refuses digests the key cannot sign before asking the TPM, and
// names the key in its errors.
type signer struct {
	store *Store
	id    string
	s     crypto.Signer
	hash  crypto.Hash // the only digest an EC key signs; 0 for RSA
}

func (m *KeyManager) wrap(id string, s crypto.Signer) *signer {
	w := &signer{store: m.store, id: id, s: s}
	if pub, ok := s.Public().(*ecdsa.PublicKey); ok {
		switch pub.Curve {
		case elliptic.P256():
			w.hash = crypto.SHA256
		case elliptic.P384():
			w.hash = crypto.SHA384
		}
	}
	return w
}

// Public returns the key's public key.
func (s *signer) Public() crypto.PublicKey { return s.s.Public() }

// Sign signs digest with the key in the TPM. An EC key signs only the
// digest of its curve's hash (SHA-256 for P-256, SHA-384 for P-384): the
// TPM fixes the scheme when it creates the key.
func (s *signer) Sign(rand io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if _, err := s.store.backend(); err != nil {
		return nil, fmt.Errorf("tpm: sign with key %q: %w", s.id, errClosedReason)
	}
	if s.hash != 0 && opts != nil && opts.HashFunc() != s.hash {
		return nil, fmt.Errorf("tpm: sign with key %q: this key signs %s digests only, got %s", s.id, s.hash, opts.HashFunc())
	}
	sig, err := s.s.Sign(rand, digest, opts)
	if err != nil {
		return nil, fmt.Errorf("tpm: sign with key %q: %w", s.id, err)
	}
	return sig, nil
}

// errClosedReason is errClosed without its package prefix, for messages
// that already carry one.
var errClosedReason = errors.New("key manager closed")
