// Package ca is Sigil's certificate authority: it holds this server's CA key
// (through a KeyManager plugin, so the private key stays on this node or in
// its KMS/HSM), keeps the self-signed CA certificate that is published in the
// trust bundle, and mints X.509-SVIDs from public keys and CSRs.
//
// Only public material ever leaves the package: certificates, never keys.
package ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-id/sigil/clock"
	"github.com/sigil-id/sigil/internal/atomicfile"
	"github.com/sigil-id/sigil/internal/trustbundle"
)

// Meter receives instrumentation; NoopMeter is the default.
type Meter interface {
	// X509SVIDSigned is called once per SignX509SVID call with its duration
	// and result.
	X509SVIDSigned(d time.Duration, err error)
}

// NoopMeter is a Meter that records nothing.
type NoopMeter struct{}

// X509SVIDSigned does nothing.
func (NoopMeter) X509SVIDSigned(time.Duration, error) {}

// Defaults of Config.
const (
	DefaultKeyType     = KeyTypeECP256
	DefaultCATTL       = 24 * time.Hour
	DefaultX509SVIDTTL = time.Hour
	DefaultBackdate    = 10 * time.Second
)

// Config configures a CA.
type Config struct {
	TrustDomain spiffeid.TrustDomain
	// ServerID is the node name; it goes into the CA subject (CN and
	// serialNumber) so the CAs of different servers differ.
	ServerID   string
	KeyManager KeyManager
	KeyType    KeyType // default KeyTypeECP256
	// CertPath is where the CA certificate (PEM) is persisted; "" means it
	// is not persisted and every New mints a fresh CA.
	CertPath    string
	CATTL       time.Duration // default 24h
	X509SVIDTTL time.Duration // default 1h
	Backdate    time.Duration // NotBefore backdating, default 10s
	Clock       clock.Clock   // default clock.New()
	Meter       Meter         // default NoopMeter
	// KeyObserver, when not nil, is told the outcome of every key
	// manager call and signature (see KeyObserver); nil by default.
	KeyObserver KeyObserver
	// Upstream, when not nil, signs the CA certificates the slot Manager
	// prepares (see UpstreamAuthority); nil: self-signed. New (the
	// single CA without slots) ignores it.
	Upstream UpstreamAuthority
	// AllowIntermediates makes self-signed CA certificates allow one
	// level of intermediate CAs below them (path length 1), for servers
	// that sign downstream clusters' CAs; false: path length 0.
	AllowIntermediates bool
	// X509SVIDTemplate and CATemplate, when not nil, are the operator's
	// certificate templates for X.509-SVIDs and for this server's CA
	// certificates (see template.go); nil: Sigil's certificates as they
	// are, at no cost.
	X509SVIDTemplate *X509SVIDTemplate
	CATemplate       *CATemplate
}

// DefaultConfig returns a Config with every default filled in. The trust
// domain, server ID and key manager are left for the caller.
func DefaultConfig() Config {
	return Config{
		KeyType:     DefaultKeyType,
		CATTL:       DefaultCATTL,
		X509SVIDTTL: DefaultX509SVIDTTL,
		Backdate:    DefaultBackdate,
		Clock:       clock.New(),
		Meter:       NoopMeter{},
	}
}

// Validate fills unset (zero) fields with their defaults and reports the
// first field that is invalid.
func (c *Config) Validate() error {
	d := DefaultConfig()
	if c.KeyType == "" {
		c.KeyType = d.KeyType
	}
	if c.CATTL == 0 {
		c.CATTL = d.CATTL
	}
	if c.X509SVIDTTL == 0 {
		c.X509SVIDTTL = d.X509SVIDTTL
	}
	if c.Backdate == 0 {
		c.Backdate = d.Backdate
	}
	if c.Clock == nil {
		c.Clock = d.Clock
	}
	if c.Meter == nil {
		c.Meter = d.Meter
	}
	switch {
	case c.TrustDomain.IsZero():
		return errors.New("ca: config: trust domain is required")
	case c.ServerID == "":
		return errors.New("ca: config: server ID is required")
	case c.KeyManager == nil:
		return errors.New("ca: config: key manager is required")
	case c.CATTL < 0:
		return fmt.Errorf("ca: config: CA TTL %v is negative", c.CATTL)
	case c.X509SVIDTTL < 0:
		return fmt.Errorf("ca: config: X509-SVID TTL %v is negative", c.X509SVIDTTL)
	case c.Backdate < 0:
		return fmt.Errorf("ca: config: backdate %v is negative", c.Backdate)
	case c.Backdate >= c.CATTL:
		return fmt.Errorf("ca: config: backdate %v is not shorter than the CA TTL %v", c.Backdate, c.CATTL)
	}
	if err := c.KeyType.Validate(); err != nil {
		return fmt.Errorf("ca: config: %w", err)
	}
	return nil
}

// CA mints X.509-SVIDs with one server's CA key. It is safe for concurrent
// use.
type CA struct {
	cfg    Config
	td     spiffeid.TrustDomain
	signer crypto.Signer
	cert   *x509.Certificate
	// upstream are the certificates between cert and an upstream root
	// when an upstream authority signed cert (nil for a self-signed CA);
	// svidChain is what follows an SVID in its chain: cert and upstream,
	// or nothing for a self-signed CA (its certificate is a root of the
	// bundle).
	upstream  []*x509.Certificate
	svidChain []*x509.Certificate
	// roots carries the upstream's roots from upstreamSignLocked to the
	// slot it prepares; nil otherwise.
	roots []*x509.Certificate
	// subjectKeyID is the CA's SubjectKeyId, used as AuthorityKeyId.
	subjectKeyID []byte

	// fastOnce builds fast, the fast X.509-SVID encoder (fastsvid.go),
	// on first use; fast stays nil when it does not apply to this CA.
	fastOnce sync.Once
	fast     *svidEncoder
}

// newChainedCA returns the CA of signer whose certificate cert an upstream
// authority signed, upstream being the certificates between cert and the
// upstream's root (none when a root signed it); upstream nil with
// selfSigned true is a self-signed CA.
func newChainedCA(cfg Config, signer crypto.Signer, cert *x509.Certificate, upstream []*x509.Certificate, selfSigned bool) *CA {
	c := &CA{cfg: cfg, td: cfg.TrustDomain, signer: signer, cert: cert, subjectKeyID: cert.SubjectKeyId}
	if !selfSigned {
		c.upstream = upstream
		c.svidChain = append([]*x509.Certificate{cert}, upstream...)
	}
	return c
}

// Chain returns the CA certificate followed by the certificates between
// it and an upstream root (just the CA certificate when it is
// self-signed). The caller must not modify it.
func (c *CA) Chain() []*x509.Certificate {
	return append([]*x509.Certificate{c.cert}, c.upstream...)
}

// Upstream reports whether an upstream authority signed the CA
// certificate.
func (c *CA) Upstream() bool { return len(c.svidChain) > 0 }

// New loads the CA key "x509-ca" and the certificate at CertPath if both
// exist, match each other and this configuration (trust domain, CA), and the
// certificate has not expired; otherwise it generates a fresh key and a
// self-signed CA certificate and persists the certificate (0644 PEM).
//
// A certificate file that exists but cannot be read or parsed is an error:
// New does not silently replace what it cannot understand.
func New(ctx context.Context, cfg Config) (*CA, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c := &CA{cfg: cfg, td: cfg.TrustDomain}

	signer, cert, err := c.load(ctx)
	if err != nil {
		return nil, err
	}
	if signer == nil {
		signer, err = cfg.KeyManager.GenerateKey(ctx, caKeyID, cfg.KeyType)
		observe(cfg.KeyObserver, KeyOpGenerate, err)
		if err != nil {
			return nil, fmt.Errorf("ca: generating CA key: %w", err)
		}
		signer = reacquiring(observeSigner(signer, cfg.KeyObserver), cfg.KeyManager, caKeyID, cfg.Clock, cfg.KeyObserver)
		cert, err = c.selfSign(signer)
		if err != nil {
			return nil, err
		}
		if cfg.CertPath != "" {
			if err := writeCertPEM(cfg.CertPath, cert); err != nil {
				return nil, err
			}
		}
	}
	c.signer = signer
	c.cert = cert
	c.subjectKeyID = cert.SubjectKeyId
	return c, nil
}

// load returns the persisted key and certificate if they can be reused, or
// nil, nil, nil if a new CA must be generated.
func (c *CA) load(ctx context.Context) (crypto.Signer, *x509.Certificate, error) {
	if c.cfg.CertPath == "" {
		return nil, nil, nil
	}
	data, err := os.ReadFile(c.cfg.CertPath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("ca: reading CA certificate: %w", err)
	}
	cert, err := parseCertPEM(data)
	if err != nil {
		return nil, nil, fmt.Errorf("ca: CA certificate %s: %w", c.cfg.CertPath, err)
	}
	signer, err := c.cfg.KeyManager.GetKey(ctx, caKeyID)
	observe(c.cfg.KeyObserver, KeyOpGet, err)
	if errors.Is(err, ErrKeyNotFound) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("ca: loading CA key: %w", err)
	}
	if !c.reusable(signer, cert) {
		return nil, nil, nil
	}
	return reacquiring(observeSigner(signer, c.cfg.KeyObserver), c.cfg.KeyManager, caKeyID, c.cfg.Clock, c.cfg.KeyObserver), cert, nil
}

// reusable reports whether a persisted certificate and key make a CA this
// configuration can keep using.
func (c *CA) reusable(signer crypto.Signer, cert *x509.Certificate) bool {
	pub, ok := signer.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(cert.PublicKey) {
		return false
	}
	if !cert.IsCA || !cert.BasicConstraintsValid || len(cert.SubjectKeyId) == 0 {
		return false
	}
	if len(cert.URIs) != 1 || cert.URIs[0].String() != c.td.IDString() {
		return false
	}
	if cert.Subject.SerialNumber != c.cfg.ServerID {
		return false
	}
	if cert.CheckSignatureFrom(cert) != nil {
		return false
	}
	return c.cfg.Clock.Now().Before(cert.NotAfter)
}

// reusableChained reports whether a persisted certificate that an upstream
// authority signed, with the certificates upstream above it, and key make
// a CA this configuration can keep using: the key matches, it is a CA of
// this trust domain, and the chain still verifies to roots now.
func (c *CA) reusableChained(signer crypto.Signer, cert *x509.Certificate, upstream, roots []*x509.Certificate) error {
	if len(roots) == 0 {
		return errors.New("no upstream roots recorded")
	}
	resp := &X509CAResponse{Chain: append([]*x509.Certificate{cert}, upstream...), Roots: roots}
	return CheckUpstreamResponse(resp, c.td, signer.Public(), c.cfg.Clock.Now())
}

func (c *CA) selfSign(signer crypto.Signer) (*x509.Certificate, error) {
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	ski, err := subjectKeyID(signer.Public())
	if err != nil {
		return nil, err
	}
	now := c.cfg.Clock.Now()
	tdURI := c.td.ID().URL()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               defaultCASubject(c.cfg.ServerID),
		NotBefore:             now.Add(-c.cfg.Backdate),
		NotAfter:              now.Add(c.cfg.CATTL),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		// The CA signs leaves only, so no intermediate CA verifies under
		// it, unless it signs downstream clusters' CAs (one level).
		MaxPathLen:     0,
		MaxPathLenZero: !c.cfg.AllowIntermediates,
		// A critical name constraints extension: URIs only in this trust
		// domain (spiffe://td/...), so a certificate for another trust
		// domain signed with this key does not verify; no IP addresses
		// (no SVID carries one). DNS names stay unconstrained: registration
		// entries' dns_names go into workload SVIDs.
		PermittedDNSDomainsCritical: true,
		PermittedURIDomains:         []string{c.td.Name()},
		ExcludedIPRanges:            []*net.IPNet{{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, {IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}},
		URIs:                        []*url.URL{tdURI},
		SubjectKeyId:                ski,
	}
	if c.cfg.AllowIntermediates {
		tmpl.MaxPathLen = 1
	}
	// Operator template (template.go): nil = none, nothing done.
	if tmpl, err = c.cfg.CATemplate.apply(tmpl, c.td, c.cfg.ServerID); err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, signer.Public(), signer)
	if err != nil {
		return nil, fmt.Errorf("ca: self-signing CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("ca: parsing new CA certificate: %w", err)
	}
	return cert, nil
}

// Certificate returns the CA certificate. The caller must not modify it.
func (c *CA) Certificate() *x509.Certificate { return c.cert }

// newSerial returns a random positive serial number with 127 bits of
// entropy (16 octets with the top bit clear, so the DER INTEGER needs no
// padding octet).
func newSerial() (*big.Int, error) {
	var b [16]byte
	for {
		if _, err := rand.Read(b[:]); err != nil {
			return nil, fmt.Errorf("ca: generating serial number: %w", err)
		}
		b[0] &= 0x7f
		if s := new(big.Int).SetBytes(b[:]); s.Sign() > 0 {
			return s, nil
		}
	}
}

// subjectKeyID derives a key identifier from the subjectPublicKey bit
// string: the leftmost 160 bits of its SHA-256 hash (RFC 7093, method 1).
func subjectKeyID(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("ca: marshaling public key: %w", err)
	}
	var spki struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(der, &spki); err != nil {
		return nil, fmt.Errorf("ca: parsing public key: %w", err)
	}
	sum := sha256.Sum256(spki.PublicKey.Bytes)
	return sum[:20], nil
}

func parseCertPEM(data []byte) (*x509.Certificate, error) {
	block, rest := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM CERTIFICATE block")
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, errors.New("unexpected data after the certificate")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, err
	}
	return cert, nil
}

// writeCertPEM writes cert to path atomically with mode 0644.
func writeCertPEM(path string, cert *x509.Certificate) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("ca: creating CA certificate directory: %w", err)
	}
	data := trustbundle.EncodePEM([]*x509.Certificate{cert})
	if err := atomicfile.WriteFile(path, data, 0o644); err != nil {
		return fmt.Errorf("ca: persisting CA certificate: %w", err)
	}
	return nil
}
