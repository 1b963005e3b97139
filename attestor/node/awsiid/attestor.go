package awsiid

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// DefaultEndpoint is the instance metadata service of every EC2 instance.
const DefaultEndpoint = "http://169.254.169.254"

// IMDSv2 paths and headers.
const (
	tokenPath     = "/latest/api/token"
	documentPath  = "/latest/dynamic/instance-identity/document"
	signaturePath = "/latest/dynamic/instance-identity/rsa2048"
	tokenHeader   = "X-aws-ec2-metadata-token"
	ttlHeader     = "X-aws-ec2-metadata-token-ttl-seconds"
	// maxToken bounds the session token the metadata service returns.
	maxToken = 1 << 10
)

// AttestorConfig is the agent half's configuration.
type AttestorConfig struct {
	// Endpoint is the metadata service's base URL (scheme and host).
	Endpoint string
	// Timeout bounds reading the evidence: the session token and both
	// documents together.
	Timeout time.Duration
	// TokenTTL is the lifetime asked for the IMDSv2 session token (whole
	// seconds, 1s to 6h); the token is used at once and not kept.
	TokenTTL time.Duration
}

// DefaultAttestorConfig returns the real metadata service, a 5 second
// timeout and a 60 second session token.
func DefaultAttestorConfig() AttestorConfig {
	return AttestorConfig{Endpoint: DefaultEndpoint, Timeout: 5 * time.Second, TokenTTL: time.Minute}
}

// Validate checks c.
func (c AttestorConfig) Validate() error {
	u, err := url.Parse(c.Endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
		return fmt.Errorf("awsiid: metadata endpoint %q is not an http(s) base URL such as %s", c.Endpoint, DefaultEndpoint)
	}
	if c.Timeout <= 0 {
		return fmt.Errorf("awsiid: timeout %s must be positive", c.Timeout)
	}
	if c.TokenTTL < time.Second || c.TokenTTL > 6*time.Hour || c.TokenTTL%time.Second != 0 {
		return fmt.Errorf("awsiid: token_ttl %s must be whole seconds between 1s and 6h", c.TokenTTL)
	}
	return nil
}

// Attestor is the agent half: it reads the evidence from IMDSv2 each time
// it attests (a session token first, then the document and its rsa2048
// signature). Its verifier sends no challenge. It is safe for concurrent
// use.
type Attestor struct {
	c      AttestorConfig
	base   string
	client *http.Client
}

// NewAttestor returns the agent half for c, which must be valid.
func NewAttestor(c AttestorConfig) (*Attestor, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &Attestor{
		c:    c,
		base: strings.TrimSuffix(c.Endpoint, "/"),
		client: &http.Client{
			// The metadata service is link-local: never through a proxy,
			// and it does not redirect.
			Transport:     &http.Transport{Proxy: nil, DisableKeepAlives: true, ResponseHeaderTimeout: c.Timeout},
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}, nil
}

// Name returns "aws_iid".
func (*Attestor) Name() string { return Name }

// ChallengeFree reports true: the document alone is the evidence.
func (*Attestor) ChallengeFree() bool { return true }

// Answer fails: the aws_iid verifier sends no challenge.
func (*Attestor) Answer(context.Context, []byte) ([]byte, error) {
	return nil, errors.New("awsiid: the aws_iid verifier sends no challenge")
}

// Payload reads the document and its signature from the metadata service
// within the configured timeout and returns them as JSON (Payload).
func (a *Attestor) Payload(ctx context.Context) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, a.c.Timeout)
	defer cancel()
	token, err := a.do(ctx, http.MethodPut, tokenPath, "", maxToken)
	if err != nil {
		return nil, fmt.Errorf("awsiid: IMDSv2 session token: %w", err)
	}
	token = strings.TrimSpace(token)
	if token == "" {
		return nil, errors.New("awsiid: IMDSv2 session token: empty response")
	}
	doc, err := a.do(ctx, http.MethodGet, documentPath, token, MaxDocumentSize)
	if err != nil {
		return nil, fmt.Errorf("awsiid: instance identity document: %w", err)
	}
	sig, err := a.do(ctx, http.MethodGet, signaturePath, token, MaxSignatureSize)
	if err != nil {
		return nil, fmt.Errorf("awsiid: instance identity signature: %w", err)
	}
	return json.Marshal(Payload{Document: doc, RSA2048: sig})
}

// do sends one request to the metadata service and returns its body,
// refusing a status other than 200 and a body over max bytes. Errors
// never contain the session token.
func (a *Attestor) do(ctx context.Context, method, path, token string, max int) (string, error) {
	req, err := http.NewRequestWithContext(ctx, method, a.base+path, nil)
	if err != nil {
		return "", err
	}
	if token == "" {
		req.Header.Set(ttlHeader, strconv.Itoa(int(a.c.TokenTTL/time.Second)))
	} else {
		req.Header.Set(tokenHeader, token)
	}
	resp, err := a.client.Do(req)
	if err != nil {
		return "", fmt.Errorf("%s %s: %w", method, a.base+path, unwrapURL(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s %s: %s", method, a.base+path, resp.Status)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, int64(max)+1))
	if err != nil {
		return "", fmt.Errorf("%s %s: %w", method, a.base+path, err)
	}
	if len(b) > max {
		return "", fmt.Errorf("%s %s: response over %d bytes", method, a.base+path, max)
	}
	return string(b), nil
}

// unwrapURL drops url.Error's repetition of the method and URL.
func unwrapURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}
