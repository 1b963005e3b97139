//go:build cgo

package pkcs11

// cgoEnabled is true: this build loads PKCS#11 modules through cgo.
const cgoEnabled = true
