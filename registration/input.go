package registration

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// Limits on input. The admin API refuses anything beyond them with
// codes.InvalidArgument and a message naming the limit; nothing is
// written.
const (
	// MaxSPIFFEIDLen is the longest SPIFFE ID, in bytes, that the SPIFFE
	// specification allows (SPIFFE-ID §2.3).
	MaxSPIFFEIDLen = 2048
	// MaxSelectorTypeLen bounds a selector type, in bytes.
	MaxSelectorTypeLen = 64
	// MaxSelectorValueLen bounds a selector value, in bytes: PATH_MAX on
	// Linux, so that every executable path the unix attestor can report
	// can be registered.
	MaxSelectorValueLen = 4096
	// MaxSelectorBytes bounds the sum of the type and value lengths of
	// all selectors of one entry, so that an entry costs at most a few
	// tens of KiB on every server and agent however its selectors are
	// split.
	MaxSelectorBytes = 16 << 10
	// MaxHintLen bounds an entry's hint, in bytes.
	MaxHintLen = 1024
	// MinSVIDTTL is the shortest X.509- or JWT-SVID lifetime accepted,
	// for an entry or as a server default. Certificate and JWT times have
	// a resolution of one second and agents renew at 50-60 % of the
	// lifetime: at 4 s an SVID is renewed about 1.5 s or more before it
	// expires even after rounding, which leaves time for the CSR round
	// trip. At 1 s rounding alone can leave a lifetime of zero, which the
	// agent renews at once, again and again, pushing an update to every
	// stream each time.
	MinSVIDTTL = 4 * time.Second
	// MaxJoinTokenTTL is the longest join token lifetime. A join token is
	// a bearer credential for becoming an agent; like Consul's ACL token
	// expiry (token_max_expiration_ttl, 24h by default) it is capped at a
	// day. SPIRE defaults to 10 minutes (as Sigil does) with no cap.
	MaxJoinTokenTTL = 24 * time.Hour
	// MinJoinTokenTTL is the shortest join token lifetime: the one-second
	// resolution of token expiry. A short token is never a risk, only an
	// inconvenience.
	MinJoinTokenTTL = time.Second
	// MaxEntryIDLen bounds an entry id, as the Raft store does.
	MaxEntryIDLen = 255
	// MaxTrustDomainLen bounds a trust domain name, in bytes (the SPIFFE
	// ID specification's limit).
	MaxTrustDomainLen = 255
	// MaxFederatesWith bounds the trust domains an entry federates with
	// (raftstore.MaxFederatesWith).
	MaxFederatesWith = 32
)

// CheckFederatesWith checks an entry's federates_with as the admin API and
// the Raft store accept it: at most MaxFederatesWith trust domain names
// (a bare name such as "gcp.example", not a "spiffe://" ID), each valid
// and at most MaxTrustDomainLen bytes,
// none the local trust domain td, and no duplicates. Whether each trust
// domain has a federation relationship or a bundle is the store's check.
func CheckFederatesWith(td spiffeid.TrustDomain, names []string) error {
	if len(names) > MaxFederatesWith {
		return fmt.Errorf("registration: entry federates with %d trust domains, at most %d allowed", len(names), MaxFederatesWith)
	}
	seen := make(map[string]bool, len(names))
	for _, name := range names {
		if len(name) > MaxTrustDomainLen {
			return fmt.Errorf("registration: federates_with: trust domain name of %d bytes is too long (at most %d)", len(name), MaxTrustDomainLen)
		}
		fed, err := spiffeid.TrustDomainFromString(name)
		if err != nil {
			return fmt.Errorf("registration: federates_with: invalid trust domain %q: %w", name, err)
		}
		if fed.Name() != name {
			return fmt.Errorf("registration: federates_with: %q is not a trust domain name (write %q)", name, fed.Name())
		}
		if fed == td {
			return fmt.Errorf("registration: federates_with: %q is the local trust domain", name)
		}
		if seen[name] {
			return fmt.Errorf("registration: federates_with: duplicate trust domain %q", name)
		}
		seen[name] = true
	}
	return nil
}

// CheckEntryID checks an entry id given as input (for an update, delete or
// get): non-empty, at most MaxEntryIDLen bytes, no control characters.
func CheckEntryID(id string) error {
	if id == "" {
		return errors.New("registration: entry id is required")
	}
	if len(id) > MaxEntryIDLen {
		return fmt.Errorf("registration: entry id of %d bytes is too long (at most %d)", len(id), MaxEntryIDLen)
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; c < 0x20 || c == 0x7f {
			return errors.New("registration: entry id has control characters")
		}
	}
	return nil
}

// CheckSPIFFEIDLen refuses an ID longer than MaxSPIFFEIDLen; field names
// the field in the message.
func CheckSPIFFEIDLen(field, id string) error {
	if len(id) > MaxSPIFFEIDLen {
		return fmt.Errorf("registration: %s is %d bytes long; SPIFFE IDs are at most %d bytes", field, len(id), MaxSPIFFEIDLen)
	}
	return nil
}

// ParseSPIFFEID parses a SPIFFE ID given as input, refusing one longer
// than MaxSPIFFEIDLen before parsing it.
func ParseSPIFFEID(field, s string) (spiffeid.ID, error) {
	if err := CheckSPIFFEIDLen(field, s); err != nil {
		return spiffeid.ID{}, err
	}
	id, err := spiffeid.FromString(s)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("registration: invalid %s %q: %w", field, s, err)
	}
	return id, nil
}

// checkReservedSpelling refuses an ID whose first path segment is "sigil"
// in any case other than the exact one. Entries may not issue IDs under
// the reserved path (IsReserved), and an ID such as /SIGIL/agent/x, which
// SPIFFE treats as different, is refused too: it reads as a Sigil agent
// or server to a person and to any policy that compares paths without
// case. For a parent ID only the exact spelling can name an agent or the
// servers, so another spelling is a mistake.
func checkReservedSpelling(field string, id spiffeid.ID) error {
	first, _, _ := strings.Cut(strings.TrimPrefix(id.Path(), "/"), "/")
	if first != "sigil" && strings.EqualFold(first, "sigil") {
		return fmt.Errorf("registration: %s %q: the path /%s/ is reserved for Sigil (spelled /sigil/); choose another path", field, id, first)
	}
	return nil
}

// checkSelectorSize checks the per-selector size limits.
func checkSelectorSize(s *sigilv1.Selector) error {
	if len(s.GetType()) > MaxSelectorTypeLen {
		return fmt.Errorf("registration: selector type of %d bytes is too long (at most %d)", len(s.GetType()), MaxSelectorTypeLen)
	}
	if len(s.GetValue()) > MaxSelectorValueLen {
		return fmt.Errorf("registration: selector %q value of %d bytes is too long (at most %d)", s.GetType(), len(s.GetValue()), MaxSelectorValueLen)
	}
	return nil
}

// ValidateSelectorInput checks a selector given as input: the structural
// rules (ValidateSelector), the size limits, a registered type, and that
// type's value rules.
func ValidateSelectorInput(s *sigilv1.Selector) error {
	if s == nil {
		return errors.New("registration: selector is missing")
	}
	if err := checkSelectorSize(s); err != nil {
		return err
	}
	if err := ValidateSelector(s); err != nil {
		return err
	}
	validate, ok := lookupSelectorType(s.Type)
	if !ok {
		return fmt.Errorf("registration: unknown selector type %q (known types: %s)", s.Type, strings.Join(SelectorTypes(), ", "))
	}
	if validate != nil {
		if err := validate(s.Value); err != nil {
			return fmt.Errorf("registration: selector %q: %w", FormatSelector(s), err)
		}
	}
	return nil
}

// CheckSVIDTTL checks the lifetime of an entry's SVIDs in seconds: 0 (the
// server's default) or between MinSVIDTTL and MaxTTLSeconds.
func CheckSVIDTTL(field string, seconds int32) error {
	minSec := int32(MinSVIDTTL / time.Second)
	if seconds == 0 {
		return nil
	}
	if seconds < minSec || seconds > MaxTTLSeconds {
		return fmt.Errorf("registration: %s %ds out of range: want 0 (the server default) or %ds to %ds; shorter SVIDs cannot be renewed in time", field, seconds, minSec, MaxTTLSeconds)
	}
	return nil
}

// CheckJoinTokenTTL checks a join token lifetime.
func CheckJoinTokenTTL(ttl time.Duration) error {
	if ttl < MinJoinTokenTTL || ttl > MaxJoinTokenTTL {
		return fmt.Errorf("registration: join token TTL %v out of range: want %v to %v", ttl, MinJoinTokenTTL, MaxJoinTokenTTL)
	}
	return nil
}

// ValidateInput checks an entry given as input, as the admin API receives
// it: everything Validate checks, and SPIFFE and parent IDs of at most
// MaxSPIFFEIDLen bytes, no /sigil/ path in another spelling, at most
// MaxSelectorBytes of selectors each of a registered type with a valid
// value (ValidateSelectorInput), a hint of at most MaxHintLen bytes
// without control characters, federates_with as CheckFederatesWith
// accepts it, and SVID lifetimes of 0 or at least MinSVIDTTL. The limits are checked before anything is parsed, so an
// oversized entry costs no more than reading its lengths.
func ValidateInput(td spiffeid.TrustDomain, e *sigilv1.Entry) error {
	if e == nil {
		return errors.New("registration: entry is missing")
	}
	if err := CheckSPIFFEIDLen("spiffe_id", e.SpiffeId); err != nil {
		return err
	}
	if err := CheckSPIFFEIDLen("parent_id", e.ParentId); err != nil {
		return err
	}
	if len(e.Selectors) > MaxSelectors {
		return fmt.Errorf("registration: entry has %d selectors, at most %d allowed", len(e.Selectors), MaxSelectors)
	}
	total := 0
	for _, s := range e.Selectors {
		if s == nil {
			return errors.New("registration: selector is missing")
		}
		if err := checkSelectorSize(s); err != nil {
			return err
		}
		total += len(s.Type) + len(s.Value)
	}
	if total > MaxSelectorBytes {
		return fmt.Errorf("registration: entry's selectors total %d bytes, at most %d allowed", total, MaxSelectorBytes)
	}
	if len(e.FederatesWith) > MaxFederatesWith {
		return fmt.Errorf("registration: entry federates with %d trust domains, at most %d allowed", len(e.FederatesWith), MaxFederatesWith)
	}
	if len(e.Hint) > MaxHintLen {
		return fmt.Errorf("registration: hint of %d bytes is too long (at most %d)", len(e.Hint), MaxHintLen)
	}
	for _, r := range e.Hint {
		if r < 0x20 || r == 0x7f {
			return errors.New("registration: hint has control characters")
		}
	}
	if err := Validate(td, e); err != nil {
		return err
	}
	// Validate parsed both IDs already; these cannot fail.
	id, _ := spiffeid.FromString(e.SpiffeId)
	parent, _ := spiffeid.FromString(e.ParentId)
	if err := checkReservedSpelling("spiffe_id", id); err != nil {
		return err
	}
	if err := checkReservedSpelling("parent_id", parent); err != nil {
		return err
	}
	for _, s := range e.Selectors {
		if err := ValidateSelectorInput(s); err != nil {
			return err
		}
	}
	if err := CheckFederatesWith(td, e.FederatesWith); err != nil {
		return err
	}
	if err := CheckSVIDTTL("x509_svid_ttl", e.X509SvidTtl); err != nil {
		return err
	}
	return CheckSVIDTTL("jwt_svid_ttl", e.JwtSvidTtl)
}
