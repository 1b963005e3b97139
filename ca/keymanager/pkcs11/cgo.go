package pkcs11

import "errors"

// ErrNoCgo is the error of NewStore and of the plugin in a build without
// cgo (CGO_ENABLED=0, as the static release binaries are built): the
// PKCS#11 backend of go.step.sm/crypto (miekg/pkcs11) loads the module
// through cgo, so such a build cannot use a token at all.
var ErrNoCgo = errors.New("this sigil was built without cgo: the pkcs11 key manager is not available; use a build with cgo (make build)")

// Available reports whether this build can use PKCS#11 tokens: nil with
// cgo, ErrNoCgo without.
func Available() error {
	if !cgoEnabled {
		return ErrNoCgo
	}
	return nil
}
