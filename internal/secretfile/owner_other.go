//go:build !unix

package secretfile

import "io/fs"

// fileOwner is unknown where files have no unix owner.
func fileOwner(fs.FileInfo) (uint32, bool) { return 0, false }
