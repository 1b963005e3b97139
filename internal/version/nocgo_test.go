//go:build !cgo

package version

import "testing"

// Run by TestStaticBuildWithoutCgo (cmd/sigil) under CGO_ENABLED=0.
func TestCgoWithoutCgo(t *testing.T) {
	if Get().Cgo {
		t.Fatal("Cgo is true in a build without cgo")
	}
}
