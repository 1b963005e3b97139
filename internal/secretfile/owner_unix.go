//go:build unix

package secretfile

import (
	"io/fs"
	"syscall"
)

// fileOwner returns the uid that owns the file described by st.
func fileOwner(st fs.FileInfo) (uint32, bool) {
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, false
	}
	return sys.Uid, true
}
