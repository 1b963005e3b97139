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
		Short: "Show and rotate the signing keys (X.509 CA and JWT) of one server",
		Long: `Each server has its own X.509 CA key and JWT signing key, each in slots:
prepared (in the bundle, signing nothing), active (signing) and retired (in
the bundle until everything it signed has expired). Rotation is automatic;
these commands let an operator rotate early, for example after a suspected
key compromise:

  sigil authority prepare            # new key, published in the bundle
  sigil authority activate           # it signs from now on (after propagation)
  sigil authority taint -id OLD_ID   # agents replace everything OLD_ID signed
  sigil authority revoke -id OLD_ID  # OLD_ID leaves the bundle`,
	}
	cmd.AddCommand(authorityShow(), authorityOp("prepare", "Make and publish a new key now, ahead of the schedule", false),
		authorityOp("activate", "Make the prepared key active now", false),
		authorityOp("taint", "Mark a prepared or retired key tainted: agents replace what it signed at once", true),
		authorityOp("revoke", "Remove a tainted, non-active key from the bundle and destroy it", true))
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
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%v\n", b.Kind, b.Id, b.ServerId, formatTime(b.NotAfter), b.Tainted)
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
		o    *adminOpts
		kind string
		id   string
	)
	cmd := &cobra.Command{
		Use:   name,
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if kind != "x509" && kind != "jwt" {
				return fmt.Errorf("invalid -kind %q: want x509 or jwt", kind)
			}
			if needID && id == "" {
				return fmt.Errorf("-id is required: the authority ID or slot number from `sigil authority show`")
			}
			c, err := o.dial()
			if err != nil {
				return err
			}
			defer c.Close()
			client := sigilv1.NewAuthorityAdminClient(c.conn)
			req := &sigilv1.AuthorityRequest{Kind: kind, Id: id}
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
			printSlotResult(cmd.OutOrStdout(), name, resp)
			return nil
		},
	}
	o = addAdminFlags(cmd)
	cmd.Flags().StringVar(&kind, "kind", "x509", "key kind: x509 (CA) or jwt")
	if name != "prepare" {
		help := "authority ID or slot number"
		if name == "activate" {
			help += " (default: the prepared key)"
		}
		cmd.Flags().StringVar(&id, "id", "", help)
	}
	return cmd
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
