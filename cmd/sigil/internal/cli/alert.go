package cli

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// NewAlertCommand returns `sigil alert`: the alerts of the server whose
// admin socket is given, and a check of its notifiers.
func NewAlertCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "alert",
		Short: "Check the notifiers and list the alerts of a server",
		Long: `A server sends its alerts to the notifiers of its configuration (notifier
plugins: Alertmanager, webhook, Slack, PagerDuty), each taking the alerts of
at least its min_severity.

  sigil alert test                     # a test alert through every notifier
  sigil alert test -severity critical
  sigil alert list                     # the firing alerts (-output json: with details)`,
	}
	cmd.AddCommand(alertTest(), alertList())
	return cmd
}

func alertTest() *cobra.Command {
	var (
		o        *adminOpts
		severity string
		summary  string
		timeout  time.Duration
	)
	cmd := &cobra.Command{
		Use:   "test",
		Short: "Send a test alert through every notifier of the server and report each result",
		Long: `test sends one test alert (name SigilTestAlert, key sigil_test/<server>)
through every notifier configured on the server, whatever their
min_severity, and prints one line per notifier. It exits 1 if any notifier
failed or if the server has none.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch severity {
			case "info", "warning", "critical":
			default:
				return usagef("invalid -severity %q: want info, warning or critical", severity)
			}
			if timeout <= 0 || timeout > 5*time.Minute {
				return usagef("invalid -timeout %s: want more than 0 and at most 5m", timeout)
			}
			c, err := o.dial()
			if err != nil {
				return err
			}
			defer c.Close()
			client := sigilv1.NewAlertAdminClient(c.conn)
			secs := uint32((timeout + time.Second - 1) / time.Second)
			// The server bounds the sends by timeout; wait a little more.
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout+10*time.Second)
			defer cancel()
			resp, err := client.Test(ctx, &sigilv1.AlertTestRequest{Severity: severity, Summary: summary, TimeoutSeconds: secs})
			if err != nil {
				return c.RPCError("alert test", err)
			}
			failed := 0
			for _, r := range resp.Results {
				if !r.Ok {
					failed++
				}
			}
			if o.json() {
				if err := printJSON(cmd.OutOrStdout(), resp); err != nil {
					return err
				}
			} else {
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				for _, r := range resp.Results {
					if r.Ok {
						fmt.Fprintf(tw, "%s\tok\n", r.Name)
					} else {
						fmt.Fprintf(tw, "%s\terror: %s\n", r.Name, OneLine(r.Error))
					}
				}
				if err := tw.Flush(); err != nil {
					return err
				}
			}
			switch {
			case len(resp.Results) == 0:
				return &ExitError{Code: 1, Err: errors.New("alert test: no notifier configured (add a notifier block to the server's plugins)")}
			case failed > 0:
				return &ExitError{Code: 1, Err: fmt.Errorf("alert test: %d of %d notifiers failed", failed, len(resp.Results))}
			}
			return nil
		},
	}
	o = addAdminFlags(cmd)
	cmd.Flags().StringVar(&severity, "severity", "warning", "severity of the test alert: info, warning or critical")
	cmd.Flags().StringVar(&summary, "summary", "", "summary of the test alert (default: names the server)")
	cmd.Flags().DurationVar(&timeout, "timeout", 10*time.Second, "how long the server waits for the notifiers")
	return cmd
}

func alertList() *cobra.Command {
	var o *adminOpts
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the alerts the server has firing",
		Long: `list prints the firing alerts: those the cluster's leader raised and
recorded (the same on every server) and this server's own (ClusterNoLeader),
one line each with its severity, name, subject (an agent's SPIFFE ID, a
member, a trust domain, "<kind>/<server>" of a CA or JWT key), since when it
fires and the server that raised it. -output json gives every field, the
details included.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := o.dial()
			if err != nil {
				return err
			}
			defer c.Close()
			client := sigilv1.NewAlertAdminClient(c.conn)
			resp, err := call(cmd.Context(), client.List, &sigilv1.AlertListRequest{})
			if err != nil {
				return c.RPCError("alert list", err)
			}
			if o.json() {
				return printJSON(cmd.OutOrStdout(), resp)
			}
			out := cmd.OutOrStdout()
			if len(resp.Alerts) == 0 {
				fmt.Fprintln(out, "No alert firing")
				return nil
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SEVERITY\tNAME\tSUBJECT\tSINCE\tSOURCE")
			for _, a := range resp.Alerts {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", a.Severity, a.Name, OneLine(alertSubject(a.Key)), formatTime(a.StartsAt), a.Source)
			}
			return tw.Flush()
		},
	}
	o = addAdminFlags(cmd)
	return cmd
}

// alertSubject is the subject of an alert: its dedupe key after the
// condition's prefix ("svid_not_renewed/<agent>" → "<agent>"), or "-" for
// a cluster-wide condition.
func alertSubject(key string) string {
	if _, subject, ok := strings.Cut(key, "/"); ok && subject != "" {
		return subject
	}
	return "-"
}
