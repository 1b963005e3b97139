package notify

import (
	"fmt"
	"time"

	"github.com/hashicorp/hcl/v2"

	"github.com/sigil-id/sigil/internal/secretfile"
	"github.com/sigil-id/sigil/plugin"
)

// PluginCommon resolves the name, min_severity and timeout attributes of
// a notifier block (nil: not set), reporting a bad value at its line.
func PluginCommon(body hcl.Body, pluginName string, name, minSeverity, timeout *string) (Common, error) {
	var c Common
	if name != nil {
		if *name == "" {
			return c, plugin.AttrError(body, "name", "must not be empty (leave it out for %q)", pluginName)
		}
		c.Name = *name
	}
	if minSeverity != nil {
		sev, err := ParseSeverity(*minSeverity)
		if err != nil {
			return c, plugin.AttrError(body, "min_severity", "%v", err)
		}
		c.MinSeverity = sev
	}
	if timeout != nil {
		d, err := time.ParseDuration(*timeout)
		if err != nil || d <= 0 {
			return c, plugin.AttrError(body, "timeout", "%q is not a positive duration (e.g. \"10s\")", *timeout)
		}
		c.Timeout = d
	}
	if err := c.Validate(pluginName); err != nil {
		return c, err
	}
	return c, nil
}

// PluginSecret reads the secret a block names with exactly one of
// fileAttr (a file) and envAttr (an environment variable). Errors are
// reported at the attribute's line and never contain the secret.
func PluginSecret(body hcl.Body, fileAttr, envAttr string, file, env *string) (string, error) {
	switch {
	case file != nil && env != nil:
		return "", plugin.AttrError(body, envAttr, "both %s and %s are set: keep one", fileAttr, envAttr)
	case file != nil:
		s, err := secretfile.Read(*file)
		if err != nil {
			return "", plugin.AttrError(body, fileAttr, "%v", err)
		}
		return s, nil
	case env != nil:
		s, err := secretfile.ReadEnv(*env)
		if err != nil {
			return "", plugin.AttrError(body, envAttr, "%v", err)
		}
		return s, nil
	}
	return "", fmt.Errorf("%s or %s is required (secrets are never written in the configuration itself)", fileAttr, envAttr)
}
