package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"

	"github.com/sigil-id/sigil/agent"
	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/cmd/sigil/internal/cli"
	"github.com/sigil-id/sigil/cmd/sigil/internal/config"
	"github.com/sigil-id/sigil/cmd/sigil/internal/health"
	"github.com/sigil-id/sigil/internal/atomicfile"
	"github.com/sigil-id/sigil/internal/unixsock"
	"github.com/sigil-id/sigil/registration"
	"github.com/sigil-id/sigil/server"
	"github.com/sigil-id/sigil/workloadapi"
)

// devOptions are the settings of `sigil dev`.
type devOptions struct {
	trustDomain string
	dataDir     string
	socket      string
	adminSocket string
	// healthAddress serves /live, /ready and /metrics; "" turns it off.
	healthAddress string
	log           config.Log
	// binary is how the printed commands call sigil.
	binary string
}

// devStateFile records, in the dev data directory, what a later run must
// know: the trust domain the data was made for and the agent's SPIFFE ID
// (the agent keeps its identity across runs, so it is attested once).
const devStateFile = "dev.json"

type devState struct {
	TrustDomain string `json:"trust_domain"`
	AgentID     string `json:"agent_id"`
}

func newDevCommand() *cobra.Command {
	o := devOptions{}
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run a single-node server and an agent in one process, for development",
		Long: `Run a single-node server and an agent in one process. The data directory
persists across runs, so the CA and the agent identity survive a restart.
The current user is registered as a workload (selector unix:uid:<uid>) and
the command prints how to fetch its SVID. Stop with Ctrl-C.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.binary = binaryName()
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runDev(ctx, o, cmd.OutOrStdout(), cmd.ErrOrStderr(), nil)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&o.trustDomain, "trust-domain", "dev.sigil.local", "trust domain of the dev cluster")
	fs.StringVar(&o.dataDir, "data-dir", defaultDevDataDir(), "directory for the server's and agent's state")
	// Root's sockets are under /run/sigil; another user's under
	// $XDG_RUNTIME_DIR/sigil (and without XDG_RUNTIME_DIR, under
	// /run/sigil too, which fails with a message saying what to set:
	// never a guessable path in a shared directory such as /tmp).
	fs.StringVar(&o.socket, "socket", unixsock.DefaultWorkloadSocket(), "path of the Workload API socket")
	fs.StringVar(&o.adminSocket, "admin-socket", unixsock.DefaultAdminSocket(), "path of the admin API socket")
	fs.StringVar(&o.healthAddress, "health-address", defaultDevHealthAddress, "listen address of the /live, /ready and /metrics endpoints, which `sigil healthcheck` probes by default (empty: disabled)")
	fs.StringVar(&o.log.Level, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&o.log.Format, "log-format", "console", "log format: console or json")
	return cmd
}

// defaultDevHealthAddress is where `sigil healthcheck` looks by default.
const defaultDevHealthAddress = "127.0.0.1:8080"

// defaultDevDataDir is $XDG_STATE_HOME/sigil-dev, ~/.local/state/sigil-dev,
// or a per-user directory under the temporary directory.
func defaultDevDataDir() string {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" && filepath.IsAbs(d) {
		return filepath.Join(d, "sigil-dev")
	}
	if home, err := os.UserHomeDir(); err == nil && home != "" {
		return filepath.Join(home, ".local", "state", "sigil-dev")
	}
	return filepath.Join(os.TempDir(), "sigil-dev-"+strconv.Itoa(os.Getuid()))
}

// binaryName is how to call this binary in printed commands: the path it
// was started with if that has a slash (./bin/sigil), else "sigil".
func binaryName() string {
	if len(os.Args) > 0 && strings.Contains(os.Args[0], "/") {
		return os.Args[0]
	}
	return "sigil"
}

// devReady is what runDev reports once everything is up; tests use it.
type devReady struct {
	TrustDomain spiffeid.TrustDomain
	SocketPath  string
	SPIFFEID    spiffeid.ID
	AgentID     spiffeid.ID
}

// runDev runs the dev server and agent until ctx is done. onReady, when
// not nil, is called once the agent is ready.
func runDev(ctx context.Context, o devOptions, stdout, stderr io.Writer, onReady func(devReady)) (err error) {
	td, err := spiffeid.TrustDomainFromString(o.trustDomain)
	if err != nil {
		return fmt.Errorf("invalid -trust-domain %q: %v", o.trustDomain, err)
	}
	if o.dataDir == "" {
		return errors.New("-data-dir is empty")
	}
	dataDir, err := filepath.Abs(o.dataDir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return fmt.Errorf("dev data directory: %w", err)
	}
	release, err := lockDir(dataDir, "dev.lock")
	if err != nil {
		return fmt.Errorf("%v: is another `sigil dev` running?", err)
	}
	defer release()
	// Refuse socket paths another user could take over, or that another
	// running sigil holds, before writing any state (the server and the
	// agent check again when they listen).
	if err := unixsock.Check(o.adminSocket, unixsock.Options{Name: "admin API socket"}); err != nil {
		return err
	}
	if err := workloadapi.CheckSocket(o.socket); err != nil {
		return err
	}
	// The health endpoint listens before any state is written, so that a
	// busy port is reported first. It is ready once the server and the
	// agent are, and while the agent stays healthy.
	var (
		devUp    = make(chan struct{})
		devAgent atomic.Pointer[agent.Agent]
		metrics  atomic.Pointer[http.Handler]
	)
	if o.healthAddress != "" {
		ready := func() error {
			select {
			case <-devUp:
			default:
				return errors.New("sigil dev is starting")
			}
			return devAgent.Load().Healthy()
		}
		hs, err := health.Start(o.healthAddress, ready, nil, health.WithHandler("/metrics", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if h := metrics.Load(); h != nil {
				(*h).ServeHTTP(w, r)
				return
			}
			http.Error(w, "sigil dev is starting", http.StatusServiceUnavailable)
		})))
		if err != nil {
			return fmt.Errorf("%w (choose another port with -health-address, or turn the endpoint off with -health-address '')", err)
		}
		defer stopHealth(hs, zap.NewNop())
		o.healthAddress = hs.Addr().String()
	}
	defer func() {
		switch {
		case ctx.Err() != nil:
			// Interrupted (Ctrl-C, SIGTERM): a clean exit, even during
			// startup.
			err = nil
		case errors.Is(err, unixsock.ErrInUse), errors.Is(err, unixsock.ErrUnsafe):
			// A socket problem: the dev state is not the cause.
		case err != nil:
			err = fmt.Errorf("%w (dev state is in %s; remove it to start from scratch)", err, dataDir)
		}
	}()
	state, err := loadDevState(dataDir)
	if err != nil {
		return err
	}
	if state.TrustDomain != "" && state.TrustDomain != td.Name() {
		return fmt.Errorf("the dev data directory belongs to trust domain %q, not %q; use another -data-dir", state.TrustDomain, td.Name())
	}
	if o.binary == "" {
		o.binary = "sigil"
	}

	log, err := config.NewLogger(o.log, "console", stderr)
	if err != nil {
		return err
	}
	defer log.Sync() //nolint:errcheck // stderr may not support sync

	// Identity of the invoking user.
	uid := os.Getuid()
	userID, err := spiffeid.FromSegments(td, "dev", devUserName(uid))
	if err != nil {
		return fmt.Errorf("SPIFFE ID for the current user: %w", err)
	}

	// The server.
	scfg := server.DefaultConfig()
	scfg.TrustDomain = td
	scfg.NodeName = "dev"
	scfg.DataDir = filepath.Join(dataDir, "server")
	scfg.BindAddress = "127.0.0.1:0"
	scfg.AdminSocket = o.adminSocket
	scfg.Logger = log.Named("server")
	if err := serverPlugins(&config.Server{}, &scfg); err != nil {
		return err
	}
	if err := scfg.Validate(); err != nil {
		return err
	}
	srv, err := server.New(scfg)
	if err != nil {
		return err
	}
	mh := srv.MetricsHandler()
	metrics.Store(&mh)

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		who string
		err error
	}
	done := make(chan result, 2)
	running := 0
	defer func() {
		// Stop whatever is running and wait for it, so that sockets and
		// data files are released before we return.
		cancel()
		for ; running > 0; running-- {
			r := <-done
			if r.err != nil && !errors.Is(r.err, context.Canceled) {
				log.Warn("stopped with error", zap.String("component", r.who), zap.Error(r.err))
			}
		}
	}()
	start := func(who string, run func(context.Context) error) {
		running++
		go func() { done <- result{who, run(runCtx)} }()
	}
	// wait returns nil when ch closes, or the reason it never will.
	wait := func(ch <-chan struct{}, what string) error {
		hint := time.NewTimer(30 * time.Second)
		defer hint.Stop()
		for {
			select {
			case <-ch:
				return nil
			case r := <-done:
				running--
				if r.err == nil || errors.Is(r.err, context.Canceled) {
					return fmt.Errorf("%s stopped before it was ready", r.who)
				}
				return prefixed(r.who, r.err)
			case <-ctx.Done():
				return ctx.Err()
			case <-hint.C:
				log.Warn("still waiting", zap.String("for", what))
			}
		}
	}

	start("server", srv.Run)
	if err := wait(srv.Ready(), "server"); err != nil {
		return err
	}

	admin, err := cli.DialAdmin(o.adminSocket)
	if err != nil {
		return err
	}
	defer admin.Close()

	// The agent keeps its identity in its data directory; attest with a
	// new join token only when it has none, or when the one it saved
	// expired while dev was stopped (the agent cannot re-attest with the
	// token it spent): the user's entry moves to the new agent ID.
	agentDir := filepath.Join(dataDir, "agent")
	var joinToken string
	agentID, _ := spiffeid.FromString(state.AgentID)
	if state.AgentID == "" || agentID.IsZero() || isEmptyDir(agentDir) || !agent.SavedIdentityValid(agentDir, td, time.Now()) {
		tctx, tcancel := context.WithTimeout(ctx, 30*time.Second)
		tok, err := admin.CreateJoinToken(tctx, &sigilv1.CreateJoinTokenRequest{})
		tcancel()
		if err != nil {
			return admin.RPCError("create join token", err)
		}
		if agentID, err = spiffeid.FromString(tok.GetAgentId()); err != nil {
			return fmt.Errorf("server returned invalid agent ID %q: %v", tok.GetAgentId(), err)
		}
		joinToken = tok.GetToken()
		log.Info("attesting the dev agent with a new join token", zap.String("agent_id", agentID.String()))
	}

	if err := ensureDevEntry(ctx, admin, userID, agentID, uid); err != nil {
		return err
	}

	acfg := agent.DefaultConfig()
	acfg.TrustDomain = td
	acfg.ServerAddress = srv.NodeAddr().String()
	acfg.DataDir = agentDir
	acfg.SocketPath = o.socket
	acfg.TrustBundle = srv.Bundle()
	acfg.Logger = log.Named("agent")
	if err := agentPlugins(&config.Agent{JoinToken: joinToken}, &acfg); err != nil {
		return err
	}
	if err := acfg.Validate(); err != nil {
		return err
	}
	ag, err := agent.New(acfg)
	if err != nil {
		return err
	}
	devAgent.Store(ag)
	start("agent", ag.Run)
	if err := wait(ag.Ready(), "agent"); err != nil {
		return err
	}
	if err := saveDevState(dataDir, devState{TrustDomain: td.Name(), AgentID: agentID.String()}); err != nil {
		return err
	}

	close(devUp)
	printDevBanner(stdout, o, td, dataDir, userID, uid)
	if onReady != nil {
		onReady(devReady{TrustDomain: td, SocketPath: o.socket, SPIFFEID: userID, AgentID: agentID})
	}

	select {
	case <-ctx.Done():
		log.Info("shutting down")
		return nil
	case r := <-done:
		running--
		if r.err == nil || errors.Is(r.err, context.Canceled) {
			return fmt.Errorf("%s stopped unexpectedly", r.who)
		}
		return prefixed(r.who, r.err)
	}
}

// ensureDevEntry registers spiffeID for processes of uid under the agent,
// unless an identical entry exists from an earlier run.
func ensureDevEntry(ctx context.Context, admin *cli.AdminConn, spiffeID, parentID spiffeid.ID, uid int) error {
	want := &sigilv1.Entry{
		SpiffeId:  spiffeID.String(),
		ParentId:  parentID.String(),
		Selectors: []*sigilv1.Selector{{Type: "unix", Value: "uid:" + strconv.Itoa(uid)}},
	}
	existing, err := cli.ListAllEntries(ctx, admin, &sigilv1.ListEntriesRequest{
		SpiffeId:  want.SpiffeId,
		ParentId:  want.ParentId,
		Selectors: want.Selectors,
	})
	if err != nil {
		return err
	}
	for _, e := range existing {
		if registration.Key(e) == registration.Key(want) {
			return nil
		}
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := admin.BatchCreateEntry(cctx, &sigilv1.BatchCreateEntryRequest{Entries: []*sigilv1.Entry{want}})
	if err != nil {
		return admin.RPCError("register the current user", err)
	}
	if len(resp.GetResults()) != 1 {
		return fmt.Errorf("register the current user: server answered %d results", len(resp.GetResults()))
	}
	st := resp.GetResults()[0].GetStatus()
	if c := codes.Code(st.GetCode()); c != codes.OK && c != codes.AlreadyExists {
		return fmt.Errorf("register the current user: %s: %s", c, st.GetMessage())
	}
	return nil
}

// devUserName is the current user's name as a SPIFFE ID path segment.
func devUserName(uid int) string {
	name := ""
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	if name == "" {
		name = os.Getenv("USER")
	}
	var b strings.Builder
	for _, r := range name {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '.':
			b.WriteRune(r)
		default:
			b.WriteRune('_')
		}
	}
	s := b.String()
	if s == "" || strings.Trim(s, ".") == "" {
		return "uid-" + strconv.Itoa(uid)
	}
	return s
}

func printDevBanner(w io.Writer, o devOptions, td spiffeid.TrustDomain, dataDir string, id spiffeid.ID, uid int) {
	adminFlag := ""
	if o.adminSocket != unixsock.ClientSocket(unixsock.AdminSocketName) {
		adminFlag = " -socket " + o.adminSocket
	}
	healthLines := ""
	if o.healthAddress != "" {
		healthCmd := o.binary + " healthcheck"
		if o.healthAddress != defaultDevHealthAddress {
			healthCmd += " -url http://" + o.healthAddress + "/ready"
		}
		healthLines = fmt.Sprintf("  Health endpoint     : http://%s/ready (and /live, /metrics); check it with: %s\n", o.healthAddress, healthCmd)
	}
	fmt.Fprintf(w, `
Sigil dev mode is running; press Ctrl-C to stop.

  Trust domain        : %s
  Workload API socket : %s
  Admin API socket    : %s
  Data directory      : %s
  Your SPIFFE ID      : %s (processes with uid %d)
%s
Fetch your SVID:
  %s svid fetch -socket %s

Write it to files and verify it with openssl:
  %s svid fetch -socket %s -write /tmp/svid && openssl verify -CAfile /tmp/svid/bundle.pem /tmp/svid/svid.pem

List the registration entries:
  %s entry list%s

`, td.Name(), o.socket, o.adminSocket, dataDir, id, uid, healthLines,
		o.binary, o.socket,
		o.binary, o.socket,
		o.binary, adminFlag)
}

func loadDevState(dir string) (devState, error) {
	var s devState
	b, err := os.ReadFile(filepath.Join(dir, devStateFile))
	if errors.Is(err, os.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return s, fmt.Errorf("dev state: %w", err)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("dev state %s is corrupt: %v", filepath.Join(dir, devStateFile), err)
	}
	return s, nil
}

func saveDevState(dir string, s devState) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, devStateFile), append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("dev state: %w", err)
	}
	return nil
}

// isEmptyDir reports whether dir is missing or has no entries.
func isEmptyDir(dir string) bool {
	f, err := os.Open(dir)
	if err != nil {
		return true
	}
	defer f.Close()
	names, _ := f.Readdirnames(1)
	return len(names) == 0
}
