package disk

import "errors"

// ErrNoCgo is the error of a key in a PKCS#11 token (key_pkcs11,
// Config.PKCS11) in a build without cgo (CGO_ENABLED=0, as the static
// release binaries are built): the PKCS#11 backend of go.step.sm/crypto
// (miekg/pkcs11) loads the module through cgo. key_file works in every
// build.
var ErrNoCgo = errors.New("this sigil was built without cgo: the disk upstream authority cannot use a key in a PKCS#11 token; use a build with cgo (make build), or key_file")

// PKCS11Available reports whether this build can use a key in a PKCS#11
// token: nil with cgo, ErrNoCgo without.
func PKCS11Available() error {
	if !cgoEnabled {
		return ErrNoCgo
	}
	return nil
}
