package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/registration"
)

// NewEntryCommand returns `sigil entry` and its subcommands.
func NewEntryCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "entry",
		Short: "Create, update, delete and list registration entries",
	}
	cmd.AddCommand(newEntryCreate(), newEntryUpdate(), newEntryDelete(), newEntryShow(), newEntryList())
	return cmd
}

// entryFlags are the fields of an entry as flags, shared by create and
// update.
type entryFlags struct {
	id        string
	spiffeID  string
	parentID  string
	selectors []string
	dns       []string
	x509TTL   time.Duration
	jwtTTL    time.Duration
	hint      string
	node      bool
	data      string
	federates []string
	// downstream marks the entry downstream (nested topology).
	downstream bool
	// admin marks the entry admin (remote administration).
	admin bool
	// batchSize is the -batch-size of -data.
	batchSize int
}

func addEntryFlags(cmd *cobra.Command, f *entryFlags) {
	fs := cmd.Flags()
	fs.StringVar(&f.spiffeID, "spiffe-id", "", "SPIFFE ID handed to matching workloads")
	fs.StringVar(&f.parentID, "parent-id", "", "SPIFFE ID of the agent (or node alias) the workloads run under")
	fs.StringArrayVar(&f.selectors, "selector", nil, "selector type:value the workload must have, e.g. unix:uid:1000 (repeatable)")
	fs.StringArrayVar(&f.dns, "dns", nil, "DNS name to put in the X.509-SVID (repeatable)")
	fs.DurationVar(&f.x509TTL, "x509-svid-ttl", 0, "lifetime of the X.509-SVIDs of this entry (default: the server's)")
	fs.DurationVar(&f.jwtTTL, "jwt-svid-ttl", 0, "lifetime of the JWT-SVIDs of this entry (default: the server's)")
	fs.StringVar(&f.hint, "hint", "", "hint telling workloads with several SVIDs what this one is for")
	fs.BoolVar(&f.node, "node", false, "make this a node alias: parent is the trust domain's server ID and selectors match agents' node selectors")
	fs.StringArrayVar(&f.federates, "federates-with", nil, "foreign trust domain whose bundle the workloads receive, e.g. gcp.example or spiffe://gcp.example (repeatable; the trust domain needs a federation relationship or bundle; on update, an empty value clears the list)")
	fs.BoolVar(&f.downstream, "downstream", false, "mark the entry downstream: its workload, a server of a downstream Sigil cluster, may have its CA certificates signed by this cluster (nested topology; the servers need allow_downstream); on update, -downstream=false clears it")
	fs.BoolVar(&f.admin, "admin", false, "mark the entry admin: its workload's SVID may call the admin API on the servers' admin_address (docs/remote-admin.md); on update, -admin=false clears it")
	fs.StringVar(&f.data, "data", "", "`FILE` of entries (\"-\" for stdin): a JSON array, JSON lines, or {\"entries\": [...]} as entry list -output json prints; any number of entries, sent in batches with progress on stderr")
	fs.IntVar(&f.batchSize, "batch-size", defaultBatchSize, "with -data: entries per call to the server (at most the server's limit)")
}

// fieldFlags are the flags that describe entry fields; -data excludes them.
var fieldFlags = []string{"id", "spiffe-id", "parent-id", "selector", "dns", "x509-svid-ttl", "jwt-svid-ttl", "hint", "node", "federates-with", "downstream", "admin"}

func changedAny(cmd *cobra.Command, names ...string) string {
	for _, n := range names {
		if f := cmd.Flags().Lookup(n); f != nil && f.Changed {
			return n
		}
	}
	return ""
}

// apply sets the fields of e whose flags were given on the command line.
func (f *entryFlags) apply(cmd *cobra.Command, e *sigilv1.Entry) error {
	changed := func(n string) bool { return cmd.Flags().Changed(n) }
	if changed("spiffe-id") {
		if _, err := spiffeid.FromString(f.spiffeID); err != nil {
			return usagef("invalid -spiffe-id %q: %v", f.spiffeID, err)
		}
		e.SpiffeId = f.spiffeID
	}
	if f.node && changed("parent-id") {
		return usageError(errors.New("-node and -parent-id are mutually exclusive"))
	}
	if changed("parent-id") {
		if _, err := spiffeid.FromString(f.parentID); err != nil {
			return usagef("invalid -parent-id %q: %v", f.parentID, err)
		}
		e.ParentId = f.parentID
	}
	if f.node {
		id, err := spiffeid.FromString(e.SpiffeId)
		if err != nil {
			return usagef("-node needs a valid -spiffe-id: %v", err)
		}
		e.ParentId = registration.ServersID(id.TrustDomain()).String()
	}
	if changed("selector") {
		e.Selectors = nil
		for _, s := range f.selectors {
			sel, err := registration.ParseSelector(s)
			if err != nil {
				return usagef("invalid -selector %q: %v", s, strings.TrimPrefix(err.Error(), "registration: "))
			}
			e.Selectors = append(e.Selectors, sel)
		}
	}
	if changed("dns") {
		e.DnsNames = nil
		for _, d := range f.dns {
			if d != "" {
				e.DnsNames = append(e.DnsNames, d)
			}
		}
	}
	if changed("x509-svid-ttl") {
		ttl, err := ttlSeconds("x509-svid-ttl", f.x509TTL)
		if err != nil {
			return usageError(err)
		}
		e.X509SvidTtl = ttl
	}
	if changed("jwt-svid-ttl") {
		ttl, err := ttlSeconds("jwt-svid-ttl", f.jwtTTL)
		if err != nil {
			return usageError(err)
		}
		e.JwtSvidTtl = ttl
	}
	if changed("hint") {
		e.Hint = f.hint
	}
	if changed("downstream") {
		e.Downstream = f.downstream
	}
	if changed("admin") {
		e.Admin = f.admin
	}
	if changed("federates-with") {
		e.FederatesWith = nil
		seen := map[string]bool{}
		for _, v := range f.federates {
			if v == "" {
				continue // -federates-with "" clears the list
			}
			td, err := trustDomainArg("federates-with", v)
			if err != nil {
				return err
			}
			if !seen[td] {
				seen[td] = true
				e.FederatesWith = append(e.FederatesWith, td)
			}
		}
	}
	return nil
}

func newEntryCreate() *cobra.Command {
	var f entryFlags
	var o *adminOpts
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Create registration entries",
		Example: `  sigil entry create -spiffe-id spiffe://example.org/web -parent-id spiffe://example.org/sigil/agent/join_token/... -selector unix:uid:1000
  sigil entry create -node -spiffe-id spiffe://example.org/nodes/db -selector join_token:...
  sigil entry create -spiffe-id spiffe://example.org/api -parent-id ... -selector unix:uid:1001 -federates-with gcp.example
  sigil entry create -spiffe-id spiffe://example.org/downstream/s1 -parent-id ... -selector unix:path:/usr/bin/sigil -downstream
  sigil entry create -spiffe-id spiffe://example.org/ops/ci -parent-id ... -selector unix:uid:1000 -admin
  sigil entry create -data entries.json
  sigil entry create -data - < entries.jsonl`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.data != "" {
				if n := changedAny(cmd, fieldFlags...); n != "" {
					return usagef("-data and -%s are mutually exclusive", n)
				}
				return runBulk(cmd, o, entryBulkOp("create"), f.data, f.batchSize)
			}
			if cmd.Flags().Changed("batch-size") {
				return usageError(errors.New("-batch-size goes with -data"))
			}
			if !cmd.Flags().Changed("spiffe-id") {
				return usageError(errors.New("-spiffe-id is required (or -data FILE)"))
			}
			if !cmd.Flags().Changed("parent-id") && !f.node {
				return usageError(errors.New("-parent-id or -node is required"))
			}
			if len(f.selectors) == 0 {
				return usageError(errors.New("at least one -selector is required"))
			}
			e := &sigilv1.Entry{}
			if err := f.apply(cmd, e); err != nil {
				return err
			}
			entries := []*sigilv1.Entry{e}
			c, err := o.dial()
			if err != nil {
				return err
			}
			defer c.Close()
			resp, err := call(cmd.Context(), c.BatchCreateEntry, &sigilv1.BatchCreateEntryRequest{Entries: entries})
			if err != nil {
				return c.RPCError("create entries", err)
			}
			return printEntryResults(cmd, o, resp, resp.Results, entries, "create")
		},
	}
	addEntryFlags(cmd, &f)
	o = addAdminFlags(cmd)
	return cmd
}

func newEntryUpdate() *cobra.Command {
	var f entryFlags
	var o *adminOpts
	cmd := &cobra.Command{
		Use:   "update",
		Short: "Update registration entries",
		Long: `Update a registration entry. The fields given as flags replace those of the
current entry (a repeated flag such as -selector replaces the whole list);
the other fields keep their values. With -data FILE, every entry in the
file must carry its "id" and replaces the stored entry as a whole.`,
		Example: `  sigil entry update -id 5c0e... -selector unix:uid:1001
  sigil entry update -data entries.json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.data != "" {
				if n := changedAny(cmd, fieldFlags...); n != "" {
					return usagef("-data and -%s are mutually exclusive", n)
				}
				return runBulk(cmd, o, entryBulkOp("update"), f.data, f.batchSize)
			}
			if f.id == "" {
				return usageError(errors.New("-id is required (or -data FILE)"))
			}
			if cmd.Flags().Changed("batch-size") {
				return usageError(errors.New("-batch-size goes with -data"))
			}
			if changedAny(cmd, "spiffe-id", "parent-id", "selector", "dns", "x509-svid-ttl", "jwt-svid-ttl", "hint", "node", "federates-with", "downstream", "admin") == "" {
				return usageError(errors.New("nothing to update: give at least one of -spiffe-id, -parent-id, -node, -selector, -dns, -x509-svid-ttl, -jwt-svid-ttl, -hint, -federates-with, -downstream, -admin"))
			}
			c, err := o.dial()
			if err != nil {
				return err
			}
			defer c.Close()
			cur, err := call(cmd.Context(), c.GetEntry, &sigilv1.GetEntryRequest{Id: f.id})
			if err != nil {
				return c.RPCError("update entry "+f.id, err)
			}
			if err := f.apply(cmd, cur); err != nil {
				return err
			}
			entries := []*sigilv1.Entry{cur}
			resp, err := call(cmd.Context(), c.BatchUpdateEntry, &sigilv1.BatchUpdateEntryRequest{Entries: entries})
			if err != nil {
				return c.RPCError("update entries", err)
			}
			return printEntryResults(cmd, o, resp, resp.Results, entries, "update")
		},
	}
	cmd.Flags().StringVar(&f.id, "id", "", "ID of the entry to update")
	addEntryFlags(cmd, &f)
	o = addAdminFlags(cmd)
	return cmd
}

// printEntryResults prints a batch create or update response: the entries
// that succeeded on stdout, one line per failure on stderr, and fails with
// exit code 1 if any item failed.
func printEntryResults(cmd *cobra.Command, o *adminOpts, resp proto.Message, results []*sigilv1.EntryResult, sent []*sigilv1.Entry, verb string) error {
	out, errw := cmd.OutOrStdout(), cmd.ErrOrStderr()
	if o.json() {
		if err := printJSON(out, resp); err != nil {
			return err
		}
	}
	failed := 0
	first := true
	for i, r := range results {
		if code := codes.Code(r.GetStatus().GetCode()); code != codes.OK {
			failed++
			what := fmt.Sprintf("entry %d", i)
			if i < len(sent) {
				if sent[i].Id != "" {
					what += " (id " + sent[i].Id + ")"
				} else if sent[i].SpiffeId != "" {
					what += " (" + sent[i].SpiffeId + ")"
				}
			}
			fmt.Fprintf(errw, "failed to %s %s: %s\n", verb, what, OneLine(statusText(code, r.GetStatus().GetMessage())))
			continue
		}
		if o.json() {
			continue
		}
		if !first {
			fmt.Fprintln(out)
		}
		first = false
		printEntry(out, r.GetEntry())
	}
	if len(results) != len(sent) {
		return &ExitError{Code: 1, Err: fmt.Errorf("the server answered %d results for %d entries", len(results), len(sent))}
	}
	if failed > 0 {
		return &ExitError{Code: 1, Err: fmt.Errorf("%d of %d entries failed to %s", failed, len(results), verb)}
	}
	return nil
}

// printEntry writes an entry in the text format.
func printEntry(w io.Writer, e *sigilv1.Entry) {
	fmt.Fprintf(w, "Entry ID         : %s\n", e.GetId())
	fmt.Fprintf(w, "SPIFFE ID        : %s\n", e.GetSpiffeId())
	fmt.Fprintf(w, "Parent ID        : %s\n", e.GetParentId())
	fmt.Fprintf(w, "Revision         : %d\n", e.GetRevision())
	fmt.Fprintf(w, "X509-SVID TTL    : %s\n", formatTTL(e.GetX509SvidTtl()))
	fmt.Fprintf(w, "JWT-SVID TTL     : %s\n", formatTTL(e.GetJwtSvidTtl()))
	for _, s := range e.GetSelectors() {
		fmt.Fprintf(w, "Selector         : %s\n", registration.FormatSelector(s))
	}
	for _, d := range e.GetDnsNames() {
		fmt.Fprintf(w, "DNS name         : %s\n", d)
	}
	if e.GetHint() != "" {
		fmt.Fprintf(w, "Hint             : %s\n", e.GetHint())
	}
	for _, td := range e.GetFederatesWith() {
		fmt.Fprintf(w, "Federates with   : %s\n", td)
	}
	if e.GetDownstream() {
		fmt.Fprintf(w, "Downstream       : true\n")
	}
	if e.GetAdmin() {
		fmt.Fprintf(w, "Admin            : true\n")
	}
	fmt.Fprintf(w, "Created at       : %s\n", formatTime(e.GetCreatedAt()))
}

func newEntryDelete() *cobra.Command {
	var ids []string
	var o *adminOpts
	var data string
	var batchSize int
	cmd := &cobra.Command{
		Use:   "delete",
		Short: "Delete registration entries",
		Long: `Delete registration entries named by -id, or, with -data FILE, every entry
of a file (entry ids as JSON strings or entry objects with their "id", in a
JSON array, JSON lines or {"entries": [...]}, as entry list -output json
prints), sent in batches with progress on stderr and a summary.`,
		Example: `  sigil entry delete -id 5c0e... -id 9a1b...
  sigil entry list -parent-id spiffe://example.org/sigil/agent/join_token/... -output json > old.json
  sigil entry delete -data old.json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if data != "" {
				if len(ids) > 0 {
					return usageError(errors.New("-data and -id are mutually exclusive"))
				}
				return runBulk(cmd, o, deleteBulkOp(), data, batchSize)
			}
			if cmd.Flags().Changed("batch-size") {
				return usageError(errors.New("-batch-size goes with -data"))
			}
			if len(ids) == 0 {
				return usageError(errors.New("at least one -id is required (or -data FILE)"))
			}
			c, err := o.dial()
			if err != nil {
				return err
			}
			defer c.Close()
			resp, err := call(cmd.Context(), c.BatchDeleteEntry, &sigilv1.BatchDeleteEntryRequest{Ids: ids})
			if err != nil {
				return c.RPCError("delete entries", err)
			}
			out, errw := cmd.OutOrStdout(), cmd.ErrOrStderr()
			if o.json() {
				if err := printJSON(out, resp); err != nil {
					return err
				}
			}
			failed := 0
			for i, r := range resp.Results {
				id := r.GetId()
				if id == "" && i < len(ids) {
					id = ids[i]
				}
				if code := codes.Code(r.GetStatus().GetCode()); code != codes.OK {
					failed++
					fmt.Fprintf(errw, "failed to delete entry %s: %s\n", id, OneLine(statusText(code, r.GetStatus().GetMessage())))
					continue
				}
				if !o.json() {
					fmt.Fprintf(out, "Deleted entry %s\n", id)
				}
			}
			if len(resp.Results) != len(ids) {
				return &ExitError{Code: 1, Err: fmt.Errorf("the server answered %d results for %d ids", len(resp.Results), len(ids))}
			}
			if failed > 0 {
				return &ExitError{Code: 1, Err: fmt.Errorf("%d of %d entries failed to delete", failed, len(ids))}
			}
			return nil
		},
	}
	cmd.Flags().StringArrayVar(&ids, "id", nil, "ID of an entry to delete (repeatable)")
	cmd.Flags().StringVar(&data, "data", "", "`FILE` of entries or entry ids to delete (\"-\" for stdin); any number, sent in batches with progress on stderr")
	cmd.Flags().IntVar(&batchSize, "batch-size", defaultBatchSize, "with -data: entries per call to the server (at most the server's limit)")
	o = addAdminFlags(cmd)
	return cmd
}

func newEntryShow() *cobra.Command {
	var id string
	var o *adminOpts
	cmd := &cobra.Command{
		Use:   "show",
		Short: "Show one registration entry",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if id == "" {
				return usageError(errors.New("-id is required"))
			}
			c, err := o.dial()
			if err != nil {
				return err
			}
			defer c.Close()
			e, err := call(cmd.Context(), c.GetEntry, &sigilv1.GetEntryRequest{Id: id})
			if err != nil {
				return c.RPCError("show entry "+id, err)
			}
			if o.json() {
				return printJSON(cmd.OutOrStdout(), e)
			}
			printEntry(cmd.OutOrStdout(), e)
			return nil
		},
	}
	cmd.Flags().StringVar(&id, "id", "", "ID of the entry")
	o = addAdminFlags(cmd)
	return cmd
}

func newEntryList() *cobra.Command {
	var (
		spiffeID, parentID string
		selectors          []string
		o                  *adminOpts
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List registration entries, optionally filtered",
		Example: `  sigil entry list
  sigil entry list -parent-id spiffe://example.org/sigil/agent/join_token/... -selector unix:uid:1000`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &sigilv1.ListEntriesRequest{SpiffeId: spiffeID, ParentId: parentID}
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
			entries, err := ListAllEntries(cmd.Context(), c, req)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if o.json() {
				return printJSON(out, &sigilv1.ListEntriesResponse{Entries: entries})
			}
			fmt.Fprintf(out, "Found %d %s\n", len(entries), plural(len(entries), "entry", "entries"))
			for _, e := range entries {
				fmt.Fprintln(out)
				printEntry(out, e)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&spiffeID, "spiffe-id", "", "only entries with this SPIFFE ID")
	cmd.Flags().StringVar(&parentID, "parent-id", "", "only entries with this parent ID")
	cmd.Flags().StringArrayVar(&selectors, "selector", nil, "only entries that have this selector (repeatable; all must match)")
	o = addAdminFlags(cmd)
	return cmd
}

// ListAllEntries pages through ListEntries until the server has no more.
func ListAllEntries(ctx context.Context, c *AdminConn, req *sigilv1.ListEntriesRequest) ([]*sigilv1.Entry, error) {
	var all []*sigilv1.Entry
	seen := map[string]bool{}
	for {
		resp, err := call(ctx, c.ListEntries, req)
		if err != nil {
			return nil, c.RPCError("list entries", err)
		}
		all = append(all, resp.Entries...)
		next := resp.GetNextPageToken()
		if next == "" {
			return all, nil
		}
		if seen[next] {
			return nil, fmt.Errorf("list entries: the server repeated page token %q", next)
		}
		seen[next] = true
		req.PageToken = next
	}
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
