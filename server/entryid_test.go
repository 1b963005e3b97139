package server

import (
	"fmt"
	"regexp"
	"testing"
	"time"
)

// TestNewEntryIDs: ids are 32 lowercase hex digits, distinct, and those
// made at one time share the time prefix and follow each other, so that a
// batch's ids are close in the store's indexes.
func TestNewEntryIDs(t *testing.T) {
	now := time.Date(2026, 11, 30, 23, 0, 0, 0, time.UTC)
	hex32 := regexp.MustCompile(`^[0-9a-f]{32}$`)
	seen := map[string]bool{}
	prev := ""
	for i := 0; i < 1000; i++ {
		id, err := newEntryID(now)
		if err != nil {
			t.Fatal(err)
		}
		if !hex32.MatchString(id) {
			t.Fatalf("id %q is not 32 lowercase hex digits", id)
		}
		if seen[id] {
			t.Fatalf("id %q made twice", id)
		}
		seen[id] = true
		if want := fmt.Sprintf("%012x", now.UnixMilli()); id[:12] != want {
			t.Fatalf("id %q does not start with the time in milliseconds (%s)", id, want)
		}
		if prev != "" && id[12:16] != "0000" && id <= prev {
			t.Fatalf("id %q made after %q sorts before it", id, prev)
		}
		prev = id
	}
}
