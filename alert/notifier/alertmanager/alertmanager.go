// Package alertmanager is the notifier that posts alerts to Prometheus
// Alertmanager through its API v2 (POST {url}/api/v2/alerts), so that
// Alertmanager's routing, grouping, silences and inhibitions apply to
// Sigil's alerts like to any other.
//
// Each alert becomes one Alertmanager alert. Its labels, which identify
// it in Alertmanager, are stable for the life of the condition:
//
//	alertname   Alert.Name
//	severity    Alert.Severity
//	dedupe_key  Alert.Key
//
// Its annotations carry the rest: summary (Alert.Summary), source
// (Alert.Source, when set) and each of Alert.Details (keys made into valid
// label names, at most 32 details, values cut to 1 KiB). Details are
// annotations, not labels, because they may change while the condition
// lasts (an expiry counting down), and a changed label would make a new
// Alertmanager alert that never resolves. Source is an annotation for the
// same reason: when another server becomes the Raft leader and raises the
// same condition, it must update the same Alertmanager alert, not open a
// second one.
//
// startsAt is Alert.StartsAt; endsAt is set only for a resolved alert.
// A firing alert without endsAt is resolved by Alertmanager after its
// resolve_timeout (default 5m) unless it is sent again: the Notifier is an
// alert.Repeater whose RepeatInterval (option repeat_interval, default
// 1m) makes the Dispatcher send every firing alert at least that often.
//
// Several URLs (an Alertmanager cluster) each get every batch; Notify
// fails if any of them fails, so the Dispatcher retries the batch on all
// of them (Alertmanager deduplicates by labels, so a repeat is harmless).
package alertmanager

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/sigil-id/sigil/alert"
	"github.com/sigil-id/sigil/alert/notifier/internal/notify"
)

// PluginName is the name of this notifier in configuration.
const PluginName = "alertmanager"

// Bounds on the details sent as annotations.
const (
	MaxDetails     = 32
	MaxDetailValue = 1024
)

// Config configures a Notifier.
type Config struct {
	// URLs are the Alertmanager base URLs (e.g. "http://127.0.0.1:9093");
	// /api/v2/alerts is appended. At least one.
	URLs []string
	// Name names the notifier (default "alertmanager").
	Name string
	// MinSeverity is the least severe alert routed to it (default
	// warning).
	MinSeverity alert.Severity
	// Timeout bounds one POST (default 10s).
	Timeout time.Duration
	// RepeatInterval is how often the Dispatcher sends a firing alert
	// again (alert.Repeater), well under Alertmanager's resolve_timeout
	// (default 5m) so that a firing alert is not resolved by Alertmanager
	// itself. Default DefaultRepeatInterval.
	RepeatInterval time.Duration
}

// DefaultRepeatInterval is the default Config.RepeatInterval.
const DefaultRepeatInterval = time.Minute

// DefaultConfig returns a Config for the local Alertmanager.
func DefaultConfig() Config {
	return Config{
		URLs:           []string{"http://127.0.0.1:9093"},
		Name:           PluginName,
		MinSeverity:    notify.DefaultMinSeverity,
		Timeout:        notify.DefaultTimeout,
		RepeatInterval: DefaultRepeatInterval,
	}
}

// Validate checks c and fills its defaults.
func (c *Config) Validate() error {
	common := notify.Common{Name: c.Name, MinSeverity: c.MinSeverity, Timeout: c.Timeout}
	if err := common.Validate(PluginName); err != nil {
		return fmt.Errorf("alertmanager: %w", err)
	}
	c.Name, c.MinSeverity, c.Timeout = common.Name, common.MinSeverity, common.Timeout
	if c.RepeatInterval < 0 {
		return fmt.Errorf("alertmanager: repeat interval %s is negative", c.RepeatInterval)
	}
	if c.RepeatInterval == 0 {
		c.RepeatInterval = DefaultRepeatInterval
	}
	if len(c.URLs) == 0 {
		return errors.New("alertmanager: no URL")
	}
	for _, u := range c.URLs {
		if _, err := notify.CheckURL(u); err != nil {
			return fmt.Errorf("alertmanager: url %q: %w", u, err)
		}
	}
	return nil
}

// Notifier posts alerts to one or more Alertmanagers. It is safe for
// concurrent use.
type Notifier struct {
	name      string
	min       alert.Severity
	endpoints []string
	client    *http.Client
	repeat    time.Duration
}

// New returns a Notifier for c.
func New(c Config) (*Notifier, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	n := &Notifier{name: c.Name, min: c.MinSeverity, client: notify.NewClient(c.Timeout), repeat: c.RepeatInterval}
	for _, u := range c.URLs {
		n.endpoints = append(n.endpoints, strings.TrimRight(u, "/")+"/api/v2/alerts")
	}
	return n, nil
}

// Name returns the notifier's name.
func (n *Notifier) Name() string { return n.name }

// MinSeverity returns the least severe alert the Dispatcher should route
// to it.
func (n *Notifier) MinSeverity() alert.Severity { return n.min }

// RepeatInterval returns how often the Dispatcher should send a firing
// alert again (alert.Repeater), so that Alertmanager does not resolve it.
func (n *Notifier) RepeatInterval() time.Duration { return n.repeat }

// postableAlert is an alert of Alertmanager's API v2.
type postableAlert struct {
	Labels       map[string]string `json:"labels"`
	Annotations  map[string]string `json:"annotations,omitempty"`
	StartsAt     string            `json:"startsAt,omitempty"`
	EndsAt       string            `json:"endsAt,omitempty"`
	GeneratorURL string            `json:"generatorURL,omitempty"`
}

// Notify posts alerts to every Alertmanager: one attempt each; an error
// if any failed (naming each that did).
func (n *Notifier) Notify(ctx context.Context, alerts []alert.Alert) error {
	if len(alerts) == 0 {
		return nil
	}
	body, err := json.Marshal(payload(alerts))
	if err != nil {
		return fmt.Errorf("alertmanager: %w", err)
	}
	var errs []error
	for _, ep := range n.endpoints {
		if err := notify.Post(ctx, n.client, notify.Request{URL: ep, Label: ep, Body: body}); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("alertmanager: %w", errors.Join(errs...))
	}
	return nil
}

// payload returns the API v2 body for alerts.
func payload(alerts []alert.Alert) []postableAlert {
	out := make([]postableAlert, 0, len(alerts))
	for _, a := range alerts {
		p := postableAlert{
			Labels: map[string]string{
				"alertname":  a.Name,
				"severity":   string(a.Severity),
				"dedupe_key": a.Key,
			},
			Annotations:  map[string]string{},
			GeneratorURL: a.GeneratorURL,
		}
		if a.Summary != "" {
			p.Annotations["summary"] = a.Summary
		}
		if a.Source != "" {
			p.Annotations["source"] = a.Source
		}
		keys := make([]string, 0, len(a.Details))
		for k := range a.Details {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		added := 0
		for _, k := range keys {
			name := labelName(k)
			if _, taken := p.Annotations[name]; taken || name == "" {
				continue
			}
			if added == MaxDetails {
				break
			}
			p.Annotations[name] = notify.Truncate(a.Details[k], MaxDetailValue)
			added++
		}
		if !a.StartsAt.IsZero() {
			p.StartsAt = a.StartsAt.UTC().Format(time.RFC3339Nano)
		}
		if a.Resolved() {
			p.EndsAt = a.EndsAt.UTC().Format(time.RFC3339Nano)
		}
		out = append(out, p)
	}
	return out
}

var notLabelChar = regexp.MustCompile(`[^a-zA-Z0-9_]`)

// labelName makes k a valid Prometheus label name: other characters
// become '_', and a leading digit gets a '_' before it; at most 64 bytes.
func labelName(k string) string {
	s := notLabelChar.ReplaceAllString(k, "_")
	if s != "" && s[0] >= '0' && s[0] <= '9' {
		s = "_" + s
	}
	if len(s) > 64 {
		s = s[:64]
	}
	return s
}
