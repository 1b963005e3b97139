package policy

import (
	"fmt"
	"strings"
)

// glob is a compiled slash-separated pattern. Each segment of the pattern
// is a literal, "*" (exactly one segment of any text), a segment with
// embedded stars ("web-*": any text without a slash), or, as the last
// segment only, "**" (zero or more further segments).
//
// Patterns are compiled once when a policy is loaded; matching walks the
// input once and does not allocate.
type glob struct {
	text string
	segs []globSeg
	// rest is true when the pattern ends in "**".
	rest bool
}

type globSeg struct {
	lit   string   // literal segment, when parts is nil and !star
	star  bool     // "*": any single segment
	parts []string // embedded stars: text split on "*"
}

// compileGlob compiles pattern, which must start with "/" (or be empty or
// "/**" for "everything").
func compileGlob(pattern string) (*glob, error) {
	g := &glob{text: pattern}
	if pattern == "" {
		return g, nil
	}
	if pattern[0] != '/' {
		return nil, fmt.Errorf("pattern %q must start with /", pattern)
	}
	segs := strings.Split(pattern[1:], "/")
	for i, s := range segs {
		switch {
		case s == "**":
			if i != len(segs)-1 {
				return nil, fmt.Errorf("in %q, ** is only allowed as the last segment", pattern)
			}
			g.rest = true
		case strings.Contains(s, "**"):
			return nil, fmt.Errorf("in %q, ** must be a whole segment", pattern)
		case s == "*":
			g.segs = append(g.segs, globSeg{star: true})
		case strings.Contains(s, "*"):
			g.segs = append(g.segs, globSeg{parts: strings.Split(s, "*")})
		case s == "" && !(i == len(segs)-1 && len(segs) == 1):
			return nil, fmt.Errorf("in %q, empty path segment", pattern)
		default:
			g.segs = append(g.segs, globSeg{lit: s})
		}
	}
	// "/" alone is the root path: zero segments.
	if len(segs) == 1 && segs[0] == "" {
		g.segs = nil
	}
	return g, nil
}

// literal reports whether the pattern has no wildcard at all.
func (g *glob) literal() bool {
	if g.rest {
		return false
	}
	for _, s := range g.segs {
		if s.star || s.parts != nil {
			return false
		}
	}
	return true
}

// literalPrefix returns the path made of the leading literal segments
// ("/ns/prod" for "/ns/prod/*/web") and how many segments it has.
func (g *glob) literalPrefix() (string, int) {
	var b strings.Builder
	n := 0
	for _, s := range g.segs {
		if s.star || s.parts != nil {
			break
		}
		b.WriteByte('/')
		b.WriteString(s.lit)
		n++
	}
	return b.String(), n
}

// match reports whether path ("/a/b/c", or "" for no path) matches.
func (g *glob) match(path string) bool {
	if path == "/" {
		path = ""
	}
	i := 0 // position in path, at a '/' or at len(path)
	for _, s := range g.segs {
		if i >= len(path) || path[i] != '/' {
			return false
		}
		j := i + 1
		for j < len(path) && path[j] != '/' {
			j++
		}
		if !s.matchSeg(path[i+1 : j]) {
			return false
		}
		i = j
	}
	if g.rest {
		return true
	}
	return i == len(path)
}

func (s *globSeg) matchSeg(seg string) bool {
	switch {
	case s.star:
		return seg != ""
	case s.parts == nil:
		return seg == s.lit
	}
	return matchStars(s.parts, seg)
}

// matchStars matches seg against parts joined by "*" (greedy-free: the
// first part is a prefix, the last a suffix, middles found in order).
func matchStars(parts []string, seg string) bool {
	if !strings.HasPrefix(seg, parts[0]) {
		return false
	}
	seg = seg[len(parts[0]):]
	last := parts[len(parts)-1]
	for _, p := range parts[1 : len(parts)-1] {
		k := strings.Index(seg, p)
		if k < 0 {
			return false
		}
		seg = seg[k+len(p):]
	}
	return len(seg) >= len(last) && strings.HasSuffix(seg, last)
}

// covers reports whether every path matched by o is also matched by g
// (used by lint to find shadowed rules). It is exact for literal and
// "*"/"**" segments and conservative (may answer false) for embedded stars.
func (g *glob) covers(o *glob) bool {
	if o.rest && !g.rest {
		return false
	}
	if len(o.segs) < len(g.segs) {
		return false
	}
	if !g.rest && len(o.segs) != len(g.segs) {
		return false
	}
	for i, gs := range g.segs {
		os := o.segs[i]
		switch {
		case gs.star:
			// o's segment is never empty, so any segment kind is covered.
		case gs.parts != nil:
			if os.star || os.parts != nil {
				if !segText(os).equal(gs) {
					return false
				}
				continue
			}
			if !gs.matchSeg(os.lit) {
				return false
			}
		default:
			if os.star || os.parts != nil || os.lit != gs.lit {
				return false
			}
		}
	}
	return true
}

type segText globSeg

func (a segText) equal(b globSeg) bool {
	if len(a.parts) != len(b.parts) {
		return false
	}
	for i := range a.parts {
		if a.parts[i] != b.parts[i] {
			return false
		}
	}
	return true
}
