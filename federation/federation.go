package federation

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/http"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/clock"
)

// Bundle endpoint profiles of the SPIFFE Trust Domain and Bundle
// specification.
const (
	ProfileHTTPSSPIFFE = "https_spiffe"
	ProfileHTTPSWeb    = "https_web"
)

// Limits and defaults.
const (
	// MaxDocumentSize bounds a bundle document read from an endpoint or a
	// file.
	MaxDocumentSize = 1 << 20
	// MaxAuthorities bounds the X.509 plus JWT authorities of one bundle.
	MaxAuthorities = 1024
	// DefaultRefreshHint is the refresh hint the local endpoint publishes
	// when none is configured.
	DefaultRefreshHint = 5 * time.Minute
	// DefaultFetchTimeout bounds one fetch (connect, TLS, body).
	DefaultFetchTimeout = 10 * time.Second
	// DefaultMinRefresh and DefaultMaxRefresh bound a foreign refresh
	// hint.
	DefaultMinRefresh = 1 * time.Second
	DefaultMaxRefresh = 1 * time.Hour
	// StatusHeartbeat: a refresh that changes nothing is recorded in the
	// store at most this often.
	StatusHeartbeat = time.Minute
)

var errUnimplemented = errors.New("federation: not implemented yet")

// Encode returns b as a SPIFFE bundle document (a JWKS): every X.509
// authority as an "x509-svid" key with its certificate in x5c, every JWT
// authority as a "jwt-svid" key with its kid, spiffe_sequence and
// spiffe_refresh_hint (seconds) from b.
func Encode(b *sigilv1.Bundle) ([]byte, error) { return nil, errUnimplemented }

// Decode parses a SPIFFE bundle document of trust domain td (at most
// MaxDocumentSize bytes, at most MaxAuthorities keys) into a Bundle:
// X.509 authorities with their DER certificate and not_after, JWT
// authorities with key_id, PKIX DER public_key (and expires_at 0),
// sequence_number and refresh_hint. A key that does not parse, a key
// use other than x509-svid or jwt-svid, a jwt-svid key without kid, a
// duplicate kid or a document with no key is an error.
func Decode(td spiffeid.TrustDomain, doc []byte) (*sigilv1.Bundle, error) {
	return nil, errUnimplemented
}

// DecodePEM builds a bundle of td from PEM CA certificates (`sigil bundle
// set -format pem`), with no JWT authorities.
func DecodePEM(td spiffeid.TrustDomain, pemData []byte) (*sigilv1.Bundle, error) {
	return nil, errUnimplemented
}

// CheckUpdate decides whether next may replace cur (nil when there is no
// bundle yet) as the bundle of td: next must be of td, have at least one
// authority, and a sequence number not below cur's.
func CheckUpdate(td spiffeid.TrustDomain, cur, next *sigilv1.Bundle) error { return errUnimplemented }

// Equal reports whether two bundles have the same authorities, sequence
// number and refresh hint (store-set fields ignored).
func Equal(a, b *sigilv1.Bundle) bool { return false }

// EndpointConfig configures the local bundle endpoint.
type EndpointConfig struct {
	// Profile is ProfileHTTPSSPIFFE or ProfileHTTPSWeb.
	Profile string
	// Bundle returns the local trust domain's bundle (the public bundle,
	// without cluster identity CAs) and its sequence number. Required.
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
	PartnerAuthorities func(td spiffeid.TrustDomain) []*x509.Certificate
	OnPartnerFetch     func(td spiffeid.TrustDomain, sequence uint64)

	// https_web: the certificate chain and key files, re-read when either
	// file changes.
	CertFile, KeyFile string

	Logger *zap.Logger
	Clock  clock.Clock
}

// Endpoint serves the local bundle.
type Endpoint struct{}

// NewEndpoint checks cfg (an https_web endpoint loads its files here, so
// a bad path fails at start).
func NewEndpoint(cfg EndpointConfig) (*Endpoint, error) { return nil, errUnimplemented }

// Handler serves GET (and HEAD) of the bundle document at any path, with
// Content-Type application/json.
func (e *Endpoint) Handler() http.Handler { return http.NotFoundHandler() }

// Serve serves TLS of the endpoint's profile on l until ctx is done, with
// read/write/idle timeouts and bounded headers.
func (e *Endpoint) Serve(ctx context.Context, l net.Listener) error { return errUnimplemented }

// FetchConfig configures Fetch.
type FetchConfig struct {
	// Timeout bounds the whole fetch; 0 means DefaultFetchTimeout.
	Timeout time.Duration
	// MaxSize bounds the body; 0 means MaxDocumentSize.
	MaxSize int64
	// ClientSVID, for https_spiffe, is the certificate the client
	// presents so that the partner can tell who fetched (optional).
	ClientSVID func() (*tls.Certificate, error)
	// RootCAs verify https_web endpoints; nil means the system roots
	// (SSL_CERT_FILE and SSL_CERT_DIR apply).
	RootCAs *x509.CertPool
}

// Fetch reads the bundle of rel's trust domain from rel's endpoint. For
// https_spiffe, the endpoint's certificate must be an X.509-SVID with
// ID rel.EndpointSpiffeId verified against cur (the bundle held now; an
// https_spiffe fetch without one fails). The result is decoded and
// checked with CheckUpdate against cur.
func Fetch(ctx context.Context, rel *sigilv1.FederationRelationship, cur *sigilv1.Bundle, cfg FetchConfig) (*sigilv1.Bundle, error) {
	return nil, errUnimplemented
}

// ValidateRelationship checks a relationship as the admin API and the
// config file accept it: trust domain (not local), https URL with a host
// and no user info, profile, endpoint SPIFFE ID (in the relationship's
// trust domain) for https_spiffe and none for https_web.
func ValidateRelationship(local spiffeid.TrustDomain, rel *sigilv1.FederationRelationship) error {
	return errUnimplemented
}

// NextRefresh is how long after a fetch the next one is due: the refresh
// hint clamped to [min, max] after a success (hint 0: max(min, 5m)
// clamped), and after failures an exponential backoff from min that
// never exceeds the hint-derived interval.
func NextRefresh(hint, min, max time.Duration, failures int) time.Duration { return max }

// Store is what the Refresher reads and writes. The server implements it
// on the replicated store.
type Store interface {
	// Federation returns the relationships, the federated bundles and the
	// statuses (both keyed by trust domain name), and a channel closed
	// when any of them changes.
	Federation() (rels []*sigilv1.FederationRelationship, bundles map[string]*sigilv1.Bundle, statuses map[string]*sigilv1.FederationStatus, changed <-chan struct{})
	// SetBundle writes a fetched bundle with its status (one command,
	// SetFederatedBundle with refresh set).
	SetBundle(ctx context.Context, b *sigilv1.Bundle, st *sigilv1.FederationStatus) error
	// SetStatus writes a status (PutFederationStatus).
	SetStatus(ctx context.Context, st *sigilv1.FederationStatus) error
}

// Meter observes refreshes; the zero Refresher uses a no-op.
type Meter interface {
	// Refreshed counts one fetch of td's bundle; outcome is "changed",
	// "unchanged" or "error".
	Refreshed(td string, outcome string)
	// BundleAge sets how long ago td's bundle was last fetched
	// successfully (or -1 when never).
	BundleAge(td string, age time.Duration)
}

// RefresherConfig configures a Refresher.
type RefresherConfig struct {
	Store Store
	// Fetch fetches one relationship's bundle; default: Fetch with
	// FetchConfig.
	Fetch       func(ctx context.Context, rel *sigilv1.FederationRelationship, cur *sigilv1.Bundle) (*sigilv1.Bundle, error)
	FetchConfig FetchConfig
	// MinRefresh and MaxRefresh bound a foreign refresh hint (defaults
	// DefaultMinRefresh, DefaultMaxRefresh).
	MinRefresh, MaxRefresh time.Duration
	Meter                  Meter
	Logger                 *zap.Logger
	Clock                  clock.Clock
}

// Refresher keeps the federated bundles of every relationship current.
// Exactly one server runs it at a time (the leader).
type Refresher struct{}

// NewRefresher checks cfg and returns a Refresher.
func NewRefresher(cfg RefresherConfig) (*Refresher, error) { return nil, errUnimplemented }

// Run refreshes until ctx is done: each relationship at its own schedule
// (NextRefresh), at once for a new or changed relationship, a
// relationship without a bundle, or one whose status has
// refresh_requested_at after last_attempt_at. A fetch that fails keeps the
// last good bundle and records the error; a fetched bundle is written
// only when it differs (Equal) from the stored one.
func (r *Refresher) Run(ctx context.Context) error { return errUnimplemented }
