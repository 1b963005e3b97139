package ca

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/asn1"
	"encoding/json"
	"math/big"
	"testing"
)

// jwtClaims is what appendClaims must encode as json.Marshal would.
type jwtClaims struct {
	Sub string   `json:"sub"`
	Aud []string `json:"aud"`
	Exp int64    `json:"exp"`
	Iat int64    `json:"iat"`
}

var claimStrings = []string{
	"", "spiffe://example.org/ns/default/sa/web", `quote " backslash \ slash /`,
	"\x00\x01\x07\b\t\n\v\f\r\x1b\x1f\x7f", "<script>&amp;</script>", "é ü 日本 😀",
	"line\u2028para\u2029end", "\xff", "a\xe2\x82", "\xed\xa0\x80 surrogate", "\xc0\xaf overlong",
	"valid then \xf0\x9f\x98 cut",
}

func checkClaims(t *testing.T, sub string, aud []string, exp, iat int64) {
	t.Helper()
	want, err := json.Marshal(jwtClaims{Sub: sub, Aud: aud, Exp: exp, Iat: iat})
	if err != nil {
		t.Fatal(err)
	}
	if got := appendClaims(nil, sub, aud, exp, iat); !bytes.Equal(got, want) {
		t.Fatalf("appendClaims(%q, %q, %d, %d)\n got %s\nwant %s", sub, aud, exp, iat, got, want)
	}
}

// appendClaims writes what json.Marshal writes, byte for byte.
func TestAppendClaims(t *testing.T) {
	for _, s := range claimStrings {
		checkClaims(t, s, []string{s}, 1_700_000_000, 1_699_999_700)
		checkClaims(t, "spiffe://example.org/w", []string{"a", s, "b"}, -1, 0)
	}
	checkClaims(t, "x", nil, 1<<62, -(1 << 62))
	checkClaims(t, "x", []string{}, 0, 0)
}

func FuzzAppendClaims(f *testing.F) {
	for _, s := range claimStrings {
		f.Add(s, s, "aud", int64(1_700_000_000), int64(-5))
	}
	f.Fuzz(func(t *testing.T, sub, a1, a2 string, exp, iat int64) {
		checkClaims(t, sub, []string{a1, a2}, exp, iat)
		checkClaims(t, sub, []string{a1}, exp, iat)
	})
}

// referenceJWS is the conversion appendJWSSignature replaced: encoding/asn1
// into two big.Ints, then FillBytes, with the refusals made explicit
// (encoding/asn1 accepts negative integers, whose magnitude FillBytes
// would write, and ignores elements of a SEQUENCE past the struct's
// fields: the input must be the DER of exactly the two integers).
func referenceJWS(sig []byte, size int) ([]byte, bool) {
	var rs struct{ R, S *big.Int }
	rest, err := asn1.Unmarshal(sig, &rs)
	if err != nil || len(rest) != 0 || rs.R.Sign() < 0 || rs.S.Sign() < 0 ||
		rs.R.BitLen() > 8*size || rs.S.BitLen() > 8*size {
		return nil, false
	}
	if der, err := asn1.Marshal(rs); err != nil || !bytes.Equal(der, sig) {
		return nil, false
	}
	out := make([]byte, 2*size)
	rs.R.FillBytes(out[:size])
	rs.S.FillBytes(out[size:])
	return out, true
}

func checkJWS(t *testing.T, sig []byte, size int) {
	t.Helper()
	want, ok := referenceJWS(sig, size)
	got, err := appendJWSSignature(nil, sig, size)
	if err == nil {
		// Appended after what dst holds, which is kept.
		prefixed, err := appendJWSSignature([]byte("kept"), sig, size)
		if err != nil || string(prefixed[:4]) != "kept" || !bytes.Equal(prefixed[4:], got) {
			t.Fatalf("appendJWSSignature after a prefix: %x, %v", prefixed, err)
		}
	}
	if ok != (err == nil) || !bytes.Equal(got, want) {
		t.Fatalf("appendJWSSignature(%x, %d) = %x, %v; reference %x, %v", sig, size, got, err, want, ok)
	}
}

// Real signatures convert as before; malformed ones are refused as the
// reference refuses them.
func TestJWSSignature(t *testing.T) {
	for _, curve := range []elliptic.Curve{elliptic.P256(), elliptic.P384()} {
		key, err := ecdsa.GenerateKey(curve, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		size := (curve.Params().BitSize + 7) / 8
		for i := 0; i < 200; i++ {
			digest := make([]byte, 32)
			rand.Read(digest)
			sig, err := ecdsa.SignASN1(rand.Reader, key, digest)
			if err != nil {
				t.Fatal(err)
			}
			checkJWS(t, sig, size)
			if _, err := appendJWSSignature(nil, sig, size); err != nil {
				t.Fatal(err)
			}
		}
	}
	for name, sig := range map[string][]byte{
		"empty":            {},
		"trailing data":    {0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01, 0x00},
		"negative r":       {0x30, 0x06, 0x02, 0x01, 0xff, 0x02, 0x01, 0x01},
		"not minimal":      {0x30, 0x07, 0x02, 0x02, 0x00, 0x01, 0x02, 0x01, 0x01},
		"empty integer":    {0x30, 0x05, 0x02, 0x00, 0x02, 0x01, 0x01},
		"one integer":      {0x30, 0x03, 0x02, 0x01, 0x01},
		"three integers":   {0x30, 0x09, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01},
		"not a sequence":   {0x31, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01},
		"r too long":       append([]byte{0x30, 0x24, 0x02, 0x21}, append(bytes.Repeat([]byte{0x7f}, 33), 0x02, 0x01, 0x01)...),
		"zero and one":     {0x30, 0x06, 0x02, 0x01, 0x00, 0x02, 0x01, 0x01},
		"high bit, padded": {0x30, 0x07, 0x02, 0x02, 0x00, 0x80, 0x02, 0x01, 0x01},
	} {
		t.Run(name, func(t *testing.T) { checkJWS(t, sig, 32) })
	}
}

func FuzzJWSSignature(f *testing.F) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	sig, _ := ecdsa.SignASN1(rand.Reader, key, make([]byte, 32))
	f.Add(sig, uint8(32))
	f.Add([]byte{0x30, 0x07, 0x02, 0x02, 0x00, 0x80, 0x02, 0x01, 0x01}, uint8(1))
	f.Add([]byte{0x30, 0x06, 0x02, 0x01, 0xff, 0x02, 0x01, 0x01}, uint8(48))
	f.Fuzz(func(t *testing.T, sig []byte, size uint8) {
		if size == 0 || size > 66 {
			return
		}
		checkJWS(t, sig, int(size))
	})
}
