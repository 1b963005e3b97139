// Package keyed validates the keyed selector values of the cloud node
// attestors (gcp_iit, azure_msi): "<key>:<value>" where each key has its
// own check of the values the attestor produces.
package keyed

import (
	"fmt"
	"sort"
	"strings"
)

// Checks maps each selector key to the check of its values.
type Checks map[string]func(string) bool

// Validate checks value ("<key>:<value>") of a selector of type attestor.
// hint, when not empty, is added to the error of a bad value.
func (c Checks) Validate(attestor, value, hint string) error {
	key, v, _ := strings.Cut(value, ":")
	check, ok := c[key]
	if !ok {
		keys := make([]string, 0, len(c))
		for k := range c {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		return fmt.Errorf("want %s:<key>:<value> with key one of %s", attestor, strings.Join(keys, ", "))
	}
	if !check(v) {
		if hint != "" {
			hint = " (" + hint + ")"
		}
		return fmt.Errorf("%s: %q is not a value the %s attestor produces%s", key, Clip(v), attestor, hint)
	}
	return nil
}

// Clip shortens an untrusted value (a claim) for an error message.
func Clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}
