package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/internal/unixsock"
	"github.com/sigil-id/sigil/registration"
)

// DefaultAgentAdminSocket is where `sigil workload` looks for the agent's
// admin API unless told otherwise: the current user's own agent's socket
// under $XDG_RUNTIME_DIR/sigil if there is one, else
// /run/sigil/agent/private/admin.sock.
var DefaultAgentAdminSocket = unixsock.ClientSocket(unixsock.AgentAdminSocketName)

// NewWorkloadCommand returns `sigil workload`, the commands that ask the
// local agent about workloads.
func NewWorkloadCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "workload",
		Short: "Ask the local agent about workloads",
	}
	var (
		pid     int
		entryID string
		socket  string
		output  string
	)
	explain := &cobra.Command{
		Use:   "explain",
		Short: "Explain which identities a process gets from the agent, and why not",
		Long: `Explain runs the agent's workload attestors on a process, as the Workload API
does when the process connects, and prints the selectors each attestor
produced, the entries whose selectors all match (what the Workload API would
serve) and the near misses: entries parented to the agent or that share a
selector type with the process, with the selectors each lacks. With -entry ID it also says why
the process does or does not get that one entry's identity.

It talks to the agent's admin socket (admin_socket in the agent's
configuration), which only root and the agent's user may use.`,
		Example: `  sigil workload explain -pid 4242
  sigil workload explain -pid 4242 -entry 36846acb4c473aea872e3fc826af0066
  sigil workload explain -pid 4242 -admin-socket /run/sigil/agent/private/admin.sock -output json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if pid <= 0 {
				return usageError(errors.New("-pid is required and must be positive"))
			}
			if output != "text" && output != "json" {
				return usagef("invalid -output %q: want text or json", output)
			}
			client, abs, closeConn, err := dialAgentAdmin(socket)
			if err != nil {
				return err
			}
			defer closeConn()
			ctx, cancel := context.WithTimeout(cmd.Context(), rpcTimeout+5*time.Second)
			defer cancel()
			resp, err := client.Explain(ctx, &sigilv1.ExplainRequest{Pid: int32(pid), EntryId: entryID})
			if err != nil {
				return agentRPCError(abs, err)
			}
			if output == "json" {
				return printJSON(cmd.OutOrStdout(), resp)
			}
			printExplain(cmd.OutOrStdout(), resp)
			if entryID != "" {
				printEntryWhy(cmd.OutOrStdout(), resp, entryID)
			}
			return nil
		},
	}
	explain.Flags().IntVar(&pid, "pid", 0, "process to explain")
	explain.Flags().StringVar(&entryID, "entry", "", "also explain this entry (its ID): why the process does or does not get its identity")
	explain.Flags().StringVar(&socket, "admin-socket", DefaultAgentAdminSocket, "path of the agent's admin API unix socket")
	explain.Flags().StringVar(&output, "output", "text", "output format: text or json")
	cmd.AddCommand(explain)
	return cmd
}

// dialAgentAdmin connects to the agent's admin socket at path.
func dialAgentAdmin(path string) (sigilv1.AgentAdminClient, string, func(), error) {
	if path == "" {
		return nil, "", nil, errors.New("-admin-socket is empty")
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, "", nil, fmt.Errorf("agent admin socket %s: %w", path, err)
	}
	if _, err := os.Stat(abs); err != nil {
		switch {
		case errors.Is(err, os.ErrNotExist):
			return nil, "", nil, fmt.Errorf("agent admin socket %s does not exist (is `sigil agent` running? set -admin-socket to its admin_socket)", abs)
		case errors.Is(err, os.ErrPermission):
			return nil, "", nil, fmt.Errorf("agent admin socket %s: permission denied (run as root or as the user that runs the agent)", abs)
		}
		return nil, "", nil, fmt.Errorf("agent admin socket %s: %w", abs, err)
	}
	conn, err := grpc.NewClient("unix://"+abs, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, "", nil, fmt.Errorf("agent admin socket %s: %w", abs, err)
	}
	return sigilv1.NewAgentAdminClient(conn), abs, func() { conn.Close() }, nil
}

// agentRPCError describes a failed agent admin call in one line.
func agentRPCError(socket string, err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("explain: %v", err)
	}
	switch st.Code() {
	case codes.Unavailable:
		if strings.Contains(st.Message(), "permission denied") {
			return fmt.Errorf("explain: agent admin socket %s: permission denied (run as root or as the user that runs the agent)", socket)
		}
		return fmt.Errorf("explain: cannot reach the agent on %s: %s", socket, st.Message())
	case codes.DeadlineExceeded:
		return fmt.Errorf("explain: the agent did not answer in time")
	}
	return fmt.Errorf("explain: %s", statusText(st.Code(), st.Message()))
}

// printExplain prints an Explain answer for a person: the verdict first,
// then the evidence.
func printExplain(w io.Writer, r *sigilv1.ExplainResponse) {
	fmt.Fprintf(w, "Process %d (uid %d, gid %d)\n", r.GetPid(), r.GetUid(), r.GetGid())
	fmt.Fprintf(w, "Verdict: %s\n", verdict(r))
	fmt.Fprintln(w, "\nSelectors by attestor:")
	for _, a := range r.GetAttestors() {
		if a.GetError() != "" {
			fmt.Fprintf(w, "  %-10s FAILED: %s\n", a.GetName(), OneLine(a.GetError()))
			continue
		}
		if len(a.GetSelectors()) == 0 {
			fmt.Fprintf(w, "  %-10s (none)\n", a.GetName())
			continue
		}
		for i, s := range a.GetSelectors() {
			name := ""
			if i == 0 {
				name = a.GetName()
			}
			fmt.Fprintf(w, "  %-10s %s\n", name, registration.FormatSelector(s))
		}
	}
	fmt.Fprintf(w, "\nMatching entries (%d):\n", len(r.GetMatched()))
	if len(r.GetMatched()) == 0 {
		fmt.Fprintln(w, "  none")
	}
	for _, e := range r.GetMatched() {
		svid := "no SVID yet (the Workload API waits for it to be minted)"
		if e.GetSvidCached() {
			svid = "SVID cached, expires " + time.Unix(e.GetSvidNotAfter(), 0).UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(w, "  %s  entry %s  [%s]\n    %s (%s)\n", e.GetSpiffeId(), e.GetEntryId(), selectorList(e.GetSelectors()), svid, e.GetSvidState())
	}
	fmt.Fprintf(w, "\nNear misses (%d):\n", len(r.GetNearMisses())+int(r.GetNearMissesOmitted()))
	if len(r.GetNearMisses()) == 0 {
		fmt.Fprintln(w, "  none")
	}
	for _, e := range r.GetNearMisses() {
		fmt.Fprintf(w, "  %s  entry %s\n    lacks: %s\n", e.GetSpiffeId(), e.GetEntryId(), selectorList(e.GetMissing()))
	}
	if n := r.GetNearMissesOmitted(); n > 0 {
		fmt.Fprintf(w, "  ... and %d more, left out\n", n)
	}
}

// printEntryWhy prints the answer about the one entry -entry named.
func printEntryWhy(w io.Writer, r *sigilv1.ExplainResponse, id string) {
	fmt.Fprintf(w, "\nEntry %s:\n", id)
	e := r.GetEntry()
	switch {
	case e == nil:
		fmt.Fprintln(w, "  not held by this agent: its parent_id names another agent (or a node selector this agent lacks), or the agent has not synced it yet")
	case r.GetEntryMatched() && r.GetAttested():
		fmt.Fprintf(w, "  %s matches: the Workload API serves it (%s)\n", e.GetSpiffeId(), e.GetSvidState())
	case r.GetEntryMatched():
		fmt.Fprintf(w, "  %s matches, but an attestor failed, so the Workload API serves nothing\n", e.GetSpiffeId())
	default:
		fmt.Fprintf(w, "  %s does not match: the process lacks %s\n", e.GetSpiffeId(), selectorList(e.GetMissing()))
	}
}

// verdict is the one-line answer to "what does this process get?".
func verdict(r *sigilv1.ExplainResponse) string {
	if !r.GetAttested() {
		var failed []string
		for _, a := range r.GetAttestors() {
			if a.GetError() != "" {
				failed = append(failed, a.GetName())
			}
		}
		return fmt.Sprintf("no identity: workload attestation fails (%s), so the Workload API serves nothing", strings.Join(failed, ", "))
	}
	if len(r.GetMatched()) == 0 {
		if !r.GetSynced() {
			return "no identity: the agent has not synced its entries with a server yet"
		}
		return fmt.Sprintf("no identity: none of the %d entries this agent holds has all its selectors among the process's (see the near misses)", r.GetEntriesHeld())
	}
	ids := make([]string, 0, len(r.GetMatched()))
	for _, e := range r.GetMatched() {
		ids = append(ids, e.GetSpiffeId())
	}
	noun := "identity"
	if len(ids) > 1 {
		noun = "identities"
	}
	return fmt.Sprintf("the Workload API serves %d %s: %s", len(ids), noun, strings.Join(ids, ", "))
}

func selectorList(sels []*sigilv1.Selector) string {
	out := make([]string, len(sels))
	for i, s := range sels {
		out[i] = registration.FormatSelector(s)
	}
	return strings.Join(out, " ")
}
