package oidc

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// MaxTokenLen is the longest token the verifier parses and the agent sends.
const MaxTokenLen = 16 << 10

// header is the part of a JWS protected header the verifier reads before
// verifying the signature: to pick the issuer's rules.
type header struct {
	Alg string `json:"alg"`
	Kid string `json:"kid"`
}

// splitToken decodes the header and the payload claims of a compact JWS
// without verifying anything: the claims choose the configured issuer
// whose keys then verify the token. Errors are about malformed tokens and
// never contain the token.
func splitToken(token string) (header, map[string]any, error) {
	var h header
	if len(token) > MaxTokenLen {
		return h, nil, fmt.Errorf("token of %d bytes is too long (at most %d)", len(token), MaxTokenLen)
	}
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return h, nil, fmt.Errorf("token has %d dot-separated parts, want 3 (a compact JWS)", len(parts))
	}
	hb, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil {
		return h, nil, errors.New("token header is not base64url")
	}
	if err := json.Unmarshal(hb, &h); err != nil {
		return h, nil, errors.New("token header is not a JSON object with a string alg")
	}
	if h.Alg == "" {
		return h, nil, errors.New("token header has no alg")
	}
	pb, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return h, nil, errors.New("token payload is not base64url")
	}
	claims, err := decodeClaims(pb)
	if err != nil {
		return h, nil, err
	}
	return h, claims, nil
}

// decodeClaims decodes a JWT claims set, keeping numbers exact.
func decodeClaims(b []byte) (map[string]any, error) {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var claims map[string]any
	if err := d.Decode(&claims); err != nil || claims == nil {
		return nil, errors.New("token payload is not a JSON object")
	}
	if d.More() {
		return nil, errors.New("token payload has data after its JSON object")
	}
	return claims, nil
}

// lookup returns the claim at path (nested objects). A claim name may
// itself contain dots (Kubernetes' "kubernetes.io"): at each level the
// longest run of path parts that names a key is taken.
func lookup(claims map[string]any, path []string) (any, bool) {
	var cur any = claims
	for len(path) > 0 {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		found := false
		for i := len(path); i > 0; i-- {
			if v, ok := m[strings.Join(path[:i], ".")]; ok {
				cur, path, found = v, path[i:], true
				break
			}
		}
		if !found {
			return nil, false
		}
	}
	return cur, true
}

// lookupScalar returns the string form of the string, number or boolean
// claim at path; false for a missing claim or another type.
func lookupScalar(claims map[string]any, path []string) (string, bool) {
	v, ok := lookup(claims, path)
	if !ok {
		return "", false
	}
	switch v := v.(type) {
	case string:
		return v, true
	case json.Number:
		return v.String(), true
	case bool:
		return strconv.FormatBool(v), true
	}
	return "", false
}

// printable reports whether v is valid UTF-8 without control characters:
// a selector value may hold it.
func printable(v string) bool {
	if !utf8.ValidString(v) {
		return false
	}
	for _, r := range v {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}

// numericDate returns the NumericDate claim name; ok is false when absent.
func numericDate(claims map[string]any, name string) (t time.Time, ok bool, err error) {
	v, present := claims[name]
	if !present {
		return time.Time{}, false, nil
	}
	n, isNum := v.(json.Number)
	if !isNum {
		return time.Time{}, false, fmt.Errorf("claim %q is not a number", name)
	}
	f, err := n.Float64()
	if err != nil || math.IsNaN(f) || f < 0 || f > 1e11 {
		return time.Time{}, false, fmt.Errorf("claim %q is not a valid time", name)
	}
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9)).UTC(), true, nil
}

// audiences returns the aud claim (a string or an array of strings).
func audiences(claims map[string]any) []string {
	switch v := claims["aud"].(type) {
	case string:
		return []string{v}
	case []any:
		out := make([]string, 0, len(v))
		for _, a := range v {
			if s, ok := a.(string); ok {
				out = append(out, s)
			}
		}
		return out
	}
	return nil
}
