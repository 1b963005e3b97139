package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"text/tabwriter"

	"github.com/spf13/cobra"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/internal/atomicfile"
	"github.com/sigil-id/sigil/server"
)

// snapshotChunkSize is the size of uploaded snapshot chunks.
const snapshotChunkSize = 1 << 20

func (c *AdminConn) cluster() sigilv1.ClusterAdminClient {
	return sigilv1.NewClusterAdminClient(c.conn)
}

// NewClusterCommand is `sigil cluster`: membership and backups of a server
// cluster, through a server's admin socket.
func NewClusterCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cluster",
		Short: "Manage the server cluster: members, join, remove, transfer-leader, snapshot, secret",
	}
	cmd.AddCommand(clusterMembersCmd(), clusterJoinCmd(), clusterRemoveCmd(), clusterTransferCmd(), clusterSnapshotCmd(), clusterSecretCmd())
	return cmd
}

// clusterSecretCmd is `sigil cluster secret`: join secrets.
func clusterSecretCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "secret",
		Short: "Generate the cluster join secret",
	}
	gen := &cobra.Command{
		Use:   "generate",
		Short: "Print a new cluster join secret (256 random bits)",
		Long: `Print a new cluster join secret: "` + server.JoinSecretPrefix + `" and 32 random bytes
from the operating system's random source, base64url-encoded. Servers
accept only secrets in this format. Give every server of the cluster the
same secret, best in a file of mode 0600 named by join_secret_file (or in
join_secret or SIGIL_JOIN_SECRET); keep it out of command lines and logs.
Nothing is sent anywhere and no server is needed.`,
		Example: `  (umask 077; sigil cluster secret generate > /etc/sigil/join-secret)`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := server.GenerateJoinSecret(nil)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), s)
			return err
		},
	}
	cmd.AddCommand(gen)
	return cmd
}

func clusterMembersCmd() *cobra.Command {
	var o *adminOpts
	var consistent bool
	cmd := &cobra.Command{
		Use:   "members",
		Short: "List the servers of the cluster, the leader and each one's health",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := o.dial()
			if err != nil {
				return err
			}
			defer c.Close()
			resp, err := call(cmd.Context(), c.cluster().Members, &sigilv1.MembersRequest{Consistent: consistent})
			if err != nil {
				return c.RPCError("list members", err)
			}
			if o.json() {
				return printJSON(cmd.OutOrStdout(), resp)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NODE\tADDRESS\tSUFFRAGE\tROLE\tHEALTH\tAPPLIED")
			for _, m := range resp.Members {
				role := "follower"
				if m.Leader {
					role = "leader"
				}
				health := "unreachable"
				if m.Healthy {
					health = "healthy"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\n", m.NodeName, m.Address, m.Suffrage, role, health, m.AppliedIndex)
			}
			return tw.Flush()
		},
	}
	o = addAdminFlags(cmd)
	cmd.Flags().BoolVar(&consistent, "consistent", false, "confirm with the leader before answering (linearizable)")
	return cmd
}

func clusterJoinCmd() *cobra.Command {
	var o *adminOpts
	cmd := &cobra.Command{
		Use:   "join ADDRESS...",
		Short: "Make this server (started with -no-bootstrap and no state) join the cluster at ADDRESS",
		Long: `Make the local server join an existing cluster through the cluster port of
one of its servers. The local server must have been started with a
cluster_address, the cluster's join_secret and -no-bootstrap, and must have
no Raft state yet. Servers can also join at start with -join or retry_join.`,
		Example: `  sigil cluster join 10.0.0.1:8082`,
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.dial()
			if err != nil {
				return err
			}
			defer c.Close()
			resp, err := call(cmd.Context(), c.cluster().Join, &sigilv1.ClusterJoinRequest{Addresses: args})
			if err != nil {
				return c.RPCError("join", err)
			}
			if o.json() {
				return printJSON(cmd.OutOrStdout(), resp)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "joined; leader is %s\n", resp.LeaderId)
			return nil
		},
	}
	o = addAdminFlags(cmd)
	return cmd
}

func clusterRemoveCmd() *cobra.Command {
	var o *adminOpts
	cmd := &cobra.Command{
		Use:   "remove NODE",
		Short: "Remove a server from the cluster; it can no longer vote or append, and its keys are retired",
		Long: `Remove a server from the cluster. First its X.509 CA and JWT keys are
tainted cluster-wide: every agent replaces at once what they signed, from
the other servers' keys, and no key of the removed server is accepted into
the bundle any more. Then it leaves the Raft configuration, so it can no
longer vote, append or write. Its keys leave every bundle, for good, after
the servers' removed_server_grace (default twice jwt_svid_ttl, at least 5
minutes), once what they signed has been replaced and JWT-SVIDs they
signed have expired; 'sigil authority revoke -authority ID' removes one
earlier. Stop the removed server's process too.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.dial()
			if err != nil {
				return err
			}
			defer c.Close()
			if _, err := call(cmd.Context(), c.cluster().RemoveMember, &sigilv1.RemoveMemberRequest{NodeName: args[0]}); err != nil {
				return c.RPCError("remove "+args[0], err)
			}
			if o.json() {
				return printValue(cmd.OutOrStdout(), struct {
					Removed string `json:"removed"`
				}{args[0]})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed %s; its keys are tainted (agents are replacing what they signed) and leave the bundle after removed_server_grace\n", args[0])
			return nil
		},
	}
	o = addAdminFlags(cmd)
	return cmd
}

func clusterTransferCmd() *cobra.Command {
	var o *adminOpts
	cmd := &cobra.Command{
		Use:   "transfer-leader [NODE]",
		Short: "Hand leadership to NODE, or to the most up-to-date server",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.dial()
			if err != nil {
				return err
			}
			defer c.Close()
			req := &sigilv1.TransferLeadershipRequest{}
			if len(args) == 1 {
				req.NodeName = args[0]
			}
			resp, err := call(cmd.Context(), c.cluster().TransferLeadership, req)
			if err != nil {
				return c.RPCError("transfer leadership", err)
			}
			if o.json() {
				return printJSON(cmd.OutOrStdout(), resp)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "leader is %s\n", resp.LeaderId)
			return nil
		},
	}
	o = addAdminFlags(cmd)
	return cmd
}

func clusterSnapshotCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "snapshot",
		Short: "Save the whole state to a file, or restore it",
	}
	var so, ro *adminOpts
	save := &cobra.Command{
		Use:   "save FILE",
		Short: "Save a snapshot of every entry, agent, token and bundle to FILE (no private key is in it)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := so.dial()
			if err != nil {
				return err
			}
			defer c.Close()
			ctx, cancel := withTimeout(cmd)
			defer cancel()
			stream, err := c.cluster().SnapshotSave(ctx, &sigilv1.SnapshotSaveRequest{})
			if err != nil {
				return c.RPCError("snapshot save", err)
			}
			path := args[0]
			n := 0
			err = atomicfile.WriteFunc(path, 0o600, func(w io.Writer) error {
				for {
					chunk, err := stream.Recv()
					if errors.Is(err, io.EOF) {
						return nil
					}
					if err != nil {
						return c.RPCError("snapshot save", err)
					}
					if _, err := w.Write(chunk.Data); err != nil {
						return err
					}
					n += len(chunk.Data)
				}
			})
			if err != nil {
				return err
			}
			if so.json() {
				return printValue(cmd.OutOrStdout(), struct {
					Path  string `json:"path"`
					Bytes int    `json:"bytes"`
				}{path, n})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "saved %d bytes to %s\n", n, path)
			return nil
		},
	}
	so = addAdminFlags(save)
	restore := &cobra.Command{
		Use:   "restore FILE",
		Short: "Replace the cluster's whole state with a snapshot (run on the leader; for disaster recovery)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			c, err := ro.dial()
			if err != nil {
				return err
			}
			defer c.Close()
			ctx, cancel := withTimeout(cmd)
			defer cancel()
			stream, err := c.cluster().SnapshotRestore(ctx)
			if err != nil {
				return c.RPCError("snapshot restore", err)
			}
			buf := make([]byte, snapshotChunkSize)
			for {
				n, err := f.Read(buf)
				if n > 0 {
					if err := stream.Send(&sigilv1.SnapshotChunk{Data: append([]byte(nil), buf[:n]...)}); err != nil {
						break // the server's error comes from CloseAndRecv
					}
				}
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					return err
				}
			}
			resp, err := stream.CloseAndRecv()
			if err != nil {
				return c.RPCError("snapshot restore", err)
			}
			if ro.json() {
				return printJSON(cmd.OutOrStdout(), resp)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "restored %d entries and %d agents\n", resp.Entries, resp.Agents)
			return nil
		},
	}
	ro = addAdminFlags(restore)
	cmd.AddCommand(save, restore)
	return cmd
}

// withTimeout bounds a streaming admin call.
func withTimeout(cmd *cobra.Command) (context.Context, context.CancelFunc) {
	return context.WithTimeout(cmd.Context(), 10*rpcTimeout)
}
