package x509pop

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
)

// maxFileSize bounds the agent's certificate and key files.
const maxFileSize = 1 << 20

// AgentConfig is the agent half's configuration: the block
// node_attestor "x509pop" { certificate_path = ... private_key_path = ... }
// in an agent's plugins.
type AgentConfig struct {
	// CertificatePath is a PEM file of the agent's certificate chain,
	// leaf first (intermediates may follow; the root need not).
	CertificatePath string
	// PrivateKeyPath is a PEM file of the leaf's private key (PKCS#8, EC
	// or RSA PRIVATE KEY), readable only by its owner.
	PrivateKeyPath string
}

// Validate checks the configuration without reading files.
func (c AgentConfig) Validate() error {
	if c.CertificatePath == "" {
		return errors.New("x509pop: certificate_path is required")
	}
	if c.PrivateKeyPath == "" {
		return errors.New("x509pop: private_key_path is required")
	}
	return nil
}

// Attestor is the agent half. It reads its files when built (so that a
// bad file fails at start) and again for every attestation (so that a
// renewed certificate is used without restarting). It runs one
// attestation at a time: Answer signs for the chain of the last Payload.
type Attestor struct {
	cfg         AgentConfig
	trustDomain string

	mu    sync.Mutex
	chain [][]byte
	key   crypto.Signer
}

// NewAttestor returns the agent half for trustDomain (the agent's trust
// domain, bound into every answer: an answer for another trust domain does
// not verify). It loads and checks the certificate and key.
func NewAttestor(trustDomain string, cfg AgentConfig) (*Attestor, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if trustDomain == "" {
		return nil, errors.New("x509pop: the attestor needs the trust domain")
	}
	a := &Attestor{cfg: cfg, trustDomain: trustDomain}
	if _, _, err := a.load(); err != nil {
		return nil, err
	}
	return a, nil
}

// Name returns Name.
func (*Attestor) Name() string { return Name }

// Payload reads the certificate chain and key and returns the chain.
func (a *Attestor) Payload(context.Context) ([]byte, error) {
	chain, key, err := a.load()
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	a.chain, a.key = chain, key
	a.mu.Unlock()
	return encodePayload(chain)
}

// Answer signs the server's nonce, bound to the trust domain and the chain
// of the last Payload, with the leaf's key.
func (a *Attestor) Answer(_ context.Context, challenge []byte) ([]byte, error) {
	if len(challenge) < NonceSize || len(challenge) > 2*NonceSize {
		return nil, fmt.Errorf("x509pop: the server's challenge has %d bytes, want a nonce of %d to %d bytes", len(challenge), NonceSize, 2*NonceSize)
	}
	a.mu.Lock()
	chain, key := a.chain, a.key
	a.mu.Unlock()
	if key == nil {
		return nil, errors.New("x509pop: a challenge before the payload")
	}
	ans, err := sign(key, SignedMessage(a.trustDomain, challenge, chain))
	if err != nil {
		return nil, err
	}
	return json.Marshal(ans)
}

// load reads the chain and the key and checks that the key is the leaf's.
func (a *Attestor) load() ([][]byte, crypto.Signer, error) {
	certPEM, err := readFile("certificate_path", a.cfg.CertificatePath, false)
	if err != nil {
		return nil, nil, err
	}
	var chain [][]byte
	rest := certPEM
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			return nil, nil, fmt.Errorf("x509pop: certificate_path %s: PEM block %q, want CERTIFICATE", a.cfg.CertificatePath, blk.Type)
		}
		chain = append(chain, blk.Bytes)
	}
	if len(chain) == 0 {
		return nil, nil, fmt.Errorf("x509pop: certificate_path %s holds no PEM certificate", a.cfg.CertificatePath)
	}
	if len(chain) > MaxChainLen {
		return nil, nil, fmt.Errorf("x509pop: certificate_path %s holds %d certificates, at most %d", a.cfg.CertificatePath, len(chain), MaxChainLen)
	}
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		return nil, nil, fmt.Errorf("x509pop: certificate_path %s: the first certificate (the leaf): %w", a.cfg.CertificatePath, err)
	}
	if _, err := schemesFor(leaf.PublicKey); err != nil {
		return nil, nil, fmt.Errorf("x509pop: certificate_path %s: the leaf's key: %w", a.cfg.CertificatePath, err)
	}
	keyPEM, err := readFile("private_key_path", a.cfg.PrivateKeyPath, true)
	if err != nil {
		return nil, nil, err
	}
	key, err := parseKey(keyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("x509pop: private_key_path %s: %w", a.cfg.PrivateKeyPath, err)
	}
	if !samePublic(key.Public(), leaf.PublicKey) {
		return nil, nil, fmt.Errorf("x509pop: private_key_path %s is not the key of the leaf certificate in %s", a.cfg.PrivateKeyPath, a.cfg.CertificatePath)
	}
	return chain, key, nil
}

// readFile reads a bounded regular file; a secret must not be accessible
// to group or others.
func readFile(key, path string, secret bool) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("x509pop: %s: %w", key, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("x509pop: %s: %w", key, err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("x509pop: %s %s is not a regular file", key, path)
	}
	if perm := st.Mode().Perm(); secret && perm&0o077 != 0 {
		return nil, fmt.Errorf("x509pop: %s %s is accessible by group or others (mode %04o): a private key must be readable only by its owner; run: chmod 600 %s", key, path, perm, path)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("x509pop: %s: reading %s: %w", key, path, err)
	}
	if len(b) > maxFileSize {
		return nil, fmt.Errorf("x509pop: %s %s is larger than %d bytes", key, path, maxFileSize)
	}
	return b, nil
}

// parseKey parses the first PEM private key block (PKCS#8, SEC 1 EC or
// PKCS#1 RSA). Errors never contain the key.
func parseKey(b []byte) (crypto.Signer, error) {
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return nil, errors.New("no PEM private key (want PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY)")
		}
		var (
			k   any
			err error
		)
		switch blk.Type {
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(blk.Bytes)
		case "RSA PRIVATE KEY":
			k, err = x509.ParsePKCS1PrivateKey(blk.Bytes)
		case "EC PARAMETERS":
			continue
		default:
			return nil, fmt.Errorf("PEM block %q is not a private key (want PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY)", blk.Type)
		}
		if err != nil {
			return nil, fmt.Errorf("parsing the %s block failed", blk.Type)
		}
		switch k := k.(type) {
		case *ecdsa.PrivateKey:
			return k, nil
		case ed25519.PrivateKey:
			return k, nil
		case *rsa.PrivateKey:
			return k, nil
		}
		return nil, fmt.Errorf("unsupported private key type %T", k)
	}
}

func samePublic(a, b any) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	e, ok := a.(equaler)
	return ok && e.Equal(b)
}
