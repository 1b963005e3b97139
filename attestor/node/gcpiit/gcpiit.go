// Package gcpiit is the gcp_iit node attestor: a Compute Engine instance
// proves itself with the instance identity token its metadata server
// issues (a JWT signed by Google, requested with format=full so that it
// names the project, zone and instance).
//
// The agent half (Attestor) asks the metadata server for a token for the
// configured audience and sends it as the payload. The server half
// (Verifier) checks it with go-oidc against Google's issuer and key set
// (RS256 only, the configured audience, expiry against the server's
// clock), checks the project against its allow-list, accepts each token
// once (Result.Consume) and, unless re-attestation is allowed, admits an
// instance only once (trust on first use: anything running on the
// instance can ask for a token). The agent ID is
// spiffe://<td>/sigil/agent/gcp_iit/<project id>/<zone>/<instance id>; the
// node selectors are gcp_iit:project-id:<id>, gcp_iit:zone:<zone>,
// gcp_iit:instance-name:<name> and gcp_iit:instance-id:<id>.
package gcpiit

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/attestor/node/internal/keyed"
)

// Name is the attestor name.
const Name = "gcp_iit"

// Google's issuer, its key set and the metadata server's identity
// endpoint.
const (
	DefaultIssuer      = "https://accounts.google.com"
	DefaultJWKSURL     = "https://www.googleapis.com/oauth2/v3/certs"
	DefaultMetadataURL = "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/identity"
)

// MaxTokenLen bounds the token the verifier parses; Google's instance
// identity tokens are about 1 KiB.
const MaxTokenLen = 16 << 10

// The selector keys, as in gcp_iit:<key>:<value>.
const (
	SelectorProjectID    = "project-id"
	SelectorZone         = "zone"
	SelectorInstanceName = "instance-name"
	SelectorInstanceID   = "instance-id"
)

// Instance is what an instance identity token says of its instance: the
// google.compute_engine claim of a format=full token.
type Instance struct {
	ProjectID    string
	Zone         string
	InstanceID   string
	InstanceName string
}

// tokenClaims is the part of the token's claims the attestor reads.
type tokenClaims struct {
	Google *struct {
		ComputeEngine *struct {
			ProjectID     string          `json:"project_id"`
			ProjectNumber json.RawMessage `json:"project_number"`
			Zone          string          `json:"zone"`
			InstanceID    string          `json:"instance_id"`
			InstanceName  string          `json:"instance_name"`
		} `json:"compute_engine"`
	} `json:"google"`
}

// ParseToken checks the shape of a payload: a compact JWS (three
// non-empty base64url parts) of at most MaxTokenLen bytes. It returns the
// token; it checks no signature.
func ParseToken(payload []byte) (string, error) {
	if len(payload) == 0 {
		return "", errors.New("gcpiit: empty payload: want an instance identity token")
	}
	if len(payload) > MaxTokenLen {
		return "", fmt.Errorf("gcpiit: payload of %d bytes: an instance identity token is at most %d bytes", len(payload), MaxTokenLen)
	}
	parts := 0
	empty := false
	start := 0
	for i := 0; i <= len(payload); i++ {
		if i < len(payload) && payload[i] != '.' {
			c := payload[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return "", errors.New("gcpiit: payload is not a compact JWT: a character outside base64url")
			}
			continue
		}
		empty = empty || i == start
		parts++
		start = i + 1
	}
	if parts != 3 || empty {
		return "", errors.New("gcpiit: payload is not a compact JWT: want three non-empty base64url parts")
	}
	return string(payload), nil
}

// ParseInstance reads the instance from a token's verified claims (JSON)
// and checks each field: the project ID, zone and instance ID become
// segments of the agent's SPIFFE ID, the name a selector value.
func ParseInstance(claims []byte) (Instance, error) {
	var c tokenClaims
	if err := json.Unmarshal(claims, &c); err != nil {
		return Instance{}, fmt.Errorf("gcpiit: token claims are not a JSON object: %v", err)
	}
	if c.Google == nil || c.Google.ComputeEngine == nil {
		return Instance{}, errors.New("gcpiit: token has no google.compute_engine claim: the agent must request it with format=full")
	}
	ce := c.Google.ComputeEngine
	in := Instance{ProjectID: ce.ProjectID, Zone: ce.Zone, InstanceID: ce.InstanceID, InstanceName: ce.InstanceName}
	if !isSegment(in.ProjectID, 128) {
		return Instance{}, fmt.Errorf("gcpiit: project_id %q is not a project ID this attestor accepts: want 1 to 128 of a-z, A-Z, 0-9, '-', '_', '.' (domain-scoped projects are not supported)", clip(in.ProjectID))
	}
	if !isSegment(in.Zone, 64) {
		return Instance{}, fmt.Errorf("gcpiit: zone %q is not a zone name", clip(in.Zone))
	}
	if in.InstanceID == "" || len(in.InstanceID) > 20 || strings.Trim(in.InstanceID, "0123456789") != "" {
		return Instance{}, fmt.Errorf("gcpiit: instance_id %q is not a decimal instance ID", clip(in.InstanceID))
	}
	if !isSegment(in.InstanceName, 63) {
		return Instance{}, fmt.Errorf("gcpiit: instance_name %q is not an instance name", clip(in.InstanceName))
	}
	return in, nil
}

// AgentID is the instance's agent ID (Result.ID):
// <project id>/<zone>/<instance id>.
func (in Instance) AgentID() string {
	return in.ProjectID + "/" + in.Zone + "/" + in.InstanceID
}

// Selectors are the instance's node selectors.
func (in Instance) Selectors() []*sigilv1.Selector {
	return []*sigilv1.Selector{
		{Type: Name, Value: SelectorProjectID + ":" + in.ProjectID},
		{Type: Name, Value: SelectorZone + ":" + in.Zone},
		{Type: Name, Value: SelectorInstanceName + ":" + in.InstanceName},
		{Type: Name, Value: SelectorInstanceID + ":" + in.InstanceID},
	}
}

// selectorKeys check the value of each selector key.
var selectorKeys = keyed.Checks{
	SelectorProjectID:    func(v string) bool { return isSegment(v, 128) },
	SelectorZone:         func(v string) bool { return isSegment(v, 64) },
	SelectorInstanceName: func(v string) bool { return isSegment(v, 63) },
	SelectorInstanceID: func(v string) bool {
		return v != "" && len(v) <= 20 && strings.Trim(v, "0123456789") == ""
	},
}

// ValidateSelector checks the value of a "gcp_iit" selector in an entry:
// <key>:<value> with key one of project-id, zone, instance-name,
// instance-id and a value the attestor could produce.
func ValidateSelector(value string) error {
	return selectorKeys.Validate(Name, value, "")
}

// isSegment reports whether s is 1 to max characters valid in a SPIFFE ID
// path segment (and not "." or "..").
func isSegment(s string, max int) bool {
	if s == "" || len(s) > max || s == "." || s == ".." {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// clip shortens a claim for an error message.
var clip = keyed.Clip
