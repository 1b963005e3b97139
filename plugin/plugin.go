// Package plugin is the registry that turns the HCL plugin blocks of a
// configuration file into values the daemons receive (server.Config's node
// verifiers and key manager, agent.Config's node and workload attestors,
// both daemons' audit sinks).
//
// A plugin package registers a constructor for its name from an init
// function, in a file of its own (plugin.go):
//
//	func init() { plugin.Register(plugin.KindKeyManager, "disk", newPlugin) }
//
// A constructor decodes its own block strictly (DecodeBody, NoSettings), so
// an unknown key or a bad value is an error naming the file and line. The
// binary (cmd/sigil) imports the plugin packages it ships; the daemons
// import none of them.
//
// The kinds and, for each role (server, agent), the interface a plugin of
// that kind must implement and how many the daemon takes are in one table
// (kinds); a new kind is one line there and one constant.
package plugin

import (
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"sync"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"

	"github.com/sigil-id/sigil/alert"
	"github.com/sigil-id/sigil/attestor/node"
	"github.com/sigil-id/sigil/attestor/workload"
	"github.com/sigil-id/sigil/audit"
	"github.com/sigil-id/sigil/ca"
	"github.com/sigil-id/sigil/clock"
)

// Kind is a kind of plugin; it is the block type in a plugins block.
type Kind string

// The plugin kinds.
const (
	// KindNodeAttestor is a node attestor: a node.Verifier on a server, a
	// node.Attestor on an agent.
	KindNodeAttestor Kind = "node_attestor"
	// KindWorkloadAttestor is an agent's workload.Attestor.
	KindWorkloadAttestor Kind = "workload_attestor"
	// KindKeyManager is a server's ca.KeyStore, which holds the CA, JWT
	// and cluster identity keys.
	KindKeyManager Kind = "key_manager"
	// KindNotifier is a server's alert.Notifier, which carries alerts to
	// on-call (Alertmanager, a webhook, Slack, PagerDuty); a server takes
	// any number, none included.
	KindNotifier Kind = "notifier"
	// KindAuditSink is an audit.Sink that receives a daemon's audit
	// events next to its log; a server and an agent take any number.
	KindAuditSink Kind = "audit_sink"
	// KindUpstreamAuthority is a server's ca.UpstreamAuthority, which
	// signs its CA certificates so that they chain to an existing PKI or
	// an upstream Sigil cluster; a server takes at most one.
	KindUpstreamAuthority Kind = "upstream_authority"
)

// Role says which daemon a plugin is built for.
type Role string

// The roles.
const (
	RoleServer Role = "server"
	RoleAgent  Role = "agent"
)

// many is an unbounded maximum.
const many = -1

// rule is what a role takes of a kind: at least min and at most max
// plugins (max many: no bound), each implementing iface.
type rule struct {
	min, max int
	iface    reflect.Type
}

type kindSpec struct {
	kind  Kind
	roles map[Role]rule
}

// kinds lists the plugin kinds in the order they are documented, with the
// rules of each role; a kind a role does not list is refused in that role.
var kinds = []kindSpec{
	{KindNodeAttestor, map[Role]rule{RoleServer: {1, many, typeOf[node.Verifier]()}, RoleAgent: {1, 1, typeOf[node.Attestor]()}}},
	{KindWorkloadAttestor, map[Role]rule{RoleAgent: {1, many, typeOf[workload.Attestor]()}}},
	{KindKeyManager, map[Role]rule{RoleServer: {1, 1, typeOf[ca.KeyStore]()}}},
	{KindUpstreamAuthority, map[Role]rule{RoleServer: {0, 1, typeOf[ca.UpstreamAuthority]()}}},
	{KindNotifier, map[Role]rule{RoleServer: {0, many, typeOf[alert.Notifier]()}}},
	{KindAuditSink, map[Role]rule{RoleServer: {0, many, typeOf[audit.Sink]()}, RoleAgent: {0, many, typeOf[audit.Sink]()}}},
}

func typeOf[T any]() reflect.Type { return reflect.TypeFor[T]() }

func spec(k Kind) (kindSpec, bool) {
	for _, s := range kinds {
		if s.kind == k {
			return s, true
		}
	}
	return kindSpec{}, false
}

// Kinds returns the plugin kinds, in documentation order.
func Kinds() []Kind {
	out := make([]Kind, len(kinds))
	for i, s := range kinds {
		out[i] = s.kind
	}
	return out
}

// Env is what a constructor may use besides its own block.
type Env struct {
	// Role is the daemon the plugin is built for. A node attestor returns
	// its server half (node.Verifier) for RoleServer and its agent half
	// (node.Attestor) for RoleAgent.
	Role Role
	// TrustDomain is the daemon's trust domain.
	TrustDomain spiffeid.TrustDomain
	// DataDir is the daemon's data directory; plugins that keep files
	// default to places under it.
	DataDir string
	// NodeName is a server's node name (RoleServer only): key managers
	// whose store is shared by several servers (one HSM token, one KMS
	// account) name each server's keys with it.
	NodeName string
	// Logger is the daemon's logger; the registry names it after the
	// plugin. Never nil when a constructor is called.
	Logger *zap.Logger
	// Clock is the daemon's clock. Never nil when a constructor is called.
	Clock clock.Clock
	// JoinToken is the agent's join token, read by the daemon from
	// join_token_file, SIGIL_JOIN_TOKEN or join_token (secrets never sit
	// in a plugin block); only the join_token attestor uses it.
	JoinToken string
}

// New is a plugin constructor. It decodes body, the plugin's block,
// strictly (DecodeBody or NoSettings) and returns the plugin for env.Role.
// An error from decoding (hcl.Diagnostics) keeps its file and line; other
// errors are reported at the block's line.
type New func(body hcl.Body, env Env) (any, error)

var registry = struct {
	sync.RWMutex
	m map[Kind]map[string]New
}{m: map[Kind]map[string]New{}}

// Register makes the plugin name of kind known to Build. Plugin packages
// call it from an init function. It panics on an unknown kind, an empty
// name, a nil constructor or a name registered twice for a kind: all are
// programming errors.
func Register(kind Kind, name string, fn New) {
	if _, ok := spec(kind); !ok {
		panic(fmt.Sprintf("plugin: Register: unknown kind %q", kind))
	}
	if name == "" || strings.ContainsAny(name, " \t\n\"") || fn == nil {
		panic(fmt.Sprintf("plugin: Register: invalid plugin %s %q", kind, name))
	}
	registry.Lock()
	defer registry.Unlock()
	if registry.m[kind] == nil {
		registry.m[kind] = map[string]New{}
	}
	if _, dup := registry.m[kind][name]; dup {
		panic(fmt.Sprintf("plugin: Register: %s %q registered twice", kind, name))
	}
	registry.m[kind][name] = fn
}

// Names returns the registered plugins of kind, sorted.
func Names(kind Kind) []string {
	registry.RLock()
	defer registry.RUnlock()
	out := make([]string, 0, len(registry.m[kind]))
	for n := range registry.m[kind] {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

func lookup(kind Kind, name string) (New, bool) {
	registry.RLock()
	defer registry.RUnlock()
	fn, ok := registry.m[kind][name]
	return fn, ok
}

// Block is one plugin block: `<kind> "<name>" { <body> }`.
type Block struct {
	Kind Kind
	Name string
	// Body is the block's body, which the plugin decodes; hcl.EmptyBody()
	// for a plugin chosen by default or by a flat key.
	Body hcl.Body
	// DefRange is where the block (or the flat key standing for it) is
	// written; errors about the plugin name its file and line. A zero
	// range (a plugin chosen by default with no file) names none.
	DefRange hcl.Range
}

func (b Block) String() string { return fmt.Sprintf("%s %q", b.Kind, b.Name) }

// ParseBlocks reads the plugin blocks of a plugins block's body. A block
// of an unknown kind, a block without exactly one label (the plugin name)
// and an attribute are errors.
func ParseBlocks(body hcl.Body) ([]Block, error) {
	schema := &hcl.BodySchema{}
	for _, s := range kinds {
		schema.Blocks = append(schema.Blocks, hcl.BlockHeaderSchema{Type: string(s.kind), LabelNames: []string{"name"}})
	}
	content, diags := body.Content(schema)
	if diags.HasErrors() {
		return nil, DiagError(diags)
	}
	out := make([]Block, 0, len(content.Blocks))
	for _, b := range content.Blocks {
		out = append(out, Block{Kind: Kind(b.Type), Name: b.Labels[0], Body: b.Body, DefRange: b.DefRange})
	}
	return out, nil
}

// Plugin is a built plugin.
type Plugin struct {
	Kind  Kind
	Name  string
	Value any
}

// Set is the plugins built for one daemon, in the order of their blocks.
type Set []Plugin

// Values returns the values of kind in s as T (the interface the kind's
// rule names for the role Build was called with).
func Values[T any](s Set, kind Kind) []T {
	var out []T
	for _, p := range s {
		if p.Kind != kind {
			continue
		}
		if v, ok := p.Value.(T); ok {
			out = append(out, v)
		}
	}
	return out
}

// Build checks blocks against env.Role's rules and constructs each plugin.
// where is the plugins block (or the daemon's block when there is none):
// a missing plugin is reported there. Errors are one line: "file:line:
// kind "name": what is wrong".
func Build(blocks []Block, where hcl.Range, env Env) (Set, error) {
	if env.Role != RoleServer && env.Role != RoleAgent {
		return nil, fmt.Errorf("plugin: unknown role %q", env.Role)
	}
	if env.Logger == nil {
		env.Logger = zap.NewNop()
	}
	if env.Clock == nil {
		env.Clock = clock.New()
	}
	// Shape first: kinds allowed in this role, names, counts.
	byKind := map[Kind][]Block{}
	for _, b := range blocks {
		s, ok := spec(b.Kind)
		if !ok {
			return nil, blockError(b, fmt.Errorf("unknown plugin kind (known: %s)", joinKinds()))
		}
		if _, ok := s.roles[env.Role]; !ok {
			return nil, blockError(b, fmt.Errorf("%s plugins belong in the %s block, not in the %s block", b.Kind, otherRoles(s, env.Role), env.Role))
		}
		if _, ok := lookup(b.Kind, b.Name); !ok {
			return nil, blockError(b, fmt.Errorf("unknown plugin (known: %s)", strings.Join(Names(b.Kind), ", ")))
		}
		r := s.roles[env.Role]
		for _, prev := range byKind[b.Kind] {
			if prev.Name == b.Name {
				return nil, blockError(b, fmt.Errorf("declared twice (first at %s)", position(prev.DefRange)))
			}
		}
		if r.max != many && len(byKind[b.Kind]) >= r.max {
			first := byKind[b.Kind][0]
			return nil, blockError(b, fmt.Errorf("a second %s (the first is %s at %s); the %s takes exactly one", b.Kind, first, position(first.DefRange), env.Role))
		}
		byKind[b.Kind] = append(byKind[b.Kind], b)
	}
	// Then construct, in block order.
	out := make(Set, 0, len(blocks))
	for _, b := range blocks {
		fn, _ := lookup(b.Kind, b.Name)
		s, _ := spec(b.Kind)
		body := b.Body
		if body == nil {
			body = hcl.EmptyBody()
		}
		penv := env
		penv.Logger = env.Logger.Named(b.Name)
		v, err := fn(body, penv)
		if err != nil {
			return nil, blockError(b, err)
		}
		if v == nil || !reflect.TypeOf(v).Implements(s.roles[env.Role].iface) {
			return nil, blockError(b, fmt.Errorf("the plugin returned %T, which is not a %v (a bug in the plugin)", v, s.roles[env.Role].iface))
		}
		out = append(out, Plugin{Kind: b.Kind, Name: b.Name, Value: v})
	}
	// Last, what is missing.
	for _, s := range kinds {
		r, ok := s.roles[env.Role]
		if !ok || len(byKind[s.kind]) >= r.min {
			continue
		}
		msg := fmt.Sprintf("plugins: no %s: the %s needs one", s.kind, env.Role)
		if names := Names(s.kind); len(names) > 0 {
			msg += fmt.Sprintf(" (known: %s), e.g. %s %q {}", strings.Join(names, ", "), s.kind, names[0])
		}
		return nil, errors.New(prefix(where) + msg)
	}
	return out, nil
}

func joinKinds() string {
	ks := make([]string, len(kinds))
	for i, s := range kinds {
		ks[i] = string(s.kind)
	}
	return strings.Join(ks, ", ")
}

func otherRoles(s kindSpec, not Role) string {
	var rs []string
	for _, r := range []Role{RoleServer, RoleAgent} {
		if _, ok := s.roles[r]; ok && r != not {
			rs = append(rs, string(r))
		}
	}
	return strings.Join(rs, " or ")
}

// blockError makes err one line about b: "file:line: kind "name": err".
// For hcl.Diagnostics the first error's own position (the bad key or
// value) is used.
func blockError(b Block, err error) error {
	at := b.DefRange
	msg := err.Error()
	var diags hcl.Diagnostics
	if errors.As(err, &diags) {
		for _, d := range diags {
			if d.Severity != hcl.DiagError {
				continue
			}
			if d.Subject != nil {
				at = *d.Subject
			}
			msg = d.Summary
			if d.Detail != "" {
				msg += "; " + d.Detail
			}
			break
		}
	}
	return &Error{Pos: at, Block: b.String(), Msg: msg}
}

// Error is a plugin configuration error at a position in a file.
type Error struct {
	Pos   hcl.Range
	Block string // `kind "name"`
	Msg   string
}

func (e *Error) Error() string { return prefix(e.Pos) + e.Block + ": " + e.Msg }

func prefix(r hcl.Range) string {
	if r.Filename == "" {
		return ""
	}
	return position(r) + ": "
}

func position(r hcl.Range) string {
	if r.Filename == "" {
		return "(default)"
	}
	return fmt.Sprintf("%s:%d", r.Filename, r.Start.Line)
}

// DecodeBody decodes body into v (a pointer to a struct with gohcl tags),
// refusing keys v does not have. The error is hcl.Diagnostics, which Build
// reports at the offending key's line.
func DecodeBody(body hcl.Body, v any) error {
	if diags := gohcl.DecodeBody(body, nil, v); diags.HasErrors() {
		return diags
	}
	return nil
}

// NoSettings refuses any key in body: for plugins that have no settings.
func NoSettings(body hcl.Body) error {
	if _, diags := body.Content(&hcl.BodySchema{}); diags.HasErrors() {
		return diags
	}
	return nil
}

// AttrError is an error about the value of attribute name in body,
// reported at that attribute's line (at the block's line if it cannot be
// found).
func AttrError(body hcl.Body, name, format string, args ...any) error {
	msg := fmt.Sprintf(name+": "+format, args...)
	attrs, _ := body.JustAttributes()
	if a, ok := attrs[name]; ok {
		r := a.Expr.Range()
		return hcl.Diagnostics{{Severity: hcl.DiagError, Summary: msg, Subject: &r}}
	}
	return errors.New(msg)
}

// DiagError turns HCL diagnostics into one error: the errors, each as
// "file:line,column: summary; detail", joined with "; ".
func DiagError(diags hcl.Diagnostics) error {
	var msgs []string
	for _, d := range diags {
		if d.Severity != hcl.DiagError {
			continue
		}
		var b strings.Builder
		if d.Subject != nil && d.Subject.Filename != "" {
			fmt.Fprintf(&b, "%s:%d,%d: ", d.Subject.Filename, d.Subject.Start.Line, d.Subject.Start.Column)
		}
		b.WriteString(d.Summary)
		if d.Detail != "" {
			b.WriteString("; ")
			b.WriteString(d.Detail)
		}
		msgs = append(msgs, b.String())
	}
	if len(msgs) == 0 {
		return errors.New("invalid configuration")
	}
	return errors.New(strings.Join(msgs, "; "))
}
