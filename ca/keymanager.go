package ca

import (
	"context"
	"crypto"
	"errors"
	"fmt"
)

// KeyManager creates and holds private keys by name. Plugins live in
// subpackages (keymanager/memory, keymanager/disk). Implementations must be
// safe for concurrent use, and the signers they return must be too.
type KeyManager interface {
	// GenerateKey creates (replacing any existing) the key named id.
	GenerateKey(ctx context.Context, id string, kt KeyType) (crypto.Signer, error)
	// GetKey returns the key named id, or an error wrapping ErrKeyNotFound.
	GetKey(ctx context.Context, id string) (crypto.Signer, error)
}

// ErrKeyNotFound is wrapped by KeyManager.GetKey when no key has the id.
var ErrKeyNotFound = errors.New("ca: key not found")

// KeyType names the algorithm and size of a key a KeyManager generates.
type KeyType string

// Supported key types.
const (
	KeyTypeECP256  KeyType = "ec-p256"
	KeyTypeECP384  KeyType = "ec-p384"
	KeyTypeRSA2048 KeyType = "rsa-2048"
)

// Validate reports whether kt is one of the supported key types.
func (kt KeyType) Validate() error {
	switch kt {
	case KeyTypeECP256, KeyTypeECP384, KeyTypeRSA2048:
		return nil
	case "":
		return errors.New("ca: key type is empty")
	default:
		return fmt.Errorf("ca: unsupported key type %q (want %q, %q or %q)", string(kt), KeyTypeECP256, KeyTypeECP384, KeyTypeRSA2048)
	}
}

// caKeyID is the KeyManager id of the CA signing key.
const caKeyID = "x509-ca"

// KeyDeleter is implemented by key managers that can destroy a key. The
// slot manager uses it to remove the keys of retired authorities; with a
// key manager that cannot delete, old keys stay where they are.
type KeyDeleter interface {
	DeleteKey(ctx context.Context, id string) error
}
