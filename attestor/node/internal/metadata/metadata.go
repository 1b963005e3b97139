// Package metadata is what the agent halves of the cloud node attestors
// (gcp_iit, azure_msi) share to ask their VM's instance metadata endpoint
// for an identity token: the check of the configured endpoint and a
// client that reaches only that endpoint (no proxy, no redirect), bounded
// in time and in the size of the answer it reads.
package metadata

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"
)

// CheckURL checks that raw is an http(s) URL with a host (the configured
// metadata_url); the error names it.
func CheckURL(raw string) error {
	p, err := url.Parse(raw)
	if err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
		return fmt.Errorf("metadata_url %q is not an http(s) URL", raw)
	}
	return nil
}

// Client gets answers from a metadata endpoint. It is safe for concurrent
// use.
type Client struct{ hc *http.Client }

// NewClient returns a client whose requests are bounded by timeout. The
// metadata endpoint is link-local: it is never reached through a proxy,
// and a redirect is not followed.
func NewClient(timeout time.Duration) *Client {
	return &Client{hc: &http.Client{
		Timeout:       timeout,
		Transport:     &http.Transport{Proxy: nil},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
}

// Answer is a metadata endpoint's answer: its status, headers and at most
// the bound of body bytes given to Get.
type Answer struct {
	StatusCode int
	Status     string
	Header     http.Header
	Body       []byte
}

// Get sends GET endpoint with query set on its query string and header
// added, and reads at most max bytes of the answer (the caller's parser
// refuses a cut-short token). A read failure is wrapped as "reading the
// answer".
func (c *Client) Get(ctx context.Context, endpoint string, query url.Values, header http.Header, max int64) (*Answer, error) {
	u, err := url.Parse(endpoint)
	if err != nil {
		return nil, err
	}
	q := u.Query()
	for k, v := range query {
		q[k] = v
	}
	u.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	for k, vs := range header {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, max))
	if err != nil {
		return nil, fmt.Errorf("reading the answer: %w", err)
	}
	return &Answer{StatusCode: resp.StatusCode, Status: resp.Status, Header: resp.Header, Body: body}, nil
}
