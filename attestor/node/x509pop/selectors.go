package x509pop

import (
	"fmt"
	"strings"
)

// ValidateSelector checks the value of an "x509pop" selector (the part
// after "x509pop:"): subject:cn:<cn>, ca:fingerprint:<64 lowercase hex>,
// san:dns:<name> or serialnumber:<lowercase hex>.
func ValidateSelector(value string) error {
	kind, rest, ok := cutPrefixAny(value, "subject:cn:", "ca:fingerprint:", "san:dns:", "serialnumber:")
	if !ok {
		return fmt.Errorf("%q is not an x509pop selector: want subject:cn:<cn>, ca:fingerprint:<sha256 hex>, san:dns:<name> or serialnumber:<hex>", value)
	}
	if rest == "" {
		return fmt.Errorf("x509pop selector %q has an empty value", value)
	}
	switch kind {
	case "ca:fingerprint:":
		if len(rest) != 64 || !lowerHex(rest) {
			return fmt.Errorf("x509pop selector %q: the fingerprint is the CA certificate's SHA-256 in 64 lowercase hex digits", value)
		}
	case "serialnumber:":
		if !lowerHex(strings.TrimPrefix(rest, "-")) || strings.TrimPrefix(rest, "-") == "" {
			return fmt.Errorf("x509pop selector %q: the serial number is lowercase hex without separators", value)
		}
	}
	return nil
}

func cutPrefixAny(s string, prefixes ...string) (prefix, rest string, ok bool) {
	for _, p := range prefixes {
		if r, found := strings.CutPrefix(s, p); found {
			return p, r, true
		}
	}
	return "", "", false
}

func lowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}
