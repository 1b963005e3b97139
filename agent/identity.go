package agent

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/sigil-id/sigil/registration"
)

// Files in the data directory.
const (
	svidFileName   = "agent_svid.pem"
	keyFileName    = "agent_svid.key"
	bundleFileName = "bundle.pem"
	// newSuffix marks the files of an identity being saved: both are
	// written under it first and then renamed into place.
	newSuffix = ".new"
)

// identity is the agent's own SVID and key.
type identity struct {
	id       spiffeid.ID
	chain    []*x509.Certificate
	key      crypto.Signer
	renewAt  time.Time
	notAfter time.Time
}

func newIdentity(chain []*x509.Certificate, key crypto.Signer) *identity {
	leaf := chain[0]
	id, _ := x509svid.IDFromCert(leaf)
	return &identity{
		id:       id,
		chain:    chain,
		key:      key,
		renewAt:  renewAt(leaf.NotBefore, leaf.NotAfter),
		notAfter: leaf.NotAfter,
	}
}

// checkAgentSVID checks that chain is an agent SVID of trust domain td for
// key (when key is not nil) and returns its ID.
func checkAgentSVID(td spiffeid.TrustDomain, chain []*x509.Certificate, key crypto.Signer) (spiffeid.ID, error) {
	if len(chain) == 0 {
		return spiffeid.ID{}, errors.New("empty certificate chain")
	}
	id, err := x509svid.IDFromCert(chain[0])
	if err != nil {
		return spiffeid.ID{}, err
	}
	if id.TrustDomain() != td {
		return spiffeid.ID{}, fmt.Errorf("agent SVID %q is not in trust domain %q", id, td)
	}
	if !registration.IsAgentID(id) {
		return spiffeid.ID{}, fmt.Errorf("%q is not a Sigil agent ID", id)
	}
	if key != nil && !publicKeyEqual(chain[0].PublicKey, key.Public()) {
		return spiffeid.ID{}, errors.New("agent SVID does not match its private key")
	}
	return id, nil
}

// newKeyAndCSR generates a P-256 key and a PKCS#10 request over it.
func newKeyAndCSR() (crypto.Signer, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate key: %w", err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("create CSR: %w", err)
	}
	return key, csr, nil
}

func parseDERChain(ders [][]byte) ([]*x509.Certificate, error) {
	if len(ders) == 0 {
		return nil, errors.New("empty certificate chain")
	}
	chain := make([]*x509.Certificate, 0, len(ders))
	for i, der := range ders {
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", i, err)
		}
		chain = append(chain, cert)
	}
	return chain, nil
}

func encodeCerts(certs []*x509.Certificate) []byte {
	var buf bytes.Buffer
	for _, c := range certs {
		_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return buf.Bytes()
}

// parsePEMCerts parses every CERTIFICATE block of data.
func parsePEMCerts(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		certs = append(certs, cert)
	}
	if len(certs) == 0 {
		return nil, errors.New("no certificates found")
	}
	return certs, nil
}

func encodeKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func parseKey(data []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, errors.New("no PKCS#8 PRIVATE KEY block")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, err
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("unsupported key type %T", k)
	}
	return s, nil
}

// writeFileSynced writes data to path with perm and flushes it to disk.
func writeFileSynced(path string, data []byte, perm os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// writeFileAtomic replaces path with data: a reader sees the old or the
// new content, never a mix.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			os.Remove(tmp)
		}
	}()
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	ok = true
	return syncDir(dir)
}

// saveIdentity persists the agent SVID and key. Both are written beside
// their final names first and then renamed, so that loadIdentity can
// always find a matching pair, even after a crash between the renames.
func saveIdentity(dir string, id *identity) error {
	keyPEM, err := encodeKey(id.key)
	if err != nil {
		return fmt.Errorf("encode agent key: %w", err)
	}
	svidPath, keyPath := filepath.Join(dir, svidFileName), filepath.Join(dir, keyFileName)
	if err := writeFileSynced(keyPath+newSuffix, keyPEM, 0o600); err != nil {
		return err
	}
	if err := writeFileSynced(svidPath+newSuffix, encodeCerts(id.chain), 0o644); err != nil {
		return err
	}
	if err := os.Rename(keyPath+newSuffix, keyPath); err != nil {
		return err
	}
	if err := os.Rename(svidPath+newSuffix, svidPath); err != nil {
		return err
	}
	return syncDir(dir)
}

func saveBundle(dir string, b *x509bundle.Bundle) error {
	return writeFileAtomic(filepath.Join(dir, bundleFileName), encodeCerts(b.X509Authorities()), 0o644)
}

// loadBundle reads the saved bundle; nil when there is none.
func loadBundle(dir string, td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	data, err := os.ReadFile(filepath.Join(dir, bundleFileName))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	certs, err := parsePEMCerts(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", bundleFileName, err)
	}
	return x509bundle.FromX509Authorities(td, certs), nil
}

// loadIdentity reads the saved agent SVID and key, completing a save that
// was interrupted. It returns nil and no error when there is no saved
// identity.
func loadIdentity(dir string, td spiffeid.TrustDomain) (*identity, error) {
	svidPath, keyPath := filepath.Join(dir, svidFileName), filepath.Join(dir, keyFileName)
	read := func(p string) []byte {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil
		}
		return b
	}
	load := func(certPEM, keyPEM []byte) (*identity, error) {
		if certPEM == nil || keyPEM == nil {
			return nil, fs.ErrNotExist
		}
		chain, err := parsePEMCerts(certPEM)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", svidFileName, err)
		}
		key, err := parseKey(keyPEM)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", keyFileName, err)
		}
		if _, err := checkAgentSVID(td, chain, key); err != nil {
			return nil, err
		}
		return newIdentity(chain, key), nil
	}
	newCert, newKey := read(svidPath+newSuffix), read(keyPath+newSuffix)
	curCert, curKey := read(svidPath), read(keyPath)
	// The newest complete pair wins: both new, new certificate with the
	// key already renamed, or the current pair.
	type pair struct {
		cert, key []byte
		finish    func() error
	}
	pairs := []pair{
		{newCert, newKey, func() error {
			if err := os.Rename(keyPath+newSuffix, keyPath); err != nil {
				return err
			}
			return os.Rename(svidPath+newSuffix, svidPath)
		}},
		{newCert, curKey, func() error { return os.Rename(svidPath+newSuffix, svidPath) }},
		{curCert, curKey, nil},
	}
	var firstErr error
	for _, p := range pairs {
		id, err := load(p.cert, p.key)
		if err != nil {
			if !errors.Is(err, fs.ErrNotExist) && firstErr == nil {
				firstErr = err
			}
			continue
		}
		if p.finish != nil {
			if err := p.finish(); err != nil {
				return nil, err
			}
		}
		os.Remove(svidPath + newSuffix)
		os.Remove(keyPath + newSuffix)
		return id, nil
	}
	if curCert == nil && curKey == nil {
		return nil, nil
	}
	if firstErr == nil {
		firstErr = errors.New("incomplete agent identity")
	}
	return nil, firstErr
}
