package alertmanager

import (
	"time"

	"github.com/hashicorp/hcl/v2"

	"github.com/sigil-id/sigil/alert/notifier/internal/notify"
	"github.com/sigil-id/sigil/plugin"
)

func init() { plugin.Register(plugin.KindNotifier, PluginName, NewPlugin) }

// pluginConfig is the block
//
//	notifier "alertmanager" {
//	  url          = "http://127.0.0.1:9093"   # or urls = [...], one of them
//	  name         = "alertmanager"            # default the plugin name
//	  min_severity = "warning"                 # info | warning | critical
//	  timeout      = "10s"
//	  repeat_interval = "1m"                   # < Alertmanager's resolve_timeout
//	}
type pluginConfig struct {
	URL         *string  `hcl:"url,optional"`
	URLs        []string `hcl:"urls,optional"`
	Name        *string  `hcl:"name,optional"`
	MinSeverity *string  `hcl:"min_severity,optional"`
	Timeout     *string  `hcl:"timeout,optional"`
	Repeat      *string  `hcl:"repeat_interval,optional"`
}

// NewPlugin is the plugin constructor: it decodes an alertmanager block
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
	if pc.Repeat != nil {
		d, err := time.ParseDuration(*pc.Repeat)
		if err != nil || d <= 0 {
			return nil, plugin.AttrError(body, "repeat_interval", "%q is not a positive duration (e.g. \"1m\")", *pc.Repeat)
		}
		c.RepeatInterval = d
	}
	switch {
	case pc.URL != nil && pc.URLs != nil:
		return nil, plugin.AttrError(body, "urls", "both url and urls are set: keep one")
	case pc.URL != nil:
		c.URLs = []string{*pc.URL}
	case pc.URLs != nil:
		if len(pc.URLs) == 0 {
			return nil, plugin.AttrError(body, "urls", "is empty")
		}
		c.URLs = pc.URLs
	default:
		return nil, plugin.AttrError(body, "url", "is required (e.g. url = \"http://127.0.0.1:9093\")")
	}
	attr := "url"
	if pc.URL == nil {
		attr = "urls"
	}
	for _, u := range c.URLs {
		if _, err := notify.CheckURL(u); err != nil {
			return nil, plugin.AttrError(body, attr, "%q: %v", u, err)
		}
	}
	n, err := New(c)
	if err != nil {
		return nil, err
	}
	return n, nil
}
