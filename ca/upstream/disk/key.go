package disk

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"

	"go.step.sm/crypto/kms/apiv1"
	steppkcs11 "go.step.sm/crypto/kms/pkcs11"
	"go.step.sm/crypto/kms/uri"
	"go.step.sm/crypto/pemutil"
)

// readKeyFile reads the private key of key_file path: one PEM private key
// block (PKCS#8, SEC 1 or PKCS#1; an "EC PARAMETERS" block before it is
// ignored), encrypted if and only if passphrase is set. The file must not
// be readable by others.
func readKeyFile(path string, passphrase []byte) (crypto.Signer, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("ca/upstream/disk: key_file %w", pathError(path, err))
	}
	if perm := fi.Mode().Perm(); perm&0o007 != 0 {
		return nil, fmt.Errorf("ca/upstream/disk: key_file %s is accessible by others (mode %04o): the upstream key signs CAs for the whole trust domain; run: chmod 600 %s", path, perm, path)
	}
	data, err := readFile("key_file", path)
	if err != nil {
		return nil, err
	}
	defer clear(data)
	return parseKey(path, data, passphrase)
}

// parseKey parses data, the content of key_file path (see readKeyFile).
func parseKey(path string, data, passphrase []byte) (crypto.Signer, error) {
	where := "key_file " + path
	var key *pem.Block
	rest := data
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		switch {
		case b.Type == "EC PARAMETERS":
		case !strings.HasSuffix(b.Type, "PRIVATE KEY"):
			return nil, fmt.Errorf("ca/upstream/disk: %s holds a PEM %q block: it must hold the private key only", where, b.Type)
		case key != nil:
			return nil, fmt.Errorf("ca/upstream/disk: %s holds more than one private key", where)
		default:
			key = b
		}
	}
	if key == nil {
		return nil, fmt.Errorf("ca/upstream/disk: %s holds no PEM private key", where)
	}
	// A legacy encrypted PEM block is only recognized here (to decrypt
	// or refuse it), never produced.
	encrypted := key.Type == "ENCRYPTED PRIVATE KEY" || x509.IsEncryptedPEMBlock(key) //nolint:staticcheck // see above
	switch {
	case encrypted && len(passphrase) == 0:
		return nil, fmt.Errorf("ca/upstream/disk: %s is encrypted and no passphrase is configured: set passphrase_file or passphrase_env", where)
	case !encrypted && len(passphrase) > 0:
		return nil, fmt.Errorf("ca/upstream/disk: %s is not encrypted but a passphrase is configured: remove passphrase_file or passphrase_env, or encrypt the key (openssl pkcs8 -topk8 -v2 aes-256-cbc)", where)
	}
	var opts []pemutil.Options
	if encrypted {
		opts = append(opts, pemutil.WithPassword(passphrase))
	}
	parsed, err := pemutil.ParseKey(pem.EncodeToMemory(key), opts...)
	clear(key.Bytes)
	switch {
	case err != nil && encrypted:
		// A wrong passphrase fails on the padding or on the structure of
		// what decryption yields; so does a damaged file.
		return nil, fmt.Errorf("ca/upstream/disk: cannot decrypt %s: wrong passphrase or damaged file", where)
	case err != nil:
		return nil, fmt.Errorf("ca/upstream/disk: %s: %w", where, err)
	}
	s, ok := parsed.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("ca/upstream/disk: %s holds a %T, not a signing key", where, parsed)
	}
	return s, nil
}

// PKCS11Key is a signing key already in a PKCS#11 token (the key_pkcs11
// block).
type PKCS11Key struct {
	// Module is the path of the PKCS#11 module (shared library).
	Module string
	// TokenLabel selects the token by label, Slot by slot ID; exactly one
	// is set.
	TokenLabel string
	Slot       *int
	// PIN is the token's user PIN; never in logs or errors.
	PIN string
	// KeyLabel (CKA_LABEL) and KeyID (CKA_ID) find the key pair; at least
	// one is set, and both must match when both are.
	KeyLabel string
	KeyID    []byte
}

// token names the token in errors.
func (k PKCS11Key) token() string {
	if k.Slot != nil {
		return "slot " + strconv.Itoa(*k.Slot)
	}
	return strconv.Quote(k.TokenLabel)
}

// key names the key in errors.
func (k PKCS11Key) key() string {
	var parts []string
	if k.KeyLabel != "" {
		parts = append(parts, "label "+strconv.Quote(k.KeyLabel))
	}
	if len(k.KeyID) > 0 {
		parts = append(parts, "id "+hex.EncodeToString(k.KeyID))
	}
	return strings.Join(parts, " and ")
}

func (k PKCS11Key) validate() error {
	if err := PKCS11Available(); err != nil {
		return fmt.Errorf("ca/upstream/disk: key_pkcs11: %w", err)
	}
	switch {
	case k.Module == "":
		return errors.New("ca/upstream/disk: key_pkcs11: the module path is empty")
	case k.TokenLabel == "" && k.Slot == nil:
		return errors.New("ca/upstream/disk: key_pkcs11: no token: set token_label or slot")
	case k.TokenLabel != "" && k.Slot != nil:
		return errors.New("ca/upstream/disk: key_pkcs11: both token_label and slot are set: keep one")
	case k.Slot != nil && *k.Slot < 0:
		return fmt.Errorf("ca/upstream/disk: key_pkcs11: slot %d is negative", *k.Slot)
	case k.PIN == "":
		return errors.New("ca/upstream/disk: key_pkcs11: the PIN is empty")
	case k.KeyLabel == "" && len(k.KeyID) == 0:
		return errors.New("ca/upstream/disk: key_pkcs11: no key: set key_label or key_id")
	}
	return nil
}

// token is an open PKCS#11 token holding the upstream key.
type token struct {
	cfg PKCS11Key

	mu     sync.Mutex
	kms    *steppkcs11.PKCS11
	closed bool
}

// openToken loads the module and logs in to the token.
func openToken(cfg PKCS11Key) (*token, error) {
	fi, err := os.Stat(cfg.Module)
	switch {
	case err != nil:
		return nil, fmt.Errorf("ca/upstream/disk: key_pkcs11: module %w", pathError(cfg.Module, err))
	case !fi.Mode().IsRegular():
		return nil, fmt.Errorf("ca/upstream/disk: key_pkcs11: module %s is not a regular file", cfg.Module)
	}
	v := url.Values{"module-path": {cfg.Module}}
	if cfg.Slot != nil {
		v.Set("slot-id", strconv.Itoa(*cfg.Slot))
	} else {
		v.Set("token", cfg.TokenLabel)
	}
	// The PIN goes in Options, not in the URI, which errors may quote.
	k, err := steppkcs11.New(context.Background(), apiv1.Options{
		Type: apiv1.PKCS11,
		URI:  uri.New("pkcs11", v).String(),
		Pin:  cfg.PIN,
	})
	if err != nil {
		return nil, openError(cfg, err)
	}
	return &token{cfg: cfg, kms: k}, nil
}

// openError turns a failure to open the token into a clear error.
func openError(cfg PKCS11Key, err error) error {
	msg := err.Error()
	tok, mod := cfg.token(), cfg.Module
	switch {
	case strings.Contains(msg, "CKR_PIN_INCORRECT"):
		return fmt.Errorf("ca/upstream/disk: key_pkcs11: logging in to token %s: wrong PIN (CKR_PIN_INCORRECT)", tok)
	case strings.Contains(msg, "CKR_PIN_LOCKED"):
		return fmt.Errorf("ca/upstream/disk: key_pkcs11: logging in to token %s: the PIN is locked (CKR_PIN_LOCKED): unlock it with the SO PIN", tok)
	case strings.Contains(msg, "could not find PKCS#11 token"):
		return fmt.Errorf("ca/upstream/disk: key_pkcs11: no token %s in module %s (list the tokens with softhsm2-util --show-slots or pkcs11-tool --module %s -L)", tok, mod, mod)
	case strings.Contains(msg, "failed to open module"):
		return fmt.Errorf("ca/upstream/disk: key_pkcs11: module %s could not be loaded: is it a PKCS#11 library for this platform?", mod)
	case strings.Contains(msg, "compiled without cgo"):
		return errors.New("ca/upstream/disk: key_pkcs11: this sigil binary was built without cgo, which PKCS#11 needs")
	}
	return fmt.Errorf("ca/upstream/disk: key_pkcs11: opening token %s with module %s: %w", tok, mod, err)
}

// signer finds the key pair in the token; its signatures are made in the
// token.
func (t *token) signer() (crypto.Signer, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, errClosed
	}
	v := url.Values{}
	if t.cfg.KeyLabel != "" {
		v.Set("object", t.cfg.KeyLabel)
	}
	if len(t.cfg.KeyID) > 0 {
		v.Set("id", hex.EncodeToString(t.cfg.KeyID))
	}
	s, err := t.kms.CreateSigner(&apiv1.CreateSignerRequest{SigningKey: uri.New("pkcs11", v).String()})
	switch {
	case errors.Is(err, apiv1.NotFoundError{}) || err != nil && strings.Contains(err.Error(), "not found"):
		return nil, fmt.Errorf("ca/upstream/disk: key_pkcs11: token %s holds no key pair with %s", t.cfg.token(), t.cfg.key())
	case err != nil:
		return nil, fmt.Errorf("ca/upstream/disk: key_pkcs11: finding the key with %s in token %s: %w", t.cfg.key(), t.cfg.token(), err)
	}
	return &tokenSigner{t: t, s: s}, nil
}

// close logs out of the token and unloads the module.
func (t *token) close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	t.closed = true
	if err := t.kms.Close(); err != nil {
		return fmt.Errorf("ca/upstream/disk: key_pkcs11: closing token %s: %w", t.cfg.token(), err)
	}
	return nil
}

// tokenSigner signs in the token, and fails clearly once it is closed.
type tokenSigner struct {
	t *token
	s crypto.Signer
}

func (s *tokenSigner) Public() crypto.PublicKey { return s.s.Public() }

func (s *tokenSigner) Sign(rand io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	s.t.mu.Lock()
	closed := s.t.closed
	s.t.mu.Unlock()
	if closed {
		return nil, errClosed
	}
	sig, err := s.s.Sign(rand, digest, opts)
	if err != nil {
		return nil, fmt.Errorf("key_pkcs11: signing with the key with %s in token %s: %w", s.t.cfg.key(), s.t.cfg.token(), err)
	}
	return sig, nil
}
