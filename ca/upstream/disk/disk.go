// Package disk is the upstream authority (ca.UpstreamAuthority) of an
// operator's existing PKI: a CA certificate and its key, kept in files (or
// the key in a PKCS#11 token), sign the CA certificate of every Sigil
// server of the trust domain, so that SVIDs chain to the operator's root
// and the trust bundle publishes that root, which no rotation of the
// servers' CA keys changes.
//
// # Files
//
//   - cert_file (CertFile): PEM certificates, the signing CA certificate
//     first, then optionally its chain toward the root. Certificates of
//     the chain that are roots (self-signed, or listed in bundle_file) are
//     not sent with the answers.
//   - bundle_file (BundleFile, optional): PEM root certificates, the trust
//     anchors the chains verify to. Without it, the roots are the
//     self-signed certificates at the end of cert_file.
//   - key_file (KeyFile): the signing certificate's private key in PEM
//     (PKCS#8, SEC 1 or PKCS#1), optionally encrypted (an "ENCRYPTED
//     PRIVATE KEY" or a legacy encrypted PEM block) under a passphrase
//     that comes from a file or an environment variable, never from the
//     configuration. Or, instead, a key already in a PKCS#11 token
//     (PKCS11Key), found by label and/or id, used through
//     go.step.sm/crypto's PKCS#11 backend: it never leaves the token.
//
// # Checks
//
// New refuses, with an error naming the file or field, files that are
// missing or do not parse, a key that is not the signing certificate's, a
// signing certificate that is not a CA with the certSign key usage, that
// is not valid now, or whose path length (or that of a certificate above
// it) leaves no room for one more CA below it, URI name constraints that
// exclude the trust domain, and a chain that does not verify to the roots
// now. MintX509CA checks the material again (it may have expired since)
// and checks its own answer with ca.CheckUpstreamResponse before giving
// it.
//
// # Reload
//
// The files are looked at (size and modification time) on every
// MintX509CA and Roots call: when the operator replaced them, they are
// read and checked again, and the new certificate signs the next CA. New
// files that fail a check are logged and ignored (the previous material
// stays in use) until they change again.
//
// # Security
//
// The signing key can sign a CA certificate for any server of the trust
// domain, and with it SVIDs of every workload: it is as valuable as the
// trust domain itself. In key_file it lives on every server's disk and in
// its memory, and root on a server obtains it (with the passphrase, from
// its file or the process environment). In a PKCS#11 hardware token the
// key never leaves the token; root on a server obtains the PIN and the use
// of the key for as long as they hold the server.
package disk

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"

	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/clock"
)

// Config says where the upstream certificate and key are.
type Config struct {
	// CertFile holds the signing CA certificate, then optionally its
	// chain toward the root (PEM).
	CertFile string
	// BundleFile holds the root certificates (PEM); empty: the
	// self-signed certificates at the end of CertFile.
	BundleFile string
	// KeyFile holds the signing certificate's private key (PEM). Exactly
	// one of KeyFile and PKCS11 is set.
	KeyFile string
	// Passphrase decrypts an encrypted KeyFile; empty for a key in clear.
	// It never appears in logs or errors.
	Passphrase []byte
	// PKCS11 is a key in a PKCS#11 token, instead of KeyFile.
	PKCS11 *PKCS11Key
	// TrustDomain is the trust domain of the servers whose CA
	// certificates are signed; name constraints of the upstream chain
	// must permit it.
	TrustDomain spiffeid.TrustDomain
	// Backdate moves the NotBefore of the CA certificates into the past,
	// for clocks that lag; default ca.DefaultBackdate.
	Backdate time.Duration
	// Clock tells the time; default the wall clock.
	Clock clock.Clock
	// Logger reports reloads; default none.
	Logger *zap.Logger
}

// DefaultConfig returns a Config with the defaults filled in; the files,
// the key and the trust domain are the caller's.
func DefaultConfig() Config {
	return Config{Backdate: ca.DefaultBackdate, Clock: clock.New(), Logger: zap.NewNop()}
}

// Validate fills the defaults of unset fields and reports what is wrong
// with c. It does not read the files.
func (c *Config) Validate() error {
	d := DefaultConfig()
	if c.Clock == nil {
		c.Clock = d.Clock
	}
	if c.Logger == nil {
		c.Logger = d.Logger
	}
	if c.Backdate == 0 {
		c.Backdate = d.Backdate
	}
	switch {
	case c.CertFile == "":
		return errors.New("ca/upstream/disk: cert_file is not set")
	case c.TrustDomain.IsZero():
		return errors.New("ca/upstream/disk: the trust domain is not set")
	case c.Backdate < 0:
		return fmt.Errorf("ca/upstream/disk: backdate %v is negative", c.Backdate)
	case c.KeyFile == "" && c.PKCS11 == nil:
		return errors.New("ca/upstream/disk: no key: set key_file or key_pkcs11")
	case c.KeyFile != "" && c.PKCS11 != nil:
		return errors.New("ca/upstream/disk: both key_file and key_pkcs11 are set: keep one")
	case c.PKCS11 != nil && len(c.Passphrase) > 0:
		return errors.New("ca/upstream/disk: a passphrase is for key_file, not for a key in a PKCS#11 token")
	}
	if c.PKCS11 != nil {
		return c.PKCS11.validate()
	}
	return nil
}

// Authority signs CA certificates with the upstream key (ca.UpstreamAuthority).
// It is safe for concurrent use. Close releases its PKCS#11 session.
type Authority struct {
	cfg   Config
	token *token // nil for key_file

	mu       sync.Mutex
	cur      *material // never nil after New
	curStamp stamp
	// badStamp is the state of the files that last failed to load: they
	// are not read again until they change.
	badStamp stamp
	badErr   error
	closed   bool
}

var (
	_ ca.UpstreamAuthority = (*Authority)(nil)
	_ io.Closer            = (*Authority)(nil)
)

// New checks cfg, opens the PKCS#11 token if the key is in one, reads and
// checks the files (see the package documentation), and returns the
// Authority. Any failure is an error naming the file or field; nothing is
// left open.
func New(cfg Config) (*Authority, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.Passphrase = slices.Clone(cfg.Passphrase)
	a := &Authority{cfg: cfg}
	if cfg.PKCS11 != nil {
		tok, err := openToken(*cfg.PKCS11)
		if err != nil {
			return nil, err
		}
		a.token = tok
	}
	st := a.stat()
	m, err := a.load(cfg.Clock.Now())
	if err != nil {
		if a.token != nil {
			_ = a.token.close()
		}
		return nil, err
	}
	a.cur, a.curStamp = m, st
	cfg.Logger.Info("upstream authority ready",
		zap.String("signing_certificate", describe(m.cert)),
		zap.Time("not_after", m.notAfter),
		zap.Int("chain_certificates", len(m.chain)),
		zap.Int("roots", len(m.roots)))
	return a, nil
}

// MintX509CA signs the CA certificate of req (ca.UpstreamCATemplate) with
// the upstream key. The answer's chain is the new certificate, the
// signing certificate and the intermediates of cert_file (roots left
// out); its roots are the upstream roots. The answer is checked with
// ca.CheckUpstreamResponse before it is returned.
func (a *Authority) MintX509CA(ctx context.Context, req ca.X509CARequest) (*ca.X509CAResponse, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if req.TrustDomain != a.cfg.TrustDomain {
		return nil, fmt.Errorf("ca/upstream/disk: CA requested for trust domain %q, this upstream signs for %q", req.TrustDomain, a.cfg.TrustDomain)
	}
	m, bad, err := a.current()
	if err != nil {
		return nil, err
	}
	now := a.cfg.Clock.Now()
	notAfter, err := m.check(a.cfg.TrustDomain, now)
	if err != nil {
		if bad != nil {
			return nil, fmt.Errorf("%w; the replacement files are not usable either: %s", err, strings.TrimPrefix(bad.Error(), "ca/upstream/disk: "))
		}
		return nil, err
	}
	tmpl, pub, err := ca.UpstreamCATemplate(req, now, a.cfg.Backdate, notAfter)
	if err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, m.cert, pub, m.signer)
	if err != nil {
		return nil, fmt.Errorf("ca/upstream/disk: signing the CA certificate with the upstream key: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("ca/upstream/disk: parsing the CA certificate just signed: %w", err)
	}
	resp := &ca.X509CAResponse{
		Chain: append([]*x509.Certificate{cert}, m.chain...),
		Roots: slices.Clone(m.roots),
	}
	if err := ca.CheckUpstreamResponse(resp, a.cfg.TrustDomain, pub, now); err != nil {
		return nil, fmt.Errorf("ca/upstream/disk: the CA certificate just signed fails its check: %w", err)
	}
	return resp, nil
}

// Roots returns the upstream roots: bundle_file's certificates, or the
// self-signed certificates at the end of cert_file.
func (a *Authority) Roots(ctx context.Context) ([]*x509.Certificate, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m, _, err := a.current()
	if err != nil {
		return nil, err
	}
	return slices.Clone(m.roots), nil
}

// Close releases the PKCS#11 session, if the key is in a token. MintX509CA
// fails from then on; Close may be called more than once.
func (a *Authority) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return nil
	}
	a.closed = true
	if a.token != nil {
		return a.token.close()
	}
	return nil
}

// errClosed is returned by an Authority's methods after Close.
var errClosed = errors.New("ca/upstream/disk: the upstream authority is closed")

// current returns the material to use, reading the files again first if
// they changed since they were last read; bad is the error of the last
// replacement that failed to load (nil if none is pending).
func (a *Authority) current() (m *material, bad error, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return nil, nil, errClosed
	}
	st := a.stat()
	if st == a.curStamp {
		return a.cur, nil, nil
	}
	if st == a.badStamp {
		return a.cur, a.badErr, nil
	}
	nm, err := a.load(a.cfg.Clock.Now())
	if err != nil {
		a.badStamp, a.badErr = st, err
		a.cfg.Logger.Warn("the upstream files changed but are not usable: keeping the previous upstream certificate",
			zap.String("signing_certificate", describe(a.cur.cert)), zap.Error(err))
		return a.cur, err, nil
	}
	a.cur, a.curStamp = nm, st
	a.badStamp, a.badErr = stamp{}, nil
	a.cfg.Logger.Info("upstream files reloaded",
		zap.String("signing_certificate", describe(nm.cert)),
		zap.Time("not_after", nm.notAfter),
		zap.Int("chain_certificates", len(nm.chain)),
		zap.Int("roots", len(nm.roots)))
	return nm, nil, nil
}

// fileStamp is what tells that a file changed: its size and modification
// time, or that it could not be looked at.
type fileStamp struct {
	size    int64
	modTime time.Time
	missing bool
}

// stamp is the state of the configured files.
type stamp struct{ cert, bundle, key fileStamp }

// stat looks at the configured files.
func (a *Authority) stat() stamp {
	f := func(path string) fileStamp {
		if path == "" {
			return fileStamp{}
		}
		fi, err := os.Stat(path)
		if err != nil {
			return fileStamp{missing: true}
		}
		// The monotonic reading is stripped so that == compares the
		// file's time only.
		return fileStamp{size: fi.Size(), modTime: fi.ModTime().Round(0)}
	}
	return stamp{cert: f(a.cfg.CertFile), bundle: f(a.cfg.BundleFile), key: f(a.cfg.KeyFile)}
}

// load reads and checks the files (and finds the key in the token again)
// at time now.
func (a *Authority) load(now time.Time) (*material, error) {
	key := func() (crypto.Signer, error) {
		if a.token != nil {
			return a.token.signer()
		}
		return readKeyFile(a.cfg.KeyFile, a.cfg.Passphrase)
	}
	return loadMaterial(a.cfg.CertFile, a.cfg.BundleFile, key, a.cfg.TrustDomain, now)
}
