package slack

import (
	"github.com/hashicorp/hcl/v2"

	"github.com/sigil-id/sigil/alert/notifier/internal/notify"
	"github.com/sigil-id/sigil/plugin"
)

func init() { plugin.Register(plugin.KindNotifier, PluginName, NewPlugin) }

// pluginConfig is the block
//
//	notifier "slack" {
//	  webhook_url_file = "/etc/sigil/slack.url"   # or webhook_url_env = "SIGIL_SLACK_WEBHOOK_URL"
//	  name             = "slack"
//	  min_severity     = "warning"
//	  timeout          = "10s"
//	}
type pluginConfig struct {
	WebhookURLFile *string `hcl:"webhook_url_file,optional"`
	WebhookURLEnv  *string `hcl:"webhook_url_env,optional"`
	Name           *string `hcl:"name,optional"`
	MinSeverity    *string `hcl:"min_severity,optional"`
	Timeout        *string `hcl:"timeout,optional"`
}

// NewPlugin is the plugin constructor: it decodes a slack block strictly
// and returns a *Notifier.
func NewPlugin(body hcl.Body, env plugin.Env) (any, error) {
	var pc pluginConfig
	if err := plugin.DecodeBody(body, &pc); err != nil {
		return nil, err
	}
	common, err := notify.PluginCommon(body, PluginName, pc.Name, pc.MinSeverity, pc.Timeout)
	if err != nil {
		return nil, err
	}
	u, err := notify.PluginSecret(body, "webhook_url_file", "webhook_url_env", pc.WebhookURLFile, pc.WebhookURLEnv)
	if err != nil {
		return nil, err
	}
	if err := checkURL(u); err != nil {
		attr := "webhook_url_file"
		if pc.WebhookURLEnv != nil {
			attr = "webhook_url_env"
		}
		return nil, plugin.AttrError(body, attr, "%v", err)
	}
	n, err := New(Config{WebhookURL: u, Name: common.Name, MinSeverity: common.MinSeverity, Timeout: common.Timeout})
	if err != nil {
		return nil, err
	}
	return n, nil
}
