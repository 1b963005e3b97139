package pkcs11_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"log"
	"os"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/ca/keymanager/pkcs11"
)

// A server's CA key in the SoftHSM2 token labelled "sigil": generated in
// the token, used through the returned crypto.Signer, found again by
// GetKey after a restart. (Not run: it needs a token.)
func ExampleNewStore() {
	cfg := pkcs11.DefaultConfig()
	cfg.Module = "/usr/lib/softhsm/libsofthsm2.so"
	cfg.TokenLabel = "sigil"
	cfg.PIN = os.Getenv("SIGIL_HSM_PIN")
	cfg.TrustDomain = spiffeid.RequireTrustDomainFromString("example.org")
	cfg.NodeName = "server-1"
	store, err := pkcs11.NewStore(cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()
	ctx := context.Background()
	km, err := store.OpenKeyManager(ctx, ca.KeyScopeAuthorities)
	if err != nil {
		log.Fatal(err)
	}
	key, err := km.GenerateKey(ctx, "x509-ca-1", ca.KeyTypeECP256)
	if err != nil {
		log.Fatal(err)
	}
	digest := sha256.Sum256([]byte("to be signed"))
	sig, err := key.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		log.Fatal(err)
	}
	label, _ := pkcs11.KeyLabel(cfg.KeyLabelPrefix, cfg.TrustDomain, cfg.NodeName, ca.KeyScopeAuthorities, "x509-ca-1")
	fmt.Printf("%d-byte signature by the token object labelled %s\n", len(sig), label)
}
