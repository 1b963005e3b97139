package pagerduty

import (
	"github.com/hashicorp/hcl/v2"

	"github.com/sigil-id/sigil/alert/notifier/internal/notify"
	"github.com/sigil-id/sigil/plugin"
)

func init() { plugin.Register(plugin.KindNotifier, PluginName, NewPlugin) }

// pluginConfig is the block
//
//	notifier "pagerduty" {
//	  routing_key_file = "/etc/sigil/pagerduty.key"   # or routing_key_env = "SIGIL_PAGERDUTY_ROUTING_KEY"
//	  url              = "https://events.pagerduty.com/v2/enqueue"
//	  name             = "pagerduty"
//	  min_severity     = "critical"
//	  timeout          = "10s"
//	}
type pluginConfig struct {
	RoutingKeyFile *string `hcl:"routing_key_file,optional"`
	RoutingKeyEnv  *string `hcl:"routing_key_env,optional"`
	URL            *string `hcl:"url,optional"`
	Name           *string `hcl:"name,optional"`
	MinSeverity    *string `hcl:"min_severity,optional"`
	Timeout        *string `hcl:"timeout,optional"`
}

// NewPlugin is the plugin constructor: it decodes a pagerduty block
// strictly and returns a *Notifier.
func NewPlugin(body hcl.Body, env plugin.Env) (any, error) {
	var pc pluginConfig
	if err := plugin.DecodeBody(body, &pc); err != nil {
		return nil, err
	}
	common, err := notify.PluginCommon(body, PluginName, pc.Name, pc.MinSeverity, pc.Timeout)
	if err != nil {
		return nil, err
	}
	c := Config{Name: common.Name, MinSeverity: common.MinSeverity, Timeout: common.Timeout}
	if pc.URL != nil {
		if _, err := notify.CheckURL(*pc.URL); err != nil {
			return nil, plugin.AttrError(body, "url", "%q: %v", *pc.URL, err)
		}
		c.URL = *pc.URL
	}
	c.RoutingKey, err = notify.PluginSecret(body, "routing_key_file", "routing_key_env", pc.RoutingKeyFile, pc.RoutingKeyEnv)
	if err != nil {
		return nil, err
	}
	n, err := New(c)
	if err != nil {
		return nil, err
	}
	return n, nil
}
