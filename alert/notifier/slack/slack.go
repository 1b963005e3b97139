// Package slack is the notifier that posts alerts to a Slack channel
// through an incoming webhook.
//
// A batch is one message whose "text" has a line per alert, e.g.
//
//	:rotating_light: FIRING [critical] SVIDNotRenewed: agent node-1 did not renew (server sigil-1)
//	:white_check_mark: RESOLVED [critical] SVIDNotRenewed: agent node-1 did not renew (server sigil-1)
//
// followed by its details, at most MaxAlerts alerts per message. The
// webhook URL is itself the credential (anyone who has it can post to the
// channel), so it is read from a file or an environment variable, never
// from the configuration, and never appears in logs or errors: the
// notifier calls it "slack webhook".
package slack

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/sigil-id/sigil/alert"
	"github.com/sigil-id/sigil/alert/notifier/internal/notify"
)

// PluginName is the name of this notifier in configuration.
const PluginName = "slack"

// Bounds on a message.
const (
	// MaxAlerts is how many alerts one message lists; the rest are
	// counted.
	MaxAlerts = 20
	// MaxDetails is how many details an alert lists.
	MaxDetails = 10
	// maxLine bounds a summary or a detail value.
	maxLine = 300
)

// label names the webhook in errors instead of its URL.
const label = "slack webhook"

// Config configures a Notifier.
type Config struct {
	// WebhookURL is the Slack incoming webhook URL (a secret).
	WebhookURL string
	// Name names the notifier (default "slack").
	Name string
	// MinSeverity is the least severe alert routed to it (default
	// warning).
	MinSeverity alert.Severity
	// Timeout bounds one POST (default 10s).
	Timeout time.Duration
}

// Validate checks c and fills its defaults. Its errors never contain the
// webhook URL.
func (c *Config) Validate() error {
	common := notify.Common{Name: c.Name, MinSeverity: c.MinSeverity, Timeout: c.Timeout}
	if err := common.Validate(PluginName); err != nil {
		return fmt.Errorf("slack: %w", err)
	}
	c.Name, c.MinSeverity, c.Timeout = common.Name, common.MinSeverity, common.Timeout
	if c.WebhookURL == "" {
		return errors.New("slack: no webhook URL")
	}
	if err := checkURL(c.WebhookURL); err != nil {
		return fmt.Errorf("slack: %w", err)
	}
	return nil
}

// checkURL checks the webhook URL without quoting it.
func checkURL(s string) error {
	if _, err := notify.CheckURL(s); err != nil {
		return fmt.Errorf("the webhook URL is not valid: %v", redactErr(err, s))
	}
	return nil
}

func redactErr(err error, secret string) string {
	return strings.ReplaceAll(err.Error(), secret, "[redacted]")
}

// Notifier posts alerts to a Slack incoming webhook. It is safe for
// concurrent use.
type Notifier struct {
	name string
	min  alert.Severity
	url  string
	// secrets are removed from any answer an error quotes: the URL and
	// its path (where the token is).
	secrets []string
	client  *http.Client
}

// New returns a Notifier for c.
func New(c Config) (*Notifier, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	n := &Notifier{name: c.Name, min: c.MinSeverity, url: c.WebhookURL, secrets: []string{c.WebhookURL}, client: notify.NewClient(c.Timeout)}
	if u, err := url.Parse(c.WebhookURL); err == nil && len(u.Path) >= 8 {
		n.secrets = append(n.secrets, u.Path)
	}
	return n, nil
}

// Name returns the notifier's name.
func (n *Notifier) Name() string { return n.name }

// MinSeverity returns the least severe alert the Dispatcher should route
// to it.
func (n *Notifier) MinSeverity() alert.Severity { return n.min }

// String hides the webhook URL from %v.
func (n *Notifier) String() string { return "slack notifier " + n.name }

// message is an incoming webhook's body.
type message struct {
	Text string `json:"text"`
}

// Notify posts alerts as one message: one attempt.
func (n *Notifier) Notify(ctx context.Context, alerts []alert.Alert) error {
	if len(alerts) == 0 {
		return nil
	}
	body, err := json.Marshal(message{Text: Text(alerts)})
	if err != nil {
		return fmt.Errorf("slack: %w", err)
	}
	if err := notify.Post(ctx, n.client, notify.Request{URL: n.url, Label: label, Body: body, Secrets: n.secrets}); err != nil {
		return fmt.Errorf("slack: %w", err)
	}
	return nil
}

// Text is the message text for alerts.
func Text(alerts []alert.Alert) string {
	var b strings.Builder
	for i, a := range alerts {
		if i == MaxAlerts {
			fmt.Fprintf(&b, "… and %d more alerts\n", len(alerts)-MaxAlerts)
			break
		}
		if a.Resolved() {
			b.WriteString(":white_check_mark: RESOLVED")
		} else {
			b.WriteString(":rotating_light: FIRING")
		}
		fmt.Fprintf(&b, " [%s] %s: %s", a.Severity, escape(a.Name), escape(notify.Truncate(a.Summary, maxLine)))
		if a.Source != "" {
			fmt.Fprintf(&b, " (server %s)", escape(a.Source))
		}
		b.WriteByte('\n')
		keys := make([]string, 0, len(a.Details))
		for k := range a.Details {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for j, k := range keys {
			if j == MaxDetails {
				fmt.Fprintf(&b, "    … %d more details\n", len(keys)-MaxDetails)
				break
			}
			fmt.Fprintf(&b, "    • %s: %s\n", escape(notify.Truncate(k, 64)), escape(notify.Truncate(a.Details[k], maxLine)))
		}
		if a.Resolved() && !a.StartsAt.IsZero() {
			fmt.Fprintf(&b, "    lasted %s\n", a.EndsAt.Sub(a.StartsAt).Round(time.Second))
		}
		if a.GeneratorURL != "" {
			fmt.Fprintf(&b, "    %s\n", escape(a.GeneratorURL))
		}
	}
	return strings.TrimRight(b.String(), "\n")
}

// escape escapes the three characters Slack's mrkdwn gives meaning to.
var escaper = strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;")

func escape(s string) string { return escaper.Replace(s) }
