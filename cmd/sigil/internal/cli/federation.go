package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/federation"
)

// federationClient returns the FederationAdmin client on c's connection.
func (c *AdminConn) federationClient() sigilv1.FederationAdminClient {
	return sigilv1.NewFederationAdminClient(c.conn)
}

// NewFederationCommand returns `sigil federation` and its subcommands.
func NewFederationCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "federation",
		Short: "Manage federation relationships with other trust domains",
		Long: `Manage the federation relationships of this trust domain: the foreign
SPIFFE bundle endpoints the servers poll, so that workloads whose entries
name a foreign trust domain (-federates-with) receive its bundle.

A relationship is accepted while the foreign endpoint is unreachable: the
bundle arrives on the first successful fetch (or comes from -bundle-file).
See docs/federation.md.`,
	}
	cmd.AddCommand(newFederationCreate(), newFederationUpdate(), newFederationDelete(),
		newFederationList(), newFederationShow(), newFederationRefresh())
	return cmd
}

// trustDomainArg checks a trust domain given as a name ("gcp.example")
// or as the trust domain's SPIFFE ID ("spiffe://gcp.example") and returns
// its name.
func trustDomainArg(flag, v string) (string, error) {
	if v == "" {
		return "", usagef("-%s is required", flag)
	}
	name := strings.TrimPrefix(v, "spiffe://")
	if strings.Contains(name, "/") {
		return "", usagef("invalid -%s %q: want a trust domain name such as example.org (or spiffe://example.org), without a path", flag, v)
	}
	td, err := spiffeid.TrustDomainFromString(name)
	if err != nil {
		return "", usagef("invalid -%s %q: %v", flag, v, err)
	}
	return td.Name(), nil
}

// readDocument reads a bundle document from path ("-" for stdin), at most
// federation.MaxDocumentSize bytes.
func readDocument(cmd *cobra.Command, flag, path string) ([]byte, error) {
	var r io.Reader
	if path == "-" {
		r = cmd.InOrStdin()
	} else {
		f, err := os.Open(path)
		if err != nil {
			return nil, usagef("-%s: %w", flag, err)
		}
		defer f.Close()
		r = f
	}
	b, err := io.ReadAll(io.LimitReader(r, federation.MaxDocumentSize+1))
	if err != nil {
		return nil, fmt.Errorf("-%s %s: %w", flag, path, err)
	}
	if len(b) > federation.MaxDocumentSize {
		return nil, usagef("-%s %s: larger than %d bytes, the limit of a bundle document", flag, path, federation.MaxDocumentSize)
	}
	if len(strings.TrimSpace(string(b))) == 0 {
		return nil, usagef("-%s %s is empty", flag, path)
	}
	return b, nil
}

// relationshipFlags are the flags of create and update.
type relationshipFlags struct {
	trustDomain string
	url         string
	profile     string
	endpointID  string
	bundleFile  string
}

func addRelationshipFlags(cmd *cobra.Command, f *relationshipFlags) {
	fs := cmd.Flags()
	fs.StringVar(&f.trustDomain, "trust-domain", "", "the foreign trust domain, e.g. gcp.example (or spiffe://gcp.example)")
	fs.StringVar(&f.url, "bundle-endpoint-url", "", "https URL of the foreign trust domain's SPIFFE bundle endpoint")
	fs.StringVar(&f.profile, "profile", federation.ProfileHTTPSSPIFFE, "bundle endpoint profile: https_spiffe (the endpoint presents an X.509-SVID of the foreign trust domain) or https_web (a web PKI certificate)")
	fs.StringVar(&f.endpointID, "endpoint-spiffe-id", "", "https_spiffe: the SPIFFE ID of the endpoint's SVID (default spiffe://<trust-domain>/sigil/server, what a Sigil server presents)")
	fs.StringVar(&f.bundleFile, "bundle-file", "", "bootstrap bundle `FILE`: a SPIFFE bundle document of the foreign trust domain, as sigil bundle show -format spiffe prints it there (\"-\" for stdin); needed for https_spiffe unless a bundle was set before")
}

// defaultEndpointID is the SPIFFE ID a Sigil server's bundle endpoint
// presents in trust domain td.
func defaultEndpointID(td string) string { return "spiffe://" + td + "/sigil/server" }

// apply sets the fields of rel whose flags were given (all of them for a
// new relationship) and checks the result.
func (f *relationshipFlags) apply(cmd *cobra.Command, rel *sigilv1.FederationRelationship, create bool) error {
	changed := func(n string) bool { return create || cmd.Flags().Changed(n) }
	if changed("bundle-endpoint-url") {
		if f.url == "" {
			return usageError(errors.New("-bundle-endpoint-url is required"))
		}
		u, err := url.Parse(f.url)
		if err != nil {
			return usagef("invalid -bundle-endpoint-url %q: %v", f.url, err)
		}
		if u.Scheme != "https" || u.Host == "" || u.User != nil {
			return usagef("invalid -bundle-endpoint-url %q: want an https URL with a host and no user info, e.g. https://gcp.example:8443", f.url)
		}
		rel.BundleEndpointUrl = f.url
	}
	if changed("profile") {
		if f.profile != federation.ProfileHTTPSSPIFFE && f.profile != federation.ProfileHTTPSWeb {
			return usagef("invalid -profile %q: want %s or %s", f.profile, federation.ProfileHTTPSSPIFFE, federation.ProfileHTTPSWeb)
		}
		if rel.Profile != f.profile {
			rel.EndpointSpiffeId = ""
		}
		rel.Profile = f.profile
	}
	if cmd.Flags().Changed("endpoint-spiffe-id") {
		if rel.Profile != federation.ProfileHTTPSSPIFFE {
			return usagef("-endpoint-spiffe-id is for profile %s only", federation.ProfileHTTPSSPIFFE)
		}
		id, err := spiffeid.FromString(f.endpointID)
		if err != nil {
			return usagef("invalid -endpoint-spiffe-id %q: %v", f.endpointID, err)
		}
		if id.TrustDomain().Name() != rel.TrustDomain {
			return usagef("invalid -endpoint-spiffe-id %q: not in trust domain %s", f.endpointID, rel.TrustDomain)
		}
		rel.EndpointSpiffeId = f.endpointID
	}
	if rel.Profile == federation.ProfileHTTPSSPIFFE && rel.EndpointSpiffeId == "" {
		rel.EndpointSpiffeId = defaultEndpointID(rel.TrustDomain)
	}
	return nil
}

func newFederationCreate() *cobra.Command {
	var f relationshipFlags
	var o *adminOpts
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Create a federation relationship with a foreign trust domain",
		Example: `  sigil federation create -trust-domain gcp.example -bundle-endpoint-url https://gcp-sigil.example:8443 \
      -profile https_spiffe -bundle-file gcp.bundle.json
  sigil federation create -trust-domain partner.example -bundle-endpoint-url https://partner.example/bundle -profile https_web`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			td, err := trustDomainArg("trust-domain", f.trustDomain)
			if err != nil {
				return err
			}
			rel := &sigilv1.FederationRelationship{TrustDomain: td}
			if err := f.apply(cmd, rel, true); err != nil {
				return err
			}
			req := &sigilv1.CreateRelationshipRequest{Relationship: rel}
			if f.bundleFile != "" {
				if req.BootstrapBundle, err = readDocument(cmd, "bundle-file", f.bundleFile); err != nil {
					return err
				}
			}
			c, err := o.dial()
			if err != nil {
				return err
			}
			defer c.Close()
			got, err := call(cmd.Context(), c.federationClient().CreateRelationship, req)
			if err != nil {
				return c.RPCError("create federation relationship with "+td, err)
			}
			if o.json() {
				return printJSON(cmd.OutOrStdout(), got)
			}
			printRelationship(cmd.OutOrStdout(), got)
			return nil
		},
	}
	addRelationshipFlags(cmd, &f)
	o = addAdminFlags(cmd)
	return cmd
}

func newFederationUpdate() *cobra.Command {
	var f relationshipFlags
	var o *adminOpts
	cmd := &cobra.Command{
		Use:   "update",
		Short: "Update a federation relationship",
		Long: `Update a federation relationship. The fields given as flags replace those
of the current relationship; the others keep their values. -bundle-file is
written only when the server holds no bundle of the trust domain.`,
		Example: `  sigil federation update -trust-domain gcp.example -bundle-endpoint-url https://gcp-sigil-2.example:8443`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			td, err := trustDomainArg("trust-domain", f.trustDomain)
			if err != nil {
				return err
			}
			if changedAny(cmd, "bundle-endpoint-url", "profile", "endpoint-spiffe-id", "bundle-file") == "" {
				return usageError(errors.New("nothing to update: give at least one of -bundle-endpoint-url, -profile, -endpoint-spiffe-id, -bundle-file"))
			}
			var bootstrap []byte
			if f.bundleFile != "" {
				if bootstrap, err = readDocument(cmd, "bundle-file", f.bundleFile); err != nil {
					return err
				}
			}
			c, err := o.dial()
			if err != nil {
				return err
			}
			defer c.Close()
			fc := c.federationClient()
			rel, err := call(cmd.Context(), fc.GetRelationship, &sigilv1.GetRelationshipRequest{TrustDomain: td})
			if err != nil {
				return c.RPCError("update federation relationship with "+td, err)
			}
			if err := f.apply(cmd, rel, false); err != nil {
				return err
			}
			got, err := call(cmd.Context(), fc.UpdateRelationship, &sigilv1.UpdateRelationshipRequest{Relationship: rel, BootstrapBundle: bootstrap})
			if err != nil {
				return c.RPCError("update federation relationship with "+td, err)
			}
			if o.json() {
				return printJSON(cmd.OutOrStdout(), got)
			}
			printRelationship(cmd.OutOrStdout(), got)
			return nil
		},
	}
	addRelationshipFlags(cmd, &f)
	o = addAdminFlags(cmd)
	return cmd
}

func newFederationDelete() *cobra.Command {
	var trustDomain string
	var keep bool
	var o *adminOpts
	cmd := &cobra.Command{
		Use:   "delete",
		Short: "Delete a federation relationship and (unless -keep-bundle) its bundle",
		Long: `Delete a federation relationship. Its bundle is deleted too, and leaves
every workload that had it, unless -keep-bundle keeps it as a static
bundle (which then changes only with sigil bundle set). Entries that
federate with the trust domain are left as they are.`,
		Example: `  sigil federation delete -trust-domain gcp.example`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			td, err := trustDomainArg("trust-domain", trustDomain)
			if err != nil {
				return err
			}
			c, err := o.dial()
			if err != nil {
				return err
			}
			defer c.Close()
			resp, err := call(cmd.Context(), c.federationClient().DeleteRelationship, &sigilv1.DeleteRelationshipRequest{TrustDomain: td, KeepBundle: keep})
			if err != nil {
				return c.RPCError("delete federation relationship with "+td, err)
			}
			if o.json() {
				return printJSON(cmd.OutOrStdout(), resp)
			}
			what := "and its bundle"
			if keep {
				what = "(bundle kept)"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Deleted federation relationship with %s %s\n", td, what)
			return nil
		},
	}
	cmd.Flags().StringVar(&trustDomain, "trust-domain", "", "the foreign trust domain")
	cmd.Flags().BoolVar(&keep, "keep-bundle", false, "keep the trust domain's bundle as a static bundle")
	o = addAdminFlags(cmd)
	return cmd
}

func newFederationList() *cobra.Command {
	var o *adminOpts
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the federation relationships",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := o.dial()
			if err != nil {
				return err
			}
			defer c.Close()
			resp, err := call(cmd.Context(), c.federationClient().ListRelationships, &sigilv1.ListRelationshipsRequest{})
			if err != nil {
				return c.RPCError("list federation relationships", err)
			}
			if o.json() {
				return printJSON(cmd.OutOrStdout(), resp)
			}
			printRelationships(cmd.OutOrStdout(), resp.GetRelationships())
			return nil
		},
	}
	o = addAdminFlags(cmd)
	return cmd
}

// printRelationships writes relationships as a table.
func printRelationships(w io.Writer, rels []*sigilv1.FederationRelationship) {
	fmt.Fprintf(w, "Found %d federation %s\n", len(rels), plural(len(rels), "relationship", "relationships"))
	if len(rels) == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TRUST DOMAIN\tPROFILE\tBUNDLE ENDPOINT URL\tENDPOINT SPIFFE ID\tSOURCE")
	for _, r := range rels {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.GetTrustDomain(), r.GetProfile(), r.GetBundleEndpointUrl(),
			dash(r.GetEndpointSpiffeId()), relationshipSource(r))
	}
	tw.Flush()
}

func relationshipSource(r *sigilv1.FederationRelationship) string {
	if r.GetFromConfig() {
		return "config"
	}
	return "api"
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// printRelationship writes one relationship in the text format.
func printRelationship(w io.Writer, r *sigilv1.FederationRelationship) {
	fmt.Fprintf(w, "Trust domain        : %s\n", r.GetTrustDomain())
	fmt.Fprintf(w, "Bundle endpoint URL : %s\n", r.GetBundleEndpointUrl())
	fmt.Fprintf(w, "Profile             : %s\n", r.GetProfile())
	if r.GetEndpointSpiffeId() != "" {
		fmt.Fprintf(w, "Endpoint SPIFFE ID  : %s\n", r.GetEndpointSpiffeId())
	}
	fmt.Fprintf(w, "Source              : %s\n", relationshipSource(r))
	fmt.Fprintf(w, "Created at          : %s\n", formatTime(r.GetCreatedAt()))
}

// printBundleState writes the refresh state of a relationship's bundle.
func printBundleState(w io.Writer, b *sigilv1.BundleStatus, now time.Time) {
	if b == nil || !b.GetPresent() {
		fmt.Fprintf(w, "Bundle              : none yet (waiting for the first successful fetch)\n")
	} else {
		fmt.Fprintf(w, "Bundle sequence     : %d\n", b.GetSequenceNumber())
		fmt.Fprintf(w, "Authorities         : %d X.509, %d JWT\n", b.GetX509Authorities(), b.GetJwtAuthorities())
		if b.GetRefreshHint() > 0 {
			fmt.Fprintf(w, "Refresh hint        : %s\n", time.Duration(b.GetRefreshHint())*time.Second)
		}
		fmt.Fprintf(w, "Bundle changed      : %s\n", relTime(now, b.GetUpdatedAt()))
	}
	st := b.GetStatus()
	if st == nil {
		fmt.Fprintf(w, "Last fetch          : not attempted yet\n")
		return
	}
	fmt.Fprintf(w, "Last success        : %s\n", relTime(now, st.GetLastSuccessAt()))
	fmt.Fprintf(w, "Last attempt        : %s\n", relTime(now, st.GetLastAttemptAt()))
	fmt.Fprintf(w, "Next refresh        : %s\n", relTime(now, st.GetNextRefreshAt()))
	if st.GetLastError() != "" {
		fmt.Fprintf(w, "Last error          : %s (%s, %d consecutive %s)\n", OneLine(st.GetLastError()), relTime(now, st.GetLastErrorAt()),
			st.GetConsecutiveFailures(), plural(int(st.GetConsecutiveFailures()), "failure", "failures"))
	}
}

func newFederationShow() *cobra.Command {
	var trustDomain string
	var o *adminOpts
	cmd := &cobra.Command{
		Use:   "show",
		Short: "Show a federation relationship and the refresh state of its bundle",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			td, err := trustDomainArg("trust-domain", trustDomain)
			if err != nil {
				return err
			}
			c, err := o.dial()
			if err != nil {
				return err
			}
			defer c.Close()
			fc := c.federationClient()
			rel, err := call(cmd.Context(), fc.GetRelationship, &sigilv1.GetRelationshipRequest{TrustDomain: td})
			if err != nil {
				return c.RPCError("show federation relationship with "+td, err)
			}
			list, err := call(cmd.Context(), fc.ListBundles, &sigilv1.ListBundlesRequest{})
			if err != nil {
				return c.RPCError("list bundles", err)
			}
			var b *sigilv1.BundleStatus
			for _, s := range list.GetBundles() {
				if s.GetTrustDomain() == td && !s.GetLocal() {
					b = s
				}
			}
			out := cmd.OutOrStdout()
			if o.json() {
				// The relationship's fields, and "bundle": its BundleStatus
				// (null before the first bundle).
				return printJSONWith(out, rel, protoField{name: "bundle", value: b})
			}
			printRelationship(out, rel)
			printBundleState(out, b, time.Now())
			return nil
		},
	}
	cmd.Flags().StringVar(&trustDomain, "trust-domain", "", "the foreign trust domain")
	o = addAdminFlags(cmd)
	return cmd
}

// refreshMargin is added to -timeout for the call itself.
const refreshMargin = 5 * time.Second

func newFederationRefresh() *cobra.Command {
	var trustDomain string
	var timeout time.Duration
	var o *adminOpts
	cmd := &cobra.Command{
		Use:   "refresh",
		Short: "Fetch a federated bundle now and report the outcome",
		Long: `Ask the refreshing server (the leader) to fetch a relationship's bundle now,
and wait up to -timeout for the attempt. Exits 1, printing the error, when
the attempt failed; the last good bundle stays in use.`,
		Example: `  sigil federation refresh -trust-domain gcp.example`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			td, err := trustDomainArg("trust-domain", trustDomain)
			if err != nil {
				return err
			}
			if timeout <= 0 {
				return usagef("-timeout %s must be positive", timeout)
			}
			c, err := o.dial()
			if err != nil {
				return err
			}
			defer c.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout+refreshMargin)
			defer cancel()
			st, err := c.federationClient().RefreshBundle(ctx, &sigilv1.RefreshBundleRequest{TrustDomain: td, TimeoutMs: timeout.Milliseconds()})
			if err != nil {
				if s, ok := status.FromError(err); ok && s.Code() == codes.DeadlineExceeded {
					if ctx.Err() != nil {
						return fmt.Errorf("refresh bundle of %s: the server did not answer within %s", td, timeout+refreshMargin)
					}
					// The server's own answer: no attempt within -timeout.
					return fmt.Errorf("refresh bundle of %s: %s", td, statusText(s.Code(), s.Message()))
				}
				return c.RPCError("refresh bundle of "+td, err)
			}
			out := cmd.OutOrStdout()
			if o.json() {
				if err := printJSON(out, st); err != nil {
					return err
				}
			}
			if e := st.GetStatus().GetLastError(); e != "" {
				return &ExitError{Code: 1, Err: fmt.Errorf("refresh bundle of %s: %s (the last good bundle stays in use)", td, OneLine(e))}
			}
			if !o.json() {
				fmt.Fprintf(out, "Refreshed the bundle of %s: sequence %d, %d X.509 and %d JWT authorities, next refresh %s\n",
					td, st.GetSequenceNumber(), st.GetX509Authorities(), st.GetJwtAuthorities(), relTime(time.Now(), st.GetStatus().GetNextRefreshAt()))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&trustDomain, "trust-domain", "", "the foreign trust domain")
	cmd.Flags().DurationVar(&timeout, "timeout", 10*time.Second, "how long to wait for the attempt")
	o = addAdminFlags(cmd)
	return cmd
}

// newBundleSet returns `sigil bundle set`.
func newBundleSet() *cobra.Command {
	var trustDomain, file, format string
	var o *adminOpts
	cmd := &cobra.Command{
		Use:   "set",
		Short: "Set the bundle of a foreign trust domain",
		Long: `Set the bundle of a foreign trust domain from a SPIFFE bundle document (as
` + "`sigil bundle show -format spiffe`" + ` prints it there) or from PEM CA
certificates: a relationship's bootstrap bundle, or a static federation
without a bundle endpoint. A relationship's next successful fetch replaces it.`,
		Example: `  sigil bundle set -trust-domain gcp.example -file gcp.bundle.json
  ssh gcp-admin sigil bundle show -format spiffe | sigil bundle set -trust-domain gcp.example -file -
  sigil bundle set -trust-domain legacy.example -file legacy-ca.pem -format pem`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			td, err := trustDomainArg("trust-domain", trustDomain)
			if err != nil {
				return err
			}
			if format != "spiffe" && format != "pem" {
				return usagef("invalid -format %q: want spiffe or pem", format)
			}
			if file == "" {
				return usageError(errors.New("-file is required (\"-\" for stdin)"))
			}
			doc, err := readDocument(cmd, "file", file)
			if err != nil {
				return err
			}
			c, err := o.dial()
			if err != nil {
				return err
			}
			defer c.Close()
			b, err := call(cmd.Context(), c.federationClient().SetBundle, &sigilv1.SetBundleRequest{TrustDomain: td, Document: doc, Format: format})
			if err != nil {
				return c.RPCError("set bundle of "+td, err)
			}
			out := cmd.OutOrStdout()
			if o.json() {
				return printJSON(out, b)
			}
			fmt.Fprintf(out, "Set the bundle of %s: sequence %d, %d X.509 and %d JWT authorities\n",
				td, b.GetSequenceNumber(), len(b.GetX509Authorities()), len(b.GetJwtAuthorities()))
			return nil
		},
	}
	cmd.Flags().StringVar(&trustDomain, "trust-domain", "", "the foreign trust domain")
	cmd.Flags().StringVar(&file, "file", "", "the bundle (\"-\" for stdin)")
	cmd.Flags().StringVar(&format, "format", "spiffe", "spiffe (SPIFFE bundle document) or pem (CA certificates)")
	o = addAdminFlags(cmd)
	return cmd
}

// newBundleDelete returns `sigil bundle delete`.
func newBundleDelete() *cobra.Command {
	var trustDomain string
	var o *adminOpts
	cmd := &cobra.Command{
		Use:   "delete",
		Short: "Delete the bundle of a foreign trust domain that no relationship refreshes",
		Long: `Delete a federated bundle; it leaves every workload that had it. A bundle
that a relationship refreshes is deleted with the relationship
(sigil federation delete).`,
		Example: `  sigil bundle delete -trust-domain legacy.example`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			td, err := trustDomainArg("trust-domain", trustDomain)
			if err != nil {
				return err
			}
			c, err := o.dial()
			if err != nil {
				return err
			}
			defer c.Close()
			resp, err := call(cmd.Context(), c.federationClient().DeleteBundle, &sigilv1.DeleteBundleRequest{TrustDomain: td})
			if err != nil {
				return c.RPCError("delete bundle of "+td, err)
			}
			if o.json() {
				return printJSON(cmd.OutOrStdout(), resp)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Deleted the bundle of %s\n", td)
			return nil
		},
	}
	cmd.Flags().StringVar(&trustDomain, "trust-domain", "", "the foreign trust domain")
	o = addAdminFlags(cmd)
	return cmd
}

// newBundleList returns `sigil bundle list`.
func newBundleList() *cobra.Command {
	var o *adminOpts
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the local and the federated bundles with their refresh state",
		Long: `List the local bundle and every federated bundle, one line each: trust
domain, local or federated, sequence number, X.509 and JWT authorities,
age (since the last successful fetch, or since the bundle last changed),
next refresh, last error, and for the local bundle the authenticated
(https_spiffe) partners that fetched it with the highest sequence each
fetched (td@seq). A partner behind the current sequence is listed below
the table: it has not yet seen the newest keys.`,
		Example: `  sigil bundle list`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := o.dial()
			if err != nil {
				return err
			}
			defer c.Close()
			resp, err := call(cmd.Context(), c.federationClient().ListBundles, &sigilv1.ListBundlesRequest{})
			if err != nil {
				return c.RPCError("list bundles", err)
			}
			if o.json() {
				return printJSON(cmd.OutOrStdout(), resp)
			}
			printBundleList(cmd.OutOrStdout(), resp.GetBundles(), time.Now())
			return nil
		},
	}
	o = addAdminFlags(cmd)
	return cmd
}

// printBundleList writes the bundles as a table; times are relative to now.
func printBundleList(w io.Writer, bundles []*sigilv1.BundleStatus, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TRUST DOMAIN\tKIND\tSEQUENCE\tX509\tJWT\tAGE\tNEXT REFRESH\tLAST ERROR\tPARTNERS")
	var behind []string
	for _, b := range bundles {
		kind, seq, age, next, lastErr, partners := "federated", "-", "-", "-", "-", "-"
		if b.GetLocal() {
			kind = "local"
		}
		if b.GetPresent() || b.GetLocal() {
			seq = fmt.Sprint(b.GetSequenceNumber())
		} else {
			seq = "none"
		}
		st := b.GetStatus()
		switch {
		case st.GetLastSuccessAt() != 0:
			age = relTime(now, st.GetLastSuccessAt())
		case b.GetUpdatedAt() != 0:
			age = relTime(now, b.GetUpdatedAt())
		}
		if b.GetRelationship() != nil && st.GetNextRefreshAt() != 0 {
			next = relTime(now, st.GetNextRefreshAt())
		}
		if e := st.GetLastError(); e != "" {
			lastErr = OneLine(e)
		}
		if pf := b.GetPartnerFetches(); len(pf) > 0 {
			pf = append([]*sigilv1.PartnerFetch(nil), pf...)
			sort.Slice(pf, func(i, j int) bool { return pf[i].GetTrustDomain() < pf[j].GetTrustDomain() })
			var cells []string
			for _, p := range pf {
				cells = append(cells, fmt.Sprintf("%s@%d", p.GetTrustDomain(), p.GetSequenceNumber()))
				if p.GetSequenceNumber() < b.GetSequenceNumber() {
					behind = append(behind, fmt.Sprintf("partner %s last fetched sequence %d of %s (%s); the current sequence is %d",
						p.GetTrustDomain(), p.GetSequenceNumber(), b.GetTrustDomain(), relTime(now, p.GetFetchedAt()), b.GetSequenceNumber()))
				}
			}
			partners = strings.Join(cells, ",")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\t%s\n", b.GetTrustDomain(), kind, seq,
			b.GetX509Authorities(), b.GetJwtAuthorities(), age, next, lastErr, partners)
	}
	tw.Flush()
	for _, s := range behind {
		fmt.Fprintln(w, s)
	}
}

// relTime renders a unix-seconds time relative to now: "12s ago",
// "in 4m", "now"; 0 is "-".
func relTime(now time.Time, unix int64) string {
	if unix == 0 {
		return "-"
	}
	d := time.Unix(unix, 0).Sub(now.Truncate(time.Second))
	switch {
	case d == 0:
		return "now"
	case d > 0:
		return "in " + shortDuration(d)
	}
	return shortDuration(-d) + " ago"
}

// shortDuration renders d in its largest whole unit: 12s, 4m, 3h, 2d.
func shortDuration(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int64(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int64(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int64(d/time.Hour))
	}
	return fmt.Sprintf("%dd", int64(d/(24*time.Hour)))
}
