package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// NewJWTCommand returns `sigil jwt`.
func NewJWTCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "jwt",
		Short: "Validate JWT-SVIDs with the Workload API",
	}
	var (
		socket   string
		audience string
		token    string
		timeout  time.Duration
		output   string
	)
	validate := &cobra.Command{
		Use:     "validate",
		Short:   "Validate a JWT-SVID for an audience against the agent's JWT bundles",
		Example: `  sigil jwt validate -audience spiffe://example.org/db -token "$TOKEN"`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if audience == "" {
				return usageError(errors.New("-audience is required"))
			}
			if token == "-" {
				b, err := io.ReadAll(cmd.InOrStdin())
				if err != nil {
					return err
				}
				token = string(trimSpace(b))
			}
			if token == "" {
				return usageError(errors.New("-token is required (\"-\" reads it from stdin)"))
			}
			addr, err := checkWorkloadSocket(socket)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			client, err := workloadapi.New(ctx, workloadapi.WithAddr(addr))
			if err != nil {
				return fmt.Errorf("connect to %s: %v", addr, err)
			}
			defer client.Close()
			svid, err := client.ValidateJWTSVID(ctx, token, audience)
			if err != nil {
				if st, ok := status.FromError(err); ok && st.Code() == codes.InvalidArgument {
					err := fmt.Errorf("token is not valid for audience %q: %s", audience, st.Message())
					if output == "json" {
						if perr := printValue(cmd.OutOrStdout(), jwtValidateJSON{Valid: false, Error: OneLine(err.Error())}); perr != nil {
							return perr
						}
					}
					return &ExitError{Code: ExitFailure, Err: err}
				}
				return fmt.Errorf("validate JWT-SVID with %s: %v", addr, err)
			}
			if output == "json" {
				j := newJWTSVIDJSON(svid, false)
				return printValue(cmd.OutOrStdout(), jwtValidateJSON{Valid: true, SVID: &j})
			}
			printJWTSVID(cmd.OutOrStdout(), svid, time.Now())
			fmt.Fprintln(cmd.OutOrStdout(), "Valid            : yes")
			return nil
		},
	}
	addWorkloadSocketFlag(validate, &socket)
	validate.Flags().StringVar(&audience, "audience", "", "audience the token must be for")
	validate.Flags().StringVar(&token, "token", "", "the JWT-SVID (\"-\" reads it from stdin)")
	validate.Flags().DurationVar(&timeout, "timeout", 10*time.Second, "how long to wait for the Workload API")
	validate.Flags().StringVar(&output, "output", "text", "output format: text or json")
	cmd.AddCommand(validate)
	return cmd
}

// jwtValidateJSON is the JSON of `sigil jwt validate`.
type jwtValidateJSON struct {
	Valid bool         `json:"valid"`
	SVID  *jwtSVIDJSON `json:"svid"`
	Error string       `json:"error,omitempty"`
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r' || b[len(b)-1] == ' ') {
		b = b[:len(b)-1]
	}
	return b
}

func addWorkloadSocketFlag(cmd *cobra.Command, socket *string) {
	def := DefaultWorkloadSocket
	if env := os.Getenv("SPIFFE_ENDPOINT_SOCKET"); env != "" {
		def = env
	}
	cmd.Flags().StringVar(socket, "socket", def, "Workload API socket path or address (default from SPIFFE_ENDPOINT_SOCKET)")
}

// checkWorkloadSocket turns -socket into an address and checks that a unix
// socket exists.
func checkWorkloadSocket(socket string) (string, error) {
	if socket == "" {
		return "", errors.New("-socket is empty")
	}
	addr, path, err := workloadAddr(socket)
	if err != nil {
		return "", usagef("invalid -socket %q: %v", socket, err)
	}
	if path != "" {
		if _, err := os.Stat(path); err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return "", fmt.Errorf("Workload API socket %s does not exist (is `sigil agent` running? set -socket or SPIFFE_ENDPOINT_SOCKET)", path)
			}
			return "", fmt.Errorf("Workload API socket %s: %v", path, err)
		}
	}
	return addr, nil
}

// fetchJWT fetches JWT-SVIDs for audience (and spiffeID, if set) and
// prints them.
// With jsonOut it prints {"svids": [...]} (docs/cli.md).
func fetchJWT(ctx context.Context, w io.Writer, addr string, audience []string, spiffeID string, timeout time.Duration, jsonOut bool) error {
	client, err := workloadapi.New(ctx, workloadapi.WithAddr(addr))
	if err != nil {
		return fmt.Errorf("connect to %s: %v", addr, err)
	}
	defer client.Close()
	params := jwtsvid.Params{Audience: audience[0], ExtraAudiences: audience[1:]}
	if spiffeID != "" {
		id, err := spiffeid.FromString(spiffeID)
		if err != nil {
			return usagef("invalid -spiffe-id %q: %v", spiffeID, err)
		}
		params.Subject = id
	}
	svids, err := client.FetchJWTSVIDs(ctx, params)
	if err != nil {
		return fetchError(err, addr, timeout)
	}
	if jsonOut {
		out := struct {
			SVIDs []jwtSVIDJSON `json:"svids"`
		}{SVIDs: []jwtSVIDJSON{}}
		for _, s := range svids {
			out.SVIDs = append(out.SVIDs, newJWTSVIDJSON(s, true))
		}
		return printValue(w, out)
	}
	now := time.Now()
	for i, s := range svids {
		if i > 0 {
			fmt.Fprintln(w)
		}
		printJWTSVID(w, s, now)
		fmt.Fprintf(w, "Token            : %s\n", s.Marshal())
	}
	return nil
}

func printJWTSVID(w io.Writer, s *jwtsvid.SVID, now time.Time) {
	fmt.Fprintf(w, "SPIFFE ID        : %s\n", s.ID)
	if s.Hint != "" {
		fmt.Fprintf(w, "Hint             : %s\n", s.Hint)
	}
	aud := append([]string(nil), s.Audience...)
	sort.Strings(aud)
	fmt.Fprintf(w, "Audience         : %v\n", aud)
	left := s.Expiry.Sub(now).Round(time.Second)
	state := "expires in " + left.String()
	if left <= 0 {
		state = "EXPIRED"
	}
	fmt.Fprintf(w, "Expires at       : %s (%s)\n", s.Expiry.UTC().Format(time.RFC3339), state)
}
