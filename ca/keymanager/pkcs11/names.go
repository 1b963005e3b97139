package pkcs11

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-id/sigil/ca"
)

const (
	// MaxLabelLen bounds the CKA_LABEL of a key: some tokens limit labels
	// (AWS CloudHSM to 127 bytes), so longer names are shortened (see
	// KeyLabel).
	MaxLabelLen = 64
	// IDLen is the length in bytes of a key's CKA_ID (as a SHA-1 subject
	// key identifier, the usual CKA_ID).
	IDLen = 20
	// maxKeyID bounds a key manager id.
	maxKeyID = 128
	// maxPrefix bounds key_label_prefix.
	maxPrefix = 16
)

// keyName is the full name of a key: prefix/trust domain/node/scope/id.
func keyName(prefix string, td spiffeid.TrustDomain, node string, scope ca.KeyScope, id string) string {
	return strings.Join([]string{prefix, td.Name(), node, string(scope), id}, "/")
}

// KeyLabel returns the CKA_LABEL and CKA_ID of the key named id in scope
// of the server node of trust domain td, with prefix (key_label_prefix).
// The full name is prefix/td/node/scope/id; the label is that name when
// it fits in MaxLabelLen bytes, else its first bytes, "~" and 12 hex
// digits of its SHA-256. The CKA_ID is the first IDLen bytes of the
// SHA-256 of the full name, so two names never share an id (and a key is
// found by both label and id).
func KeyLabel(prefix string, td spiffeid.TrustDomain, node string, scope ca.KeyScope, id string) (label string, ckaID []byte) {
	name := keyName(prefix, td, node, scope, id)
	sum := sha256.Sum256([]byte(name))
	if len(name) <= MaxLabelLen {
		return name, sum[:IDLen]
	}
	suffix := "~" + hex.EncodeToString(sum[:6])
	head := name[:MaxLabelLen-len(suffix)]
	for !utf8.ValidString(head) { // do not cut a character in two
		head = head[:len(head)-1]
	}
	return head + suffix, sum[:IDLen]
}

// checkKeyID refuses key manager ids that are empty, too long, not UTF-8
// or hold control characters.
func checkKeyID(id string) error {
	switch {
	case id == "":
		return errors.New("pkcs11: key id is empty")
	case len(id) > maxKeyID:
		return fmt.Errorf("pkcs11: key id is %d bytes long, more than %d", len(id), maxKeyID)
	case !utf8.ValidString(id) || strings.ContainsFunc(id, unicode.IsControl):
		return fmt.Errorf("pkcs11: key id %q holds invalid or control characters", id)
	}
	return nil
}

// checkPrefix enforces the form of key_label_prefix: 1 to 16 of
// [A-Za-z0-9._-].
func checkPrefix(p string) error {
	if p == "" || len(p) > maxPrefix {
		return fmt.Errorf("must be 1 to %d characters", maxPrefix)
	}
	for _, r := range p {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return fmt.Errorf("%q holds %q: use only letters, digits, '.', '_' and '-'", p, r)
		}
	}
	return nil
}
