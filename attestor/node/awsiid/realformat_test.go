package awsiid

import (
	"crypto/x509"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/smallstep/pkcs7"

	"github.com/sigil-id/sigil/attestor/node/awsiid/awsiidtest"
)

// testdata/aws-pkcs7-ap-southeast-2.b64 is a real signature AWS served on
// an instance (/latest/dynamic/instance-identity/pkcs7, published in a
// public Vault login example): BER with indefinite lengths, the document
// as a constructed OCTET STRING, authenticated attributes (content type,
// signing time, message digest) and no certificate. The rsa2048 signature
// has the same structure with SHA-256 and RSA. It is parsed here to show
// that the parser reads AWS's real encoding, and that the verifier refuses
// it for its SHA-1/DSA signature before any certificate is tried.
func TestRealAWSSignatureFormat(t *testing.T) {
	b, err := os.ReadFile("testdata/aws-pkcs7-ap-southeast-2.b64")
	if err != nil {
		t.Fatal(err)
	}
	der, err := DecodeSignature(string(b))
	if err != nil {
		t.Fatal(err)
	}
	p7, err := pkcs7.Parse(der)
	if err != nil {
		t.Fatalf("AWS's BER encoding not parsed: %v", err)
	}
	if len(p7.Signers) != 1 || len(p7.Certificates) != 0 {
		t.Fatalf("%d signers, %d certificates", len(p7.Signers), len(p7.Certificates))
	}
	doc, err := ParseDocument(p7.Content)
	if err != nil {
		t.Fatal(err)
	}
	if doc.AgentID() != "578612111946/ap-southeast-2/i-02c8559ebebf6ad0b" || doc.InstanceType != "m5.large" ||
		!doc.PendingTime.Equal(time.Date(2020, 4, 4, 4, 22, 2, 0, time.UTC)) {
		t.Fatalf("document %+v", doc)
	}
	var signed time.Time
	if err := p7.UnmarshalSignedAttribute(pkcs7.OIDAttributeSigningTime, &signed); err != nil || signed.Sub(doc.PendingTime) > time.Minute {
		t.Fatalf("signing time %v (%v), pendingTime %v", signed, err, doc.PendingTime)
	}
	other := awsiidtest.NewSigner(t, "x")
	err = verifySignature(der, p7.Content, []*x509.Certificate{other.Cert})
	if err == nil || !strings.Contains(err.Error(), "not SHA-256") {
		t.Fatalf("SHA-1 signature: %v", err)
	}
}
