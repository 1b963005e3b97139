package registration

import (
	"strconv"
	"strings"
	"testing"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// TestValidateDuplicateSelectors: a repeated selector is refused however
// many selectors the entry has (compared pairwise up to 8, through a map
// above), and selectors differing only in type or value are not repeats.
func TestValidateDuplicateSelectors(t *testing.T) {
	for _, n := range []int{2, 8, 9, MaxSelectors} {
		e := validEntry()
		e.Selectors = nil
		for i := 0; i < n; i++ {
			e.Selectors = append(e.Selectors, &sigilv1.Selector{Type: "unix", Value: "uid:" + strconv.Itoa(i)})
		}
		if err := Validate(td, e); err != nil {
			t.Fatalf("%d distinct selectors refused: %v", n, err)
		}
		e.Selectors[n-1] = &sigilv1.Selector{Type: "unix", Value: "uid:0"}
		if err := Validate(td, e); err == nil || !strings.Contains(err.Error(), `duplicate selector "unix:uid:0"`) {
			t.Fatalf("%d selectors with a repeat: %v", n, err)
		}
		e.Selectors[n-1] = &sigilv1.Selector{Type: "docker", Value: "uid:0"}
		if err := Validate(td, e); err != nil {
			t.Fatalf("%d selectors, one of another type: %v", n, err)
		}
	}
}
