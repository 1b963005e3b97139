//go:build cgo

package disk

// cgoEnabled is true: this build loads PKCS#11 modules through cgo.
const cgoEnabled = true
