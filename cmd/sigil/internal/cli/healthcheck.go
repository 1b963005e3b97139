package cli

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// NewHealthcheckCommand returns `sigil healthcheck`, for container
// HEALTHCHECK lines and scripts: exit 0 if the endpoint answers 200.
func NewHealthcheckCommand() *cobra.Command {
	var (
		url     string
		timeout time.Duration
		output  string
	)
	cmd := &cobra.Command{
		Use:   "healthcheck",
		Short: "Exit 0 if a server's or agent's /ready endpoint reports ready",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			client := &http.Client{Timeout: timeout}
			req, err := http.NewRequestWithContext(cmd.Context(), http.MethodGet, url, nil)
			if err != nil {
				return usagef("invalid -url %q: %v", url, err)
			}
			j := healthJSON{URL: url}
			// notReady reports err, also as JSON with -output json.
			notReady := func(err error) error {
				if output == "json" {
					j.Message = OneLine(err.Error())
					if perr := printValue(cmd.OutOrStdout(), j); perr != nil {
						return perr
					}
				}
				return err
			}
			resp, err := client.Do(req)
			if err != nil {
				return notReady(fmt.Errorf("not ready: %v", err))
			}
			defer resp.Body.Close()
			j.StatusCode = resp.StatusCode
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			msg := OneLine(string(body))
			if resp.StatusCode != http.StatusOK {
				if msg == "" {
					msg = http.StatusText(resp.StatusCode)
				}
				return notReady(fmt.Errorf("not ready: %s answered HTTP %d: %s", url, resp.StatusCode, strings.TrimPrefix(msg, "not ready: ")))
			}
			if msg == "" {
				msg = "ready"
			}
			if output == "json" {
				j.Ready, j.Message = true, msg
				return printValue(cmd.OutOrStdout(), j)
			}
			fmt.Fprintln(cmd.OutOrStdout(), msg)
			return nil
		},
	}
	cmd.Flags().StringVar(&url, "url", "http://127.0.0.1:8080/ready", "health URL to probe")
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Second, "how long to wait for an answer")
	cmd.Flags().StringVar(&output, "output", "text", "output format: text or json")
	return cmd
}

// healthJSON is the JSON of `sigil healthcheck`.
type healthJSON struct {
	URL        string `json:"url"`
	Ready      bool   `json:"ready"`
	StatusCode int    `json:"status_code"` // 0 if nothing answered
	Message    string `json:"message"`
}
