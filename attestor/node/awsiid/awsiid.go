// Package awsiid is the aws_iid node attestor: an agent on an Amazon EC2
// instance proves its node with the instance identity document that the
// instance metadata service (IMDSv2) serves, and the document's RSA-2048
// PKCS#7 signature (SHA-256) made by AWS. The server checks the signature
// against the AWS public certificate configured for the document's region,
// the account against an allow-list and the document's age, and admits an
// instance once (trust on first use): a document is readable by anyone who
// ever ran code on the instance and never changes while the instance runs,
// so a second attestation of an instance that is already attested is
// refused unless the operator allows re-attestation.
//
// The agent half is Attestor (NewAttestor), the server half Verifier
// (NewVerifier); plugin.go registers both as node_attestor "aws_iid" and
// the node selector type "aws_iid". docs/attestors/aws_iid.md is the
// operator's guide.
package awsiid

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"time"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// Name is the attestor name, in agent IDs and as the selector type.
const Name = "aws_iid"

// Evidence limits: a real document is about 500 bytes and its rsa2048
// signature about 1.6 KB of base64.
const (
	// MaxDocumentSize bounds the instance identity document.
	MaxDocumentSize = 8 << 10
	// MaxSignatureSize bounds the base64 PKCS#7 signature.
	MaxSignatureSize = 16 << 10
)

// Payload is the evidence an agent sends: the document and its rsa2048
// signature exactly as the metadata service served them.
type Payload struct {
	// Document is the instance identity document (JSON), byte for byte.
	Document string `json:"document"`
	// RSA2048 is the base64 PKCS#7 SignedData of the document
	// (/latest/dynamic/instance-identity/rsa2048), line breaks allowed.
	RSA2048 string `json:"rsa2048"`
}

// Document is the part of an instance identity document this attestor
// uses. Other fields (privateIp, architecture, version...) are ignored.
type Document struct {
	AccountID        string `json:"accountId"`
	Region           string `json:"region"`
	AvailabilityZone string `json:"availabilityZone"`
	InstanceID       string `json:"instanceId"`
	ImageID          string `json:"imageId"`
	InstanceType     string `json:"instanceType"`
	// PendingTime is when the instance last entered the pending state:
	// its launch, or its last start after a stop.
	PendingTime time.Time `json:"pendingTime"`
}

// The shapes of document fields that become selectors and agent ID
// segments; anything else is malformed evidence. They are compiled on
// first use, not at start: their counted repetitions make programs of
// about 100 KiB together that every sigil process would otherwise build
// and keep, configured with this attestor or not.
var (
	reAccount      = lazyRegexp(`^[0-9]{12}$`)
	reRegion       = lazyRegexp(`^[a-z]{2}(-[a-z0-9]+)+-[0-9]{1,2}$`)
	reAZ           = lazyRegexp(`^[a-z]{2}(-[a-z0-9]+)+-[0-9]{1,2}[a-z0-9-]{1,16}$`)
	reInstanceID   = lazyRegexp(`^i-[0-9a-f]{8,17}$`)
	reImageID      = lazyRegexp(`^ami-[0-9a-f]{8,17}$`)
	reInstanceType = lazyRegexp(`^[a-z0-9][a-z0-9-]{0,30}\.[a-z0-9-]{1,31}$`)
)

// lazyRegexp returns expr compiled once, on the first call.
func lazyRegexp(expr string) func() *regexp.Regexp {
	return sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(expr) })
}

// selectorKinds maps each selector kind ("aws_iid:<kind>:<value>") to the
// shape of its value.
var selectorKinds = map[string]func() *regexp.Regexp{
	"account":       reAccount,
	"region":        reRegion,
	"az":            reAZ,
	"instance_id":   reInstanceID,
	"image_id":      reImageID,
	"instance_type": reInstanceType,
}

// ParsePayload decodes an agent's payload: strict JSON, both fields
// present and within their limits.
func ParsePayload(b []byte) (*Payload, error) {
	var p Payload
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("awsiid: payload is not the aws_iid JSON evidence: %w", err)
	}
	if dec.More() {
		return nil, errors.New("awsiid: payload has data after the JSON evidence")
	}
	switch {
	case p.Document == "":
		return nil, errors.New("awsiid: payload has no document")
	case len(p.Document) > MaxDocumentSize:
		return nil, fmt.Errorf("awsiid: document of %d bytes: at most %d", len(p.Document), MaxDocumentSize)
	case p.RSA2048 == "":
		return nil, errors.New("awsiid: payload has no rsa2048 signature")
	case len(p.RSA2048) > MaxSignatureSize:
		return nil, fmt.Errorf("awsiid: rsa2048 signature of %d bytes: at most %d", len(p.RSA2048), MaxSignatureSize)
	}
	return &p, nil
}

// DecodeSignature decodes the base64 PKCS#7 signature as the metadata
// service serves it (standard base64, possibly broken into lines).
func DecodeSignature(s string) ([]byte, error) {
	der, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		return nil, fmt.Errorf("awsiid: rsa2048 signature is not base64: %w", err)
	}
	return der, nil
}

// ParseDocument decodes an instance identity document and checks the
// shape of every field it uses.
func ParseDocument(b []byte) (*Document, error) {
	var d Document
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("awsiid: instance identity document is not JSON: %w", err)
	}
	for _, f := range []struct {
		name, value string
		re          func() *regexp.Regexp
	}{
		{"accountId", d.AccountID, reAccount},
		{"region", d.Region, reRegion},
		{"availabilityZone", d.AvailabilityZone, reAZ},
		{"instanceId", d.InstanceID, reInstanceID},
		{"imageId", d.ImageID, reImageID},
		{"instanceType", d.InstanceType, reInstanceType},
	} {
		if !f.re().MatchString(f.value) {
			return nil, fmt.Errorf("awsiid: instance identity document: %s %q is not valid", f.name, truncate(f.value))
		}
	}
	if !strings.HasPrefix(d.AvailabilityZone, d.Region) {
		return nil, fmt.Errorf("awsiid: instance identity document: availabilityZone %q is not in region %q", d.AvailabilityZone, d.Region)
	}
	if d.PendingTime.IsZero() {
		return nil, errors.New("awsiid: instance identity document has no pendingTime")
	}
	return &d, nil
}

// AgentID is the agent id (Result.ID) of the instance:
// "<account>/<region>/<instance id>".
func (d *Document) AgentID() string {
	return d.AccountID + "/" + d.Region + "/" + d.InstanceID
}

// Selectors are the node selectors of the instance, in a fixed order.
func (d *Document) Selectors() []*sigilv1.Selector {
	sel := func(kind, v string) *sigilv1.Selector {
		return &sigilv1.Selector{Type: Name, Value: kind + ":" + v}
	}
	return []*sigilv1.Selector{
		sel("account", d.AccountID),
		sel("region", d.Region),
		sel("az", d.AvailabilityZone),
		sel("instance_id", d.InstanceID),
		sel("image_id", d.ImageID),
		sel("instance_type", d.InstanceType),
	}
}

// ValidateSelector checks the value of an "aws_iid" node selector:
// "<kind>:<value>" with kind one of account, region, az, instance_id,
// image_id, instance_type and a value of that kind's shape.
func ValidateSelector(value string) error {
	kind, v, ok := strings.Cut(value, ":")
	re := selectorKinds[kind]
	if !ok || re == nil {
		return fmt.Errorf("%q is not an aws_iid selector: want account:, region:, az:, instance_id:, image_id: or instance_type: and a value", value)
	}
	if !re().MatchString(v) {
		return fmt.Errorf("%q is not a valid aws_iid %s", v, kind)
	}
	return nil
}

// truncate keeps an echoed evidence field short in an error.
func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}
