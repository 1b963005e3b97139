package ca_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"log"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/ca/keymanager/memory"
)

func Example() {
	cfg := ca.DefaultConfig()
	cfg.TrustDomain = spiffeid.RequireTrustDomainFromString("example.org")
	cfg.ServerID = "server-1"
	cfg.KeyManager = memory.New()
	authority, err := ca.New(context.Background(), cfg)
	if err != nil {
		log.Fatal(err)
	}

	// The workload's key is generated where the workload runs; the CA only
	// ever sees its public half.
	workloadKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		log.Fatal(err)
	}
	chain, err := authority.SignX509SVID(context.Background(), ca.X509SVIDParams{
		PublicKey: workloadKey.Public(),
		SPIFFEID:  spiffeid.RequireFromPath(cfg.TrustDomain, "/ns/prod/sa/web"),
		DNSNames:  []string{"web.example.org"},
	})
	if err != nil {
		log.Fatal(err)
	}

	roots := x509.NewCertPool()
	roots.AddCert(authority.Certificate())
	_, err = chain[0].Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	fmt.Println(chain[0].URIs[0], chain[0].DNSNames, chain[0].NotAfter.Sub(chain[0].NotBefore), err)
	// Output: spiffe://example.org/ns/prod/sa/web [web.example.org] 1h0m10s <nil>
}
