package ca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-id/sigil/clock"
)

// DefaultJWTSVIDTTL is the lifetime of a JWT-SVID when neither the entry
// nor the configuration says otherwise.
const DefaultJWTSVIDTTL = 5 * time.Minute

// maxAudiences bounds the audience list of one JWT-SVID.
const maxAudiences = 32

// JWTSigner mints JWT-SVIDs with one JWT signing key. It is safe for
// concurrent use.
type JWTSigner struct {
	td       spiffeid.TrustDomain
	kid      string
	alg      string
	hash     crypto.Hash
	ecSize   int // bytes of r and s for ECDSA; 0 otherwise
	signer   crypto.Signer
	notAfter time.Time
	ttl      time.Duration
	clk      clock.Clock
	// header is the encoded protected header, the same for every token.
	header string
}

// NewJWTSigner returns a signer for key, published under kid, that mints
// tokens of trust domain td with a default lifetime of ttl, never past
// notAfter (the key's own expiry).
func NewJWTSigner(td spiffeid.TrustDomain, kid string, key crypto.Signer, notAfter time.Time, ttl time.Duration, clk clock.Clock) (*JWTSigner, error) {
	if td.IsZero() {
		return nil, errors.New("ca: JWT signer: trust domain is required")
	}
	if kid == "" {
		return nil, errors.New("ca: JWT signer: key ID is required")
	}
	if ttl <= 0 {
		ttl = DefaultJWTSVIDTTL
	}
	if clk == nil {
		clk = clock.New()
	}
	j := &JWTSigner{td: td, kid: kid, signer: key, notAfter: notAfter, ttl: ttl, clk: clk}
	switch k := key.Public().(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			j.alg, j.hash, j.ecSize = "ES256", crypto.SHA256, 32
		case elliptic.P384():
			j.alg, j.hash, j.ecSize = "ES384", crypto.SHA384, 48
		default:
			return nil, fmt.Errorf("ca: JWT signer: unsupported curve %s", k.Curve.Params().Name)
		}
	case *rsa.PublicKey:
		j.alg, j.hash = "RS256", crypto.SHA256
	default:
		return nil, fmt.Errorf("ca: JWT signer: unsupported key type %T", k)
	}
	h, err := json.Marshal(struct {
		Alg string `json:"alg"`
		Kid string `json:"kid"`
		Typ string `json:"typ"`
	}{j.alg, kid, "JWT"})
	if err != nil {
		return nil, err
	}
	j.header = base64.RawURLEncoding.EncodeToString(h)
	return j, nil
}

// KeyID is the kid of the signing key, as published in the bundle.
func (j *JWTSigner) KeyID() string { return j.kid }

// NotAfter is when the signing key expires.
func (j *JWTSigner) NotAfter() time.Time { return j.notAfter }

// JWTSVIDParams is what a JWT-SVID is minted from.
type JWTSVIDParams struct {
	SPIFFEID spiffeid.ID
	Audience []string
	TTL      time.Duration // 0 = the signer's default
}

// SignJWTSVID mints a compact JWS JWT-SVID: sub is the SPIFFE ID, aud the
// audience list, iat now and exp now+TTL, never past the key's expiry.
func (j *JWTSigner) SignJWTSVID(ctx context.Context, p JWTSVIDParams) (token string, expiresAt time.Time, err error) {
	if err := ctx.Err(); err != nil {
		return "", time.Time{}, fmt.Errorf("ca: %w", err)
	}
	if p.SPIFFEID.IsZero() {
		return "", time.Time{}, errors.New("ca: SPIFFE ID is empty")
	}
	if p.SPIFFEID.TrustDomain() != j.td {
		return "", time.Time{}, fmt.Errorf("ca: SPIFFE ID %q is not in trust domain %q", p.SPIFFEID, j.td)
	}
	if err := CheckAudience(p.Audience); err != nil {
		return "", time.Time{}, err
	}
	ttl := p.TTL
	switch {
	case ttl < 0:
		return "", time.Time{}, fmt.Errorf("ca: TTL %v is negative", ttl)
	case ttl == 0:
		ttl = j.ttl
	}
	now := j.clk.Now()
	if !now.Before(j.notAfter) {
		return "", time.Time{}, fmt.Errorf("ca: JWT signing key %s expired at %s", j.kid, j.notAfter.UTC().Format(time.RFC3339))
	}
	exp := now.Add(ttl)
	if exp.After(j.notAfter) {
		exp = j.notAfter
	}
	// Whole seconds: exp is rounded down so the token never outlives
	// the key.
	exp = exp.Truncate(time.Second)
	var buf [512]byte
	claims := appendClaims(buf[:0], p.SPIFFEID.String(), p.Audience, exp.Unix(), now.Unix())
	enc := base64.RawURLEncoding
	// The token in one buffer: header.claims, then .signature once the
	// signing input (the buffer so far) is signed.
	tok := make([]byte, 0, len(j.header)+1+enc.EncodedLen(len(claims))+1+enc.EncodedLen(512))
	tok = append(tok, j.header...)
	tok = append(tok, '.')
	tok = enc.AppendEncode(tok, claims)
	var sigBuf [2 * 48]byte // r||s of P-384, the largest curve NewJWTSigner takes
	sig, err := j.sign(sigBuf[:0], tok)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("ca: signing JWT-SVID for %q: %w", p.SPIFFEID, err)
	}
	tok = append(tok, '.')
	tok = enc.AppendEncode(tok, sig)
	return string(tok), exp, nil
}

// sign signs input and returns the JWS signature, appended to dst for
// ECDSA keys.
func (j *JWTSigner) sign(dst, input []byte) ([]byte, error) {
	var digest []byte
	switch j.hash {
	case crypto.SHA384:
		d := sha512.Sum384(input)
		digest = d[:]
	default:
		d := sha256.Sum256(input)
		digest = d[:]
	}
	sig, err := j.signer.Sign(rand.Reader, digest, j.hash)
	if err != nil {
		return nil, err
	}
	if j.ecSize == 0 {
		return sig, nil // RSASSA-PKCS1-v1_5, already in JWS form
	}
	// crypto.Signer returns an ASN.1 ECDSA signature; JWS wants r||s.
	return appendJWSSignature(dst, sig, j.ecSize)
}

// CheckAudience refuses an empty audience list, empty audiences, and too
// many of them.
func CheckAudience(aud []string) error {
	if len(aud) == 0 {
		return errors.New("ca: audience is required")
	}
	if len(aud) > maxAudiences {
		return fmt.Errorf("ca: %d audiences (maximum %d)", len(aud), maxAudiences)
	}
	if slices.Contains(aud, "") {
		return errors.New("ca: audience is empty")
	}
	return nil
}

// KeyIDOf derives a stable key ID from a public key: the hex of the first
// 16 bytes of the SHA-256 of its PKIX encoding.
func KeyIDOf(pub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("ca: marshaling public key: %w", err)
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:16]), nil
}
