package awskms_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"log"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/ca/keymanager/awskms"
)

// A server's CA key in AWS KMS: credentials come from the AWS environment
// (AWS_ACCESS_KEY_ID, AWS_PROFILE, an instance role, ...), and the key is
// found again after a restart through its alias. (Not run: it needs AWS.)
func ExampleNewStore() {
	cfg := awskms.DefaultConfig()
	cfg.Region = "eu-west-1"
	cfg.TrustDomain = spiffeid.RequireTrustDomainFromString("example.org")
	cfg.NodeName = "server-1"

	ctx := context.Background()
	store, err := awskms.NewStore(ctx, cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()
	km, err := store.OpenKeyManager(ctx, ca.KeyScopeAuthorities)
	if err != nil {
		log.Fatal(err)
	}
	key, err := km.GenerateKey(ctx, "x509-ca", ca.KeyTypeECP256)
	if err != nil {
		log.Fatal(err)
	}
	digest := sha256.Sum256([]byte("to be signed"))
	sig, err := key.Sign(rand.Reader, digest[:], crypto.SHA256) // signed by KMS
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(len(sig) > 0)
}

func ExampleAliasName() {
	fmt.Println(awskms.AliasName(awskms.DefaultAliasPrefix, "example.org", "server-1", string(ca.KeyScopeAuthorities), "x509-ca"))
	// Output: alias/sigil/example_2eorg/server-1/authorities/x509-ca
}
