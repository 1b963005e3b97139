// Package federation implements SPIFFE federation between trust domains
// (the SPIFFE Trust Domain and Bundle specification): the bundle document
// (a JWKS with spiffe_sequence and spiffe_refresh_hint) and its checks,
// the local bundle endpoint (profiles https_spiffe and https_web), the
// fetch of a foreign trust domain's bundle from its endpoint, and the
// Refresher that keeps every relationship's federated bundle current.
//
// Errors start with "federation: "; those of Fetch and the Refresher
// name the trust domain and the endpoint URL.
package federation

import (
	"time"
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
