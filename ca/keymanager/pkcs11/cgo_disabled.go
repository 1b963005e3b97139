//go:build !cgo

package pkcs11

// cgoEnabled is false: without cgo no PKCS#11 module can be loaded, and
// NewStore and the plugin refuse with ErrNoCgo.
const cgoEnabled = false
