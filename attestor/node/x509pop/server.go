package x509pop

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"sync"
	"time"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/attestor/node"
	"github.com/sigil-id/sigil/registration"
)

// Values of ServerConfig.ExtKeyUsage.
const (
	// EKUClientAuth requires the leaf to be valid for TLS client
	// authentication (a leaf without an extended key usage extension is
	// valid for every usage).
	EKUClientAuth = "client_auth"
	// EKUAny accepts any extended key usage.
	EKUAny = "any"
)

// maxBundleSize bounds the CA bundle file.
const maxBundleSize = 4 << 20

// ServerConfig is the server half's configuration: the block
// node_attestor "x509pop" { ca_bundle_path = ... } in a server's plugins.
type ServerConfig struct {
	// CABundlePath is a PEM file of the CA certificates that agents'
	// chains must lead to. It is read when the verifier is built and read
	// again, at the next attestation, whenever its size or modification
	// time changes; if it no longer parses, attestations fail (closed)
	// until it does.
	CABundlePath string
	// AgentIDTemplate renders the agent id from the leaf (see
	// Placeholders); DefaultAgentIDTemplate if empty.
	AgentIDTemplate string
	// ExtKeyUsage is EKUClientAuth (the default when empty) or EKUAny.
	ExtKeyUsage string
}

// DefaultServerConfig returns the defaults: the SHA-256 fingerprint as the
// agent id and the client authentication EKU. CABundlePath has no default.
func DefaultServerConfig() ServerConfig {
	return ServerConfig{AgentIDTemplate: DefaultAgentIDTemplate, ExtKeyUsage: EKUClientAuth}
}

// Validate checks the configuration without reading files.
func (c ServerConfig) Validate() error {
	if c.CABundlePath == "" {
		return errors.New("x509pop: ca_bundle_path is required")
	}
	if _, err := parseIDTemplate(c.template()); err != nil {
		return fmt.Errorf("x509pop: %w", err)
	}
	switch c.ExtKeyUsage {
	case "", EKUClientAuth, EKUAny:
	default:
		return fmt.Errorf("x509pop: ext_key_usage %q: want %q or %q", c.ExtKeyUsage, EKUClientAuth, EKUAny)
	}
	return nil
}

func (c ServerConfig) template() string {
	if c.AgentIDTemplate == "" {
		return DefaultAgentIDTemplate
	}
	return c.AgentIDTemplate
}

// Verifier is the server half. It is safe for concurrent use.
type Verifier struct {
	trustDomain string
	path        string
	tmpl        *idTemplate
	usages      []x509.ExtKeyUsage
	rand        io.Reader

	mu    sync.Mutex
	stamp fileStamp
	roots *x509.CertPool
	err   error // why the bundle last failed to load
}

type fileStamp struct {
	size    int64
	modTime time.Time
}

// NewVerifier returns the server half for trustDomain (the server's trust
// domain, bound into every signed answer). It reads the CA bundle; an
// unreadable bundle or one without certificates is an error.
func NewVerifier(trustDomain string, cfg ServerConfig) (*Verifier, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if trustDomain == "" {
		return nil, errors.New("x509pop: the verifier needs the trust domain")
	}
	tmpl, _ := parseIDTemplate(cfg.template())
	v := &Verifier{trustDomain: trustDomain, path: cfg.CABundlePath, tmpl: tmpl, rand: rand.Reader,
		usages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if cfg.ExtKeyUsage == EKUAny {
		v.usages = []x509.ExtKeyUsage{x509.ExtKeyUsageAny}
	}
	if _, err := v.bundle(); err != nil {
		return nil, err
	}
	return v, nil
}

// Name returns Name.
func (*Verifier) Name() string { return Name }

// bundle returns the CA pool, reloading the file if it changed since the
// last load.
func (v *Verifier) bundle() (*x509.CertPool, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	st, err := os.Stat(v.path)
	if err != nil {
		v.roots, v.err = nil, fmt.Errorf("x509pop: ca_bundle_path: %w", err)
		v.stamp = fileStamp{}
		return nil, v.err
	}
	stamp := fileStamp{size: st.Size(), modTime: st.ModTime()}
	if stamp == v.stamp && (v.roots != nil || v.err != nil) {
		return v.roots, v.err
	}
	v.stamp = stamp
	v.roots, v.err = loadBundle(v.path)
	return v.roots, v.err
}

// loadBundle reads a PEM file of CA certificates.
func loadBundle(path string) (*x509.CertPool, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("x509pop: ca_bundle_path: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxBundleSize+1))
	if err != nil {
		return nil, fmt.Errorf("x509pop: ca_bundle_path: reading %s: %w", path, err)
	}
	if len(b) > maxBundleSize {
		return nil, fmt.Errorf("x509pop: ca_bundle_path %s is larger than %d bytes", path, maxBundleSize)
	}
	pool := x509.NewCertPool()
	n := 0
	for i := 1; ; i++ {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("x509pop: ca_bundle_path %s: PEM block %d is %q, want CERTIFICATE", path, i, blk.Type)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("x509pop: ca_bundle_path %s: certificate %d: %w", path, i, err)
		}
		pool.AddCert(c)
		n++
	}
	if len(bytes.TrimSpace(b)) != 0 {
		return nil, fmt.Errorf("x509pop: ca_bundle_path %s: trailing data that is not PEM", path)
	}
	if n == 0 {
		return nil, fmt.Errorf("x509pop: ca_bundle_path %s holds no certificate", path)
	}
	return pool, nil
}

func refused(format string, args ...any) error {
	return fmt.Errorf("x509pop: %w", &node.RefusedError{Public: RefusedMessage, Reason: fmt.Sprintf(format, args...)})
}

// Verify checks the agent's chain against the CA bundle at state.Now,
// then sends one challenge (a fresh random nonce) and checks the answer:
// a signature by the leaf's key over SignedMessage(trust domain, nonce,
// chain). A chain that does not verify, a leaf that may not sign, and a
// wrong answer are refusals (*node.RefusedError); evidence that does not
// parse is malformed.
func (v *Verifier) Verify(ctx context.Context, state node.State, ex node.Exchange) (*node.Result, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("x509pop: %w", err)
	}
	if state == nil {
		return nil, errors.New("x509pop: the verifier has no state (no time to check certificates against)")
	}
	chainDER, err := decodePayload(ex.Payload())
	if err != nil {
		return nil, err
	}
	chain := make([]*x509.Certificate, len(chainDER))
	for i, der := range chainDER {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("x509pop: %w: certificate %d: %v", ErrMalformed, i, err)
		}
		chain[i] = c
	}
	leaf := chain[0]
	roots, err := v.bundle()
	if err != nil {
		return nil, err
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	now := state.Now()
	verified, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now, KeyUsages: v.usages})
	if err != nil {
		return nil, refused("leaf serial %s (subject %q): %v", serialHex(leaf), leaf.Subject.String(), err)
	}
	if leaf.IsCA {
		return nil, refused("leaf serial %s is a CA certificate", serialHex(leaf))
	}
	if leaf.KeyUsage != 0 && leaf.KeyUsage&x509.KeyUsageDigitalSignature == 0 {
		return nil, refused("leaf serial %s lacks the digitalSignature key usage", serialHex(leaf))
	}
	if _, err := schemesFor(leaf.PublicKey); err != nil {
		return nil, refused("leaf serial %s: %v", serialHex(leaf), err)
	}

	id, err := v.tmpl.render(leaf)
	if err != nil {
		return nil, refused("leaf serial %s: agent_id template: %v", serialHex(leaf), err)
	}

	nonce := make([]byte, NonceSize)
	if _, err := io.ReadFull(v.rand, nonce); err != nil {
		return nil, fmt.Errorf("x509pop: generating the challenge: %w", err)
	}
	raw, err := ex.Challenge(ctx, nonce)
	if err != nil {
		return nil, fmt.Errorf("x509pop: challenge: %w", err)
	}
	ans, err := decodeAnswer(raw)
	if err != nil {
		return nil, err
	}
	if err := verifySignature(leaf.PublicKey, ans, SignedMessage(v.trustDomain, nonce, chainDER)); err != nil {
		return nil, refused("leaf serial %s: the answer to the challenge does not verify: %v", serialHex(leaf), err)
	}

	return &node.Result{ID: id, Selectors: selectors(leaf, verified)}, nil
}

// selectors returns the node selectors of a verified leaf, sorted and
// without duplicates, leaving out any that registration would refuse. The CA fingerprints are those of every certificate
// above the leaf in any verified chain (intermediates and the root).
func selectors(leaf *x509.Certificate, verified [][]*x509.Certificate) []*sigilv1.Selector {
	seen := map[string]bool{}
	if cn := leaf.Subject.CommonName; cn != "" {
		seen["subject:cn:"+cn] = true
	}
	for _, ch := range verified {
		for _, c := range ch[1:] {
			seen["ca:fingerprint:"+fingerprint(c.Raw)] = true
		}
	}
	for _, d := range leaf.DNSNames {
		if d != "" {
			seen["san:dns:"+d] = true
		}
	}
	seen["serialnumber:"+serialHex(leaf)] = true
	vals := make([]string, 0, len(seen))
	for s := range seen {
		vals = append(vals, s)
	}
	sort.Strings(vals)
	out := make([]*sigilv1.Selector, 0, len(vals))
	for _, s := range vals {
		sel := &sigilv1.Selector{Type: Name, Value: s}
		// A value entries could not name (a control character in a
		// common name, an oversized SAN) is left out.
		if registration.ValidateSelectorInput(sel) == nil {
			out = append(out, sel)
		}
	}
	return out
}

// schemesFor returns the answer schemes a leaf key may use.
func schemesFor(pub any) ([]string, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return []string{SchemeECDSASHA256}, nil
		case elliptic.P384():
			return []string{SchemeECDSASHA384}, nil
		}
		return nil, fmt.Errorf("unsupported ECDSA curve %s (want P-256 or P-384)", k.Curve.Params().Name)
	case ed25519.PublicKey:
		return []string{SchemeEd25519}, nil
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return nil, fmt.Errorf("RSA key of %d bits (at least 2048)", k.N.BitLen())
		}
		return []string{SchemeRSAPSSSHA256, SchemeRSAPKCS1SHA256}, nil
	}
	return nil, fmt.Errorf("unsupported key type %T", pub)
}

// verifySignature checks a.Signature over msg with pub under a.Scheme,
// which must be one the key allows.
func verifySignature(pub any, a answer, msg []byte) error {
	schemes, err := schemesFor(pub)
	if err != nil {
		return err
	}
	allowed := false
	for _, s := range schemes {
		allowed = allowed || s == a.Scheme
	}
	if !allowed {
		return fmt.Errorf("scheme %q does not fit a %T key", a.Scheme, pub)
	}
	bad := errors.New("bad signature")
	switch a.Scheme {
	case SchemeECDSASHA256:
		d := sha256.Sum256(msg)
		if !ecdsa.VerifyASN1(pub.(*ecdsa.PublicKey), d[:], a.Signature) {
			return bad
		}
	case SchemeECDSASHA384:
		d := sha512.Sum384(msg)
		if !ecdsa.VerifyASN1(pub.(*ecdsa.PublicKey), d[:], a.Signature) {
			return bad
		}
	case SchemeEd25519:
		if !ed25519.Verify(pub.(ed25519.PublicKey), msg, a.Signature) {
			return bad
		}
	case SchemeRSAPSSSHA256:
		d := sha256.Sum256(msg)
		if rsa.VerifyPSS(pub.(*rsa.PublicKey), crypto.SHA256, d[:], a.Signature, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash}) != nil {
			return bad
		}
	case SchemeRSAPKCS1SHA256:
		d := sha256.Sum256(msg)
		if rsa.VerifyPKCS1v15(pub.(*rsa.PublicKey), crypto.SHA256, d[:], a.Signature) != nil {
			return bad
		}
	}
	return nil
}

// sign makes the answer for msg with key, choosing the scheme from the
// key (RSA keys use PSS).
func sign(key crypto.Signer, msg []byte) (answer, error) {
	var (
		scheme string
		digest []byte
		opts   crypto.SignerOpts
	)
	switch k := key.Public().(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			d := sha256.Sum256(msg)
			scheme, digest, opts = SchemeECDSASHA256, d[:], crypto.SHA256
		case elliptic.P384():
			d := sha512.Sum384(msg)
			scheme, digest, opts = SchemeECDSASHA384, d[:], crypto.SHA384
		default:
			return answer{}, fmt.Errorf("x509pop: unsupported ECDSA curve %s (want P-256 or P-384)", k.Curve.Params().Name)
		}
	case ed25519.PublicKey:
		scheme, digest, opts = SchemeEd25519, msg, crypto.Hash(0)
	case *rsa.PublicKey:
		d := sha256.Sum256(msg)
		scheme, digest, opts = SchemeRSAPSSSHA256, d[:], &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}
	default:
		return answer{}, fmt.Errorf("x509pop: unsupported key type %T", k)
	}
	sig, err := key.Sign(rand.Reader, digest, opts)
	if err != nil {
		return answer{}, fmt.Errorf("x509pop: signing the challenge: %w", err)
	}
	return answer{Scheme: scheme, Signature: sig}, nil
}
