package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-id/sigil/mtls/policy"
)

// Exit codes of `sigil policy`, for CI gates.
const (
	policyExitDeny       = 1 // test: denied; lint: errors found
	policyExitMalformed  = 2 // the policy or the flags are malformed
	policyExitShadowDeny = 3 // test: allowed only because of shadow mode
)

// NewPolicyCommand returns `sigil policy`: offline checks of mTLS
// authorization policy files (package mtls/policy).
func NewPolicyCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Test and lint mTLS authorization policy files",
		Long: `Test and lint the HCL policy files that services using Sigil's mtls
library enforce. Both work offline, for CI gates.

Exit codes: 0 allowed / no problems; 1 denied / lint errors; 2 malformed
policy or flags; 3 (test) denied by the rules but let through by shadow mode.`,
	}
	cmd.AddCommand(newPolicyTestCommand(), newPolicyLintCommand())
	return cmd
}

func malformed(err error) error {
	return &ExitError{Code: policyExitMalformed, Err: err}
}

func newPolicyTestCommand() *cobra.Command {
	var (
		file, from, to, service, at, output string
	)
	cmd := &cobra.Command{
		Use:   "test",
		Short: "Decide one call against a policy file: exit 0 if allowed, 1 if denied",
		Example: `  sigil policy test -policy policy.hcl -from spiffe://example.org/web -to "http:GET /v1/users/42" -service users
  sigil policy test -policy policy.hcl -from spiffe://example.org/batch -to grpc:/ledger.v1.Ledger/Post
  sigil policy test -policy policy.hcl -from spiffe://example.org/oncall -to service:db-admin -at 2026-03-07T23:00:00Z`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file == "" || from == "" || to == "" {
				return malformed(errors.New("-policy, -from and -to are required"))
			}
			peer, err := spiffeid.FromString(from)
			if err != nil {
				return malformed(fmt.Errorf("invalid -from %q: %v", from, err))
			}
			target, err := policy.ParseTarget(to, service)
			if err != nil {
				return malformed(fmt.Errorf("invalid -to: %v", err))
			}
			now := time.Now()
			if at != "" {
				if now, err = time.Parse(time.RFC3339, at); err != nil {
					return malformed(fmt.Errorf("invalid -at %q: want RFC 3339, e.g. 2026-01-02T15:04:05Z", at))
				}
			}
			p, err := policy.Load(file)
			if err != nil {
				return malformed(err)
			}
			d := p.Decide(peer, target, now)
			out := cmd.OutOrStdout()
			switch output {
			case "json":
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				if err := enc.Encode(map[string]any{
					"decision": d.Effect.String(),
					"allowed":  d.Allowed(),
					"rule":     d.Rule,
					"from":     peer.String(),
					"to":       target.String(),
					"reason":   d.Reason(),
					"policy":   file,
					"mode":     p.Mode().String(),
				}); err != nil {
					return err
				}
			case "text":
				switch d.Effect {
				case policy.Allow:
					fmt.Fprintf(out, "ALLOW: %s\n", d.Reason())
				case policy.ShadowDeny:
					fmt.Fprintf(out, "SHADOW-DENY (allowed now, denied once enforced): %s\n", d.Reason())
				default:
					fmt.Fprintf(out, "DENY: %s\n", d.Reason())
				}
			default:
				return malformed(fmt.Errorf("invalid -output %q: want text or json", output))
			}
			switch d.Effect {
			case policy.Allow:
				return nil
			case policy.ShadowDeny:
				return &ExitError{Code: policyExitShadowDeny}
			}
			return &ExitError{Code: policyExitDeny}
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&file, "policy", "", "policy file (HCL)")
	fs.StringVar(&from, "from", "", "SPIFFE ID of the caller")
	fs.StringVar(&to, "to", "", `target: service:NAME, "http:METHOD /path" or grpc:/pkg.Service/Method`)
	fs.StringVar(&service, "service", "", "service the call is made to (for http and grpc targets)")
	fs.StringVar(&at, "at", "", "decide at this time (RFC 3339) instead of now, for time windows")
	fs.StringVar(&output, "output", "text", "output format: text or json")
	return cmd
}

// lintJSON is the JSON of `sigil policy lint`.
type lintJSON struct {
	Files    []lintFileJSON `json:"files"`
	Errors   int            `json:"errors"`
	Warnings int            `json:"warnings"`
}

// lintFileJSON is one linted file.
type lintFileJSON struct {
	File     string            `json:"file"`
	Rules    int               `json:"rules"`
	Mode     string            `json:"mode"`
	Findings []lintFindingJSON `json:"findings"`
}

// lintFindingJSON is one finding; line is 0 for the policy as a whole.
type lintFindingJSON struct {
	Severity string `json:"severity"`
	Rule     string `json:"rule"`
	Line     int    `json:"line"`
	Message  string `json:"message"`
}

func newPolicyLintCommand() *cobra.Command {
	var strict bool
	var output string
	cmd := &cobra.Command{
		Use:   "lint FILE...",
		Short: "Check policy files: exit 1 on shadowed or duplicate rules, 2 if malformed",
		Long: `Check policy files. Errors (exit 1): a rule shadowed by another one, so
that it can never decide anything, including duplicates. Warnings (exit 0,
or 1 with -strict): entries covered by another entry of the same rule, rules
that allow a whole trust domain, expired rules, an empty policy, shadow
mode. A file that does not parse or compile exits 2.`,
		Example: `  sigil policy lint policy.hcl
  sigil policy lint -strict policies/*.hcl`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "text" && output != "json" {
				return malformed(fmt.Errorf("invalid -output %q: want text or json", output))
			}
			out := cmd.OutOrStdout()
			var errs, warns int
			report := lintJSON{Files: []lintFileJSON{}}
			for _, file := range args {
				p, err := policy.Load(file)
				if err != nil {
					return malformed(err)
				}
				findings := policy.Lint(p, time.Now())
				lf := lintFileJSON{File: file, Rules: p.Len(), Mode: p.Mode().String(), Findings: []lintFindingJSON{}}
				for _, f := range findings {
					if f.Severity == policy.Error {
						errs++
					} else {
						warns++
					}
					lf.Findings = append(lf.Findings, lintFindingJSON{Severity: f.Severity.String(), Rule: f.Rule, Line: f.Line, Message: f.Message})
					if output == "json" {
						continue
					}
					if f.Line > 0 {
						fmt.Fprintf(out, "%s:%d: %s: %s\n", file, f.Line, f.Severity, f.Message)
					} else {
						fmt.Fprintf(out, "%s: %s: %s\n", file, f.Severity, f.Message)
					}
				}
				report.Files = append(report.Files, lf)
				if len(findings) == 0 && output == "text" {
					fmt.Fprintf(out, "%s: %d %s, %s mode, no problems\n", file, p.Len(), plural(p.Len(), "rule", "rules"), p.Mode())
				}
			}
			if output == "json" {
				report.Errors, report.Warnings = errs, warns
				if err := printValue(out, report); err != nil {
					return err
				}
			}
			if errs > 0 || (strict && warns > 0) {
				return &ExitError{Code: policyExitDeny, Err: fmt.Errorf("%d %s, %d %s", errs, plural(errs, "error", "errors"), warns, plural(warns, "warning", "warnings"))}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&strict, "strict", false, "fail on warnings too")
	cmd.Flags().StringVar(&output, "output", "text", "output format: text or json")
	return cmd
}
