package registration

import (
	"errors"
	"fmt"
	"path"
	"sort"
	"strconv"
	"strings"
	"sync"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// SelectorValidator checks the value of a selector of one type (the part
// after "type:"). It is called only with values that already passed the
// structural rules and size limits. It must be deterministic and must not
// block.
type SelectorValidator func(value string) error

var selectorTypes = struct {
	sync.RWMutex
	m map[string]SelectorValidator
}{m: map[string]SelectorValidator{}}

// RegisterSelectorType makes a selector type known to ValidateInput and
// ValidateSelectorInput, with validate checking its values (nil accepts
// any value within the size limits). Attestor plugins call it from an
// init function for every selector type they produce, workload and node
// alike (attestor/workload/unix registers "unix", attestor/node/jointoken
// "join_token"): the binary knows the types of the plugins it imports. It
// panics if name is not a valid selector
// type or is registered twice, as database/sql.Register does: both are
// programming errors.
func RegisterSelectorType(name string, validate SelectorValidator) {
	if err := ValidateSelector(selectorForType(name)); err != nil || len(name) > MaxSelectorTypeLen {
		panic(fmt.Sprintf("registration: RegisterSelectorType: invalid type name %q", name))
	}
	selectorTypes.Lock()
	defer selectorTypes.Unlock()
	if _, dup := selectorTypes.m[name]; dup {
		panic(fmt.Sprintf("registration: RegisterSelectorType: type %q registered twice", name))
	}
	selectorTypes.m[name] = validate
}

// SelectorTypes returns the registered selector types, sorted.
func SelectorTypes() []string {
	selectorTypes.RLock()
	defer selectorTypes.RUnlock()
	out := make([]string, 0, len(selectorTypes.m))
	for k := range selectorTypes.m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func lookupSelectorType(name string) (SelectorValidator, bool) {
	selectorTypes.RLock()
	defer selectorTypes.RUnlock()
	v, ok := selectorTypes.m[name]
	return v, ok
}

// unixKeys are the keys of the unix workload attestor's selectors
// (attestor/workload/unix) and the check of each one's value.
var unixKeys = map[string]func(string) error{
	"uid":               checkUnixID,
	"gid":               checkUnixID,
	"supplementary_gid": checkUnixID,
	"user":              checkUnixName,
	"group":             checkUnixName,
	"path":              checkUnixPath,
	"sha256":            checkSHA256Hex,
}

// ValidateUnixSelector checks the value of a "unix" selector: uid:<n>,
// gid:<n> and supplementary_gid:<n> with n a decimal id from 0 to
// 4294967294 written without leading zeros (as the kernel reports it);
// user:<name> and group:<name> with a name of at most 256 bytes without
// ':', '/' or control characters; path:<p> with p an absolute, clean
// path; sha256:<h> with h 64 lowercase hex digits.
func ValidateUnixSelector(value string) error {
	key, v, ok := strings.Cut(value, ":")
	check, known := unixKeys[key]
	if !ok || !known {
		keys := make([]string, 0, len(unixKeys))
		for k := range unixKeys {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		return fmt.Errorf("want unix:<key>:<value> with key one of %s", strings.Join(keys, ", "))
	}
	if err := check(v); err != nil {
		return fmt.Errorf("%s: %w", key, err)
	}
	return nil
}

func checkUnixID(v string) error {
	n, err := strconv.ParseUint(v, 10, 32)
	// (uid_t)-1 is not an id: the kernel uses it to mean "no change".
	if err != nil || n == 1<<32-1 || strconv.FormatUint(n, 10) != v {
		return fmt.Errorf("%q is not a numeric id: want a decimal number from 0 to 4294967294 without sign or leading zeros", v)
	}
	return nil
}

func checkUnixName(v string) error {
	if v == "" || len(v) > 256 {
		return fmt.Errorf("name of %d bytes: want 1 to 256 bytes", len(v))
	}
	for _, r := range v {
		if r < 0x20 || r == 0x7f || r == ':' || r == '/' {
			return fmt.Errorf("name %q has a character not allowed in user and group names", v)
		}
	}
	return nil
}

func checkUnixPath(v string) error {
	if !strings.HasPrefix(v, "/") {
		return fmt.Errorf("%q is not an absolute path", v)
	}
	if c := path.Clean(v); c != v {
		return fmt.Errorf("%q is not a clean path (the attestor reports %q)", v, c)
	}
	return nil
}

func checkSHA256Hex(v string) error {
	if len(v) != 64 {
		return fmt.Errorf("want 64 lowercase hex digits, got %d characters", len(v))
	}
	if !isLowerHex(v) {
		return errors.New("want 64 lowercase hex digits")
	}
	return nil
}

// ValidateJoinTokenSelector checks the value of a "join_token" node
// selector: the agent's id, 32 lowercase hex digits (the first half of the
// token's SHA-256).
func ValidateJoinTokenSelector(value string) error {
	if len(value) != 32 || !isLowerHex(value) {
		return fmt.Errorf("%q is not a join token agent id: want 32 lowercase hex digits (the last segment of the agent's SPIFFE ID)", value)
	}
	return nil
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

func selectorForType(name string) *sigilv1.Selector {
	return &sigilv1.Selector{Type: name, Value: "x"}
}
