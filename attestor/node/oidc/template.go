package oidc

import (
	"errors"
	"fmt"
	"strings"
)

// Limits of the agent ID template and of the claim values it renders.
const (
	// MaxTemplateLen is the longest agent_id template.
	MaxTemplateLen = 256
	// MaxTemplateSegments is the most path segments a template has.
	MaxTemplateSegments = 8
	// MaxClaimValueLen is the longest claim value (in bytes, before
	// escaping) that becomes part of an agent ID or a selector.
	MaxClaimValueLen = 256
	// maxClaimPathDepth is the most dotted parts of a claim path.
	maxClaimPathDepth = 6
)

// template is a parsed agent_id template: path segments, each a sequence
// of literal text and claim placeholders.
type template struct {
	segments [][]part
}

// part is literal text (path nil) or a claim placeholder.
type part struct {
	literal string
	path    []string
}

// parseTemplate parses an agent_id template. The syntax is fixed: path
// segments separated by "/", each made of literal characters
// [A-Za-z0-9._-] and placeholders "{{claim}}" where claim is a claim name
// or a dotted path into nested objects ("{{sub}}", "{{claims.repository}}"
// and "{{repository}}" name the same claim: a leading "claims." is
// optional). Every segment is non-empty; the template has at least one
// placeholder.
func parseTemplate(s string) (*template, error) {
	if s == "" {
		return nil, errors.New("agent_id template is empty")
	}
	if len(s) > MaxTemplateLen {
		return nil, fmt.Errorf("agent_id template of %d bytes is too long (at most %d)", len(s), MaxTemplateLen)
	}
	raw := strings.Split(s, "/")
	if len(raw) > MaxTemplateSegments {
		return nil, fmt.Errorf("agent_id template %q has %d path segments (at most %d)", s, len(raw), MaxTemplateSegments)
	}
	t := &template{}
	placeholders := 0
	for _, seg := range raw {
		if seg == "" {
			return nil, fmt.Errorf("agent_id template %q has an empty path segment (no leading, trailing or doubled \"/\")", s)
		}
		if seg == "." || seg == ".." {
			return nil, fmt.Errorf("agent_id template %q has a %q path segment", s, seg)
		}
		var parts []part
		rest := seg
		for rest != "" {
			i := strings.Index(rest, "{{")
			if i < 0 {
				i = len(rest)
			}
			if lit := rest[:i]; lit != "" {
				if strings.Contains(lit, "}}") {
					return nil, fmt.Errorf("agent_id template %q: \"}}\" without \"{{\"", s)
				}
				for j := 0; j < len(lit); j++ {
					if !isSegmentByte(lit[j]) {
						return nil, fmt.Errorf("agent_id template %q: character %q is not allowed in literal text (letters, digits, '.', '-', '_')", s, lit[j])
					}
				}
				parts = append(parts, part{literal: lit})
			}
			rest = rest[i:]
			if rest == "" {
				break
			}
			end := strings.Index(rest, "}}")
			if end < 0 {
				return nil, fmt.Errorf("agent_id template %q: \"{{\" without \"}}\"", s)
			}
			name := strings.TrimSpace(rest[2:end])
			path, err := parseClaimPath(strings.TrimPrefix(name, "claims."))
			if err != nil {
				return nil, fmt.Errorf("agent_id template %q: %w", s, err)
			}
			parts = append(parts, part{path: path})
			placeholders++
			rest = rest[end+2:]
		}
		t.segments = append(t.segments, parts)
	}
	if placeholders == 0 {
		return nil, fmt.Errorf("agent_id template %q has no claim placeholder: every token of the issuer would get the same agent ID", s)
	}
	return t, nil
}

// parseClaimPath parses a claim name or a dotted path into nested objects.
func parseClaimPath(name string) ([]string, error) {
	if name == "" {
		return nil, errors.New("empty claim name")
	}
	path := strings.Split(name, ".")
	if len(path) > maxClaimPathDepth {
		return nil, fmt.Errorf("claim path %q is deeper than %d", name, maxClaimPathDepth)
	}
	for _, p := range path {
		if p == "" {
			return nil, fmt.Errorf("claim path %q has an empty part", name)
		}
		for i := 0; i < len(p); i++ {
			c := p[i]
			if !(c == '_' || c == '-' || c == ':' || isAlnum(c)) {
				return nil, fmt.Errorf("claim name %q: character %q is not allowed (letters, digits, '_', '-', ':')", name, c)
			}
		}
	}
	return path, nil
}

// render fills the template from claims. A missing claim, a claim that is
// not a string, number or boolean, an empty value and a value over
// MaxClaimValueLen are errors: the token is refused.
func (t *template) render(claims map[string]any) (string, error) {
	var b strings.Builder
	for i, seg := range t.segments {
		if i > 0 {
			b.WriteByte('/')
		}
		start := b.Len()
		for _, p := range seg {
			if p.path == nil {
				b.WriteString(p.literal)
				continue
			}
			v, ok := lookupScalar(claims, p.path)
			if !ok {
				return "", fmt.Errorf("the agent_id template's claim %q is missing or not a string, number or boolean", strings.Join(p.path, "."))
			}
			if v == "" || len(v) > MaxClaimValueLen {
				return "", fmt.Errorf("the agent_id template's claim %q has %d bytes (want 1 to %d)", strings.Join(p.path, "."), len(v), MaxClaimValueLen)
			}
			b.WriteString(escapeSegment(v))
		}
		if s := b.String()[start:]; s == "." || s == ".." {
			return "", fmt.Errorf("the agent_id template renders a %q path segment", s)
		}
	}
	return b.String(), nil
}

// escapeSegment escapes v into a SPIFFE path segment: letters, digits,
// '.' and '-' stay; every other byte, '_' included, becomes "_" and two
// uppercase hex digits. The escaping is injective: two values never give
// the same segment.
func escapeSegment(v string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	b.Grow(len(v))
	for i := 0; i < len(v); i++ {
		c := v[i]
		if isAlnum(c) || c == '.' || c == '-' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('_')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&0xf])
	}
	return b.String()
}

func isAlnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

// isSegmentByte reports whether c may appear in a SPIFFE path segment.
func isSegmentByte(c byte) bool { return isAlnum(c) || c == '.' || c == '-' || c == '_' }
