// Package azuremsi is the azure_msi node attestor: an Azure virtual
// machine proves itself with an access token of its managed identity,
// which the instance metadata service (IMDS) issues for a resource the
// operator chose for Sigil.
//
// The agent half (Attestor) asks IMDS for a token for the configured
// resource and sends it as the payload. The server half (Verifier) reads
// the token's tenant (tid) only to pick that tenant's configuration
// (tenants not configured are refused), then checks the token with
// go-oidc against the tenant's v1 issuer (https://sts.windows.net/<tenant>/)
// and key set (RS256 only, audience = the tenant's configured resource,
// expiry against the server's clock) and checks that tid matches. The
// agent ID is spiffe://<td>/sigil/agent/azure_msi/<tenant>/<principal oid>;
// the node selectors are azure_msi:tenant:<tenant>, and, from the
// token's xms_mirid (the managed identity's resource ID),
// azure_msi:subscription:<id>, azure_msi:resource-group:<name> and, for a
// virtual machine's system-assigned identity, azure_msi:vm-name:<name>.
//
// Re-attestation is allowed: IMDS hands out the same cached token until
// it nears expiry, so a token cannot be single-use, and the identity it
// proves is the VM's own; a banned agent is refused.
package azuremsi

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/attestor/node/internal/keyed"
)

// Name is the attestor name.
const Name = "azure_msi"

// The instance metadata service's token endpoint and API version.
const (
	DefaultMetadataURL = "http://169.254.169.254/metadata/identity/oauth2/token"
	MetadataAPIVersion = "2018-02-01"
)

// DefaultIssuer is the v1 issuer of tenant's managed identity tokens.
func DefaultIssuer(tenant string) string { return "https://sts.windows.net/" + tenant + "/" }

// DefaultJWKSURL is the key set of tenant's tokens.
func DefaultJWKSURL(tenant string) string {
	return "https://login.microsoftonline.com/" + tenant + "/discovery/keys"
}

// MaxTokenLen bounds the token the verifier parses; managed identity
// access tokens are 1 to 3 KiB.
const MaxTokenLen = 16 << 10

// The selector keys, as in azure_msi:<key>:<value>.
const (
	SelectorTenant        = "tenant"
	SelectorSubscription  = "subscription"
	SelectorResourceGroup = "resource-group"
	SelectorVMName        = "vm-name"
)

// ParseToken checks the shape of a payload (a compact JWS of three
// non-empty base64url parts, at most MaxTokenLen bytes) and returns the
// token and the tenant its unverified claims name (tid), which only
// selects the tenant configuration the token is then verified with.
func ParseToken(payload []byte) (token, tenant string, err error) {
	if len(payload) == 0 {
		return "", "", errors.New("azuremsi: empty payload: want a managed identity access token")
	}
	if len(payload) > MaxTokenLen {
		return "", "", fmt.Errorf("azuremsi: payload of %d bytes: a managed identity token is at most %d bytes", len(payload), MaxTokenLen)
	}
	parts := strings.Split(string(payload), ".")
	if len(parts) != 3 {
		return "", "", errors.New("azuremsi: payload is not a compact JWT: want three non-empty base64url parts")
	}
	for _, p := range parts {
		if p == "" || strings.Trim(p, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_") != "" {
			return "", "", errors.New("azuremsi: payload is not a compact JWT: want three non-empty base64url parts")
		}
	}
	body, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return "", "", errors.New("azuremsi: payload is not a compact JWT: the claims are not base64url")
	}
	var c struct {
		TID string `json:"tid"`
	}
	if err := json.Unmarshal(body, &c); err != nil {
		return "", "", fmt.Errorf("azuremsi: the token's claims are not a JSON object: %v", err)
	}
	if !IsGUID(c.TID) {
		return "", "", fmt.Errorf("azuremsi: the token's tid %q is not a tenant ID", clip(c.TID))
	}
	return string(payload), c.TID, nil
}

// Identity is what a verified managed identity token says of the node.
type Identity struct {
	// Tenant is the directory (tid).
	Tenant string
	// PrincipalID is the managed identity's object ID (oid).
	PrincipalID string
	// Subscription, ResourceGroup and VMName come from xms_mirid, when
	// the token has it; VMName only for a virtual machine's
	// system-assigned identity. ResourceGroup and VMName are lowercased
	// (Azure resource names are case-insensitive), Subscription too.
	Subscription  string
	ResourceGroup string
	VMName        string
}

// ParseIdentity reads the identity from a token's verified claims (JSON).
func ParseIdentity(claims []byte) (Identity, error) {
	var c struct {
		TID      string `json:"tid"`
		OID      string `json:"oid"`
		XMSMirID string `json:"xms_mirid"`
	}
	if err := json.Unmarshal(claims, &c); err != nil {
		return Identity{}, fmt.Errorf("azuremsi: token claims are not a JSON object: %v", err)
	}
	if !IsGUID(c.TID) {
		return Identity{}, fmt.Errorf("azuremsi: tid %q is not a tenant ID", clip(c.TID))
	}
	if !IsGUID(c.OID) {
		return Identity{}, fmt.Errorf("azuremsi: oid %q is not an object ID", clip(c.OID))
	}
	id := Identity{Tenant: c.TID, PrincipalID: c.OID}
	if c.XMSMirID != "" {
		if err := id.parseResourceID(c.XMSMirID); err != nil {
			return Identity{}, err
		}
	}
	return id, nil
}

// parseResourceID reads the subscription, resource group and VM name of
// an ARM resource ID:
// /subscriptions/<sub>/resourcegroups/<rg>/providers/<namespace>/<type>/<name>[/...].
func (id *Identity) parseResourceID(r string) error {
	bad := fmt.Errorf("azuremsi: xms_mirid %q is not a resource ID", clip(r))
	if len(r) > 1024 || !strings.HasPrefix(r, "/") {
		return bad
	}
	seg := strings.Split(r[1:], "/")
	if len(seg) < 4 || !strings.EqualFold(seg[0], "subscriptions") || !strings.EqualFold(seg[2], "resourcegroups") {
		return bad
	}
	sub, rg := strings.ToLower(seg[1]), strings.ToLower(seg[3])
	if !IsGUID(sub) || !isName(rg, 90) {
		return bad
	}
	id.Subscription, id.ResourceGroup = sub, rg
	if len(seg) == 8 && strings.EqualFold(seg[4], "providers") && strings.EqualFold(seg[5], "Microsoft.Compute") &&
		strings.EqualFold(seg[6], "virtualMachines") {
		vm := strings.ToLower(seg[7])
		if !isName(vm, 64) {
			return bad
		}
		id.VMName = vm
	}
	return nil
}

// AgentID is the node's agent ID (Result.ID): <tenant>/<principal oid>.
func (id Identity) AgentID() string { return id.Tenant + "/" + id.PrincipalID }

// Selectors are the node's selectors.
func (id Identity) Selectors() []*sigilv1.Selector {
	out := []*sigilv1.Selector{{Type: Name, Value: SelectorTenant + ":" + id.Tenant}}
	if id.Subscription != "" {
		out = append(out, &sigilv1.Selector{Type: Name, Value: SelectorSubscription + ":" + id.Subscription},
			&sigilv1.Selector{Type: Name, Value: SelectorResourceGroup + ":" + id.ResourceGroup})
	}
	if id.VMName != "" {
		out = append(out, &sigilv1.Selector{Type: Name, Value: SelectorVMName + ":" + id.VMName})
	}
	return out
}

var selectorKeys = keyed.Checks{
	SelectorTenant:        IsGUID,
	SelectorSubscription:  IsGUID,
	SelectorResourceGroup: func(v string) bool { return isName(v, 90) },
	SelectorVMName:        func(v string) bool { return isName(v, 64) },
}

// ValidateSelector checks the value of an "azure_msi" selector in an
// entry: <key>:<value> with key one of tenant, subscription,
// resource-group, vm-name and a value the attestor could produce
// (lowercase GUIDs, lowercase names).
func ValidateSelector(value string) error {
	return selectorKeys.Validate(Name, value, "GUIDs and names are lowercase")
}

// IsGUID reports whether s is a lowercase GUID
// (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx).
func IsGUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
				return false
			}
		}
	}
	return true
}

// isName reports whether s is a lowercased Azure resource name of 1 to max
// bytes: no '/', ':', upper case or control characters.
func isName(s string, max int) bool {
	if s == "" || len(s) > max || s == "." || s == ".." {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f || r == '/' || r == ':' || r == '\\' || r == 0xfffd || strings.ToLower(string(r)) != string(r) {
			return false
		}
	}
	return true
}

// clip shortens a claim for an error message.
var clip = keyed.Clip
