package x509pop

import (
	"crypto/sha1" //nolint:gosec // a fingerprint for naming, offered for compatibility; never a security check
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"strings"
)

// DefaultAgentIDTemplate names an agent after its leaf certificate's
// SHA-256 fingerprint.
const DefaultAgentIDTemplate = "{{ .Fingerprint.SHA256 }}"

// Placeholders are the values an agent_id template may use, each written
// {{ .Name }}; nothing else may stand between double braces.
var Placeholders = []string{"Fingerprint.SHA256", "Fingerprint.SHA1", "SerialNumber", "Subject.CN"}

// maxIDLen bounds a rendered agent id, well within a SPIFFE ID's 2048
// bytes.
const maxIDLen = 1024

// maxTemplateLen bounds an agent_id template.
const maxTemplateLen = 512

// idTemplate is a parsed agent_id template: literal text and placeholders,
// in order.
type idTemplate struct {
	parts []idPart
}

type idPart struct {
	literal     string
	placeholder string // one of Placeholders, or "" for a literal
}

// parseIDTemplate parses and validates an agent_id template: only the
// placeholders listed in Placeholders, at least one of them, and literal
// text made of characters allowed in SPIFFE ID path segments and "/".
func parseIDTemplate(s string) (*idTemplate, error) {
	if s == "" {
		return nil, fmt.Errorf("agent_id template is empty")
	}
	if len(s) > maxTemplateLen {
		return nil, fmt.Errorf("agent_id template is longer than %d bytes", maxTemplateLen)
	}
	t := &idTemplate{}
	rest := s
	placeholders := 0
	for rest != "" {
		open := strings.Index(rest, "{{")
		if open < 0 {
			open = len(rest)
		}
		if lit := rest[:open]; lit != "" {
			if strings.Contains(lit, "}}") {
				return nil, fmt.Errorf("agent_id template %q has a }} without {{", s)
			}
			for _, r := range lit {
				if !pathChar(r) && r != '/' {
					return nil, fmt.Errorf("agent_id template %q has the character %q, which may not appear in a SPIFFE ID path (letters, digits, '.', '-', '_' and '/')", s, r)
				}
			}
			t.parts = append(t.parts, idPart{literal: lit})
		}
		if open == len(rest) {
			break
		}
		rest = rest[open+2:]
		end := strings.Index(rest, "}}")
		if end < 0 {
			return nil, fmt.Errorf("agent_id template %q has a {{ without }}", s)
		}
		name := strings.TrimSpace(rest[:end])
		rest = rest[end+2:]
		ok := false
		for _, p := range Placeholders {
			if name == "."+p {
				ok = true
			}
		}
		if !ok {
			return nil, fmt.Errorf("agent_id template %q: unknown placeholder {{ %s }}; the placeholders are {{ .%s }}", s, name, strings.Join(Placeholders, " }}, {{ ."))
		}
		placeholders++
		t.parts = append(t.parts, idPart{placeholder: name[1:]})
	}
	if placeholders == 0 {
		return nil, fmt.Errorf("agent_id template %q has no placeholder: every agent would get the same id", s)
	}
	return t, nil
}

// render returns the id of the agent holding leaf. It fails if the result
// is not a valid relative SPIFFE ID path or if a placeholder's value is not
// one path segment's worth of characters (a common name with a space or a
// '/', for example).
func (t *idTemplate) render(leaf *x509.Certificate) (string, error) {
	var b strings.Builder
	for _, p := range t.parts {
		switch p.placeholder {
		case "":
			b.WriteString(p.literal)
		case "Fingerprint.SHA256":
			s := sha256.Sum256(leaf.Raw)
			b.WriteString(hex.EncodeToString(s[:]))
		case "Fingerprint.SHA1":
			s := sha1.Sum(leaf.Raw) //nolint:gosec // naming only
			b.WriteString(hex.EncodeToString(s[:]))
		case "SerialNumber":
			b.WriteString(serialHex(leaf))
		case "Subject.CN":
			// Only literal text may add path segments: a common name
			// with a '/' (or any character outside a path segment's)
			// is refused, not spliced into the id's structure.
			cn := leaf.Subject.CommonName
			for _, r := range cn {
				if !pathChar(r) {
					return "", fmt.Errorf("the common name %q has the character %q, not allowed in a SPIFFE ID path segment", cn, r)
				}
			}
			b.WriteString(cn)
		}
	}
	id := b.String()
	if len(id) > maxIDLen {
		return "", fmt.Errorf("agent id of %d bytes, at most %d", len(id), maxIDLen)
	}
	for _, seg := range strings.Split(id, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return "", fmt.Errorf("agent id %q has an empty, '.' or '..' path segment", id)
		}
		for _, r := range seg {
			if !pathChar(r) {
				return "", fmt.Errorf("agent id %q has the character %q, not allowed in a SPIFFE ID path", id, r)
			}
		}
	}
	return id, nil
}

// pathChar reports whether r may appear in a SPIFFE ID path segment.
func pathChar(r rune) bool {
	return 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || r == '.' || r == '-' || r == '_'
}

// serialHex is the leaf's serial number in lowercase hex, without leading
// zeros ("0" for zero).
func serialHex(c *x509.Certificate) string {
	if c.SerialNumber == nil {
		return "0"
	}
	return c.SerialNumber.Text(16)
}
