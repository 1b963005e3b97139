package agent

import (
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

	"github.com/sigil-id/sigil/internal/atomicfile"
	"github.com/sigil-id/sigil/internal/trustbundle"
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

// encodeCerts and parsePEMCerts are the PEM forms of the agent's files
// (agent-svid.pem, bundle.pem, the bootstrap trust bundle).
var (
	encodeCerts   = trustbundle.EncodePEM
	parsePEMCerts = trustbundle.ParsePEM
)

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

// saveIdentity persists the agent SVID and key. Both are written beside
// their final names first and then renamed, so that loadIdentity can
// always find a matching pair, even after a crash between the renames.
func saveIdentity(dir string, id *identity) error {
	keyPEM, err := encodeKey(id.key)
	if err != nil {
		return fmt.Errorf("encode agent key: %w", err)
	}
	svidPath, keyPath := filepath.Join(dir, svidFileName), filepath.Join(dir, keyFileName)
	if err := atomicfile.WriteFile(keyPath+newSuffix, keyPEM, 0o600); err != nil {
		return err
	}
	if err := atomicfile.WriteFile(svidPath+newSuffix, encodeCerts(id.chain), 0o644); err != nil {
		return err
	}
	if err := atomicfile.Rename(keyPath+newSuffix, keyPath); err != nil {
		return err
	}
	return atomicfile.Rename(svidPath+newSuffix, svidPath)
}

func saveBundle(dir string, b *x509bundle.Bundle) error {
	return atomicfile.WriteFile(filepath.Join(dir, bundleFileName), encodeCerts(b.X509Authorities()), 0o644)
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
			if err := atomicfile.Rename(keyPath+newSuffix, keyPath); err != nil {
				return err
			}
			return atomicfile.Rename(svidPath+newSuffix, svidPath)
		}},
		{newCert, curKey, func() error { return atomicfile.Rename(svidPath+newSuffix, svidPath) }},
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

// SavedIdentityValid reports whether dataDir holds a saved agent SVID of
// td that is still valid at now, so that an agent started on it serves
// without attesting. A supervisor that attests the agent itself (`sigil
// dev`) uses it to give the agent a new join token when the saved SVID
// expired while the agent was stopped: a join token works once, so the
// agent cannot re-attest with the one it spent.
func SavedIdentityValid(dataDir string, td spiffeid.TrustDomain, now time.Time) bool {
	id, err := loadIdentity(dataDir, td)
	return err == nil && id != nil && now.Before(id.notAfter)
}
