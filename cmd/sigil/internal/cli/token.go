package cli

import (
	"bytes"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/attestor/node/jointoken"
	"github.com/sigil-id/sigil/federation"
	"github.com/sigil-id/sigil/registration"
)

// NewTokenCommand returns `sigil token`.
func NewTokenCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Manage join tokens for agent attestation",
	}
	var ttl time.Duration
	var alias string
	var o *adminOpts
	gen := &cobra.Command{
		Use:   "generate",
		Short: "Create a single-use join token for a new agent",
		Long: `Create a single-use join token for a new agent. The agent that attests
with it gets the SPIFFE ID spiffe://<td>/sigil/agent/join_token/<id>, which
changes with every token.

-spiffe-id ID also registers ID as a node alias of that agent, as SPIRE's
token generate -spiffeID does: an entry with parent_id the trust domain's
server ID (spiffe://<td>/sigil/server) and the agent's one node selector
join_token:<id>, so that workload entries can be parented to ID, a name
that stays when the node is re-attested with a new token. The token is
printed only once the alias is registered; if that fails, the token is
not printed and expires unused.`,
		Example: `  sigil token generate
  sigil token generate -ttl 1h -spiffe-id spiffe://example.org/nodes/db-1`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			secs, err := ttlSeconds("ttl", ttl)
			if err != nil {
				return usageError(err)
			}
			var aliasID spiffeid.ID
			if cmd.Flags().Changed("spiffe-id") {
				if aliasID, err = spiffeid.FromString(alias); err != nil {
					return usagef("invalid -spiffe-id %q: %v", alias, err)
				}
				if registration.IsReserved(aliasID) {
					return usagef("invalid -spiffe-id %q: the path %s is reserved for Sigil's own servers and agents", alias, registration.ReservedPath)
				}
			}
			c, err := o.dial()
			if err != nil {
				return err
			}
			defer c.Close()
			resp, err := call(cmd.Context(), c.CreateJoinToken, &sigilv1.CreateJoinTokenRequest{Ttl: secs})
			if err != nil {
				return c.RPCError("generate token", err)
			}
			var aliasEntry *sigilv1.Entry
			if !aliasID.IsZero() {
				if aliasEntry, err = registerTokenAlias(cmd, c, resp, aliasID); err != nil {
					return fmt.Errorf("generate token: %w; the token was not printed and expires unused at %s", err, formatTime(resp.GetExpiresAt()))
				}
			}
			out := cmd.OutOrStdout()
			if o.json() {
				if aliasEntry == nil {
					return printJSON(out, resp)
				}
				return printJSONWith(out, resp, protoField{name: "node_alias", value: aliasEntry})
			}
			fmt.Fprintf(out, "Token           : %s\n", resp.GetToken())
			fmt.Fprintf(out, "Agent SPIFFE ID : %s\n", resp.GetAgentId())
			if aliasEntry != nil {
				fmt.Fprintf(out, "Node alias      : %s (entry %s)\n", aliasEntry.GetSpiffeId(), aliasEntry.GetId())
			}
			fmt.Fprintf(out, "Expires at      : %s\n", formatTime(resp.GetExpiresAt()))
			return nil
		},
	}
	gen.Flags().DurationVar(&ttl, "ttl", 10*time.Minute, "how long the token may be used (1s to 24h)")
	gen.Flags().StringVar(&alias, "spiffe-id", "", "also register this SPIFFE ID as a node alias of the agent that attests with the token")
	o = addAdminFlags(gen)
	cmd.AddCommand(gen)
	return cmd
}

// registerTokenAlias creates the node alias entry for the agent that will
// attest with the join token of resp: spiffe_id alias, parent_id the
// servers ID, selector join_token:<the agent's id>.
func registerTokenAlias(cmd *cobra.Command, c *AdminConn, resp *sigilv1.CreateJoinTokenResponse, alias spiffeid.ID) (*sigilv1.Entry, error) {
	agent, err := spiffeid.FromString(resp.GetAgentId())
	if err != nil {
		return nil, fmt.Errorf("the server answered an invalid agent ID %q: %v", resp.GetAgentId(), err)
	}
	if alias.TrustDomain() != agent.TrustDomain() {
		return nil, usagef("-spiffe-id %s is not in the server's trust domain %s", alias, agent.TrustDomain())
	}
	prefix := "/sigil/agent/" + jointoken.Name + "/"
	seg, ok := strings.CutPrefix(agent.Path(), prefix)
	if !ok || seg == "" || strings.Contains(seg, "/") {
		return nil, fmt.Errorf("the server answered agent ID %s, not one of the form spiffe://%s%s<id>", agent, agent.TrustDomain(), prefix)
	}
	e := &sigilv1.Entry{
		SpiffeId:  alias.String(),
		ParentId:  registration.ServersID(agent.TrustDomain()).String(),
		Selectors: []*sigilv1.Selector{{Type: jointoken.Name, Value: seg}},
	}
	r, err := call(cmd.Context(), c.BatchCreateEntry, &sigilv1.BatchCreateEntryRequest{Entries: []*sigilv1.Entry{e}})
	if err != nil {
		return nil, c.RPCError("register node alias "+alias.String(), err)
	}
	if len(r.GetResults()) != 1 {
		return nil, fmt.Errorf("register node alias %s: the server answered %d results for 1 entry", alias, len(r.GetResults()))
	}
	res := r.GetResults()[0]
	if code := codes.Code(res.GetStatus().GetCode()); code != codes.OK {
		return nil, fmt.Errorf("register node alias %s: %s", alias, OneLine(statusText(code, res.GetStatus().GetMessage())))
	}
	return res.GetEntry(), nil
}

// NewBundleCommand returns `sigil bundle`.
func NewBundleCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bundle",
		Short: "Show the trust bundle of the trust domain; set, delete and list federated bundles",
	}
	var format, trustDomain string
	var o *adminOpts
	show := &cobra.Command{
		Use:   "show",
		Short: "Print the trust bundle (the file agents use as trust_bundle_path) or a federated bundle",
		Long: `Print the trust domain's bundle: PEM CA certificates (the default, the file
agents use as trust_bundle_path) or, with -format spiffe, the SPIFFE bundle
document that the bundle endpoint serves and that a federated trust domain
takes as its bootstrap bundle (sigil bundle set or sigil federation create
-bundle-file there). -trust-domain prints a federated bundle instead.`,
		Example: `  sigil bundle show > /etc/sigil/bundle.pem
  sigil bundle show -format spiffe > aws.bundle.json
  sigil bundle show -trust-domain gcp.example -format spiffe`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if format != "pem" && format != "spiffe" {
				return usagef("invalid -format %q: want pem or spiffe", format)
			}
			req := &sigilv1.GetBundleRequest{}
			what := "show bundle"
			if cmd.Flags().Changed("trust-domain") {
				td, err := trustDomainArg("trust-domain", trustDomain)
				if err != nil {
					return err
				}
				req.TrustDomain = td
				what = "show bundle of " + td
			}
			c, err := o.dial()
			if err != nil {
				return err
			}
			defer c.Close()
			b, err := call(cmd.Context(), c.GetBundle, req)
			if err != nil {
				return c.RPCError(what, err)
			}
			out := cmd.OutOrStdout()
			if o.json() {
				return printJSON(out, b)
			}
			if format == "pem" {
				return WriteBundlePEM(out, b)
			}
			doc, err := SPIFFEBundle(b)
			if err != nil {
				return err
			}
			var buf bytes.Buffer
			if err := json.Indent(&buf, doc, "", "  "); err != nil {
				return err
			}
			buf.WriteByte('\n')
			_, err = out.Write(buf.Bytes())
			return err
		},
	}
	show.Flags().StringVar(&format, "format", "pem", "pem (CA certificates) or spiffe (SPIFFE bundle document, as served to federated trust domains)")
	show.Flags().StringVar(&trustDomain, "trust-domain", "", "print the federated bundle of this trust domain instead of the local one")
	o = addAdminFlags(show)
	cmd.AddCommand(show, newBundleSet(), newBundleDelete(), newBundleList())
	return cmd
}

// WriteBundlePEM writes the X.509 authorities of b as PEM certificates.
func WriteBundlePEM(w io.Writer, b *sigilv1.Bundle) error {
	if len(b.GetX509Authorities()) == 0 {
		return errors.New("the bundle has no X.509 authorities yet")
	}
	for _, a := range b.GetX509Authorities() {
		if err := pem.Encode(w, &pem.Block{Type: "CERTIFICATE", Bytes: a.GetCertificate()}); err != nil {
			return err
		}
	}
	return nil
}

// SPIFFEBundle renders b as a SPIFFE bundle document (JWKS), exactly as
// the bundle endpoint serves it (federation.Encode).
// A refresh hint too long for a time.Duration is refused rather than
// published shortened.
func SPIFFEBundle(b *sigilv1.Bundle) ([]byte, error) {
	if h := b.GetRefreshHint(); h > int64((math.MaxInt64-time.Second)/time.Second) {
		return nil, fmt.Errorf("bundle refresh hint %d s is out of range", h)
	}
	return federation.Encode(b)
}

// AgentAdminCommands returns the subcommands of `sigil agent` that manage
// attested agents through the server's admin API.
func AgentAdminCommands() []*cobra.Command {
	return []*cobra.Command{newAgentList(), newAgentShow(), newAgentEvict(), newAgentBan()}
}

func newAgentList() *cobra.Command {
	var (
		o         *adminOpts
		selectors []string
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List attested agents, optionally those with given node selectors",
		Long: `List attested (and banned) agents: SPIFFE ID, attestation type, SVID
serial and expiry, banned, node selectors, last seen (the time of the
agent's last attestation or agent SVID renewal, "-" if not recorded) and
first attestation. -selector (repeatable) keeps the agents whose node
selectors include all the given ones; the server filters.`,
		Example: `  sigil agent list
  sigil agent list -selector k8s_psat:cluster:prod -selector k8s_psat:agent_ns:spire`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &sigilv1.ListAgentsRequest{}
			for _, s := range selectors {
				sel, err := registration.ParseSelector(s)
				if err != nil {
					return usagef("invalid -selector %q: %v", s, strings.TrimPrefix(err.Error(), "registration: "))
				}
				req.Selectors = append(req.Selectors, sel)
			}
			c, err := o.dial()
			if err != nil {
				return err
			}
			defer c.Close()
			var agents []*sigilv1.AttestedNode
			seen := map[string]bool{}
			for {
				resp, err := call(cmd.Context(), c.ListAgents, req)
				if err != nil {
					return c.RPCError("list agents", err)
				}
				agents = append(agents, resp.Agents...)
				next := resp.GetNextPageToken()
				if next == "" {
					break
				}
				if seen[next] {
					return fmt.Errorf("list agents: the server repeated page token %q", next)
				}
				seen[next] = true
				req.PageToken = next
			}
			out := cmd.OutOrStdout()
			if o.json() {
				return printJSON(out, &sigilv1.ListAgentsResponse{Agents: agents})
			}
			fmt.Fprintf(out, "Found %d %s\n", len(agents), plural(len(agents), "agent", "agents"))
			for _, a := range agents {
				fmt.Fprintln(out)
				printAgent(out, a)
			}
			return nil
		},
	}
	cmd.Flags().StringArrayVar(&selectors, "selector", nil, "node selector type:value the agents must have, e.g. k8s_psat:cluster:prod (repeatable: all must match)")
	o = addAdminFlags(cmd)
	return cmd
}

func printAgent(w io.Writer, a *sigilv1.AttestedNode) {
	fmt.Fprintf(w, "SPIFFE ID        : %s\n", a.GetSpiffeId())
	fmt.Fprintf(w, "Attestation type : %s\n", a.GetAttestationType())
	fmt.Fprintf(w, "SVID serial      : %s\n", a.GetCertSerial())
	fmt.Fprintf(w, "SVID expires at  : %s\n", formatTime(a.GetCertNotAfter()))
	fmt.Fprintf(w, "Banned           : %t\n", a.GetBanned())
	for _, s := range a.GetSelectors() {
		fmt.Fprintf(w, "Selector         : %s\n", registration.FormatSelector(s))
	}
	fmt.Fprintf(w, "Last seen        : %s\n", formatTime(a.GetLastSeen()))
	fmt.Fprintf(w, "Attested at      : %s\n", formatTime(a.GetCreatedAt()))
}

// agentIDCommand builds a command that takes -spiffe-id of an agent.
func agentIDCommand(use, short string, run func(cmd *cobra.Command, c *AdminConn, o *adminOpts, id string) error) *cobra.Command {
	var id string
	var o *adminOpts
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if id == "" {
				return usageError(errors.New("-spiffe-id is required"))
			}
			if _, err := spiffeid.FromString(id); err != nil {
				return usagef("invalid -spiffe-id %q: %v", id, err)
			}
			c, err := o.dial()
			if err != nil {
				return err
			}
			defer c.Close()
			return run(cmd, c, o, id)
		},
	}
	cmd.Flags().StringVar(&id, "spiffe-id", "", "SPIFFE ID of the agent")
	o = addAdminFlags(cmd)
	return cmd
}

func newAgentShow() *cobra.Command {
	return agentIDCommand("show", "Show one attested agent", func(cmd *cobra.Command, c *AdminConn, o *adminOpts, id string) error {
		a, err := call(cmd.Context(), c.GetAgent, &sigilv1.GetAgentRequest{SpiffeId: id})
		if err != nil {
			return c.RPCError("show agent "+id, err)
		}
		if o.json() {
			return printJSON(cmd.OutOrStdout(), a)
		}
		printAgent(cmd.OutOrStdout(), a)
		return nil
	})
}

func newAgentEvict() *cobra.Command {
	cmd := agentIDCommand("evict", "Forget an attested agent; it must attest again to get SVIDs", func(cmd *cobra.Command, c *AdminConn, o *adminOpts, id string) error {
		resp, err := call(cmd.Context(), c.EvictAgent, &sigilv1.EvictAgentRequest{SpiffeId: id})
		if err != nil {
			return c.RPCError("evict agent "+id, err)
		}
		if o.json() {
			return printJSON(cmd.OutOrStdout(), resp)
		}
		fmt.Fprintf(cmd.OutOrStdout(), "Evicted agent %s\n", id)
		return nil
	})
	cmd.Long = `Forget an attested agent: its calls are refused until it attests again.
An agent whose node attestor can attest again (every attestor but
join_token) does so by itself; a join token agent needs a new token.
A banned agent cannot be evicted: its ban stays.`
	return cmd
}

func newAgentBan() *cobra.Command {
	cmd := agentIDCommand("ban", "Ban an agent: its calls and attestations are refused from now on", func(cmd *cobra.Command, c *AdminConn, o *adminOpts, id string) error {
		resp, err := call(cmd.Context(), c.BanAgent, &sigilv1.BanAgentRequest{SpiffeId: id})
		if err != nil {
			return c.RPCError("ban agent "+id, err)
		}
		if o.json() {
			return printJSON(cmd.OutOrStdout(), resp)
		}
		fmt.Fprintf(cmd.OutOrStdout(), "Banned agent %s\n", id)
		return nil
	})
	cmd.Long = `Ban an agent: its calls are refused from now on, and so is every
attestation for its SPIFFE ID, whatever evidence it shows. An agent that
is not attested (evicted, or not seen yet) can be banned too. A ban is
not undone by eviction.`
	return cmd
}
