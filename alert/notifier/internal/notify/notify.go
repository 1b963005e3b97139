// Package notify holds what the notifier plugins share: the settings
// every notifier block takes (name, min_severity, timeout), reading a
// secret from a file or an environment variable, checking a receiver URL,
// and one bounded HTTP POST whose errors never carry a secret.
package notify

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/sigil-id/sigil/alert"
)

// DefaultTimeout bounds one delivery attempt when the block sets no
// timeout.
const DefaultTimeout = 10 * time.Second

// DefaultMinSeverity is the least severe alert a notifier takes when its
// block sets no min_severity.
const DefaultMinSeverity = alert.Warning

// maxResponse bounds how much of a receiver's answer is read;
// maxSnippet how much of it an error quotes.
const (
	maxResponse = 64 << 10
	maxSnippet  = 200
)

// ParseSeverity parses a min_severity value.
func ParseSeverity(s string) (alert.Severity, error) {
	sev := alert.Severity(s)
	if sev.Rank() == 0 {
		return "", fmt.Errorf("%q is not a severity (info, warning or critical)", s)
	}
	return sev, nil
}

// Common is the settings every notifier has, resolved.
type Common struct {
	Name        string
	MinSeverity alert.Severity
	Timeout     time.Duration
}

// Validate checks c and fills its defaults (name: def).
func (c *Common) Validate(def string) error {
	if c.Name == "" {
		c.Name = def
	}
	if c.MinSeverity == "" {
		c.MinSeverity = DefaultMinSeverity
	}
	if c.MinSeverity.Rank() == 0 {
		return fmt.Errorf("min severity %q is not info, warning or critical", c.MinSeverity)
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Timeout < 0 {
		return fmt.Errorf("timeout %s is negative", c.Timeout)
	}
	return nil
}

// CheckURL parses a receiver URL: http or https, with a host, without
// user info (credentials in a URL end up in logs) or fragment.
func CheckURL(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, errors.New("not a URL")
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("scheme %q: want http or https", u.Scheme)
	case u.Host == "":
		return nil, errors.New("no host")
	case u.User != nil:
		return nil, errors.New("user info in the URL is not allowed")
	case u.Fragment != "":
		return nil, errors.New("a fragment in the URL is not allowed")
	}
	return u, nil
}

// NewClient returns an HTTP client that gives up after timeout and follows
// no redirect (a 3xx answer is an error: a receiver that moved must be
// reconfigured, and a redirect must not carry a signed body or a secret
// elsewhere).
func NewClient(timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout: timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

// Request is one POST.
type Request struct {
	// URL is where to post; Label names it in errors instead (a URL
	// that is a secret, like Slack's, is never printed).
	URL, Label string
	Header     http.Header
	Body       []byte
	// Secrets are removed from any part of the answer an error quotes.
	Secrets []string
}

// Post sends r as one attempt. A 2xx answer is success; any other is an
// error naming the status and quoting at most a short snippet of the
// answer: 429 and 5xx say the receiver may accept a retry, other 4xx say
// it will not (the configuration or the payload is wrong).
func Post(ctx context.Context, c *http.Client, r Request) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.URL, bytes.NewReader(r.Body))
	if err != nil {
		return fmt.Errorf("POST %s: %v", r.Label, redact(err.Error(), r))
	}
	for k, vs := range r.Header {
		req.Header[k] = vs
	}
	if req.Header.Get("Content-Type") == "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if req.Header.Get("User-Agent") == "" {
		req.Header.Set("User-Agent", "sigil-notifier")
	}
	resp, err := c.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // without the URL
		}
		if msg := redact(err.Error(), r); msg != err.Error() {
			return fmt.Errorf("POST %s: %s", r.Label, msg)
		}
		// Keep the cause (context.Canceled, a timeout) for errors.Is.
		return fmt.Errorf("POST %s: %w", r.Label, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return nil
	}
	msg := fmt.Sprintf("POST %s: %s", r.Label, resp.Status)
	if s := snippet(body, r); s != "" {
		msg += fmt.Sprintf(" (%q)", s)
	}
	switch {
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		msg += ": the receiver may accept a retry"
	case resp.StatusCode >= 300 && resp.StatusCode < 400:
		msg += ": redirects are not followed; configure the final URL"
	default:
		msg += ": the receiver refused the request; a retry will not succeed until the configuration is fixed"
	}
	return &StatusError{Code: resp.StatusCode, msg: msg}
}

// StatusError is a non-2xx answer.
type StatusError struct {
	Code int
	msg  string
}

func (e *StatusError) Error() string { return e.msg }

// Retryable reports whether a retry may succeed (429 or 5xx).
func (e *StatusError) Retryable() bool {
	return e.Code == http.StatusTooManyRequests || e.Code >= 500
}

func redact(s string, r Request) string {
	if r.URL != "" && r.URL != r.Label {
		s = strings.ReplaceAll(s, r.URL, r.Label)
	}
	for _, sec := range r.Secrets {
		if sec != "" {
			s = strings.ReplaceAll(s, sec, "[redacted]")
		}
	}
	return s
}

// snippet is the start of an answer, printable and without secrets.
func snippet(body []byte, r Request) string {
	s := redact(strings.ToValidUTF8(string(body), ""), r)
	s = strings.Join(strings.Fields(s), " ")
	return Truncate(s, maxSnippet)
}

// Truncate cuts s to at most n bytes on a rune boundary, marking the cut
// with "…".
func Truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n - len("…")
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}
