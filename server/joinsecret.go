package server

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Join secrets.
//
// A join secret is JoinSecretPrefix followed by the unpadded base64url
// encoding of JoinSecretBytes random bytes, as `sigil cluster secret
// generate` (GenerateJoinSecret) makes it. Only secrets in this format are
// accepted, so every cluster's secret has 256 bits of entropy and no
// guess of it, offline or online, can succeed: a password, a passphrase or
// a short string is refused when the configuration is loaded.
const (
	// JoinSecretPrefix starts every join secret.
	JoinSecretPrefix = "sigil-join-v1-"
	// JoinSecretBytes is the number of random bytes in a join secret.
	JoinSecretBytes = 32
	// joinSecretMinDistinct is the fewest distinct byte values accepted in
	// a join secret's random part. 32 random bytes have about 30; fewer
	// than 16 means it was made by hand (e.g. all "A"), not generated.
	joinSecretMinDistinct = 16
)

// joinSecretLen is the length of an encoded join secret.
var joinSecretLen = len(JoinSecretPrefix) + base64.RawURLEncoding.EncodedLen(JoinSecretBytes)

// ErrWeakJoinSecret is returned (wrapped) for a join secret that is not
// one that `sigil cluster secret generate` made.
var ErrWeakJoinSecret = errors.New("join_secret is not a generated secret; run `sigil cluster secret generate` and set its output as join_secret on every server")

// GenerateJoinSecret returns a new join secret of JoinSecretBytes bytes
// from r (crypto/rand.Reader when r is nil).
func GenerateJoinSecret(r io.Reader) (string, error) {
	if r == nil {
		r = rand.Reader
	}
	for range 8 {
		b := make([]byte, JoinSecretBytes)
		if _, err := io.ReadFull(r, b); err != nil {
			return "", fmt.Errorf("server: generating a join secret: %w", err)
		}
		s := JoinSecretPrefix + base64.RawURLEncoding.EncodeToString(b)
		if _, err := ParseJoinSecret(s); err == nil {
			return s, nil
		}
	}
	return "", errors.New("server: generating a join secret: the random source is not random")
}

// ParseJoinSecret checks that s is a join secret in the generated format
// and returns its key: the decoded random bytes. Surrounding white space
// is not part of a secret. The error names the problem, never the secret.
func ParseJoinSecret(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	if !strings.HasPrefix(s, JoinSecretPrefix) {
		return nil, fmt.Errorf("server: %w (it must start with %q)", ErrWeakJoinSecret, JoinSecretPrefix)
	}
	if len(s) != joinSecretLen {
		return nil, fmt.Errorf("server: %w (it must be %d characters long, not %d)", ErrWeakJoinSecret, joinSecretLen, len(s))
	}
	key, err := base64.RawURLEncoding.Strict().DecodeString(s[len(JoinSecretPrefix):])
	if err != nil || len(key) != JoinSecretBytes {
		return nil, fmt.Errorf("server: %w (its random part is not base64url)", ErrWeakJoinSecret)
	}
	var seen [256]bool
	distinct := 0
	for _, b := range key {
		if !seen[b] {
			seen[b] = true
			distinct++
		}
	}
	if distinct < joinSecretMinDistinct {
		return nil, fmt.Errorf("server: %w (its random part is not random)", ErrWeakJoinSecret)
	}
	return key, nil
}

// joinKey returns the key of a join secret; nil (joins refused) when the
// secret is empty or not valid (Config.Validate refuses those).
func joinKey(secret string) []byte {
	if secret == "" {
		return nil
	}
	key, err := ParseJoinSecret(secret)
	if err != nil {
		return nil
	}
	return key
}
