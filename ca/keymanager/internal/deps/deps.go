// Package deps pins the go.step.sm/crypto packages the key managers of
// issue 14 build on, so that their helpers share one go.mod; it is
// removed once the key managers import them.
package deps

import (
	_ "go.step.sm/crypto/keyutil"
	_ "go.step.sm/crypto/kms/apiv1"
	_ "go.step.sm/crypto/kms/awskms"
	_ "go.step.sm/crypto/kms/pkcs11"
	_ "go.step.sm/crypto/kms/tpmkms"
	_ "go.step.sm/crypto/pemutil"
	_ "go.step.sm/crypto/x509util"
)
