package azuremsi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"
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
	p, err := url.Parse(c.MetadataURL)
	if err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
		return fmt.Errorf("azuremsi: metadata_url %q is not an http(s) URL", c.MetadataURL)
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
	client *http.Client
}

// NewAttestor returns the agent half configured by c.
func NewAttestor(c AttestorConfig) (*Attestor, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &Attestor{cfg: c, client: &http.Client{
		Timeout:       c.Timeout,
		Transport:     &http.Transport{Proxy: nil}, // IMDS is never reached through a proxy
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}, nil
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
	u, _ := url.Parse(a.cfg.MetadataURL)
	q := u.Query()
	q.Set("api-version", MetadataAPIVersion)
	q.Set("resource", a.cfg.Resource)
	if a.cfg.ClientID != "" {
		q.Set("client_id", a.cfg.ClientID)
	}
	u.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, fmt.Errorf("azuremsi: %w", err)
	}
	req.Header.Set("Metadata", "true")
	resp, err := a.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("azuremsi: fetching the managed identity token (is this an Azure VM with a managed identity?): %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4*MaxTokenLen))
	if err != nil {
		return nil, fmt.Errorf("azuremsi: reading the managed identity token: %w", err)
	}
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
