// Package pagerduty is the notifier that opens and resolves PagerDuty
// alerts through the Events API v2 (POST
// https://events.pagerduty.com/v2/enqueue).
//
// A firing alert is a "trigger" event, a resolved one a "resolve" event;
// both carry dedup_key = Alert.Key (a key longer than PagerDuty's 255
// characters is replaced by "sha256:" and its hex SHA-256), so PagerDuty
// folds repeats of a firing alert into one incident and the resolution
// closes it. A trigger's payload has summary (Alert.Summary, or the name
// if empty; at most 1024 characters), source (Alert.Source, or "sigil"),
// severity (info, warning or critical as is), timestamp (StartsAt),
// component "sigil", class (Alert.Name) and custom_details (Alert.Details
// plus key and name). The routing key (the integration key of a
// PagerDuty service) is read from a file or an environment variable and
// never appears in logs or errors.
//
// The Events API takes one event per request: Notify sends each alert in
// turn and fails if any was refused (the Dispatcher retries the batch;
// PagerDuty deduplicates by dedup_key).
package pagerduty

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/sigil-id/sigil/alert"
	"github.com/sigil-id/sigil/alert/notifier/internal/notify"
)

// PluginName is the name of this notifier in configuration.
const PluginName = "pagerduty"

// DefaultURL is the Events API v2 endpoint.
const DefaultURL = "https://events.pagerduty.com/v2/enqueue"

// Limits of the Events API.
const (
	maxDedupKey = 255
	maxSummary  = 1024
)

// Config configures a Notifier.
type Config struct {
	// RoutingKey is the integration key of the PagerDuty service (a
	// secret). Required.
	RoutingKey string
	// URL is the Events API endpoint (default DefaultURL).
	URL string
	// Name names the notifier (default "pagerduty").
	Name string
	// MinSeverity is the least severe alert routed to it (default
	// warning).
	MinSeverity alert.Severity
	// Timeout bounds one POST (default 10s).
	Timeout time.Duration
}

// Validate checks c and fills its defaults. Its errors never contain the
// routing key.
func (c *Config) Validate() error {
	common := notify.Common{Name: c.Name, MinSeverity: c.MinSeverity, Timeout: c.Timeout}
	if err := common.Validate(PluginName); err != nil {
		return fmt.Errorf("pagerduty: %w", err)
	}
	c.Name, c.MinSeverity, c.Timeout = common.Name, common.MinSeverity, common.Timeout
	if c.URL == "" {
		c.URL = DefaultURL
	}
	if _, err := notify.CheckURL(c.URL); err != nil {
		return fmt.Errorf("pagerduty: url %q: %w", c.URL, err)
	}
	if c.RoutingKey == "" {
		return errors.New("pagerduty: no routing key")
	}
	return nil
}

// Notifier sends alerts to PagerDuty. It is safe for concurrent use.
type Notifier struct {
	name   string
	min    alert.Severity
	url    string
	key    string
	client *http.Client
}

// New returns a Notifier for c.
func New(c Config) (*Notifier, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &Notifier{name: c.Name, min: c.MinSeverity, url: c.URL, key: c.RoutingKey, client: notify.NewClient(c.Timeout)}, nil
}

// Name returns the notifier's name.
func (n *Notifier) Name() string { return n.name }

// MinSeverity returns the least severe alert the Dispatcher should route
// to it.
func (n *Notifier) MinSeverity() alert.Severity { return n.min }

// String hides the routing key from %v.
func (n *Notifier) String() string { return "pagerduty notifier " + n.name }

// event is an Events API v2 alert event.
type event struct {
	RoutingKey  string   `json:"routing_key"`
	EventAction string   `json:"event_action"` // trigger | resolve
	DedupKey    string   `json:"dedup_key"`
	Payload     *payload `json:"payload,omitempty"`
	Client      string   `json:"client,omitempty"`
	ClientURL   string   `json:"client_url,omitempty"`
}

type payload struct {
	Summary       string            `json:"summary"`
	Source        string            `json:"source"`
	Severity      string            `json:"severity"`
	Timestamp     string            `json:"timestamp,omitempty"`
	Component     string            `json:"component,omitempty"`
	Class         string            `json:"class,omitempty"`
	CustomDetails map[string]string `json:"custom_details,omitempty"`
}

// DedupKey is the dedup_key sent for an alert key: the key itself, or
// "sha256:<hex>" of it when it is longer than PagerDuty allows.
func DedupKey(key string) string {
	if len(key) <= maxDedupKey {
		return key
	}
	sum := sha256.Sum256([]byte(key))
	return "sha256:" + hex.EncodeToString(sum[:])
}

func severity(s alert.Severity) string {
	switch s {
	case alert.Info:
		return "info"
	case alert.Critical:
		return "critical"
	}
	return "warning"
}

func (n *Notifier) event(a alert.Alert) event {
	e := event{RoutingKey: n.key, DedupKey: DedupKey(a.Key)}
	if a.Resolved() {
		e.EventAction = "resolve"
		return e
	}
	e.EventAction = "trigger"
	e.Client = "sigil"
	e.ClientURL = a.GeneratorURL
	summary := a.Summary
	if summary == "" {
		summary = a.Name
	}
	source := a.Source
	if source == "" {
		source = "sigil"
	}
	details := make(map[string]string, len(a.Details)+2)
	for k, v := range a.Details {
		details[k] = v
	}
	details["key"] = a.Key
	details["name"] = a.Name
	e.Payload = &payload{
		Summary: notify.Truncate(summary, maxSummary), Source: source, Severity: severity(a.Severity),
		Component: "sigil", Class: a.Name, CustomDetails: details,
	}
	if !a.StartsAt.IsZero() {
		e.Payload.Timestamp = a.StartsAt.UTC().Format(time.RFC3339Nano)
	}
	return e
}

// Notify sends one event per alert, in order: one attempt each; an error
// if any failed (naming the dedup keys that did).
func (n *Notifier) Notify(ctx context.Context, alerts []alert.Alert) error {
	var errs []error
	for _, a := range alerts {
		if err := ctx.Err(); err != nil {
			errs = append(errs, err)
			break
		}
		e := n.event(a)
		body, err := json.Marshal(e)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if err := notify.Post(ctx, n.client, notify.Request{URL: n.url, Label: n.url, Body: body, Secrets: []string{n.key}}); err != nil {
			errs = append(errs, fmt.Errorf("%s %q: %w", e.EventAction, e.DedupKey, err))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("pagerduty: %w", errors.Join(errs...))
	}
	return nil
}
