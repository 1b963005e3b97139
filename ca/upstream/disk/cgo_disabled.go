//go:build !cgo

package disk

// cgoEnabled is false: without cgo no PKCS#11 module can be loaded, and a
// key_pkcs11 is refused with ErrNoCgo.
const cgoEnabled = false
