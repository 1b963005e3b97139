package ca

import (
	"errors"
	"strconv"
	"unicode/utf8"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// appendClaims appends the JSON object of a JWT-SVID's claims to dst:
// {"sub":…,"aud":[…],"exp":…,"iat":…}, the members in that order: the
// bytes json.Marshal writes for a struct of those four fields (strings
// escaped as it escapes them, bytes that are not UTF-8 as U+FFFD),
// without its reflection and allocations.
func appendClaims(dst []byte, sub string, aud []string, exp, iat int64) []byte {
	dst = append(dst, `{"sub":`...)
	dst = appendJSONString(dst, sub)
	dst = append(dst, `,"aud":`...)
	if aud == nil {
		dst = append(dst, "null"...)
	} else {
		dst = append(dst, '[')
		for i, a := range aud {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendJSONString(dst, a)
		}
		dst = append(dst, ']')
	}
	dst = append(dst, `,"exp":`...)
	dst = strconv.AppendInt(dst, exp, 10)
	dst = append(dst, `,"iat":`...)
	dst = strconv.AppendInt(dst, iat, 10)
	return append(dst, '}')
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s as a JSON string. Quotes, backslashes and
// control characters are escaped; so are <, > and & and the line and
// paragraph separators U+2028 and U+2029, as json.Marshal escapes them
// (harmless in a token, and a token embedded in HTML or JavaScript stays
// inert); invalid UTF-8 becomes U+FFFD.
func appendJSONString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		b := s[i]
		if b < utf8.RuneSelf {
			if b >= 0x20 && b != '"' && b != '\\' && b != '<' && b != '>' && b != '&' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '"', '\\':
				dst = append(dst, '\\', b)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[b>>4], hexDigits[b&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// errMalformedSignature is appendJWSSignature's refusal.
var errMalformedSignature = errors.New("malformed ECDSA signature from the key")

// appendJWSSignature converts an ASN.1 ECDSA signature (SEQUENCE of the
// INTEGERs r and s, as crypto.Signer returns it) to the JWS form, r||s,
// each big-endian and left-padded to size bytes (RFC 7518 section 3.4),
// and appends it to dst. It refuses trailing data, negative, empty or
// not minimally encoded integers and integers longer than size.
func appendJWSSignature(dst, sig []byte, size int) ([]byte, error) {
	in := cryptobyte.String(sig)
	var seq, r, s cryptobyte.String
	if !in.ReadASN1(&seq, cbasn1.SEQUENCE) || !in.Empty() ||
		!seq.ReadASN1(&r, cbasn1.INTEGER) || !seq.ReadASN1(&s, cbasn1.INTEGER) || !seq.Empty() {
		return nil, errMalformedSignature
	}
	n := len(dst)
	dst = append(dst, make([]byte, 2*size)...)
	if !fillInteger(dst[n:n+size], r) || !fillInteger(dst[n+size:], s) {
		return nil, errMalformedSignature
	}
	return dst, nil
}

// fillInteger writes the non-negative DER INTEGER content v into out,
// right-aligned; it reports false for an empty, negative or not
// minimally encoded integer, or one that does not fit.
func fillInteger(out []byte, v []byte) bool {
	if len(v) == 0 || v[0]&0x80 != 0 {
		return false
	}
	if len(v) > 1 && v[0] == 0 {
		if v[1]&0x80 == 0 {
			return false // a leading zero only before a high bit
		}
		v = v[1:]
	}
	if len(v) > len(out) {
		return false
	}
	copy(out[len(out)-len(v):], v)
	return true
}
