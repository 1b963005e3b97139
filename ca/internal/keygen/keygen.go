// Package keygen generates private keys of the key types the CA supports,
// for the key manager plugins.
package keygen

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"fmt"

	"github.com/sigil-id/sigil/ca"
)

// Generate creates a new private key of type kt from crypto/rand.
func Generate(kt ca.KeyType) (crypto.Signer, error) {
	if err := kt.Validate(); err != nil {
		return nil, err
	}
	var (
		k   crypto.Signer
		err error
	)
	switch kt {
	case ca.KeyTypeECP256:
		k, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case ca.KeyTypeECP384:
		k, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case ca.KeyTypeRSA2048:
		k, err = rsa.GenerateKey(rand.Reader, 2048)
	}
	if err != nil {
		return nil, fmt.Errorf("ca: generating %s key: %w", kt, err)
	}
	return k, nil
}
