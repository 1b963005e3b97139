package policy

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

type idKind uint8

const (
	idTrustDomain idKind = iota // spiffe://td or spiffe://td/**
	idExact                     // spiffe://td/a/b
	idPrefix                    // spiffe://td/a/** : /a and everything under it
	idGlob                      // spiffe://td/ns/*/sa/web
)

// idMatcher is one compiled entry of a rule's from list.
type idMatcher struct {
	text string
	td   string
	kind idKind
	path string // exact path, or the prefix of idPrefix
	g    *glob  // idGlob (and, for lint, every kind)
}

// parseIDMatcher parses a SPIFFE ID pattern: an exact ID, a whole trust
// domain ("spiffe://td" or "spiffe://td/**"), a path prefix
// ("spiffe://td/ns/prod/**") or a glob where "*" stands for one path
// segment or part of one ("spiffe://td/ns/*/sa/web", ".../sa/web-*").
func parseIDMatcher(s string) (*idMatcher, error) {
	rest, ok := strings.CutPrefix(s, "spiffe://")
	if !ok {
		return nil, fmt.Errorf("%q is not a SPIFFE ID pattern: it must start with spiffe://", s)
	}
	tdName, path := rest, ""
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		tdName, path = rest[:i], rest[i:]
	}
	if strings.Contains(tdName, "*") {
		return nil, fmt.Errorf("%q: wildcards are not allowed in the trust domain", s)
	}
	td, err := spiffeid.TrustDomainFromString(tdName)
	if err != nil {
		return nil, fmt.Errorf("%q: invalid trust domain: %v", s, err)
	}
	m := &idMatcher{text: s, td: td.Name()}
	if path == "/" {
		return nil, fmt.Errorf("%q: a SPIFFE ID path cannot be /; use spiffe://%s for the whole trust domain", s, tdName)
	}
	g, err := compileGlob(path)
	if err != nil {
		return nil, fmt.Errorf("%q: %v", s, err)
	}
	m.g = g
	// Validate the characters, with each star standing for a valid letter.
	if path != "" {
		check := strings.ReplaceAll(strings.TrimSuffix(path, "/**"), "*", "x")
		if check != "" {
			if err := spiffeid.ValidatePath(check); err != nil {
				return nil, fmt.Errorf("%q: invalid path: %v", s, err)
			}
		}
	}
	switch {
	case path == "" || path == "/**":
		m.kind = idTrustDomain
	case g.literal():
		m.kind, m.path = idExact, path
	case g.rest && isLiteralSegs(g.segs):
		m.kind, m.path = idPrefix, strings.TrimSuffix(path, "/**")
	default:
		m.kind = idGlob
	}
	return m, nil
}

func isLiteralSegs(segs []globSeg) bool {
	for _, s := range segs {
		if s.star || s.parts != nil {
			return false
		}
	}
	return true
}

// match reports whether id matches (used by lint and tests; Decide uses
// the index).
func (m *idMatcher) match(id spiffeid.ID) bool {
	if id.TrustDomain().Name() != m.td {
		return false
	}
	return m.g.match(id.Path())
}

// covers reports whether every ID matched by o is matched by m.
func (m *idMatcher) covers(o *idMatcher) bool {
	if m.td != o.td {
		return false
	}
	if o.kind == idExact && isReservedPath(o.path) {
		// A Sigil agent or server ID is matched only by its exact ID.
		return m.kind == idExact && m.path == o.path
	}
	if m.kind == idTrustDomain {
		return true
	}
	if o.kind == idTrustDomain {
		return false
	}
	return m.g.covers(o.g)
}

// Protocol says what kind of call a Target is.
type Protocol uint8

const (
	// Conn is a connection to a service, with no request inside it yet
	// (what a TLS-level authorizer or a raw TCP server checks).
	Conn Protocol = iota
	// HTTP is one HTTP request: Method and Path are set.
	HTTP
	// GRPC is one gRPC call: Path is the full method, "/pkg.Service/Method".
	GRPC
)

func (p Protocol) String() string {
	switch p {
	case HTTP:
		return "http"
	case GRPC:
		return "grpc"
	}
	return "conn"
}

// Target is what a peer is trying to reach: a service, and within it an
// HTTP method and path or a gRPC method.
type Target struct {
	// Service is the name of the service being called; enforcement points
	// set it from their configuration. It may be empty.
	Service  string
	Protocol Protocol
	// Method is the HTTP method (HTTP only).
	Method string
	// Path is the HTTP request path, or the gRPC full method.
	Path string
}

// ServiceTarget is a connection to service.
func ServiceTarget(service string) Target { return Target{Service: service} }

// HTTPTarget is an HTTP request.
func HTTPTarget(service, method, path string) Target {
	return Target{Service: service, Protocol: HTTP, Method: method, Path: path}
}

// GRPCTarget is a gRPC call of fullMethod ("/pkg.Service/Method").
func GRPCTarget(service, fullMethod string) Target {
	return Target{Service: service, Protocol: GRPC, Path: fullMethod}
}

// String renders the target as a person reads it:
// "GET /v1/users on service users", "grpc /pkg.S/M", "service api".
func (t Target) String() string {
	var b strings.Builder
	switch t.Protocol {
	case HTTP:
		b.WriteString(t.Method)
		b.WriteByte(' ')
		b.WriteString(t.Path)
	case GRPC:
		b.WriteString("gRPC ")
		b.WriteString(t.Path)
	default:
		if t.Service == "" {
			return "a connection"
		}
		return "service " + t.Service
	}
	if t.Service != "" {
		b.WriteString(" on service ")
		b.WriteString(t.Service)
	}
	return b.String()
}

// ParseTarget parses a concrete target as written on the command line of
// `sigil policy test`: "service:NAME", "http:METHOD /path" or
// "grpc:/pkg.Service/Method". service, if not empty, is set as the
// target's service (a "service:" target sets it itself).
func ParseTarget(s, service string) (Target, error) {
	kind, rest, ok := strings.Cut(s, ":")
	if !ok {
		return Target{}, fmt.Errorf("target %q: want service:NAME, http:METHOD /path or grpc:/pkg.Service/Method", s)
	}
	switch kind {
	case "service":
		if err := validServiceName(rest); err != nil {
			return Target{}, fmt.Errorf("target %q: %v", s, err)
		}
		if service != "" && service != rest {
			return Target{}, fmt.Errorf("target %q conflicts with service %q", s, service)
		}
		return ServiceTarget(rest), nil
	case "http":
		method, p, ok := strings.Cut(strings.TrimSpace(rest), " ")
		p = strings.TrimSpace(p)
		if !ok || method == "" || !strings.HasPrefix(p, "/") {
			return Target{}, fmt.Errorf("target %q: want http:METHOD /path", s)
		}
		if strings.Contains(p, "*") || method == "*" {
			return Target{}, fmt.Errorf("target %q: a target to test is a concrete request, not a pattern", s)
		}
		return HTTPTarget(service, strings.ToUpper(method), p), nil
	case "grpc":
		if err := validFullMethod(rest); err != nil {
			return Target{}, fmt.Errorf("target %q: %v", s, err)
		}
		if strings.Contains(rest, "*") {
			return Target{}, fmt.Errorf("target %q: a target to test is a concrete call, not a pattern", s)
		}
		return GRPCTarget(service, rest), nil
	}
	return Target{}, fmt.Errorf("target %q: unknown kind %q (want service, http or grpc)", s, kind)
}

func validServiceName(s string) error {
	if s == "" {
		return errors.New("empty service name")
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_') {
			return fmt.Errorf("service name %q: only letters, digits, '.', '-' and '_' are allowed", s)
		}
	}
	return nil
}

func validFullMethod(s string) error {
	parts := strings.Split(s, "/")
	if len(parts) != 3 || parts[0] != "" || parts[1] == "" || parts[2] == "" {
		return fmt.Errorf("gRPC method %q: want /package.Service/Method", s)
	}
	return nil
}

// targetMatcher is one compiled entry of a rule's to list.
type targetMatcher struct {
	text    string
	proto   Protocol // Conn means "service:NAME": any call to that service
	service string   // service:NAME, or the rule's service scope ("" = any)
	methods []string // HTTP methods; nil = any
	g       *glob    // HTTP path or gRPC method pattern
	grpcSvc string   // literal gRPC service ("pkg.Svc"), for the index
}

// parseTargetMatcher parses one entry of a rule's to list:
//
//	service:NAME              any call to service NAME
//	http:GET /v1/users/*      HTTP method(s) and path pattern; "GET,HEAD" or "*" for any method
//	grpc:/pkg.Service/Method  gRPC full method pattern; "/pkg.Service/*" for every method
//
// scope is the rule's service (may be empty): it restricts http and grpc
// targets to that service.
func parseTargetMatcher(s, scope string) (*targetMatcher, error) {
	kind, rest, ok := strings.Cut(s, ":")
	if !ok {
		return nil, fmt.Errorf("%q: want service:NAME, http:METHOD /path or grpc:/pkg.Service/Method", s)
	}
	m := &targetMatcher{text: s, service: scope}
	switch kind {
	case "service":
		if err := validServiceName(rest); err != nil {
			return nil, fmt.Errorf("%q: %v", s, err)
		}
		if scope != "" && scope != rest {
			return nil, fmt.Errorf("%q: the rule is scoped to service %q", s, scope)
		}
		m.proto, m.service = Conn, rest
	case "http":
		rest = strings.TrimSpace(rest)
		methods, p, ok := strings.Cut(rest, " ")
		p = strings.TrimSpace(p)
		if !ok || methods == "" || p == "" {
			return nil, fmt.Errorf("%q: want http:METHOD /path (METHOD may be GET,POST or *)", s)
		}
		if methods != "*" {
			for _, meth := range strings.Split(methods, ",") {
				meth = strings.TrimSpace(meth)
				if meth == "" || strings.ToUpper(meth) != meth || strings.ContainsAny(meth, "* /") {
					return nil, fmt.Errorf("%q: invalid HTTP method %q (use upper case, e.g. GET,POST, or *)", s, meth)
				}
				m.methods = append(m.methods, meth)
			}
		}
		g, err := compileGlob(p)
		if err != nil {
			return nil, fmt.Errorf("%q: %v", s, err)
		}
		m.proto, m.g = HTTP, g
	case "grpc":
		g, err := compileGlob(rest)
		if err != nil {
			return nil, fmt.Errorf("%q: %v", s, err)
		}
		if !g.rest && len(g.segs) != 2 {
			return nil, fmt.Errorf("%q: want grpc:/package.Service/Method (or /package.Service/*)", s)
		}
		if len(g.segs) >= 1 && !g.segs[0].star && g.segs[0].parts == nil {
			m.grpcSvc = g.segs[0].lit
		}
		m.proto, m.g = GRPC, g
	default:
		return nil, fmt.Errorf("%q: unknown target kind %q (want service, http or grpc)", s, kind)
	}
	return m, nil
}

// match reports whether t matches.
func (m *targetMatcher) match(t *Target) bool {
	if m.service != "" && t.Service != m.service {
		return false
	}
	switch m.proto {
	case Conn:
		return true
	case HTTP:
		if t.Protocol != HTTP {
			return false
		}
		if m.methods != nil {
			ok := false
			for _, meth := range m.methods {
				if meth == t.Method {
					ok = true
					break
				}
			}
			if !ok {
				return false
			}
		}
		return m.g.match(t.Path)
	case GRPC:
		return t.Protocol == GRPC && m.g.match(t.Path)
	}
	return false
}

// covers reports whether every target matched by o is matched by m.
func (m *targetMatcher) covers(o *targetMatcher) bool {
	if m.service != "" && m.service != o.service {
		return false
	}
	if m.proto == Conn {
		return true // m.service == o.service (checked above; a Conn matcher always has one)
	}
	if o.proto != m.proto {
		return false
	}
	if m.methods != nil {
		if o.methods == nil {
			return false
		}
		for _, om := range o.methods {
			found := false
			for _, mm := range m.methods {
				if mm == om {
					found = true
				}
			}
			if !found {
				return false
			}
		}
	}
	return m.g.covers(o.g)
}

// grpcService returns "pkg.Svc" of "/pkg.Svc/Method" without allocating.
func grpcService(fullMethod string) string {
	if len(fullMethod) < 2 || fullMethod[0] != '/' {
		return ""
	}
	s := fullMethod[1:]
	if i := strings.IndexByte(s, '/'); i >= 0 {
		return s[:i]
	}
	return s
}
