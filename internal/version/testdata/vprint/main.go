// Command vprint prints version.Get() as JSON: TestReleaseLinkFlags builds
// it with the -ldflags of `make release`.
package main

import (
	"encoding/json"
	"os"

	"github.com/sigil-id/sigil/internal/version"
)

func main() {
	if err := json.NewEncoder(os.Stdout).Encode(version.Get()); err != nil {
		os.Exit(1)
	}
}
