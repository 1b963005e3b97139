// Package registration holds the rules of registration entries and
// selectors: parsing and validating them, matching a workload's selectors
// against an entry, and the SPIFFE IDs Sigil reserves for itself.
package registration

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// ReservedPath is the path prefix under which Sigil names its own servers
// and agents. No registration entry may hand out an ID under it.
const ReservedPath = "/sigil/"

// Limits on entry fields.
const (
	MaxSelectors  = 64
	MaxDNSNames   = 64
	MaxTTLSeconds = 365 * 24 * 3600
)

// ServerID is the SPIFFE ID of the server node named node.
// The ID may be at most MaxSPIFFEIDLen bytes long.
func ServerID(td spiffeid.TrustDomain, node string) (spiffeid.ID, error) {
	return boundedID(spiffeid.FromSegments(td, "sigil", "server", node))
}

// boundedID refuses an ID longer than the SPIFFE specification allows.
func boundedID(id spiffeid.ID, err error) (spiffeid.ID, error) {
	if err != nil {
		return id, err
	}
	if err := CheckSPIFFEIDLen("SPIFFE ID", id.String()); err != nil {
		return spiffeid.ID{}, err
	}
	return id, nil
}

// ServersID is the parent ID of node alias entries: an entry parented to it
// names a group of agents by their node selectors.
func ServersID(td spiffeid.TrustDomain) spiffeid.ID {
	id, _ := spiffeid.FromSegments(td, "sigil", "server")
	return id
}

// AgentID is the SPIFFE ID of an agent attested by attestor with the given
// attestor-specific id, which may hold several path segments separated by
// "/", each a valid SPIFFE path segment. The ID may be at most MaxSPIFFEIDLen bytes long,
// whatever an attestor returns.
func AgentID(td spiffeid.TrustDomain, attestor, id string) (spiffeid.ID, error) {
	if len(attestor)+len(id) > MaxSPIFFEIDLen {
		return spiffeid.ID{}, fmt.Errorf("registration: agent id of %d bytes: SPIFFE IDs are at most %d bytes", len(attestor)+len(id), MaxSPIFFEIDLen)
	}
	// An id of several path segments ("<account>/<region>/<instance>")
	// is split so that each segment is validated on its own.
	return boundedID(spiffeid.FromSegments(td, append([]string{"sigil", "agent", attestor}, strings.Split(id, "/")...)...))
}

// IsAgentID reports whether id names a Sigil agent.
func IsAgentID(id spiffeid.ID) bool {
	return strings.HasPrefix(id.Path(), "/sigil/agent/")
}

// IsServerID reports whether id names a Sigil server node.
func IsServerID(id spiffeid.ID) bool {
	return strings.HasPrefix(id.Path(), "/sigil/server/")
}

// IsReserved reports whether id lies under the reserved /sigil/ path.
func IsReserved(id spiffeid.ID) bool {
	return id.Path() == "/sigil" || strings.HasPrefix(id.Path(), ReservedPath)
}

// ParseSelector parses "type:value", for example "unix:uid:1000". The type
// is everything before the first colon. It checks the syntax and the size
// limits but not the type's registered value rules: a client does not know
// every selector type that its server's plugins define, so the server
// judges those (ValidateSelectorInput).
func ParseSelector(s string) (*sigilv1.Selector, error) {
	if len(s) > MaxSelectorTypeLen+1+MaxSelectorValueLen {
		return nil, fmt.Errorf("registration: selector of %d bytes is too long (type at most %d bytes, value at most %d)", len(s), MaxSelectorTypeLen, MaxSelectorValueLen)
	}
	typ, value, ok := strings.Cut(s, ":")
	sel := &sigilv1.Selector{Type: typ, Value: value}
	if !ok {
		return nil, fmt.Errorf("registration: selector %q: want type:value", s)
	}
	if err := ValidateSelector(sel); err != nil {
		return nil, err
	}
	if err := checkSelectorSize(sel); err != nil {
		return nil, err
	}
	return sel, nil
}

// FormatSelector is the inverse of ParseSelector.
func FormatSelector(s *sigilv1.Selector) string {
	return s.GetType() + ":" + s.GetValue()
}

// duplicateSelector returns the first selector of sels equal to an earlier
// one, or nil. A few selectors are compared pairwise and more through a
// map, neither formatting them (the store and the admin API check every
// entry).
func duplicateSelector(sels []*sigilv1.Selector) *sigilv1.Selector {
	if len(sels) <= 8 {
		for i, s := range sels {
			for _, t := range sels[:i] {
				if s.GetType() == t.GetType() && s.GetValue() == t.GetValue() {
					return s
				}
			}
		}
		return nil
	}
	type key struct{ typ, value string }
	seen := make(map[key]bool, len(sels))
	for _, s := range sels {
		k := key{s.GetType(), s.GetValue()}
		if seen[k] {
			return s
		}
		seen[k] = true
	}
	return nil
}

// ValidateSelector checks the structural rules of a selector that every
// stored selector satisfies: a non-empty type of letters, digits, '_', '-'
// and '.', and a non-empty value without line breaks or NUL. The Raft FSM
// applies it to committed commands, so it must never tighten; new input is
// checked by ValidateSelectorInput.
func ValidateSelector(s *sigilv1.Selector) error {
	if s == nil {
		return errors.New("registration: selector is missing")
	}
	if s.Type == "" {
		return errors.New("registration: selector type is empty")
	}
	if strings.ContainsAny(s.Type, ": \t\n") {
		return fmt.Errorf("registration: selector type %q may not contain colons or whitespace", s.Type)
	}
	for _, r := range s.Type {
		if !(r == '_' || r == '-' || r == '.' || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9')) {
			return fmt.Errorf("registration: selector type %q has invalid character %q", s.Type, r)
		}
	}
	if s.Value == "" {
		return fmt.Errorf("registration: selector %q has an empty value", s.Type)
	}
	if strings.ContainsAny(s.Value, "\n\r\x00") {
		return fmt.Errorf("registration: selector %q value has control characters", s.Type)
	}
	return nil
}

// Validate checks the structural rules that every stored entry satisfies
// (id, revision and created_at are the server's to set and are not
// checked). td is the server's trust domain. The Raft FSM applies it to
// every committed command, and a command committed under these rules must
// apply the same way on every server whatever its version or plugins, so
// these rules must never tighten. New input (the admin API) is checked by
// ValidateInput, which adds the size limits, the reserved-path spelling,
// the known selector types and the TTL bounds.
func Validate(td spiffeid.TrustDomain, e *sigilv1.Entry) error {
	if e == nil {
		return errors.New("registration: entry is missing")
	}
	id, err := spiffeid.FromString(e.SpiffeId)
	if err != nil {
		return fmt.Errorf("registration: invalid spiffe_id %q: %w", e.SpiffeId, err)
	}
	if id.TrustDomain() != td {
		return fmt.Errorf("registration: spiffe_id %q is not in trust domain %q", e.SpiffeId, td)
	}
	if id.Path() == "" {
		return fmt.Errorf("registration: spiffe_id %q has no path", e.SpiffeId)
	}
	if IsReserved(id) {
		return fmt.Errorf("registration: spiffe_id %q is under the reserved path %s", e.SpiffeId, ReservedPath)
	}
	parent, err := spiffeid.FromString(e.ParentId)
	if err != nil {
		return fmt.Errorf("registration: invalid parent_id %q: %w", e.ParentId, err)
	}
	if parent.TrustDomain() != td {
		return fmt.Errorf("registration: parent_id %q is not in trust domain %q", e.ParentId, td)
	}
	if parent == id {
		return fmt.Errorf("registration: parent_id equals spiffe_id %q", e.SpiffeId)
	}
	if len(e.Selectors) == 0 {
		return errors.New("registration: entry needs at least one selector")
	}
	if len(e.Selectors) > MaxSelectors {
		return fmt.Errorf("registration: entry has %d selectors, at most %d allowed", len(e.Selectors), MaxSelectors)
	}
	for _, s := range e.Selectors {
		if err := ValidateSelector(s); err != nil {
			return err
		}
	}
	if dup := duplicateSelector(e.Selectors); dup != nil {
		return fmt.Errorf("registration: duplicate selector %q", FormatSelector(dup))
	}
	if e.X509SvidTtl < 0 || e.X509SvidTtl > MaxTTLSeconds {
		return fmt.Errorf("registration: x509_svid_ttl %d out of range [0, %d]", e.X509SvidTtl, MaxTTLSeconds)
	}
	if e.JwtSvidTtl < 0 || e.JwtSvidTtl > MaxTTLSeconds {
		return fmt.Errorf("registration: jwt_svid_ttl %d out of range [0, %d]", e.JwtSvidTtl, MaxTTLSeconds)
	}
	if len(e.DnsNames) > MaxDNSNames {
		return fmt.Errorf("registration: entry has %d DNS names, at most %d allowed", len(e.DnsNames), MaxDNSNames)
	}
	for _, d := range e.DnsNames {
		if err := validateDNSName(d); err != nil {
			return err
		}
	}
	return nil
}

func validateDNSName(d string) error {
	name := strings.TrimPrefix(d, "*.")
	if name == "" || len(d) > 253 {
		return fmt.Errorf("registration: invalid DNS name %q", d)
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("registration: invalid DNS name %q", d)
		}
		for _, r := range label {
			if !(r == '-' || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9')) {
				return fmt.Errorf("registration: invalid DNS name %q", d)
			}
		}
	}
	return nil
}

// SelectorSet is a set of selectors keyed by "type:value".
type SelectorSet map[string]struct{}

// NewSelectorSet builds a set from selectors.
func NewSelectorSet(sels []*sigilv1.Selector) SelectorSet {
	s := make(SelectorSet, len(sels))
	for _, sel := range sels {
		s[FormatSelector(sel)] = struct{}{}
	}
	return s
}

// Contains reports whether every selector of sels is in the set: the rule
// by which a workload (or node) with this set matches an entry with sels.
func (s SelectorSet) Contains(sels []*sigilv1.Selector) bool {
	if len(sels) == 0 {
		return false
	}
	for _, sel := range sels {
		if _, ok := s[FormatSelector(sel)]; !ok {
			return false
		}
	}
	return true
}

// Key returns a canonical string for an entry's identity (spiffe_id,
// parent_id and sorted selectors), used to refuse duplicate entries.
func Key(e *sigilv1.Entry) string {
	sels := make([]string, 0, len(e.Selectors))
	for _, s := range e.Selectors {
		sels = append(sels, FormatSelector(s))
	}
	sort.Strings(sels)
	return e.SpiffeId + "\x00" + e.ParentId + "\x00" + strings.Join(sels, "\x00")
}
