//go:build cgo

package version

import "testing"

func TestCgo(t *testing.T) {
	if !Get().Cgo {
		t.Fatal("Cgo is false in a build with cgo")
	}
}
