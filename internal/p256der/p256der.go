// Package p256der holds the fixed DER pieces of P-256 ECDSA keys and
// signatures that the CA and the agent write and match byte for byte on
// their fast paths (the agent's certificate requests and PKCS#8 keys, the
// CA's check of those requests and its SVIDs' key fields). They are what
// crypto/x509 writes for the same keys; the tests of those fast paths
// compare their output with crypto/x509's.
//
// The slices must never be modified.
package p256der

// PointLen is the length of an uncompressed P-256 point (0x04, X, Y).
const PointLen = 65

// SPKIPrefix is the DER of a P-256 SubjectPublicKeyInfo up to its point:
// SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING (no
// unused bits) ... It is what x509.MarshalPKIXPublicKey writes before the
// uncompressed point.
var SPKIPrefix = []byte{
	0x30, 0x59, 0x30, 0x13,
	0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, // 1.2.840.10045.2.1
	0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, // 1.2.840.10045.3.1.7
	0x03, 0x42, 0x00,
}

// ECDSAWithSHA256 is the DER AlgorithmIdentifier of ecdsa-with-SHA256
// (1.2.840.10045.4.3.2, no parameters).
var ECDSAWithSHA256 = []byte{0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02}
