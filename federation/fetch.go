package federation

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// fetchMaxHeaderBytes bounds the response headers of a bundle endpoint.
const fetchMaxHeaderBytes = 64 << 10

// FetchConfig configures Fetch.
type FetchConfig struct {
	// Timeout bounds the whole fetch; 0 means DefaultFetchTimeout.
	Timeout time.Duration
	// MaxSize bounds the body; 0 means MaxDocumentSize (which also
	// bounds a larger MaxSize, since Decode refuses bigger documents).
	MaxSize int64
	// ClientSVID, for https_spiffe, is the certificate the client
	// presents so that the partner can tell who fetched (optional; when
	// it fails, the fetch goes on without a client certificate).
	ClientSVID func() (*tls.Certificate, error)
	// RootCAs verify https_web endpoints; nil means the system roots
	// (SSL_CERT_FILE and SSL_CERT_DIR apply).
	RootCAs *x509.CertPool
}

// Fetch reads the bundle of rel's trust domain from rel's endpoint. For
// https_spiffe, the endpoint's certificate must be an X.509-SVID with
// ID rel.EndpointSpiffeId verified against cur (the bundle held now; an
// https_spiffe fetch without one fails). For https_web it must verify
// against cfg.RootCAs for the URL's host. The answer must be 200 OK (a
// redirect is not followed) with a body of at most cfg.MaxSize bytes;
// it is decoded and checked with CheckUpdate against cur. Errors name the
// trust domain and the URL.
func Fetch(ctx context.Context, rel *sigilv1.FederationRelationship, cur *sigilv1.Bundle, cfg FetchConfig) (*sigilv1.Bundle, error) {
	if rel == nil {
		return nil, errors.New("federation: fetch: no relationship")
	}
	b, err := fetch(ctx, rel, cur, cfg)
	if err != nil {
		return nil, fmt.Errorf("federation: fetch bundle of %q from %s: %w", rel.GetTrustDomain(), rel.GetBundleEndpointUrl(), err)
	}
	return b, nil
}

func fetch(ctx context.Context, rel *sigilv1.FederationRelationship, cur *sigilv1.Bundle, cfg FetchConfig) (*sigilv1.Bundle, error) {
	td, err := spiffeid.TrustDomainFromString(rel.GetTrustDomain())
	if err != nil {
		return nil, fmt.Errorf("trust domain: %w", err)
	}
	if err := validateEndpointURL(rel.GetBundleEndpointUrl()); err != nil {
		return nil, err
	}
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = DefaultFetchTimeout
	}
	maxSize := cfg.MaxSize
	if maxSize <= 0 || maxSize > MaxDocumentSize {
		maxSize = MaxDocumentSize
	}
	tlsConf, err := fetchTLSConfig(td, rel, cur, cfg)
	if err != nil {
		return nil, err
	}

	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tr := &http.Transport{
		Proxy:                  http.ProxyFromEnvironment,
		DialContext:            (&net.Dialer{Timeout: timeout}).DialContext,
		TLSClientConfig:        tlsConf,
		TLSHandshakeTimeout:    timeout,
		ResponseHeaderTimeout:  timeout,
		MaxResponseHeaderBytes: fetchMaxHeaderBytes,
		DisableKeepAlives:      true,
	}
	defer tr.CloseIdleConnections()
	// ctx bounds the whole fetch, body included.
	client := &http.Client{
		Transport: tr,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rel.GetBundleEndpointUrl(), http.NoBody)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return nil, timeoutError(err, timeout)
	}
	defer resp.Body.Close()
	if err := ctx.Err(); err != nil {
		return nil, timeoutError(err, timeout)
	}
	if resp.StatusCode != http.StatusOK {
		// The status code only: the reason phrase is the server's text,
		// and errors end up in the replicated status.
		status := fmt.Sprintf("%d %s", resp.StatusCode, http.StatusText(resp.StatusCode))
		if resp.StatusCode >= 300 && resp.StatusCode < 400 {
			return nil, fmt.Errorf("the endpoint answered %s (redirects are not followed), want 200 OK", status)
		}
		return nil, fmt.Errorf("the endpoint answered %s, want 200 OK", status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxSize+1))
	if err == nil {
		// A body that ended as the deadline passed may be cut short
		// (the server saw the connection close and ended its answer).
		err = ctx.Err()
	}
	if err != nil {
		return nil, fmt.Errorf("read the document: %w", timeoutError(err, timeout))
	}
	if int64(len(body)) > maxSize {
		return nil, fmt.Errorf("the document is larger than the limit of %d bytes", maxSize)
	}
	b, err := decode(td, body)
	if err != nil {
		return nil, err
	}
	if err := checkUpdate(td, cur, b); err != nil {
		return nil, err
	}
	return b, nil
}

// fetchTLSConfig authenticates the endpoint of rel's profile.
func fetchTLSConfig(td spiffeid.TrustDomain, rel *sigilv1.FederationRelationship, cur *sigilv1.Bundle, cfg FetchConfig) (*tls.Config, error) {
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	switch rel.GetProfile() {
	case ProfileHTTPSSPIFFE:
		want, err := spiffeid.FromString(rel.GetEndpointSpiffeId())
		if err != nil {
			return nil, fmt.Errorf("endpoint_spiffe_id %q: %w", rel.GetEndpointSpiffeId(), err)
		}
		if cur == nil || len(cur.GetX509Authorities()) == 0 {
			return nil, fmt.Errorf("no X.509 authorities of %q to authenticate the https_spiffe endpoint with (give the relationship a bootstrap bundle, or use sigil bundle set)", td.Name())
		}
		auths := make([]*x509.Certificate, 0, len(cur.GetX509Authorities()))
		for i, a := range cur.GetX509Authorities() {
			cert, err := x509.ParseCertificate(a.GetCertificate())
			if err != nil {
				return nil, fmt.Errorf("current bundle of %q: X.509 authority %d: %w", td.Name(), i+1, err)
			}
			auths = append(auths, cert)
		}
		// The endpoint is authenticated as an X.509-SVID with the
		// expected ID, not by host name: the standard verification is
		// replaced by go-spiffe's.
		c.InsecureSkipVerify = true
		c.VerifyPeerCertificate = tlsconfig.VerifyPeerCertificate(
			x509bundle.FromX509Authorities(td, auths), authorizeEndpoint(want))
		if cfg.ClientSVID != nil {
			c.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				cert, err := cfg.ClientSVID()
				if err != nil || cert == nil {
					// Presenting no certificate only costs the
					// partner the knowledge of who fetched.
					return &tls.Certificate{}, nil
				}
				return cert, nil
			}
		}
	case ProfileHTTPSWeb:
		c.RootCAs = cfg.RootCAs
	default:
		return nil, fmt.Errorf("profile %q is neither %s nor %s", rel.GetProfile(), ProfileHTTPSSPIFFE, ProfileHTTPSWeb)
	}
	return c, nil
}

// authorizeEndpoint accepts only the expected endpoint SPIFFE ID.
func authorizeEndpoint(want spiffeid.ID) tlsconfig.Authorizer {
	return func(got spiffeid.ID, _ [][]*x509.Certificate) error {
		if got != want {
			return fmt.Errorf("the endpoint's SVID has SPIFFE ID %q, want %q (endpoint_spiffe_id)", got, want)
		}
		return nil
	}
}

// timeoutError says which timeout passed, since "context deadline
// exceeded" does not.
func timeoutError(err error, timeout time.Duration) error {
	err = unwrapURLError(err)
	var nerr net.Error
	if errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &nerr) && nerr.Timeout()) {
		return fmt.Errorf("no complete answer within the fetch timeout of %v: %w", timeout, err)
	}
	return err
}

// unwrapURLError drops the "Get "url": " that net/http adds, since
// Fetch's errors name the URL already.
func unwrapURLError(err error) error {
	var uerr *url.Error
	if errors.As(err, &uerr) && uerr.Err != nil {
		return uerr.Err
	}
	return err
}
