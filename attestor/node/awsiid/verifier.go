package awsiid

import (
	"bytes"
	"context"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"sort"
	"time"

	"github.com/smallstep/pkcs7"

	"github.com/sigil-id/sigil/attestor/node"
)

// PublicRefusal is what an agent is told when its evidence is refused,
// whatever the reason (the reason goes to the server's log).
const PublicRefusal = "aws_iid attestation refused"

// MaxClockSkew is how far in the future a document's pendingTime may be
// (the instance's clock and the server's differ) before the document is
// refused.
const MaxClockSkew = 5 * time.Minute

// oidSHA256 is the digest algorithm of the rsa2048 signature.
var oidSHA256 = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 1}

// Config is the server half's configuration.
type Config struct {
	// Regions maps each region whose instances may attest to the AWS
	// public certificates (RSA-2048) that sign its documents: a document
	// of another region is refused, and one whose signature none of the
	// region's certificates verifies. Required.
	Regions map[string][]*x509.Certificate
	// Accounts lists the AWS account IDs whose instances may attest.
	// Required: any AWS customer can launch an instance in a region, so
	// an empty list would admit the whole of AWS.
	Accounts []string
	// MaxDocumentAge, if not zero, refuses a document whose pendingTime
	// (when the instance was launched, or last started after a stop) is
	// longer ago than this: an instance must attest within this time of
	// starting. Zero: no limit.
	MaxDocumentAge time.Duration
	// AllowReattestation lets an instance that is already attested (and
	// not evicted) attest again with its document. Off by default: the
	// document is a bearer credential that anyone who ever read it can
	// replay, so the first attestation of an instance is the only one
	// (trust on first use). A banned agent is refused either way.
	AllowReattestation bool
}

// DefaultConfig returns a configuration with no region and no account
// (which Validate refuses), no age limit and re-attestation refused.
func DefaultConfig() Config { return Config{} }

// Validate checks c.
func (c Config) Validate() error {
	if len(c.Regions) == 0 {
		return errors.New("awsiid: no region configured: name each region whose instances may attest, with its AWS public certificate")
	}
	for r, certs := range c.Regions {
		if !reRegion().MatchString(r) {
			return fmt.Errorf("awsiid: %q is not an AWS region name", r)
		}
		if len(certs) == 0 {
			return fmt.Errorf("awsiid: region %q has no certificate", r)
		}
		for _, cert := range certs {
			if _, ok := cert.PublicKey.(*rsa.PublicKey); !ok {
				return fmt.Errorf("awsiid: region %q: certificate %q has no RSA key (use the RSA-2048 certificate, which signs rsa2048)", r, cert.Subject)
			}
		}
	}
	if len(c.Accounts) == 0 {
		return errors.New("awsiid: account allow-list is empty: name the AWS accounts whose instances may attest")
	}
	for _, a := range c.Accounts {
		if !reAccount().MatchString(a) {
			return fmt.Errorf("awsiid: %q is not an AWS account ID (12 digits)", a)
		}
	}
	if c.MaxDocumentAge < 0 {
		return fmt.Errorf("awsiid: max_document_age %s is negative", c.MaxDocumentAge)
	}
	return nil
}

// LoadCertificates reads the PEM certificates of path (one or more).
func LoadCertificates(path string) ([]*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("awsiid: %w", err)
	}
	var out []*x509.Certificate
	for rest := b; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("awsiid: %s: PEM block %q is not a CERTIFICATE", path, blk.Type)
		}
		cert, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("awsiid: %s: %w", path, err)
		}
		out = append(out, cert)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("awsiid: %s holds no PEM certificate", path)
	}
	return out, nil
}

// Verifier is the server half. It makes no remote call: everything it
// checks is in the evidence, its configuration and the server's state.
// It is safe for concurrent use.
type Verifier struct {
	regions  map[string][]*x509.Certificate
	accounts map[string]bool
	maxAge   time.Duration
	reattest bool
}

// NewVerifier returns the server half for c, which must be valid.
func NewVerifier(c Config) (*Verifier, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	v := &Verifier{regions: map[string][]*x509.Certificate{}, accounts: map[string]bool{}, maxAge: c.MaxDocumentAge, reattest: c.AllowReattestation}
	for r, certs := range c.Regions {
		v.regions[r] = append([]*x509.Certificate(nil), certs...)
	}
	for _, a := range c.Accounts {
		v.accounts[a] = true
	}
	return v, nil
}

// Name returns "aws_iid".
func (*Verifier) Name() string { return Name }

// Regions returns the configured regions, sorted.
func (v *Verifier) Regions() []string {
	out := make([]string, 0, len(v.regions))
	for r := range v.regions {
		out = append(out, r)
	}
	sort.Strings(out)
	return out
}

func refused(format string, args ...any) error {
	return fmt.Errorf("awsiid: %w", &node.RefusedError{Public: PublicRefusal, Reason: fmt.Sprintf(format, args...)})
}

// Verify checks the agent's document and signature, in this order:
// payload and document shape (malformed evidence: a plain error), region
// configured, PKCS#7 signature by one of the region's certificates over
// exactly the document, account allowed, pendingTime not in the future
// and within MaxDocumentAge, and the instance not already attested (nor
// banned). It sends no challenge.
func (v *Verifier) Verify(ctx context.Context, state node.State, ex node.Exchange) (*node.Result, error) {
	p, err := ParsePayload(ex.Payload())
	if err != nil {
		return nil, err
	}
	der, err := DecodeSignature(p.RSA2048)
	if err != nil {
		return nil, err
	}
	doc, err := ParseDocument([]byte(p.Document))
	if err != nil {
		return nil, err
	}
	certs, ok := v.regions[doc.Region]
	if !ok {
		return nil, refused("instance %s: region %q is not configured", doc.InstanceID, doc.Region)
	}
	if err := verifySignature(der, []byte(p.Document), certs); err != nil {
		if errors.Is(err, errMalformedSignature) {
			return nil, err
		}
		return nil, refused("instance %s: %v", doc.InstanceID, err)
	}
	// From here on the document is AWS's.
	if !v.accounts[doc.AccountID] {
		return nil, refused("instance %s: account %s is not in the allow-list", doc.InstanceID, doc.AccountID)
	}
	now := state.Now()
	if doc.PendingTime.After(now.Add(MaxClockSkew)) {
		return nil, refused("instance %s: pendingTime %s is in the future", doc.InstanceID, doc.PendingTime.Format(time.RFC3339))
	}
	if v.maxAge > 0 && now.Sub(doc.PendingTime) > v.maxAge {
		return nil, refused("instance %s: document is %s old (pendingTime %s), more than max_document_age %s",
			doc.InstanceID, now.Sub(doc.PendingTime).Round(time.Second), doc.PendingTime.Format(time.RFC3339), v.maxAge)
	}
	id := doc.AgentID()
	rec, err := state.Agent(ctx, id)
	switch {
	case errors.Is(err, node.ErrNotFound):
	case err != nil:
		return nil, fmt.Errorf("awsiid: looking up agent %s: %w", id, err)
	case rec.Banned:
		return nil, refused("instance %s: agent %s is banned", doc.InstanceID, id)
	case !v.reattest:
		return nil, refused("instance %s: agent %s is already attested (since %s) and allow_reattestation is off: evict it to let the instance attest again",
			doc.InstanceID, id, rec.AttestedAt.UTC().Format(time.RFC3339))
	}
	// Without re-attestation the node is admitted once: the Raft apply
	// refuses this attestation if another one of the instance got in
	// first (two concurrent first attestations both pass the Agent
	// check above).
	return &node.Result{ID: id, Selectors: doc.Selectors(), FirstAttestation: !v.reattest}, nil
}

// errMalformedSignature marks signature errors that are malformed
// evidence rather than a signature that does not verify.
var errMalformedSignature = errors.New("awsiid: malformed rsa2048 signature")

// verifySignature checks that der is a PKCS#7 SignedData with one signer,
// one of certs (never a certificate the evidence carries), that signed
// exactly doc with RSA and SHA-256.
func verifySignature(der, doc []byte, certs []*x509.Certificate) error {
	p7, err := pkcs7.Parse(der)
	if err != nil {
		return fmt.Errorf("%w: %v", errMalformedSignature, err)
	}
	if len(p7.Signers) != 1 {
		return fmt.Errorf("%w: %d signers, want 1", errMalformedSignature, len(p7.Signers))
	}
	if !p7.Signers[0].DigestAlgorithm.Algorithm.Equal(oidSHA256) {
		return fmt.Errorf("signature digest algorithm %v is not SHA-256", p7.Signers[0].DigestAlgorithm.Algorithm)
	}
	if !bytes.Equal(p7.Content, doc) {
		return errors.New("the signature is over another document")
	}
	// Only the configured certificates may verify: whatever the evidence
	// embeds is discarded.
	p7.Certificates = certs
	if p7.GetOnlySigner() == nil {
		return errors.New("the signer is none of the region's certificates")
	}
	if err := p7.Verify(); err != nil {
		return fmt.Errorf("signature does not verify: %v", err)
	}
	return nil
}
