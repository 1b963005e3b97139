// Package memory is an upstream authority held in memory: a root CA (and
// optionally an intermediate below it that signs) generated when it is
// made. It is for tests of the code that uses a ca.UpstreamAuthority, as
// hashicorp/raft ships its in-memory store beside the real ones; it can be
// made to fail or to answer wrongly. It is not a plugin: its keys die
// with the process.
package memory

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"sync"
	"time"

	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/clock"
)

// Authority is an in-memory ca.UpstreamAuthority. It is safe for
// concurrent use.
type Authority struct {
	clk clock.Clock

	mu     sync.Mutex
	root   *x509.Certificate
	inter  *x509.Certificate // nil: the root signs
	key    crypto.Signer     // of inter, or of root
	extra  []*x509.Certificate
	fail   error
	mangle func(*ca.X509CAResponse)
	calls  int
}

var _ ca.UpstreamAuthority = (*Authority)(nil)

// Options say what New makes.
type Options struct {
	// Intermediate makes an intermediate CA below the root sign, so that
	// chains carry it.
	Intermediate bool
	// RootTTL is the root's lifetime (from now); 0 means a year.
	RootTTL time.Duration
}

// New returns an authority with a fresh P-256 root valid from an hour
// before clk's now.
func New(clk clock.Clock, opts Options) (*Authority, error) {
	if opts.RootTTL <= 0 {
		opts.RootTTL = 365 * 24 * time.Hour
	}
	now := clk.Now()
	rootKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("memory upstream: %w", err)
	}
	root, err := makeCA(&x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Sigil Test Upstream Root"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(opts.RootTTL),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true, MaxPathLen: 2,
	}, nil, rootKey, rootKey)
	if err != nil {
		return nil, err
	}
	a := &Authority{clk: clk, root: root, key: rootKey}
	if opts.Intermediate {
		ik, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("memory upstream: %w", err)
		}
		a.inter, err = makeCA(&x509.Certificate{
			SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "Sigil Test Upstream Intermediate"},
			NotBefore: now.Add(-time.Hour), NotAfter: root.NotAfter,
			KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true, MaxPathLen: 1,
		}, root, ik, rootKey)
		if err != nil {
			return nil, err
		}
		a.key = ik
	}
	return a, nil
}

func makeCA(tmpl, parent *x509.Certificate, key, signer crypto.Signer) (*x509.Certificate, error) {
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), signer)
	if err != nil {
		return nil, fmt.Errorf("memory upstream: %w", err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("memory upstream: %w", err)
	}
	return c, nil
}

// Root returns the root certificate.
func (a *Authority) Root() *x509.Certificate {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.root
}

// AddRoot adds cert to the roots Roots returns (an upstream in the middle
// of its own rotation).
func (a *Authority) AddRoot(cert *x509.Certificate) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.extra = append(a.extra, cert)
}

// SetFailure makes MintX509CA and Roots fail with err (nil: work again).
func (a *Authority) SetFailure(err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.fail = err
}

// SetMangle makes MintX509CA pass its answer through f before returning
// it (nil: answer as built).
func (a *Authority) SetMangle(f func(*ca.X509CAResponse)) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.mangle = f
}

// Calls returns how many times MintX509CA was called.
func (a *Authority) Calls() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.calls
}

// MintX509CA signs ca.UpstreamCATemplate for req with the intermediate,
// or the root.
func (a *Authority) MintX509CA(ctx context.Context, req ca.X509CARequest) (*ca.X509CAResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls++
	if a.fail != nil {
		return nil, a.fail
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	parent := a.root
	if a.inter != nil {
		parent = a.inter
	}
	tmpl, pub, err := ca.UpstreamCATemplate(req, a.clk.Now(), time.Second, parent.NotAfter)
	if err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, a.key)
	if err != nil {
		return nil, fmt.Errorf("memory upstream: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("memory upstream: %w", err)
	}
	resp := &ca.X509CAResponse{Chain: []*x509.Certificate{cert}, Roots: a.rootsLocked()}
	if a.inter != nil {
		resp.Chain = append(resp.Chain, a.inter)
	}
	if a.mangle != nil {
		a.mangle(resp)
	}
	return resp, nil
}

// Roots returns the root and any added with AddRoot.
func (a *Authority) Roots(context.Context) ([]*x509.Certificate, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.fail != nil {
		return nil, a.fail
	}
	return a.rootsLocked(), nil
}

func (a *Authority) rootsLocked() []*x509.Certificate {
	return append([]*x509.Certificate{a.root}, a.extra...)
}
