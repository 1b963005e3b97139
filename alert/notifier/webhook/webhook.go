// Package webhook is the notifier that posts alerts as signed JSON to any
// HTTP receiver.
//
// The body is
//
//	{"version": "1", "alerts": [{"key", "name", "severity",
//	  "status": "firing"|"resolved", "summary", "details", "source",
//	  "starts_at", "ends_at", "generator_url"}, ...]}
//
// (times RFC 3339, ends_at only when resolved). Each request carries
//
//	X-Sigil-Timestamp: <unix seconds when it was sent>
//	X-Sigil-Signature: sha256=<hex HMAC-SHA256 over "<timestamp>.<body>">
//
// keyed with the shared secret. A receiver recomputes the HMAC over the
// timestamp header, a '.', and the raw body, compares it in constant
// time, and rejects a timestamp too far from its own clock (say five
// minutes), which stops a captured request from being replayed later. The
// secret comes from a file or an environment variable, never from the
// configuration itself.
package webhook

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/sigil-id/sigil/alert"
	"github.com/sigil-id/sigil/alert/notifier/internal/notify"
	"github.com/sigil-id/sigil/clock"
)

// PluginName is the name of this notifier in configuration.
const PluginName = "webhook"

// The headers of a request.
const (
	HeaderSignature = "X-Sigil-Signature"
	HeaderTimestamp = "X-Sigil-Timestamp"
)

// Version is the version of the body's format.
const Version = "1"

// Config configures a Notifier.
type Config struct {
	// URL is where alerts are posted (http or https).
	URL string
	// Secret keys the HMAC signature. Required.
	Secret string
	// Header are extra request headers (e.g. a routing header for a
	// gateway); Content-Type and the X-Sigil- headers cannot be set.
	Header http.Header
	// Name names the notifier (default "webhook").
	Name string
	// MinSeverity is the least severe alert routed to it (default
	// warning).
	MinSeverity alert.Severity
	// Timeout bounds one POST (default 10s).
	Timeout time.Duration
	// Clock gives the signing timestamp (default the real clock).
	Clock clock.Clock
}

// Validate checks c and fills its defaults.
func (c *Config) Validate() error {
	common := notify.Common{Name: c.Name, MinSeverity: c.MinSeverity, Timeout: c.Timeout}
	if err := common.Validate(PluginName); err != nil {
		return fmt.Errorf("webhook: %w", err)
	}
	c.Name, c.MinSeverity, c.Timeout = common.Name, common.MinSeverity, common.Timeout
	if c.URL == "" {
		return errors.New("webhook: no URL")
	}
	if _, err := notify.CheckURL(c.URL); err != nil {
		return fmt.Errorf("webhook: url %q: %w", c.URL, err)
	}
	if c.Secret == "" {
		return errors.New("webhook: no secret")
	}
	for k := range c.Header {
		if err := checkHeader(k); err != nil {
			return fmt.Errorf("webhook: %w", err)
		}
	}
	if c.Clock == nil {
		c.Clock = clock.New()
	}
	return nil
}

func checkHeader(k string) error {
	ck := http.CanonicalHeaderKey(k)
	if ck == "Content-Type" || ck == "Host" || ck == "Content-Length" || strings.HasPrefix(ck, "X-Sigil-") {
		return fmt.Errorf("header %q cannot be set", k)
	}
	if k == "" || strings.ContainsAny(k, " \t\r\n:") {
		return fmt.Errorf("header name %q is not valid", k)
	}
	return nil
}

// Notifier posts signed alerts to a URL. It is safe for concurrent use.
type Notifier struct {
	name   string
	min    alert.Severity
	url    string
	secret []byte
	header http.Header
	clock  clock.Clock
	client *http.Client
}

// New returns a Notifier for c.
func New(c Config) (*Notifier, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &Notifier{
		name: c.Name, min: c.MinSeverity, url: c.URL, secret: []byte(c.Secret),
		header: c.Header.Clone(), clock: c.Clock, client: notify.NewClient(c.Timeout),
	}, nil
}

// Name returns the notifier's name.
func (n *Notifier) Name() string { return n.name }

// MinSeverity returns the least severe alert the Dispatcher should route
// to it.
func (n *Notifier) MinSeverity() alert.Severity { return n.min }

// Body is the JSON a receiver gets.
type Body struct {
	Version string  `json:"version"`
	Alerts  []Alert `json:"alerts"`
}

// Alert is one alert in a Body.
type Alert struct {
	Key          string            `json:"key"`
	Name         string            `json:"name"`
	Severity     string            `json:"severity"`
	Status       string            `json:"status"` // "firing" or "resolved"
	Summary      string            `json:"summary"`
	Details      map[string]string `json:"details,omitempty"`
	Source       string            `json:"source,omitempty"`
	StartsAt     string            `json:"starts_at,omitempty"`
	EndsAt       string            `json:"ends_at,omitempty"`
	GeneratorURL string            `json:"generator_url,omitempty"`
}

// Sign returns the X-Sigil-Signature value for body sent at timestamp
// (the X-Sigil-Timestamp value): "sha256=" and the hex HMAC-SHA256 of
// "<timestamp>.<body>" keyed with secret.
func Sign(secret []byte, timestamp string, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(timestamp))
	m.Write([]byte{'.'})
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// Verify checks a request's signature and timestamp as a receiver should:
// the signature must match Sign (compared in constant time) and the
// timestamp must be within maxSkew of now.
func Verify(secret []byte, signature, timestamp string, body []byte, now time.Time, maxSkew time.Duration) error {
	ts, err := strconv.ParseInt(timestamp, 10, 64)
	if err != nil {
		return errors.New("webhook: bad timestamp")
	}
	if d := now.Sub(time.Unix(ts, 0)); d > maxSkew || d < -maxSkew {
		return fmt.Errorf("webhook: timestamp %s away from now", d.Round(time.Second))
	}
	if !hmac.Equal([]byte(signature), []byte(Sign(secret, timestamp, body))) {
		return errors.New("webhook: signature mismatch")
	}
	return nil
}

// Notify posts alerts in one signed request: one attempt.
func (n *Notifier) Notify(ctx context.Context, alerts []alert.Alert) error {
	if len(alerts) == 0 {
		return nil
	}
	b := Body{Version: Version, Alerts: make([]Alert, 0, len(alerts))}
	for _, a := range alerts {
		w := Alert{
			Key: a.Key, Name: a.Name, Severity: string(a.Severity), Status: "firing",
			Summary: a.Summary, Details: a.Details, Source: a.Source, GeneratorURL: a.GeneratorURL,
		}
		if !a.StartsAt.IsZero() {
			w.StartsAt = a.StartsAt.UTC().Format(time.RFC3339Nano)
		}
		if a.Resolved() {
			w.Status = "resolved"
			w.EndsAt = a.EndsAt.UTC().Format(time.RFC3339Nano)
		}
		b.Alerts = append(b.Alerts, w)
	}
	body, err := json.Marshal(b)
	if err != nil {
		return fmt.Errorf("webhook: %w", err)
	}
	ts := strconv.FormatInt(n.clock.Now().Unix(), 10)
	h := n.header.Clone()
	if h == nil {
		h = http.Header{}
	}
	h.Set(HeaderTimestamp, ts)
	h.Set(HeaderSignature, Sign(n.secret, ts, body))
	if err := notify.Post(ctx, n.client, notify.Request{URL: n.url, Label: n.url, Header: h, Body: body, Secrets: []string{string(n.secret)}}); err != nil {
		return fmt.Errorf("webhook: %w", err)
	}
	return nil
}
