package azuremsi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/sigil-id/sigil/attestor/node/internal/metadata"
)

// AttestorConfig configures the agent half.
type AttestorConfig struct {
	// Resource is the resource to request the token for; it must be the
	// server's for this tenant. Required.
	Resource string
	// ClientID selects a user-assigned managed identity by its client
	// ID; empty for the VM's system-assigned identity.
	ClientID string
	// MetadataURL is IMDS's token endpoint; DefaultMetadataURL.
	MetadataURL string
	// Timeout bounds one request to IMDS.
	Timeout time.Duration
}

// DefaultAttestorConfig returns IMDS's endpoint and a timeout; Resource is
// left to the operator.
func DefaultAttestorConfig() AttestorConfig {
	return AttestorConfig{MetadataURL: DefaultMetadataURL, Timeout: 10 * time.Second}
}

// Validate checks c.
func (c AttestorConfig) Validate() error {
	if c.Resource == "" {
		return errors.New("azuremsi: resource is required (the resource the server expects the tokens for)")
	}
	if err := metadata.CheckURL(c.MetadataURL); err != nil {
		return fmt.Errorf("azuremsi: %w", err)
	}
	if c.Timeout <= 0 {
		return fmt.Errorf("azuremsi: timeout %v: want a positive duration", c.Timeout)
	}
	return nil
}

// Attestor is the agent half: it fetches a managed identity token for the
// configured resource from IMDS for each attestation.
type Attestor struct {
	cfg    AttestorConfig
	client *metadata.Client
}

// NewAttestor returns the agent half configured by c.
func NewAttestor(c AttestorConfig) (*Attestor, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &Attestor{cfg: c, client: metadata.NewClient(c.Timeout)}, nil
}

// Name is the attestor name.
func (*Attestor) Name() string { return Name }

// ChallengeFree reports that the verifier sends no challenge.
func (*Attestor) ChallengeFree() bool { return true }

// tokenResponse is IMDS's answer.
type tokenResponse struct {
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	Resource    string `json:"resource"`
}

// Payload fetches a managed identity token for the resource.
func (a *Attestor) Payload(ctx context.Context) ([]byte, error) {
	q := url.Values{"api-version": {MetadataAPIVersion}, "resource": {a.cfg.Resource}}
	if a.cfg.ClientID != "" {
		q.Set("client_id", a.cfg.ClientID)
	}
	resp, err := a.client.Get(ctx, a.cfg.MetadataURL, q, http.Header{"Metadata": {"true"}}, 4*MaxTokenLen)
	if err != nil {
		return nil, fmt.Errorf("azuremsi: fetching the managed identity token (is this an Azure VM with a managed identity?): %w", err)
	}
	body := resp.Body
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error       string `json:"error"`
			Description string `json:"error_description"`
		}
		_ = json.Unmarshal(body, &e)
		return nil, fmt.Errorf("azuremsi: IMDS answered %s %s %s", resp.Status, clip(e.Error), clip(e.Description))
	}
	var tr tokenResponse
	if err := json.Unmarshal(body, &tr); err != nil {
		return nil, fmt.Errorf("azuremsi: IMDS's answer is not a token response: %v", err)
	}
	tok, _, err := ParseToken([]byte(tr.AccessToken))
	if err != nil {
		return nil, fmt.Errorf("IMDS's access_token: %w", err)
	}
	return []byte(tok), nil
}

// Answer fails: the verifier sends no challenge.
func (*Attestor) Answer(context.Context, []byte) ([]byte, error) {
	return nil, errors.New("azuremsi: the azure_msi verifier sends no challenge")
}
