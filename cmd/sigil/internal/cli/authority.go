package cli

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// NewAuthorityCommand returns `sigil authority`: the signing keys of the
// server whose admin socket is given.
func NewAuthorityCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "authority",
		Short: "Show and rotate the signing keys (X.509 CA and JWT) of the servers",
		Long: `Each server has its own X.509 CA key and JWT signing key, each in slots:
prepared (in the bundle, signing nothing), active (signing) and retired (in
the bundle until everything it signed has expired). Rotation is automatic;
these commands let an operator rotate early, for example after a suspected
key compromise. prepare, activate and -id act on the keys of the server
whose admin socket is given:

  sigil authority prepare            # new key, published in the bundle
  sigil authority activate           # it signs from now on (after propagation)
  sigil authority taint -id OLD_ID   # agents replace everything OLD_ID signed
  sigil authority revoke -id OLD_ID  # OLD_ID leaves the bundle

taint and revoke with -authority act on any server's key, cluster-wide,
from any server's admin socket (the change goes through the leader); the
ID is one of the trust bundle's authorities as 'sigil authority show'
lists them:

  sigil authority taint -authority ID   # agents replace what ID signed, at once
  sigil authority revoke -authority ID  # ID leaves every bundle, for good

Revoke refuses a key that is not tainted (taint it first, so that nothing
it signed is still in use). Neither takes away the last usable key of a
server that is still a member: rotate it on that server first (prepare,
activate), or, if the server is lost or compromised, remove it with
'sigil cluster remove NODE', which taints all its keys at once and revokes
them after removed_server_grace.`,
	}
	cmd.AddCommand(authorityShow(), authorityOp("prepare", "Make and publish a new key now, ahead of the schedule", false),
		authorityOp("activate", "Make the prepared key active now", false),
		authorityOp("taint", "Mark a key tainted: agents replace what it signed at once (-authority: any server's key, cluster-wide)", true),
		authorityOp("revoke", "Remove a tainted, non-active key from the bundle for good (-authority: any server's key, cluster-wide)", true))
	return cmd
}

func authorityShow() *cobra.Command {
	var o *adminOpts
	cmd := &cobra.Command{
		Use:   "show",
		Short: "List this server's key slots and the bundle's authorities",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := o.dial()
			if err != nil {
				return err
			}
			defer c.Close()
			client := sigilv1.NewAuthorityAdminClient(c.conn)
			resp, err := call(cmd.Context(), client.ShowAuthorities, &sigilv1.ShowAuthoritiesRequest{})
			if err != nil {
				return c.RPCError("authority show", err)
			}
			if o.json() {
				return printJSON(cmd.OutOrStdout(), resp)
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "Server %s (propagation delay %s)\n\n", resp.ServerId, time.Duration(resp.PropagationDelay)*time.Second)
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "KIND\tSLOT\tSTATE\tID\tNOT AFTER\tNEXT")
			for _, s := range resp.Slots {
				fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\n", s.Kind, s.Seq, slotState(s), s.Id, formatTime(s.NotAfter), nextEvent(s))
			}
			tw.Flush()
			fmt.Fprintln(out, "\nTrust bundle:")
			tw = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "KIND\tID\tSERVER\tNOT AFTER\tTAINTED")
			for _, b := range resp.Bundle {
				server := b.ServerId
				switch {
				case b.Upstream:
					server = "(upstream root)"
				case b.Intermediate:
					server += " (signed upstream)"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%v\n", b.Kind, b.Id, server, formatTime(b.NotAfter), b.Tainted)
			}
			return tw.Flush()
		},
	}
	o = addAdminFlags(cmd)
	return cmd
}

func slotState(s *sigilv1.AuthoritySlot) string {
	if s.Tainted {
		return s.State + ",tainted"
	}
	return s.State
}

func nextEvent(s *sigilv1.AuthoritySlot) string {
	if s.NextEvent == "" {
		return "-"
	}
	if s.NextEventAt == 0 {
		return s.NextEvent
	}
	return s.NextEvent + " at " + formatTime(s.NextEventAt)
}

func authorityOp(name, short string, needID bool) *cobra.Command {
	var (
		o         *adminOpts
		kind      string
		id        string
		authority string
	)
	cmd := &cobra.Command{
		Use:   name,
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if kind != "x509" && kind != "jwt" {
				return usagef("invalid -kind %q: want x509 or jwt", kind)
			}
			if authority != "" && id != "" {
				return fmt.Errorf("give -id (a key of this server) or -authority (any server's key, cluster-wide), not both")
			}
			if needID && id == "" && authority == "" {
				return usagef("-id or -authority is required: -id is the ID or slot number of a key of this server, -authority the ID of any authority of the trust bundle, both as `sigil authority show` lists them")
			}
			c, err := o.dial()
			if err != nil {
				return err
			}
			defer c.Close()
			client := sigilv1.NewAuthorityAdminClient(c.conn)
			req := &sigilv1.AuthorityRequest{Kind: kind, Id: id, Authority: authority}
			fn := map[string]func() (*sigilv1.AuthorityResponse, error){
				"prepare":  func() (*sigilv1.AuthorityResponse, error) { return call(cmd.Context(), client.PrepareAuthority, req) },
				"activate": func() (*sigilv1.AuthorityResponse, error) { return call(cmd.Context(), client.ActivateAuthority, req) },
				"taint":    func() (*sigilv1.AuthorityResponse, error) { return call(cmd.Context(), client.TaintAuthority, req) },
				"revoke":   func() (*sigilv1.AuthorityResponse, error) { return call(cmd.Context(), client.RevokeAuthority, req) },
			}[name]
			resp, err := fn()
			if err != nil {
				return c.RPCError("authority "+name, err)
			}
			if o.json() {
				return printJSON(cmd.OutOrStdout(), resp)
			}
			if authority != "" {
				printClusterResult(cmd.OutOrStdout(), name, authority, resp)
				return nil
			}
			printSlotResult(cmd.OutOrStdout(), name, resp)
			return nil
		},
	}
	o = addAdminFlags(cmd)
	cmd.Flags().StringVar(&kind, "kind", "x509", "key kind: x509 (CA) or jwt")
	if name != "prepare" {
		help := "a key of this server: its authority ID or slot number"
		if name == "activate" {
			help += " (default: the prepared key)"
		}
		cmd.Flags().StringVar(&id, "id", "", help)
	}
	if needID {
		cmd.Flags().StringVar(&authority, "authority", "", "`ID` of an authority of any server, as 'sigil authority show' lists it in the trust bundle: "+name+" it cluster-wide (see 'sigil authority --help')")
	}
	return cmd
}

func printClusterResult(w io.Writer, op, id string, resp *sigilv1.AuthorityResponse) {
	verb := map[string]string{"taint": "Tainted", "revoke": "Revoked"}[op]
	for _, a := range resp.Authorities {
		fmt.Fprintf(w, "%s %s authority %s of server %s cluster-wide (valid until %s)\n", verb, a.Kind, id, a.ServerId, formatTime(a.NotAfter))
	}
	switch op {
	case "taint":
		fmt.Fprintf(w, "Agents now replace what it signed. Once they have, remove it from every bundle: sigil authority revoke -authority %s\n", id)
	case "revoke":
		fmt.Fprintln(w, "It has left the bundle and cannot be published again.")
	}
}

func printSlotResult(w io.Writer, op string, resp *sigilv1.AuthorityResponse) {
	s := resp.Slot
	verb := map[string]string{"prepare": "Prepared", "activate": "Activated", "taint": "Tainted", "revoke": "Revoked"}[op]
	fmt.Fprintf(w, "%s %s key %s (slot %d, %s, valid until %s)\n", verb, s.Kind, s.Id, s.Seq, slotState(s), formatTime(s.NotAfter))
	if op != "revoke" && s.NextEvent != "" {
		fmt.Fprintf(w, "Next: %s\n", nextEvent(s))
	}
	if resp.Warning != "" {
		fmt.Fprintf(w, "Warning: %s\n", resp.Warning)
	}
}
