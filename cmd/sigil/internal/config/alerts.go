package config

import (
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/hcl/v2/hclsyntax"

	"github.com/sigil-id/sigil/health"
)

// Alerts is the server block's `alerts { … }` block: the thresholds of
// the rotation-health conditions and how often they are evaluated,
// reported and repeated. Keys the block leaves out keep their defaults
// (health.DefaultConfig; zero intervals mean the server's defaults).
type Alerts struct {
	// Health holds the thresholds, checked with health.Config.Validate.
	Health health.Config
	// EvaluateInterval is how often the leader evaluates the conditions.
	EvaluateInterval time.Duration
	// ReportInterval is the report interval the server asks its agents
	// for (5s to 10m).
	ReportInterval time.Duration
	// RepeatInterval is how often a firing alert is sent again.
	RepeatInterval time.Duration
}

// Bounds of the alerts block's intervals.
const (
	MinEvaluateInterval = time.Second
	MinReportInterval   = 5 * time.Second
	MaxReportInterval   = 10 * time.Minute
	MinRepeatInterval   = time.Minute
)

type hclAlerts struct {
	EvaluateInterval       string  `hcl:"evaluate_interval,optional"`
	RenewGrace             string  `hcl:"renew_grace,optional"`
	ExpiryCritical         string  `hcl:"expiry_critical,optional"`
	ReportTimeout          string  `hcl:"report_timeout,optional"`
	AuthorityWarn          string  `hcl:"authority_warn,optional"`
	FederationStaleHints   *int    `hcl:"federation_stale_hints,optional"`
	NoLeaderAfter          string  `hcl:"no_leader_after,optional"`
	MemberUnreachableAfter string  `hcl:"member_unreachable_after,optional"`
	FailureBurst           *uint64 `hcl:"failure_burst,optional"`
	FailureWindow          string  `hcl:"failure_window,optional"`
	KeyManagerFailingAfter string  `hcl:"key_manager_failing_after,optional"`
	UpstreamFailingAfter   string  `hcl:"upstream_failing_after,optional"`
	MaxIDs                 *int    `hcl:"max_ids,optional"`
	ReportInterval         string  `hcl:"report_interval,optional"`
	RepeatInterval         string  `hcl:"repeat_interval,optional"`
}

// readAlerts builds the Alerts of the server block sb from its decoded
// alerts block raw: the defaults, the block's values over them, then the
// checks. Errors name the file and line.
func readAlerts(filename string, sb *hclsyntax.Block, raw *hclAlerts) (*Alerts, error) {
	ab := syntaxBlock(blockBody(sb), "alerts")
	at := func(name string) string {
		if ab == nil {
			return filename
		}
		if name == "" {
			return pos(ab.DefRange())
		}
		return attrAt(ab, name)
	}
	out := &Alerts{Health: health.DefaultConfig()}
	h := &out.Health
	for _, d := range []struct {
		name string
		src  string
		dst  *time.Duration
	}{
		{"evaluate_interval", raw.EvaluateInterval, &out.EvaluateInterval},
		{"renew_grace", raw.RenewGrace, &h.RenewGrace},
		{"expiry_critical", raw.ExpiryCritical, &h.ExpiryCritical},
		{"report_timeout", raw.ReportTimeout, &h.ReportTimeout},
		{"authority_warn", raw.AuthorityWarn, &h.AuthorityWarn},
		{"no_leader_after", raw.NoLeaderAfter, &h.NoLeaderAfter},
		{"member_unreachable_after", raw.MemberUnreachableAfter, &h.MemberUnreachableAfter},
		{"failure_window", raw.FailureWindow, &h.FailureWindow},
		{"key_manager_failing_after", raw.KeyManagerFailingAfter, &h.KeyManagerFailingAfter},
		{"upstream_failing_after", raw.UpstreamFailingAfter, &h.UpstreamFailingAfter},
		{"report_interval", raw.ReportInterval, &out.ReportInterval},
		{"repeat_interval", raw.RepeatInterval, &out.RepeatInterval},
	} {
		if d.src == "" {
			continue
		}
		v, err := parseDuration(d.src)
		if err != nil {
			return nil, fmt.Errorf("%s: server.alerts.%s: %w", at(d.name), d.name, err)
		}
		*d.dst = v
	}
	if raw.FederationStaleHints != nil {
		h.FederationStaleHints = *raw.FederationStaleHints
	}
	if raw.FailureBurst != nil {
		h.FailureBurst = *raw.FailureBurst
	}
	if raw.MaxIDs != nil {
		h.MaxIDs = *raw.MaxIDs
	}
	var errs []error
	if err := h.Validate(); err != nil {
		errs = append(errs, err)
	}
	if raw.EvaluateInterval != "" && out.EvaluateInterval < MinEvaluateInterval {
		errs = append(errs, fmt.Errorf("evaluate_interval: must be at least %v, got %v", MinEvaluateInterval, out.EvaluateInterval))
	}
	if raw.ReportInterval != "" && (out.ReportInterval < MinReportInterval || out.ReportInterval > MaxReportInterval) {
		errs = append(errs, fmt.Errorf("report_interval: must be %v to %v, got %v", MinReportInterval, MaxReportInterval, out.ReportInterval))
	}
	if raw.RepeatInterval != "" && out.RepeatInterval < MinRepeatInterval {
		errs = append(errs, fmt.Errorf("repeat_interval: must be at least %v, got %v", MinRepeatInterval, out.RepeatInterval))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("%s: server.alerts: %w", at(""), err)
	}
	return out, nil
}

// blockBody is b's body, or nil for a nil block.
func blockBody(b *hclsyntax.Block) *hclsyntax.Body {
	if b == nil {
		return nil
	}
	return b.Body
}
