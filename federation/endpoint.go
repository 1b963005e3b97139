package federation

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/zap"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/clock"
)

// Timeouts and bounds of the endpoint's HTTP server. A bundle request is
// one small GET, so every bound is tight.
const (
	endpointReadHeaderTimeout = 5 * time.Second
	endpointReadTimeout       = 10 * time.Second
	endpointWriteTimeout      = 10 * time.Second
	endpointIdleTimeout       = 60 * time.Second
	endpointMaxHeaderBytes    = 8 << 10
	endpointShutdownTimeout   = 5 * time.Second
	// certCheckInterval: the https_web files are looked at (stat) at most
	// this often.
	certCheckInterval = time.Second
)

// EndpointConfig configures the local bundle endpoint.
type EndpointConfig struct {
	// Profile is ProfileHTTPSSPIFFE or ProfileHTTPSWeb.
	Profile string
	// Bundle returns the local trust domain's bundle (the public bundle,
	// without cluster identity CAs) and its sequence number. Required.
	// The document is encoded once per sequence number, so a bundle
	// whose content changes must change its sequence number.
	Bundle func() (*sigilv1.Bundle, error)
	// RefreshHint is published as spiffe_refresh_hint; 0 means
	// DefaultRefreshHint.
	RefreshHint time.Duration

	// https_spiffe: SVID returns the endpoint's current certificate (an
	// X.509-SVID of the local trust domain, chained to the bundle).
	SVID func() (*tls.Certificate, error)
	// https_spiffe, optional: a caller may present an X.509-SVID of a
	// federated trust domain. PartnerAuthorities returns the X.509
	// authorities of a federated trust domain (nil when it is not
	// federated); a caller whose SVID verifies against them is reported
	// to OnPartnerFetch with the sequence number it was served. A caller
	// without a certificate is served like any other; one whose
	// certificate does not verify is served too, but not reported.
	// OnPartnerFetch is called after the response was written, on the
	// request's goroutine.
	PartnerAuthorities func(td spiffeid.TrustDomain) []*x509.Certificate
	OnPartnerFetch     func(td spiffeid.TrustDomain, sequence uint64)

	// https_web: the certificate chain and key files, re-read when either
	// file changes (checked at most once a second; a pair that does not
	// load keeps the previous certificate).
	CertFile, KeyFile string

	// OnRequest, optional, observes every request: ok is false when the
	// request was refused or the document could not be served or
	// written (for the endpoint's request metric).
	OnRequest func(ok bool)

	Logger *zap.Logger
	Clock  clock.Clock
}

// Endpoint serves the local bundle.
type Endpoint struct {
	cfg   EndpointConfig
	hint  int64 // seconds
	log   *zap.Logger
	clock clock.Clock
	web   *certFiles // https_web

	mu      sync.Mutex
	doc     []byte // the encoded document of docSeq, nil before the first
	docSeq  uint64
	docErr  string // the last failure logged; "" once served again
	svidErr string // the last SVID failure logged
}

// NewEndpoint checks cfg (an https_web endpoint loads its files here, so
// a bad path fails at start).
func NewEndpoint(cfg EndpointConfig) (*Endpoint, error) {
	if cfg.Bundle == nil {
		return nil, errors.New("federation: endpoint: Bundle is required")
	}
	if cfg.RefreshHint < 0 {
		return nil, fmt.Errorf("federation: endpoint: negative refresh hint %v", cfg.RefreshHint)
	}
	if cfg.RefreshHint == 0 {
		cfg.RefreshHint = DefaultRefreshHint
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.New()
	}
	e := &Endpoint{
		cfg:   cfg,
		hint:  int64((cfg.RefreshHint + time.Second - 1) / time.Second),
		log:   cfg.Logger,
		clock: cfg.Clock,
	}
	switch cfg.Profile {
	case ProfileHTTPSSPIFFE:
		if cfg.SVID == nil {
			return nil, errors.New("federation: endpoint: profile https_spiffe needs SVID")
		}
		if cfg.CertFile != "" || cfg.KeyFile != "" {
			return nil, errors.New("federation: endpoint: cert_file and key_file are for profile https_web only")
		}
		if (cfg.PartnerAuthorities == nil) != (cfg.OnPartnerFetch == nil) {
			return nil, errors.New("federation: endpoint: PartnerAuthorities and OnPartnerFetch go together")
		}
	case ProfileHTTPSWeb:
		if cfg.CertFile == "" || cfg.KeyFile == "" {
			return nil, errors.New("federation: endpoint: profile https_web needs cert_file and key_file")
		}
		web, err := loadCertFiles(cfg.CertFile, cfg.KeyFile, cfg.Clock, cfg.Logger)
		if err != nil {
			return nil, fmt.Errorf("federation: endpoint: %w", err)
		}
		e.web = web
	case "":
		return nil, fmt.Errorf("federation: endpoint: profile is required (%s or %s)", ProfileHTTPSSPIFFE, ProfileHTTPSWeb)
	default:
		return nil, fmt.Errorf("federation: endpoint: profile %q is neither %s nor %s", cfg.Profile, ProfileHTTPSSPIFFE, ProfileHTTPSWeb)
	}
	return e, nil
}

// Handler serves GET (and HEAD) of the bundle document at any path, with
// Content-Type application/json; other methods get 405.
func (e *Endpoint) Handler() http.Handler { return http.HandlerFunc(e.serveHTTP) }

func (e *Endpoint) serveHTTP(w http.ResponseWriter, r *http.Request) {
	ok := false
	if e.cfg.OnRequest != nil {
		defer func() { e.cfg.OnRequest(ok) }()
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	doc, seq, err := e.document()
	if err != nil {
		http.Error(w, "bundle unavailable", http.StatusInternalServerError)
		return
	}
	partner, isPartner := e.partner(r)
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(doc)))
	h.Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		ok = true
		return
	}
	if _, err := w.Write(doc); err != nil {
		return
	}
	if err := http.NewResponseController(w).Flush(); err != nil {
		return
	}
	ok = true
	if isPartner {
		e.cfg.OnPartnerFetch(partner, seq)
	}
}

// document returns the encoded bundle and its sequence number, encoding
// only when the sequence number changed.
// A failure is logged when its text differs from the last one's.
func (e *Endpoint) document() ([]byte, uint64, error) {
	doc, seq, err := e.encoded()
	e.mu.Lock()
	defer e.mu.Unlock()
	switch {
	case err != nil && err.Error() != e.docErr:
		e.log.Warn("bundle endpoint cannot serve the bundle", zap.Error(err))
		e.docErr = err.Error()
	case err == nil && e.docErr != "":
		e.log.Info("bundle endpoint serves the bundle again")
		e.docErr = ""
	}
	return doc, seq, err
}

func (e *Endpoint) encoded() ([]byte, uint64, error) {
	b, err := e.cfg.Bundle()
	if err != nil {
		return nil, 0, err
	}
	if b == nil {
		return nil, 0, errors.New("no bundle")
	}
	seq := b.GetSequenceNumber()
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.doc != nil && e.docSeq == seq {
		return e.doc, seq, nil
	}
	doc, err := encode(&sigilv1.Bundle{
		TrustDomain:     b.GetTrustDomain(),
		X509Authorities: b.GetX509Authorities(),
		JwtAuthorities:  b.GetJwtAuthorities(),
		SequenceNumber:  seq,
		RefreshHint:     e.hint,
	})
	if err != nil {
		return nil, 0, err
	}
	e.doc, e.docSeq = doc, seq
	return doc, seq, nil
}

// partner returns the trust domain of the caller when it presented an
// X.509-SVID that verifies against the authorities of that (federated)
// trust domain.
func (e *Endpoint) partner(r *http.Request) (spiffeid.TrustDomain, bool) {
	if e.cfg.Profile != ProfileHTTPSSPIFFE || e.cfg.OnPartnerFetch == nil ||
		r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return spiffeid.TrustDomain{}, false
	}
	id, _, err := x509svid.Verify(r.TLS.PeerCertificates, partnerSource(e.cfg.PartnerAuthorities),
		x509svid.WithTime(e.clock.Now()))
	if err != nil {
		e.log.Debug("bundle endpoint caller's certificate does not verify; served, not recorded as a partner fetch",
			zap.String("remote", r.RemoteAddr), zap.Error(err))
		return spiffeid.TrustDomain{}, false
	}
	return id.TrustDomain(), true
}

// partnerSource is the X.509 bundles of the federated trust domains.
type partnerSource func(td spiffeid.TrustDomain) []*x509.Certificate

func (f partnerSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	auths := f(td)
	if len(auths) == 0 {
		return nil, fmt.Errorf("trust domain %q is not federated", td.Name())
	}
	return x509bundle.FromX509Authorities(td, auths), nil
}

// tlsConfig is the server TLS configuration of the endpoint's profile.
func (e *Endpoint) tlsConfig() *tls.Config {
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	switch e.cfg.Profile {
	case ProfileHTTPSSPIFFE:
		c.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			cert, err := e.cfg.SVID()
			if err == nil && cert == nil {
				err = errors.New("no SVID yet")
			}
			e.svidFailed(err)
			if err != nil {
				return nil, fmt.Errorf("federation: bundle endpoint SVID: %w", err)
			}
			return cert, nil
		}
		// Ask for (never require) a client certificate: a partner that
		// presents its SVID is recorded as having fetched. It is
		// verified in the handler.
		c.ClientAuth = tls.RequestClientCert
	case ProfileHTTPSWeb:
		c.GetCertificate = e.web.get
	}
	return c
}

// svidFailed logs an SVID failure once per error text (handshake errors
// are only logged at debug level), and the recovery.
func (e *Endpoint) svidFailed(err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	switch {
	case err != nil && err.Error() != e.svidErr:
		e.log.Warn("bundle endpoint has no certificate to serve", zap.Error(err))
		e.svidErr = err.Error()
	case err == nil && e.svidErr != "":
		e.log.Info("bundle endpoint has a certificate again")
		e.svidErr = ""
	}
}

// Serve serves TLS of the endpoint's profile on l until ctx is done, with
// read/write/idle timeouts and bounded headers. It closes l and returns
// nil once ctx is done (after up to 5s for requests in flight).
func (e *Endpoint) Serve(ctx context.Context, l net.Listener) error {
	srv := &http.Server{
		Handler:           e.Handler(),
		TLSConfig:         e.tlsConfig(),
		ReadHeaderTimeout: endpointReadHeaderTimeout,
		ReadTimeout:       endpointReadTimeout,
		WriteTimeout:      endpointWriteTimeout,
		IdleTimeout:       endpointIdleTimeout,
		MaxHeaderBytes:    endpointMaxHeaderBytes,
		// HTTP/1.1 only: one small document per request needs nothing
		// of HTTP/2, and without it a shutdown does not wait out
		// HTTP/2's GOAWAY grace period.
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
	}
	// TLS handshake errors (scanners, partners without the bundle) are
	// logged at debug level.
	if lg, err := zap.NewStdLogAt(e.log, zap.DebugLevel); err == nil {
		srv.ErrorLog = lg
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.ServeTLS(l, "", "") }()
	select {
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), endpointShutdownTimeout)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			_ = srv.Close()
		}
		<-errc
		return nil
	case err := <-errc:
		return fmt.Errorf("federation: bundle endpoint: %w", err)
	}
}

// certFiles is the https_web certificate, re-read when its files change.
type certFiles struct {
	certFile, keyFile string
	clock             clock.Clock
	log               *zap.Logger

	mu      sync.Mutex
	cert    *tls.Certificate
	stamp   [2]fileStamp // of the pair last tried
	checked time.Time
	statErr string // the last stat error logged
}

// fileStamp tells a file's versions apart.
type fileStamp struct {
	mod  time.Time
	size int64
}

func loadCertFiles(certFile, keyFile string, clk clock.Clock, log *zap.Logger) (*certFiles, error) {
	c := &certFiles{certFile: certFile, keyFile: keyFile, clock: clk, log: log}
	stamp, err := c.stamps()
	if err != nil {
		return nil, err
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("https_web certificate: %w", err)
	}
	c.cert, c.stamp, c.checked = &cert, stamp, clk.Now()
	return c, nil
}

func (c *certFiles) stamps() ([2]fileStamp, error) {
	var out [2]fileStamp
	for i, name := range []string{c.certFile, c.keyFile} {
		fi, err := os.Stat(name)
		if err != nil {
			return out, fmt.Errorf("https_web certificate: %w", err)
		}
		out[i] = fileStamp{mod: fi.ModTime(), size: fi.Size()}
	}
	return out, nil
}

// get is the tls.Config GetCertificate of an https_web endpoint.
func (c *certFiles) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.clock.Now()
	if d := now.Sub(c.checked); d >= certCheckInterval || d < 0 {
		c.checked = now
		c.reload()
	}
	return c.cert, nil
}

// reload loads the pair when either file changed since the last try; a
// pair that does not load keeps the previous certificate.
func (c *certFiles) reload() {
	stamp, err := c.stamps()
	if err != nil {
		if err.Error() != c.statErr {
			c.statErr = err.Error()
			c.log.Warn("bundle endpoint keeps its certificate", zap.Error(err))
		}
		return
	}
	c.statErr = ""
	if stamp == c.stamp {
		return
	}
	c.stamp = stamp
	cert, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
	if err != nil {
		c.log.Warn("bundle endpoint certificate files changed but do not load; keeping the previous certificate",
			zap.String("cert_file", c.certFile), zap.String("key_file", c.keyFile), zap.Error(err))
		return
	}
	c.cert = &cert
	fields := []zap.Field{zap.String("cert_file", c.certFile)}
	if cert.Leaf != nil {
		fields = append(fields, zap.Time("not_after", cert.Leaf.NotAfter))
	}
	c.log.Info("bundle endpoint certificate reloaded", fields...)
}
