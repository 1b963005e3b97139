package awskms

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
	"strings"
)

// MaxAliasLength is the longest alias name AWS KMS accepts.
const MaxAliasLength = 256

// maxPrefixLength bounds alias_prefix so that every alias, hashed or not,
// fits in MaxAliasLength.
const maxPrefixLength = 128

// aliasCharset is what AWS KMS allows in an alias name.
var aliasCharset = regexp.MustCompile(`^alias/[a-zA-Z0-9/_-]+$`)

// checkAliasPrefix reports whether p can prefix the aliases of a store.
func checkAliasPrefix(p string) error {
	switch {
	case !aliasCharset.MatchString(p):
		return fmt.Errorf("%q is not an alias name (alias/ followed by letters, digits, '/', '_' and '-')", p)
	case len(p) > maxPrefixLength:
		return fmt.Errorf("%q is longer than %d characters", p, maxPrefixLength)
	case p == "alias/aws" || strings.HasPrefix(p, "alias/aws/"):
		return fmt.Errorf("%q is in alias/aws/, which AWS reserves for its own keys", p)
	case strings.HasSuffix(p, "/") || strings.Contains(p, "//"):
		return fmt.Errorf("%q has an empty path element", p)
	}
	return nil
}

// AliasName returns the alias of the key id of scope, kept by the server
// node in trustDomain, under prefix (a valid alias_prefix such as
// "alias/sigil"):
//
//	<prefix>/<trust domain>/<node>/<scope>/<id>
//
// Each of the four elements is escaped to the alias charset: ASCII letters,
// digits and '-' stay as they are, and every other byte (including '_'
// and '/') becomes '_' and two lowercase hex digits, so "example.org"
// becomes "example_2eorg". The escaping is reversible, so distinct slots
// never share an alias. When the result would be longer than 256
// characters, the alias is <prefix>/_h/<hex SHA-256 of the four elements,
// each followed by a NUL byte> instead ("_h" is never the escape of an
// element, so it cannot collide with an escaped name).
func AliasName(prefix, trustDomain, node, scope, id string) string {
	var b strings.Builder
	b.WriteString(prefix)
	for _, e := range []string{trustDomain, node, scope, id} {
		b.WriteByte('/')
		escapeElement(&b, e)
	}
	if b.Len() <= MaxAliasLength {
		return b.String()
	}
	h := sha256.New()
	for _, e := range []string{trustDomain, node, scope, id} {
		h.Write([]byte(e))
		h.Write([]byte{0})
	}
	return prefix + "/_h/" + hex.EncodeToString(h.Sum(nil))
}

func escapeElement(b *strings.Builder, e string) {
	const hexDigits = "0123456789abcdef"
	for i := 0; i < len(e); i++ {
		c := e[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('_')
		b.WriteByte(hexDigits[c>>4])
		b.WriteByte(hexDigits[c&0xf])
	}
}
