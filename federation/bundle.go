package federation

import (
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// Key uses of a SPIFFE bundle document.
const (
	useX509SVID = "x509-svid"
	useJWTSVID  = "jwt-svid"
)

// Encode returns b as a SPIFFE bundle document (a JWKS): every X.509
// authority as an "x509-svid" key with its certificate in x5c, every JWT
// authority as a "jwt-svid" key with its kid, spiffe_sequence and
// spiffe_refresh_hint (seconds) from b.
func Encode(b *sigilv1.Bundle) ([]byte, error) {
	doc, err := encode(b)
	if err != nil {
		return nil, fmt.Errorf("federation: encode bundle: %w", err)
	}
	return doc, nil
}

func encode(b *sigilv1.Bundle) ([]byte, error) {
	if b == nil {
		return nil, errors.New("no bundle")
	}
	td, err := spiffeid.TrustDomainFromString(b.GetTrustDomain())
	if err != nil {
		return nil, fmt.Errorf("trust domain %q: %w", b.GetTrustDomain(), err)
	}
	n := len(b.GetX509Authorities()) + len(b.GetJwtAuthorities())
	switch {
	case n == 0:
		return nil, fmt.Errorf("bundle of %q has no authorities", td.Name())
	case n > MaxAuthorities:
		return nil, fmt.Errorf("bundle of %q has %d authorities, more than %d", td.Name(), n, MaxAuthorities)
	}
	sb := spiffebundle.New(td)
	for i, a := range b.GetX509Authorities() {
		cert, err := x509.ParseCertificate(a.GetCertificate())
		if err != nil {
			return nil, fmt.Errorf("X.509 authority %d: %w", i+1, err)
		}
		sb.AddX509Authority(cert)
	}
	for i, a := range b.GetJwtAuthorities() {
		kid := a.GetKeyId()
		if kid == "" {
			return nil, fmt.Errorf("JWT authority %d has no key ID", i+1)
		}
		if sb.HasJWTAuthority(kid) {
			return nil, fmt.Errorf("JWT authority %d: duplicate key ID %q", i+1, kid)
		}
		pub, err := x509.ParsePKIXPublicKey(a.GetPublicKey())
		if err != nil {
			return nil, fmt.Errorf("JWT authority %q: %w", kid, err)
		}
		if err := sb.AddJWTAuthority(kid, pub); err != nil {
			return nil, fmt.Errorf("JWT authority %q: %w", kid, err)
		}
	}
	sb.SetSequenceNumber(b.GetSequenceNumber())
	if h := b.GetRefreshHint(); h > 0 {
		sb.SetRefreshHint(secondsToDuration(h))
	}
	return sb.Marshal()
}

// rawDoc is what Decode reads of a document before go-spiffe parses
// it: the header fields and each key as it is, so that the keys to
// ignore can be left out and the checks spiffebundle.Parse does not make
// can be made.
type rawDoc struct {
	Keys        *[]json.RawMessage `json:"keys"`
	Sequence    *uint64            `json:"spiffe_sequence"`
	RefreshHint *int64             `json:"spiffe_refresh_hint"`
}

// keyHead is the part of a JWK that tells whether it is for us.
type keyHead struct {
	Use string `json:"use"`
	Kty string `json:"kty"`
	Kid string `json:"kid"`
}

// knownKeyTypes are the JWK key types go-jose parses. A key of another
// type is ignored, as the specification requires.
var knownKeyTypes = map[string]bool{"EC": true, "RSA": true, "OKP": true, "oct": true}

// Decode parses a SPIFFE bundle document of trust domain td (at most
// MaxDocumentSize bytes, at most MaxAuthorities keys) into a Bundle:
// X.509 authorities with their DER certificate and not_after, JWT
// authorities with key_id, PKIX DER public_key (and expires_at 0),
// sequence_number and refresh_hint. As the SPIFFE Trust Domain and
// Bundle specification requires (4.1.3, 4.2.1, 4.2.2), a key whose use
// is neither x509-svid nor jwt-svid, or whose key type (kty) is unknown,
// is ignored. A key of those uses that does not parse, a jwt-svid key
// without kid, a duplicate kid, a negative refresh hint or a document
// with no x509-svid or jwt-svid key is an error.
func Decode(td spiffeid.TrustDomain, doc []byte) (*sigilv1.Bundle, error) {
	b, err := decode(td, doc)
	if err != nil {
		return nil, fmt.Errorf("federation: bundle document of %q: %w", td.Name(), err)
	}
	return b, nil
}

func decode(td spiffeid.TrustDomain, doc []byte) (*sigilv1.Bundle, error) {
	if td.IsZero() {
		return nil, errors.New("no trust domain")
	}
	if len(doc) > MaxDocumentSize {
		return nil, fmt.Errorf("document is %d bytes, more than the limit of %d", len(doc), MaxDocumentSize)
	}
	var raw rawDoc
	if err := json.Unmarshal(doc, &raw); err != nil {
		return nil, fmt.Errorf("not a JWKS document: %w", err)
	}
	if raw.Keys == nil || len(*raw.Keys) == 0 {
		return nil, errors.New(`no keys (a bundle needs at least one authority)`)
	}
	keys := *raw.Keys
	if len(keys) > MaxAuthorities {
		return nil, fmt.Errorf("%d keys, more than the limit of %d", len(keys), MaxAuthorities)
	}
	var kept []json.RawMessage
	var kids []string
	seen := make(map[string]bool)
	for i, k := range keys {
		var h keyHead
		if err := json.Unmarshal(k, &h); err != nil {
			return nil, fmt.Errorf("key %d: %w", i+1, err)
		}
		if (h.Use != useX509SVID && h.Use != useJWTSVID) || !knownKeyTypes[h.Kty] {
			continue
		}
		if h.Use == useJWTSVID {
			if h.Kid == "" {
				return nil, fmt.Errorf("key %d: jwt-svid key without kid", i+1)
			}
			if seen[h.Kid] {
				return nil, fmt.Errorf("key %d: duplicate kid %q", i+1, short(h.Kid))
			}
			seen[h.Kid] = true
			kids = append(kids, h.Kid)
		}
		kept = append(kept, k)
	}
	if len(kept) == 0 {
		return nil, fmt.Errorf("none of the %d keys is an x509-svid or jwt-svid key of a known type", len(keys))
	}
	var hint int64
	if raw.RefreshHint != nil {
		hint = *raw.RefreshHint
		if hint < 0 {
			return nil, fmt.Errorf("negative spiffe_refresh_hint %d", hint)
		}
		// A hint of centuries is as good as the largest Duration.
		hint = min(hint, maxHintSeconds)
	}
	if len(kept) < len(keys) {
		// go-spiffe reads the keys of other uses it knows (wit-svid)
		// and fails on unknown key types: give it only ours.
		filtered, err := json.Marshal(struct {
			Keys []json.RawMessage `json:"keys"`
		}{kept})
		if err != nil {
			return nil, err
		}
		doc = filtered
	}
	sb, err := spiffebundle.Parse(td, doc)
	if err != nil {
		return nil, err
	}
	out := &sigilv1.Bundle{TrustDomain: td.Name(), RefreshHint: hint}
	if raw.Sequence != nil {
		out.SequenceNumber = *raw.Sequence
	}
	for _, cert := range sb.X509Authorities() {
		out.X509Authorities = append(out.X509Authorities, &sigilv1.X509Authority{
			Certificate: cert.Raw,
			NotAfter:    cert.NotAfter.Unix(),
		})
	}
	for _, kid := range kids {
		pub, ok := sb.FindJWTAuthority(kid)
		if !ok {
			return nil, fmt.Errorf("jwt-svid key %q was not parsed", short(kid))
		}
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			return nil, fmt.Errorf("jwt-svid key %q: unsupported public key: %w", short(kid), err)
		}
		out.JwtAuthorities = append(out.JwtAuthorities, &sigilv1.JWTAuthority{KeyId: kid, PublicKey: der})
	}
	return out, nil
}

// DecodePEM builds a bundle of td from PEM CA certificates (`sigil bundle
// set -format pem`), with no JWT authorities. Text around the PEM blocks
// is ignored; a block that is not a CERTIFICATE is an error.
func DecodePEM(td spiffeid.TrustDomain, pemData []byte) (*sigilv1.Bundle, error) {
	b, err := decodePEM(td, pemData)
	if err != nil {
		return nil, fmt.Errorf("federation: PEM bundle of %q: %w", td.Name(), err)
	}
	return b, nil
}

func decodePEM(td spiffeid.TrustDomain, data []byte) (*sigilv1.Bundle, error) {
	if td.IsZero() {
		return nil, errors.New("no trust domain")
	}
	if len(data) > MaxDocumentSize {
		return nil, fmt.Errorf("file is %d bytes, more than the limit of %d", len(data), MaxDocumentSize)
	}
	out := &sigilv1.Bundle{TrustDomain: td.Name()}
	seen := make(map[string]bool)
	rest := data
	for n := 1; ; n++ {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("PEM block %d is %q, not CERTIFICATE", n, block.Type)
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", n, err)
		}
		if seen[string(cert.Raw)] {
			continue
		}
		seen[string(cert.Raw)] = true
		if len(out.X509Authorities) == MaxAuthorities {
			return nil, fmt.Errorf("more than %d certificates", MaxAuthorities)
		}
		out.X509Authorities = append(out.X509Authorities, &sigilv1.X509Authority{
			Certificate: cert.Raw,
			NotAfter:    cert.NotAfter.Unix(),
		})
	}
	if len(out.X509Authorities) == 0 {
		return nil, errors.New("no PEM CERTIFICATE block")
	}
	return out, nil
}

// CheckUpdate decides whether next may replace cur (nil when there is no
// bundle yet) as the bundle of td: next must be of td, have at least one
// authority (and at most MaxAuthorities), and a sequence number not
// below cur's.
func CheckUpdate(td spiffeid.TrustDomain, cur, next *sigilv1.Bundle) error {
	if err := checkUpdate(td, cur, next); err != nil {
		return fmt.Errorf("federation: bundle of %q: %w", td.Name(), err)
	}
	return nil
}

func checkUpdate(td spiffeid.TrustDomain, cur, next *sigilv1.Bundle) error {
	if next == nil {
		return errors.New("no bundle")
	}
	if next.GetTrustDomain() != td.Name() {
		return fmt.Errorf("the bundle is of trust domain %q", next.GetTrustDomain())
	}
	n := len(next.GetX509Authorities()) + len(next.GetJwtAuthorities())
	if n == 0 {
		return errors.New("the bundle has no authorities")
	}
	if n > MaxAuthorities {
		return fmt.Errorf("the bundle has %d authorities, more than %d", n, MaxAuthorities)
	}
	if cur != nil && next.GetSequenceNumber() < cur.GetSequenceNumber() {
		return fmt.Errorf("sequence number %d is below the current bundle's %d", next.GetSequenceNumber(), cur.GetSequenceNumber())
	}
	return nil
}

// Equal reports whether two bundles have the same trust domain,
// authorities (in any order), sequence number and refresh hint
// (store-set fields ignored). Authorities are compared by certificate,
// and by key ID and public key.
func Equal(a, b *sigilv1.Bundle) bool {
	if a == nil || b == nil {
		return a == b
	}
	if a.GetTrustDomain() != b.GetTrustDomain() ||
		a.GetSequenceNumber() != b.GetSequenceNumber() ||
		a.GetRefreshHint() != b.GetRefreshHint() ||
		len(a.GetX509Authorities()) != len(b.GetX509Authorities()) ||
		len(a.GetJwtAuthorities()) != len(b.GetJwtAuthorities()) {
		return false
	}
	return slices.Equal(x509Keys(a), x509Keys(b)) && slices.Equal(jwtKeys(a), jwtKeys(b))
}

func x509Keys(b *sigilv1.Bundle) []string {
	out := make([]string, 0, len(b.GetX509Authorities()))
	for _, x := range b.GetX509Authorities() {
		out = append(out, string(x.GetCertificate()))
	}
	slices.Sort(out)
	return out
}

func jwtKeys(b *sigilv1.Bundle) []string {
	out := make([]string, 0, len(b.GetJwtAuthorities()))
	for _, j := range b.GetJwtAuthorities() {
		// A key ID cannot hold a NUL in a valid document, and the
		// length prefix keeps the pair unambiguous anyway.
		out = append(out, fmt.Sprintf("%d:%s\x00%s", len(j.GetKeyId()), j.GetKeyId(), j.GetPublicKey()))
	}
	slices.Sort(out)
	return out
}

// ValidateRelationship checks a relationship as the admin API and the
// config file accept it: trust domain (not local), https URL with a host
// and no user info, profile, endpoint SPIFFE ID (in the relationship's
// trust domain) for https_spiffe and none for https_web.
func ValidateRelationship(local spiffeid.TrustDomain, rel *sigilv1.FederationRelationship) error {
	if err := validateRelationship(local, rel); err != nil {
		return fmt.Errorf("federation: %w", err)
	}
	return nil
}

func validateRelationship(local spiffeid.TrustDomain, rel *sigilv1.FederationRelationship) error {
	if rel == nil {
		return errors.New("no relationship")
	}
	if rel.GetTrustDomain() == "" {
		return errors.New("trust_domain is required")
	}
	td, err := spiffeid.TrustDomainFromString(rel.GetTrustDomain())
	if err != nil {
		return fmt.Errorf("trust_domain %q: %w", rel.GetTrustDomain(), err)
	}
	if td.Name() != rel.GetTrustDomain() {
		return fmt.Errorf("trust_domain %q: give the trust domain's name (%q)", rel.GetTrustDomain(), td.Name())
	}
	if td == local {
		return fmt.Errorf("trust_domain %q is the local trust domain", td.Name())
	}
	if err := validateEndpointURL(rel.GetBundleEndpointUrl()); err != nil {
		return fmt.Errorf("relationship %q: bundle_endpoint_url: %w", td.Name(), err)
	}
	switch rel.GetProfile() {
	case ProfileHTTPSSPIFFE:
		if rel.GetEndpointSpiffeId() == "" {
			return fmt.Errorf("relationship %q: endpoint_spiffe_id is required with profile %s", td.Name(), ProfileHTTPSSPIFFE)
		}
		id, err := spiffeid.FromString(rel.GetEndpointSpiffeId())
		if err != nil {
			return fmt.Errorf("relationship %q: endpoint_spiffe_id %q: %w", td.Name(), rel.GetEndpointSpiffeId(), err)
		}
		if id.TrustDomain() != td {
			return fmt.Errorf("relationship %q: endpoint_spiffe_id %q is not in trust domain %q", td.Name(), id, td.Name())
		}
	case ProfileHTTPSWeb:
		if rel.GetEndpointSpiffeId() != "" {
			return fmt.Errorf("relationship %q: endpoint_spiffe_id must be empty with profile %s", td.Name(), ProfileHTTPSWeb)
		}
	case "":
		return fmt.Errorf("relationship %q: profile is required (%s or %s)", td.Name(), ProfileHTTPSSPIFFE, ProfileHTTPSWeb)
	default:
		return fmt.Errorf("relationship %q: profile %q is neither %s nor %s", td.Name(), rel.GetProfile(), ProfileHTTPSSPIFFE, ProfileHTTPSWeb)
	}
	return nil
}

func validateEndpointURL(raw string) error {
	if raw == "" {
		return errors.New("required")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return err
	}
	switch {
	case u.Scheme != "https":
		return fmt.Errorf("%q is not an https URL", raw)
	case u.Hostname() == "":
		return fmt.Errorf("%q has no host", raw)
	case u.User != nil:
		return fmt.Errorf("%q has user info", redactURL(u))
	case u.Fragment != "":
		return fmt.Errorf("%q has a fragment", raw)
	}
	return nil
}

// redactURL is u without its user info (which may hold a password).
func redactURL(u *url.URL) string {
	c := *u
	c.User = nil
	return c.String()
}

// maxHintSeconds is the largest refresh hint kept, a second below the
// largest Duration: go-spiffe rounds a hint up to whole seconds by adding
// almost a second.
const maxHintSeconds = int64(math.MaxInt64/time.Second) - 1

// secondsToDuration converts a refresh hint without overflowing.
func secondsToDuration(s int64) time.Duration {
	if s <= 0 {
		return 0
	}
	s = min(s, maxHintSeconds)
	return time.Duration(s) * time.Second
}

// short is s, cut to 64 bytes for an error message.
func short(s string) string {
	if len(s) <= 64 {
		return s
	}
	return strings.ToValidUTF8(s[:64], "") + "…"
}
