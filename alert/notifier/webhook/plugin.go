package webhook

import (
	"net/http"

	"github.com/hashicorp/hcl/v2"

	"github.com/sigil-id/sigil/alert/notifier/internal/notify"
	"github.com/sigil-id/sigil/plugin"
)

func init() { plugin.Register(plugin.KindNotifier, PluginName, NewPlugin) }

// pluginConfig is the block
//
//	notifier "webhook" {
//	  url          = "https://alerts.example.com/sigil"
//	  secret_file  = "/etc/sigil/webhook.secret"   # or secret_env = "SIGIL_WEBHOOK_SECRET"
//	  headers      = { "X-Team" = "identity" }     # optional
//	  name         = "webhook"
//	  min_severity = "warning"
//	  timeout      = "10s"
//	}
type pluginConfig struct {
	URL         *string           `hcl:"url,optional"`
	SecretFile  *string           `hcl:"secret_file,optional"`
	SecretEnv   *string           `hcl:"secret_env,optional"`
	Headers     map[string]string `hcl:"headers,optional"`
	Name        *string           `hcl:"name,optional"`
	MinSeverity *string           `hcl:"min_severity,optional"`
	Timeout     *string           `hcl:"timeout,optional"`
}

// NewPlugin is the plugin constructor: it decodes a webhook block
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
	if pc.URL == nil {
		return nil, plugin.AttrError(body, "url", "is required")
	}
	if _, err := notify.CheckURL(*pc.URL); err != nil {
		return nil, plugin.AttrError(body, "url", "%q: %v", *pc.URL, err)
	}
	secret, err := notify.PluginSecret(body, "secret_file", "secret_env", pc.SecretFile, pc.SecretEnv)
	if err != nil {
		return nil, err
	}
	h := http.Header{}
	for k, v := range pc.Headers {
		if err := checkHeader(k); err != nil {
			return nil, plugin.AttrError(body, "headers", "%v", err)
		}
		h.Set(k, v)
	}
	n, err := New(Config{
		URL: *pc.URL, Secret: secret, Header: h, Name: common.Name,
		MinSeverity: common.MinSeverity, Timeout: common.Timeout, Clock: env.Clock,
	})
	if err != nil {
		return nil, err
	}
	return n, nil
}
