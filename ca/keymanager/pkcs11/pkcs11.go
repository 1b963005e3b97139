// Package pkcs11 is a ca.KeyStore whose keys are generated and used inside
// a PKCS#11 token (an HSM, a smart card, SoftHSM2), through the PKCS#11
// backend of go.step.sm/crypto (ThalesGroup/crypto11 underneath; it needs
// cgo). Private keys are created sensitive and not extractable: they never
// leave the token, and the server only ever holds handles to them. The
// token is chosen by label or slot ID; the user PIN comes from a file or
// an environment variable, never from the configuration or the command
// line, and never appears in logs or errors.
//
// Key names: the key a server's slot manager calls id, in scope, is the
// token object pair (private and public key) with
//
//	CKA_LABEL = <prefix>/<trust domain>/<node name>/<scope>/<id>
//	CKA_ID    = the first 20 bytes of the SHA-256 of that full name
//
// (prefix is key_label_prefix, "sigil" by default; a label longer than 64
// bytes is cut and ends in "~" and 12 hex digits of the hash, see
// KeyLabel). Keys are looked up by both label and id, so several servers
// (node names) and trust domains can share one token, and a server finds
// its keys again after a restart.
//
// Security: the CA, JWT and cluster identity private keys live in the
// token, created sensitive and never extractable, so no file, log or Raft
// entry of the server ever holds them. An attacker with root on a server
// obtains the PIN (from its file or the process environment) and with it
// the use of the keys, in the token, for as long as they hold the server:
// they can sign anything meanwhile (SVIDs, even a certificate with the CA
// bit), so after a compromise rotate and taint the server's keys (sigil
// authority prepare, activate, taint) like any other. With a hardware
// token they do not obtain the keys themselves, which the token never
// reveals. SoftHSM2 is a software token on the same host: its token
// directory holds the keys encrypted under the PIN, so root on that host
// obtains the keys too; it protects against leaks through the server's
// files and backups, not against root.
package pkcs11

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"unicode"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.step.sm/crypto/kms/apiv1"
	steppkcs11 "go.step.sm/crypto/kms/pkcs11"
	"go.step.sm/crypto/kms/uri"

	"github.com/sigil-id/sigil/ca"
)

// uriScheme is the scheme of go.step.sm/crypto's PKCS#11 URIs (its
// Scheme constant exists only in cgo builds).
const uriScheme = "pkcs11"

// deleter is the DeleteKey of go.step.sm/crypto's PKCS11 (cgo builds
// only; without cgo no PKCS11 is ever made).
type deleter interface{ DeleteKey(uri string) error }

// deleteKey destroys the key pair of the step URI u in the token.
func deleteKey(k *steppkcs11.PKCS11, u string) error {
	d, ok := any(k).(deleter)
	if !ok {
		return errors.New("this build cannot delete PKCS#11 keys")
	}
	return d.DeleteKey(u)
}

// DefaultKeyLabelPrefix starts the label of every key (key_label_prefix).
const DefaultKeyLabelPrefix = "sigil"

// Config says which token to use and how a server's keys are named in it.
type Config struct {
	// Module is the path of the PKCS#11 module (shared library), for
	// SoftHSM2 /usr/lib/softhsm/libsofthsm2.so.
	Module string
	// TokenLabel selects the token by its label; Slot by its slot ID
	// (as softhsm2-util --show-slots or pkcs11-tool -L list it). Exactly
	// one is set.
	TokenLabel string
	Slot       *int
	// PIN is the user PIN. It is never logged (Config's String leaves it
	// out) nor put in an error.
	PIN string
	// KeyLabelPrefix starts every key label; default DefaultKeyLabelPrefix.
	KeyLabelPrefix string
	// TrustDomain and NodeName name the server whose keys these are.
	TrustDomain spiffeid.TrustDomain
	NodeName    string
}

// DefaultConfig returns a Config with the defaults filled in; the module,
// token, PIN, trust domain and node name are the caller's.
func DefaultConfig() Config {
	return Config{KeyLabelPrefix: DefaultKeyLabelPrefix}
}

// String describes c without its PIN.
func (c Config) String() string {
	return fmt.Sprintf("pkcs11 module %s, %s, keys %s/%s/%s/...", c.Module, c.token(), c.KeyLabelPrefix, c.TrustDomain.Name(), c.NodeName)
}

// token names the token in errors.
func (c Config) token() string {
	if c.Slot != nil {
		return "slot " + strconv.Itoa(*c.Slot)
	}
	return strconv.Quote(c.TokenLabel)
}

// Validate fills the defaults of unset fields and reports what is wrong
// with c. It does not look at the module or the token.
func (c *Config) Validate() error {
	if c.KeyLabelPrefix == "" {
		c.KeyLabelPrefix = DefaultKeyLabelPrefix
	}
	switch {
	case c.Module == "":
		return errors.New("pkcs11: the module path is empty")
	case c.TokenLabel == "" && c.Slot == nil:
		return errors.New("pkcs11: no token: set a token label or a slot")
	case c.TokenLabel != "" && c.Slot != nil:
		return errors.New("pkcs11: both a token label and a slot are set: choose one")
	case c.Slot != nil && *c.Slot < 0:
		return fmt.Errorf("pkcs11: slot %d is negative", *c.Slot)
	case c.PIN == "":
		return errors.New("pkcs11: the PIN is empty")
	case c.TrustDomain.IsZero():
		return errors.New("pkcs11: the trust domain is not set")
	case c.NodeName == "":
		return errors.New("pkcs11: the node name is not set")
	case !utf8.ValidString(c.NodeName) || strings.ContainsFunc(c.NodeName, unicode.IsControl) || strings.Contains(c.NodeName, "/"):
		return fmt.Errorf("pkcs11: node name %q holds '/', invalid or control characters", c.NodeName)
	}
	if err := checkPrefix(c.KeyLabelPrefix); err != nil {
		return fmt.Errorf("pkcs11: key label prefix: %w", err)
	}
	return nil
}

// Store is the pkcs11 key manager as a server opens it (ca.KeyStore): one
// token, opened on the first OpenKeyManager and shared by both scopes,
// until Close. It is safe for concurrent use.
//
// Recovery: once an operation on the token failed (a signature, a key
// generation: the token was unplugged, its files moved away), the next
// GetKey, GenerateKey or DeleteKey re-opens the token (logs out, unloads
// the module, loads it again and logs in) before its lookup, since a
// PKCS#11 module does not find a token that came back in a session it
// opened before. Signers obtained before a re-opening look their key up
// again in the new opening on their next signature (it must have the same
// public key), so every key held recovers once one GetKey re-opened the
// token (the CA calls GetKey after a failure, with backoff).
type Store struct {
	cfg Config

	mu  sync.Mutex
	kms *steppkcs11.PKCS11 // nil until opened
	// gen counts the openings of the token (written under mu): the
	// handles of signers of an older opening are stale.
	gen atomic.Uint64
	// failed is set when an operation on kms failed: the next open
	// re-opens the token.
	failed bool
	// down is the error of the last opening of the token that failed,
	// nil once one succeeded: signers of a closed opening fail with it.
	down   atomic.Pointer[error]
	closed atomic.Bool
}

var (
	_ ca.KeyStore = (*Store)(nil)
	_ io.Closer   = (*Store)(nil)
)

// NewStore checks cfg and that its module file exists, and returns a
// Store (ErrNoCgo in a build without cgo). It opens nothing: the module
// is loaded and the token logged in to on the first OpenKeyManager.
func NewStore(cfg Config) (*Store, error) {
	if err := Available(); err != nil {
		return nil, fmt.Errorf("pkcs11: %w", err)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := checkModule(cfg.Module); err != nil {
		return nil, fmt.Errorf("pkcs11: module %w", err)
	}
	return &Store{cfg: cfg}, nil
}

// checkModule reports a module path that is not a regular file; the
// error starts with the path.
func checkModule(path string) error {
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("%s does not exist (for SoftHSM2: apt-get install softhsm2)", path)
	case err != nil:
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return fmt.Errorf("%s: %w", path, err)
	case !fi.Mode().IsRegular():
		return fmt.Errorf("%s is not a regular file", path)
	}
	return nil
}

// Persistent reports true: keys are token objects that outlive the
// process.
func (s *Store) Persistent() bool { return true }

// OpenKeyManager returns the KeyManager of scope, opening the token (load
// the module, find the token, log in) if it is not open yet.
func (s *Store) OpenKeyManager(_ context.Context, scope ca.KeyScope) (ca.KeyManager, error) {
	switch scope {
	case ca.KeyScopeAuthorities, ca.KeyScopeClusterIdentity:
	default:
		return nil, fmt.Errorf("pkcs11: unknown key scope %q", scope)
	}
	if _, _, err := s.open(); err != nil {
		return nil, err
	}
	return &KeyManager{store: s, scope: scope, cache: map[string]*signer{}}, nil
}

// open returns the token's KMS and the number of its opening, opening it
// the first time, and again after an operation on it failed (see Store).
func (s *Store) open() (*steppkcs11.PKCS11, uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Load() {
		return nil, 0, fmt.Errorf("pkcs11: %w", errClosed)
	}
	if s.kms != nil && !s.failed {
		return s.kms, s.gen.Load(), nil
	}
	if s.kms != nil {
		// Close waits for the signatures in progress and, this store
		// being the module's last user in the process, finalizes the
		// module, so that opening it again finds the token anew. Its
		// error (a token gone) does not matter: the context is dropped.
		_ = s.kms.Close()
		s.kms, s.failed = nil, false
	}
	if err := checkModule(s.cfg.Module); err != nil {
		err = fmt.Errorf("pkcs11: module %w", err)
		s.down.Store(&err)
		return nil, 0, err
	}
	v := url.Values{"module-path": {s.cfg.Module}}
	if s.cfg.Slot != nil {
		v.Set("slot-id", strconv.Itoa(*s.cfg.Slot))
	} else {
		v.Set("token", s.cfg.TokenLabel)
	}
	// The PIN goes in Options, not in the URI, which errors may quote.
	k, err := steppkcs11.New(context.Background(), apiv1.Options{
		Type: apiv1.PKCS11,
		URI:  uri.New(uriScheme, v).String(),
		Pin:  s.cfg.PIN,
	})
	if err != nil {
		err = s.openError(err)
		s.down.Store(&err)
		return nil, 0, err
	}
	s.kms = k
	s.down.Store(nil)
	return k, s.gen.Add(1), nil
}

// fail records that an operation on the token's opening gen failed: the
// next open re-opens the token.
func (s *Store) fail(gen uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gen.Load() == gen && s.kms != nil {
		s.failed = true
	}
}

// openError turns a failure to open the token into a clear error.
func (s *Store) openError(err error) error {
	msg := err.Error()
	tok, mod := s.cfg.token(), s.cfg.Module
	switch {
	case strings.Contains(msg, "CKR_PIN_INCORRECT"):
		return fmt.Errorf("pkcs11: logging in to token %s: wrong PIN (CKR_PIN_INCORRECT)", tok)
	case strings.Contains(msg, "CKR_PIN_LOCKED"):
		return fmt.Errorf("pkcs11: logging in to token %s: the PIN is locked (CKR_PIN_LOCKED): unlock it with the SO PIN", tok)
	case strings.Contains(msg, "CKR_PIN_LEN_RANGE"):
		return fmt.Errorf("pkcs11: logging in to token %s: the PIN has a length the token refuses (CKR_PIN_LEN_RANGE)", tok)
	case strings.Contains(msg, "could not find PKCS#11 token"):
		return fmt.Errorf("pkcs11: no token %s in module %s (list the tokens with softhsm2-util --show-slots or pkcs11-tool --module %s -L)", tok, mod, mod)
	case strings.Contains(msg, "failed to open module"):
		return fmt.Errorf("pkcs11: module %s could not be loaded: is it a PKCS#11 library for this platform?", mod)
	case strings.Contains(msg, "compiled without cgo"):
		return fmt.Errorf("pkcs11: this sigil binary was built without cgo, which PKCS#11 needs: %w", err)
	}
	return &tokenError{what: fmt.Sprintf("opening token %s with module %s", tok, mod), err: err}
}

// Close logs out of the token and unloads the module (once the last user
// of the module in the process is closed). Signers obtained from the
// store fail from then on; Close may be called more than once.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Swap(true) || s.kms == nil {
		return nil
	}
	if err := s.kms.Close(); err != nil {
		return fmt.Errorf("pkcs11: closing token %s: %w", s.cfg.token(), err)
	}
	return nil
}

// errClosed is wrapped by the errors of a Store, its KeyManagers and
// signers after Close.
var errClosed = errors.New("the key store is closed")

// KeyManager is the keys of one scope in the token. It is safe for
// concurrent use; it remembers the keys it found or created.
type KeyManager struct {
	store *Store
	scope ca.KeyScope

	mu    sync.Mutex
	cache map[string]*signer
}

var (
	_ ca.KeyManager = (*KeyManager)(nil)
	_ ca.KeyDeleter = (*KeyManager)(nil)
)

// objectURI returns the step URI of the key named id: its CKA_ID and
// CKA_LABEL.
func (m *KeyManager) objectURI(id string) (u, label string, err error) {
	if err := checkKeyID(id); err != nil {
		return "", "", err
	}
	c := m.store.cfg
	label, ckaID := KeyLabel(c.KeyLabelPrefix, c.TrustDomain, c.NodeName, m.scope, id)
	return uri.New(uriScheme, url.Values{"id": {hex.EncodeToString(ckaID)}, "object": {label}}).String(), label, nil
}

// GenerateKey creates the key pair named id in the token, sensitive and
// not extractable, replacing any existing pair of that name: that one is
// destroyed first (if creating the new one then fails, the name has no
// key; the slot manager names each new key afresh, so this only matters to
// a caller that regenerates a key in place).
func (m *KeyManager) GenerateKey(ctx context.Context, id string, kt ca.KeyType) (crypto.Signer, error) {
	if err := kt.Validate(); err != nil {
		return nil, fmt.Errorf("pkcs11: %w", err)
	}
	u, label, err := m.objectURI(id)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	k, gen, err := m.store.open()
	if err != nil {
		return nil, err
	}
	req := &apiv1.CreateKeyRequest{Name: u}
	switch kt {
	case ca.KeyTypeECP256:
		req.SignatureAlgorithm = apiv1.ECDSAWithSHA256
	case ca.KeyTypeECP384:
		req.SignatureAlgorithm = apiv1.ECDSAWithSHA384
	case ca.KeyTypeRSA2048:
		req.SignatureAlgorithm, req.Bits = apiv1.SHA256WithRSA, 2048
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.cache, id)
	if err := deleteKey(k, u); err != nil {
		m.store.fail(gen)
		return nil, m.store.opError(fmt.Sprintf("replace key %q (label %q)", id, label), err)
	}
	if _, err := k.CreateKey(req); err != nil {
		m.store.fail(gen)
		return nil, m.store.opError(fmt.Sprintf("generate %s key %q (label %q)", kt, id, label), err)
	}
	s, err := m.find(k, gen, id, u, label)
	if err != nil {
		return nil, err
	}
	if err := checkType(s.pub, kt); err != nil {
		return nil, fmt.Errorf("pkcs11: generate key %q (label %q): %w", id, label, err)
	}
	return s, nil
}

// checkType reports a public key that is not of type kt.
func checkType(pub crypto.PublicKey, kt ca.KeyType) error {
	ok := false
	switch p := pub.(type) {
	case *ecdsa.PublicKey:
		ok = kt == ca.KeyTypeECP256 && p.Curve == elliptic.P256() || kt == ca.KeyTypeECP384 && p.Curve == elliptic.P384()
	case *rsa.PublicKey:
		ok = kt == ca.KeyTypeRSA2048 && p.N.BitLen() == 2048
	}
	if !ok {
		return fmt.Errorf("the token made a %T, not a %s key", pub, kt)
	}
	return nil
}

// GetKey returns the key named id, or an error wrapping ca.ErrKeyNotFound
// if the token holds no such key pair.
func (m *KeyManager) GetKey(ctx context.Context, id string) (crypto.Signer, error) {
	u, label, err := m.objectURI(id)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	k, gen, err := m.store.open()
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if s, ok := m.cache[id]; ok && s.h.Load().gen == gen {
		return s, nil
	}
	return m.find(k, gen, id, u, label)
}

// find looks the key pair up in the token's opening gen and caches its
// signer; m.mu is held.
func (m *KeyManager) find(k *steppkcs11.PKCS11, gen uint64, id, u, label string) (*signer, error) {
	cs, err := k.CreateSigner(&apiv1.CreateSignerRequest{SigningKey: u})
	if errors.Is(err, apiv1.NotFoundError{}) {
		return nil, fmt.Errorf("pkcs11: key %q (label %q) is not in token %s: %w", id, label, m.store.cfg.token(), ca.ErrKeyNotFound)
	}
	if err != nil {
		m.store.fail(gen)
		return nil, m.store.opError(fmt.Sprintf("get key %q (label %q)", id, label), err)
	}
	s := &signer{store: m.store, km: m, id: id, u: u, label: label, pub: cs.Public()}
	s.h.Store(&handle{gen: gen, key: cs})
	m.cache[id] = s
	return s, nil
}

// DeleteKey destroys the key pair named id in the token; a missing key
// is not an error.
func (m *KeyManager) DeleteKey(ctx context.Context, id string) error {
	u, label, err := m.objectURI(id)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	k, gen, err := m.store.open()
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.cache, id)
	if err := deleteKey(k, u); err != nil {
		m.store.fail(gen)
		return m.store.opError(fmt.Sprintf("delete key %q (label %q)", id, label), err)
	}
	return nil
}

// opError is the error of a failed operation on the token: "pkcs11:
// <what>: <cause>", the cause being errClosed if the store was closed
// meanwhile.
func (s *Store) opError(what string, err error) error {
	if s.closed.Load() {
		err = errClosed
	}
	return &tokenError{what: what, err: err}
}

// tokenError is a failed operation on the token. Its text is
// "pkcs11: <what>: <cause>", where the cause loses the prefixes the
// libraries underneath add ("pkcs11: 0x30: CKR_DEVICE_ERROR" becomes
// "0x30: CKR_DEVICE_ERROR"), so that no prefix is doubled; Unwrap gives
// the cause as it was.
type tokenError struct {
	what string
	err  error
}

// causePrefixes are what go.step.sm/crypto and miekg/pkcs11 put before a
// token's error.
var causePrefixes = strings.NewReplacer(
	"pkcs11: 0x", "0x",
	"createKey failed: ", "",
	"createSigner failed: ", "",
	"deleteKey failed: ", "",
	"error initializing PKCS#11: ", "",
)

func (e *tokenError) Error() string {
	return "pkcs11: " + e.what + ": " + causePrefixes.Replace(e.err.Error())
}

func (e *tokenError) Unwrap() error { return e.err }

// signer is a key in the token as a crypto.Signer: it signs in the token
// and fails clearly once the store is closed. After the token was
// re-opened it looks its key up again (see Store).
type signer struct {
	store    *Store
	km       *KeyManager
	id       string
	u, label string // the key's step URI and label
	pub      crypto.PublicKey
	h        atomic.Pointer[handle]
}

// handle is a signer's key in one opening of the token.
type handle struct {
	gen uint64
	key crypto.Signer
}

// Public returns the key's public half (read from the token once).
func (s *signer) Public() crypto.PublicKey { return s.pub }

// Sign signs digest in the token.
func (s *signer) Sign(rand io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if s.store.closed.Load() {
		return nil, s.store.opError(fmt.Sprintf("sign with key %q", s.id), errClosed)
	}
	h := s.h.Load()
	if h.gen != s.store.gen.Load() {
		var err error
		if h, err = s.km.refresh(s); err != nil {
			return nil, err
		}
	} else if down := s.store.down.Load(); down != nil {
		// The token was closed after a failure and not opened again
		// yet (the next GetKey tries).
		return nil, s.store.opError(fmt.Sprintf("sign with key %q", s.id), reopenError{*down})
	}
	sig, err := h.key.Sign(rand, digest, opts)
	if err != nil {
		// The next GetKey re-opens the token and looks the key up
		// again (its handle is stale after the token came back).
		s.km.forget(s)
		s.store.fail(h.gen)
		return nil, s.store.opError(fmt.Sprintf("sign with key %q", s.id), err)
	}
	return sig, nil
}

// refresh looks the key of s up in the token's current opening (the
// token was re-opened since s got its handle), checking it is the same
// key pair, and returns its handle.
func (m *KeyManager) refresh(s *signer) (*handle, error) {
	k, gen, err := m.store.open()
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if h := s.h.Load(); h.gen == gen {
		return h, nil
	}
	what := fmt.Sprintf("sign with key %q (label %q)", s.id, s.label)
	cs, err := k.CreateSigner(&apiv1.CreateSignerRequest{SigningKey: s.u})
	if errors.Is(err, apiv1.NotFoundError{}) {
		return nil, fmt.Errorf("pkcs11: %s: the key is no longer in token %s: %w", what, m.store.cfg.token(), ca.ErrKeyNotFound)
	}
	if err != nil {
		m.store.fail(gen)
		return nil, m.store.opError(what, err)
	}
	if pub, ok := cs.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(s.pub) {
		return nil, fmt.Errorf("pkcs11: %s: token %s now holds another key pair under that name", what, m.store.cfg.token())
	}
	h := &handle{gen: gen, key: cs}
	s.h.Store(h)
	return h, nil
}

// reopenError is the cause of a signature with a key of a token that was
// closed after a failure and could not be opened again (err).
type reopenError struct{ err error }

func (e reopenError) Error() string {
	return "the token was closed after a failure and could not be opened again: " + strings.TrimPrefix(e.err.Error(), "pkcs11: ")
}

func (e reopenError) Unwrap() error { return e.err }

// forget drops s from the cache, unless another key took its place.
func (m *KeyManager) forget(s *signer) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cache[s.id] == s {
		delete(m.cache, s.id)
	}
}
