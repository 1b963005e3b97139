package disk

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"go.step.sm/crypto/pemutil"
)

// Option configures a KeyManager or a Store.
type Option func(*options)

type options struct {
	passphrase []byte
	migrate    string
}

// WithPassphrase encrypts the keys at rest with passphrase (copied). An
// empty passphrase means no encryption.
func WithPassphrase(passphrase []byte) Option {
	p := slices.Clone(passphrase)
	return func(o *options) { o.passphrase = p }
}

// WithMigrationCommand sets the command that the error refusing a key file
// in clear (with a passphrase configured) tells the operator to run: the
// plugin builds it from the server's configuration. The default names the
// flags with placeholders.
func WithMigrationCommand(cmd string) Option {
	return func(o *options) { o.migrate = cmd }
}

// DefaultMigrationCommand is the migration command shown when none was
// set with WithMigrationCommand.
const DefaultMigrationCommand = "sigil keys encrypt -data-dir <server data_dir> -passphrase-file <passphrase file>"

func newOptions(opts []Option) options {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if o.migrate == "" {
		o.migrate = DefaultMigrationCommand
	}
	return o
}

// form is how a key file stores its key.
type form int

const (
	formOther     form = iota // not a key file this package wrote
	formClear                 // PEM "PRIVATE KEY": PKCS#8 in clear
	formEncrypted             // PEM "ENCRYPTED PRIVATE KEY": PKCS#8 under PBES2
)

// classify returns the form of a key file's content and its PEM block.
func classify(data []byte) (form, *pem.Block) {
	block, rest := pem.Decode(data)
	if block == nil || len(strings.TrimSpace(string(rest))) != 0 {
		return formOther, nil
	}
	switch block.Type {
	case pemType:
		return formClear, block
	case encPEMType:
		return formEncrypted, block
	}
	return formOther, nil
}

// encodeKey returns k as a PKCS#8 PEM file, encrypted with passphrase
// (AES-256-CBC, key by PBKDF2-HMAC-SHA256) unless passphrase is empty.
func encodeKey(k crypto.Signer, passphrase []byte) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	defer clear(der)
	if len(passphrase) == 0 {
		return pem.EncodeToMemory(&pem.Block{Type: pemType, Bytes: der}), nil
	}
	block, err := pemutil.EncryptPKCS8PrivateKey(rand.Reader, der, passphrase, x509.PEMCipherAES256)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(block), nil
}

// errWrongPassphrase is wrapped by the errors of key files that do not
// decrypt with the configured passphrase.
var errWrongPassphrase = errors.New("wrong passphrase or damaged file")

// decodeKey parses the key file at path (content data) in either form;
// passphrase decrypts an encrypted one. It does not check that the form
// matches the configuration: decodeFile does.
func decodeKey(path string, data, passphrase []byte) (crypto.Signer, error) {
	f, block := classify(data)
	var parsed any
	var err error
	switch f {
	case formClear:
		parsed, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		clear(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("ca/keymanager/disk: key file %s: %w", path, err)
		}
	case formEncrypted:
		if len(passphrase) == 0 {
			return nil, fmt.Errorf("ca/keymanager/disk: key file %s is encrypted and no passphrase is configured", path)
		}
		parsed, err = pemutil.ParseKey(data, pemutil.WithPassword(passphrase), pemutil.WithFilename(filepath.Base(path)))
		switch {
		case errors.Is(err, x509.IncorrectPasswordError):
			return nil, fmt.Errorf("ca/keymanager/disk: cannot decrypt key file %s: %w", path, errWrongPassphrase)
		case err != nil:
			// Decryption under a wrong key fails on the padding or, rarely,
			// yields bytes that are not PKCS#8; a damaged file or one
			// another tool encrypted fails on its structure.
			return nil, fmt.Errorf("ca/keymanager/disk: cannot decrypt key file %s: %w (%v)", path, errWrongPassphrase, err)
		}
	default:
		return nil, fmt.Errorf("ca/keymanager/disk: key file %s is not a single PEM %q or %q block", path, pemType, encPEMType)
	}
	k, ok := parsed.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("ca/keymanager/disk: key file %s holds a %T, not a signing key", path, parsed)
	}
	return k, nil
}

// decodeFile parses the key file at path, refusing a form that does not
// match the configuration.
func (m *KeyManager) decodeFile(path string, data []byte) (crypto.Signer, error) {
	f, _ := classify(data)
	if err := m.formError(path, f); err != nil {
		return nil, err
	}
	return decodeKey(path, data, m.enc.passphrase)
}

// formError refuses a key file in clear when a passphrase is configured,
// and an encrypted one when none is.
func (m *KeyManager) formError(path string, f form) error {
	encrypting := len(m.enc.passphrase) > 0
	switch {
	case f == formClear && encrypting:
		return fmt.Errorf("ca/keymanager/disk: key file %s is not encrypted but a passphrase is configured; with the server stopped, encrypt the existing keys with: %s", path, m.enc.migrate)
	case f == formEncrypted && !encrypting:
		return fmt.Errorf("ca/keymanager/disk: key file %s is encrypted and no passphrase is configured: set passphrase_file or passphrase_env in the key_manager \"disk\" block", path)
	}
	return nil
}

// keyFiles returns the key files in dir (sorted), none if dir does not
// exist.
func keyFiles(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var files []string
	for _, e := range ents {
		name := e.Name()
		if !strings.HasSuffix(name, fileSuffix) || strings.HasPrefix(name, ".") || e.IsDir() {
			continue
		}
		files = append(files, filepath.Join(dir, name))
	}
	return files, nil
}

// check refuses a directory whose key files are not all in the configured
// form, and with a passphrase, checks it against the first encrypted key
// (which is then cached), so that a wrong passphrase fails before the
// server uses anything. Files that are not key files of either form are
// left for GetKey to report.
func (m *KeyManager) check() error {
	files, err := keyFiles(m.dir)
	if err != nil {
		return fmt.Errorf("ca/keymanager/disk: listing key directory: %w", err)
	}
	var firstEncrypted string
	var firstData []byte
	defer func() { clear(firstData) }()
	for _, path := range files {
		data, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("ca/keymanager/disk: reading key file: %w", err)
		}
		f, _ := classify(data)
		if err := m.formError(path, f); err != nil {
			clear(data)
			return err
		}
		if f == formEncrypted && firstEncrypted == "" {
			firstEncrypted, firstData = path, data
			continue
		}
		clear(data)
	}
	if firstEncrypted == "" {
		return nil
	}
	k, err := decodeKey(firstEncrypted, firstData, m.enc.passphrase)
	if err != nil {
		return err
	}
	m.cache[strings.TrimSuffix(filepath.Base(firstEncrypted), fileSuffix)] = k
	return nil
}
