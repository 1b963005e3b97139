package main

// An agent with a million entries parented to it, as deployed
// (-agent-1m-only): a `sigil server` process and `sigil agent` processes
// (built as released, installed by copying). N entries are created
// through the admin API in batches of 10,000, parented to the agent
// before it first starts, of which `active` match this process as a
// workload (its uid) and the rest match nothing on the machine. Each run
// starts an agent process (the first attests with a join token, the
// others load the identity it saved: the same agent ID) whose first sync
// is a full sync of every entry; this process fetches the active SVIDs
// through the Workload API with go-spiffe's client and keeps watching
// (so they stay active) until the agent logs the drop of its
// executable's unused pages (at most 90 s) and its memory settles, then reads the
// agent's and the server's memory (/proc/PID/status and smaps_rollup)
// and stops the agent. Runs alternate between the binaries compared; the
// server (the first binary's) and its entries are shared by all runs.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

var (
	agent1mOnly = flag.Bool("agent-1m-only", false,
		"only measure a `sigil agent` process with -agent-1m-entries entries parented to it, -agent-1m-active of them fetched by this process: its RSS, peak and full sync time")
	agent1mSigil = flag.String("agent-1m-sigil", "",
		"with -agent-1m-only: comma-separated sigil binaries to compare, rounds alternating between them (built from ./cmd/sigil as released when empty)")
	agent1mRounds  = flag.Int("agent-1m-rounds", 1, "with -agent-1m-only: rounds per binary")
	agent1mEntries = flag.Int("agent-1m-entries", 1_000_000, "with -agent-1m-only: entries parented to the agent")
	agent1mActive  = flag.Int("agent-1m-active", 1000, "with -agent-1m-only: of those, entries matching this process (fetched, so active)")
	agent1mLetters = flag.Bool("agent-1m-letters", false, "with -agent-1m-only: name the entries (namespaces, service accounts, SPIFFE IDs) in letters instead of numbers (workload-hjkl, not workload-123)")
	agent1mLogs    = flag.String("agent-1m-logs", "", "with -agent-1m-only: copy each round's agent log to this directory (run with GODEBUG=gctrace=1 to see the agent's heap)")
)

// agent1mBatch is the entries per BatchCreateEntry call (the most one
// call may carry, server.MaxAdminBatch).
const agent1mBatch = 10_000

// agent1mResult is one round of one binary.
type agent1mResult struct {
	CreateSecs float64 // creating every entry through the admin API
	ReadySecs  float64 // agent start -> /ready (attested, full sync applied)
	FetchSecs  float64 // agent start -> this process holds every active SVID
	Agent      procMem // settled, with the watch open
	Server     procMem // at the same time
	SyncedLog  bool    // the agent's log reports a sync of every entry
	// Dropped: the agent's log reports the drop of its executable's
	// unused pages (internal/exepages) before its memory was read.
	Dropped bool
}

// agent1mDropMsg is the agent's log message once it dropped its
// executable's unused pages (cmd/sigil startCodePages).
const agent1mDropMsg = "dropped the executable's unused pages"

// agent1mDropWait is the most the bench waits, after the SVIDs, for the
// agent to drop its executable's unused pages (it does 10 s after ready
// at the earliest, once it used less than 2.5 % of a core over 2 s).
const agent1mDropWait = 90 * time.Second

// agent1mServer is the server process of every run and its entries.
type agent1mServer struct {
	procs      []*exec.Cmd
	srv        *exec.Cmd
	nodeAddr   string
	token      string
	bundlePath string
	createSecs float64
}

func (s *agent1mServer) stop() {
	for _, c := range s.procs {
		_ = c.Process.Kill()
		_ = c.Wait()
	}
}

// startProc starts bin with args in dir, its output in dir/name.log.
func startProc(ctx context.Context, bin, dir, name string, args ...string) (*exec.Cmd, error) {
	logf, err := os.Create(filepath.Join(dir, name+".log"))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return cmd, nil
}

// agent1mSetup starts bin's server in dir and creates the entries.
func agent1mSetup(ctx context.Context, bin, dir string, entries, active int) (_ *agent1mServer, err error) {
	s := &agent1mServer{}
	defer func() {
		if err != nil {
			s.stop()
		}
	}()
	var health string
	if s.nodeAddr, err = benchFreeAddr(); err != nil {
		return nil, err
	}
	if health, err = benchFreeAddr(); err != nil {
		return nil, err
	}
	for _, sub := range []string{"admin", "public"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			return nil, err
		}
	}
	admin := filepath.Join(dir, "admin", "admin.sock")
	if s.srv, err = startProc(ctx, bin, dir, "server", "server", "-trust-domain", td.Name(), "-node-name", "s1",
		"-data-dir", filepath.Join(dir, "server"), "-bind-address", s.nodeAddr, "-health-address", health,
		"-admin-socket", admin, "-log-level", "warn"); err != nil {
		return nil, err
	}
	s.procs = append(s.procs, s.srv)
	if err := waitHTTP(ctx, "http://"+health+"/ready", time.Minute); err != nil {
		return nil, fmt.Errorf("agent1m: server: %w", err)
	}
	conn, err := grpc.NewClient("unix://"+admin, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	api := sigilv1.NewAdminClient(conn)
	tok, err := api.CreateJoinToken(ctx, &sigilv1.CreateJoinTokenRequest{})
	if err != nil {
		return nil, fmt.Errorf("agent1m: create join token: %w", err)
	}
	s.token = tok.Token
	bundle, err := exec.CommandContext(ctx, bin, "bundle", "show", "-socket", admin).Output()
	if err != nil {
		return nil, fmt.Errorf("agent1m: bundle show: %w", err)
	}
	s.bundlePath = filepath.Join(dir, "bundle.pem")
	if err := os.WriteFile(s.bundlePath, bundle, 0o644); err != nil {
		return nil, err
	}

	// The entries, before the agent first starts. The active ones come
	// last, one selector each (this process's uid, with which the unix
	// workload attestor matches it); the others are shaped like a
	// Kubernetes node's (a namespace shared by many, a service account
	// of their own, a container name shared by all), which no workload
	// on this machine has.
	uid := strconv.Itoa(os.Geteuid())
	began := time.Now()
	for lo := 0; lo < entries; lo += agent1mBatch {
		batch := make([]*sigilv1.Entry, 0, agent1mBatch)
		for i := lo; i < min(lo+agent1mBatch, entries); i++ {
			e := &sigilv1.Entry{ParentId: tok.AgentId}
			if i >= entries-active {
				e.SpiffeId = fmt.Sprintf("spiffe://%s/bench/active/w-%d", td.Name(), i)
				e.Selectors = []*sigilv1.Selector{{Type: "unix", Value: "uid:" + uid}}
			} else {
				team, wl := fmt.Sprintf("team-%d", i%200), fmt.Sprintf("workload-%d", i)
				if *agent1mLetters {
					team, wl = "team-"+letterName(i%200), "workload-"+letterName(i)
				}
				e.SpiffeId = fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", td.Name(), team, wl)
				e.Selectors = []*sigilv1.Selector{
					{Type: "k8s", Value: "ns:" + team},
					{Type: "k8s", Value: "sa:" + wl},
					{Type: "k8s", Value: "container-name:app"},
				}
			}
			batch = append(batch, e)
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		resp, err := api.BatchCreateEntry(cctx, &sigilv1.BatchCreateEntryRequest{Entries: batch})
		cancel()
		if err != nil {
			return nil, fmt.Errorf("agent1m: batch create entry: %w", err)
		}
		if len(resp.Results) != len(batch) {
			return nil, fmt.Errorf("agent1m: batch create entry: %d results for %d entries", len(resp.Results), len(batch))
		}
		for _, r := range resp.Results {
			if r.Status.GetCode() != 0 {
				return nil, fmt.Errorf("agent1m: create entry: %s", r.Status.GetMessage())
			}
		}
	}
	s.createSecs = time.Since(began).Seconds()
	return s, nil
}

// agent1mRun is one run: bin's agent against s, the agent's data dir
// shared by every run (the identity the first run saved), its socket and
// log in dir.
func agent1mRun(ctx context.Context, s *agent1mServer, bin, dataDir, dir string, entries, active int) (_ agent1mResult, err error) {
	res := agent1mResult{CreateSecs: s.createSecs}
	health, err := benchFreeAddr()
	if err != nil {
		return res, err
	}
	if err := os.MkdirAll(filepath.Join(dir, "public"), 0o700); err != nil {
		return res, err
	}
	socket := filepath.Join(dir, "public", "api.sock")
	agentStart := time.Now()
	ag, err := startProc(ctx, bin, dir, "agent", "agent", "-trust-domain", td.Name(), "-server-address", s.nodeAddr,
		"-data-dir", dataDir, "-socket-path", socket,
		"-join-token", s.token, "-trust-bundle-path", s.bundlePath, "-health-address", health, "-log-level", "info")
	if err != nil {
		return res, err
	}
	defer func() {
		_ = ag.Process.Kill()
		_ = ag.Wait()
	}()
	// The watch starts as soon as the socket is there (the client
	// retries until the agent listens) and stays open until the memory
	// is read: the active SVIDs are those of a connected workload.
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	w := &svidCounter{want: active, all: make(chan struct{})}
	watchErr := make(chan error, 1)
	go func() {
		client, err := workloadapi.New(wctx, workloadapi.WithAddr("unix://"+socket))
		if err != nil {
			watchErr <- err
			return
		}
		defer client.Close()
		watchErr <- client.WatchX509Context(wctx, w)
	}()
	ready := make(chan error, 1)
	go func() {
		err := waitHTTP(ctx, "http://"+health+"/ready", 5*time.Minute)
		if err == nil {
			res.ReadySecs = time.Since(agentStart).Seconds()
		}
		ready <- err
	}()
	if err := <-ready; err != nil {
		return res, fmt.Errorf("agent1m: agent: %w", err)
	}
	select {
	case <-w.all:
		res.FetchSecs = time.Since(agentStart).Seconds()
	case err := <-watchErr:
		return res, fmt.Errorf("agent1m: watch ended: %v", err)
	case <-time.After(5 * time.Minute):
		return res, fmt.Errorf("agent1m: %d of %d SVIDs after 5 minutes", w.seen(), active)
	case <-ctx.Done():
		return res, ctx.Err()
	}
	// The agent drops its executable's unused pages once quiet, 10 s
	// after ready at the earliest: wait (bounded) until its log says it
	// did, then let its memory settle, so that the figure is that of
	// the settled daemon and says whether the drop happened.
	logPath := filepath.Join(dir, "agent.log")
	for deadline := time.Now().Add(agent1mDropWait); ; {
		if b, err := os.ReadFile(logPath); err == nil && strings.Contains(string(b), agent1mDropMsg) {
			res.Dropped = true
			break
		}
		if time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case <-time.After(time.Second):
		}
	}
	if res.Agent, err = settledMem(ctx, ag.Process.Pid, idleSettle, 30*time.Second); err != nil {
		return res, err
	}
	if res.Server, err = readProcMem(s.srv.Process.Pid); err != nil {
		return res, err
	}
	if n := w.seen(); n != active {
		return res, fmt.Errorf("agent1m: the workload holds %d SVIDs after settling, want %d", n, active)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "agent.log")); err == nil {
		res.SyncedLog = strings.Contains(string(b), fmt.Sprintf("\"entries\": %d", entries)) ||
			strings.Contains(string(b), fmt.Sprintf("\"entries\":%d", entries)) ||
			strings.Contains(string(b), fmt.Sprintf("entries=%d", entries))
	}
	return res, nil
}

// letterName writes i in base 26 with the letters a-z: a name unique per
// entry that does not end in a decimal number (-agent-1m-letters).
func letterName(i int) string {
	var b [16]byte
	n := len(b)
	for {
		n--
		b[n] = byte('a' + i%26)
		i /= 26
		if i == 0 {
			break
		}
	}
	return string(b[n:])
}

// svidCounter is a go-spiffe X509ContextWatcher that closes all once an
// update carries want SVIDs.
type svidCounter struct {
	want int
	all  chan struct{}
	n    atomic.Int64
	done bool
}

func (s *svidCounter) OnX509ContextUpdate(c *workloadapi.X509Context) {
	s.n.Store(int64(len(c.SVIDs)))
	if len(c.SVIDs) >= s.want && !s.done {
		s.done = true
		close(s.all)
	}
}

func (s *svidCounter) OnX509ContextWatchError(error) {}

func (s *svidCounter) seen() int { return int(s.n.Load()) }

// benchAgent1M runs rounds of agent1mRun for each binary, alternating,
// and prints each round and the medians.
func benchAgent1M(ctx context.Context, bins []string, rounds, entries, active int) error {
	if rounds < 1 || entries < 1 {
		return errors.New("agent1m: -agent-1m-rounds and -agent-1m-entries must be at least 1")
	}
	dir, err := os.MkdirTemp("", "sigil-bench-agent1m-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	names := append([]string(nil), bins...)
	if len(bins) == 0 {
		bin, err := buildSigilRelease(ctx, dir)
		if err != nil {
			return err
		}
		bins, names = []string{bin}, []string{"./cmd/sigil as released"}
	} else {
		installed := make([]string, len(bins))
		for i, b := range bins {
			if installed[i], err = installCopy(b, filepath.Join(dir, fmt.Sprintf("sigil-%d", i))); err != nil {
				return fmt.Errorf("agent1m: %w", err)
			}
		}
		bins = installed
	}
	naming := "numbers"
	if *agent1mLetters {
		naming = "letters"
	}
	fmt.Printf("agent with %d entries parented to it (names in %s), %d active (fetched by this process); sigil as released, installed by copying\n", entries, naming, active)
	srv, err := agent1mSetup(ctx, bins[0], filepath.Join(dir, "server"), entries, active)
	if err != nil {
		return err
	}
	defer srv.stop()
	fmt.Printf("%d entries created in %.1f s (batches of %d)\n", entries, srv.createSecs, agent1mBatch)
	dataDir := filepath.Join(dir, "agent-data")
	all := make([][]agent1mResult, len(bins))
	for r := 0; r < rounds; r++ {
		for k := range bins {
			// The order reversed every other round.
			i := k
			if r%2 == 1 {
				i = len(bins) - 1 - k
			}
			rdir := filepath.Join(dir, fmt.Sprintf("r%d-b%d", r, i))
			res, err := agent1mRun(ctx, srv, bins[i], dataDir, rdir, entries, active)
			if err != nil {
				return fmt.Errorf("%s: %w", names[i], err)
			}
			if *agent1mLogs != "" {
				if b, err := os.ReadFile(filepath.Join(rdir, "agent.log")); err == nil {
					_ = os.WriteFile(filepath.Join(*agent1mLogs, fmt.Sprintf("agent-r%d-b%d.log", r, i)), b, 0o644)
				}
			}
			all[i] = append(all[i], res)
			fmt.Printf("round %d binary %d: agent VmRSS %.1f MiB (RssAnon %.1f, RssFile %.1f, Pss %.1f, VmHWM %.1f); /ready (full sync) %.2f s, %d SVIDs %.2f s after start (sync logged: %v; code pages dropped before the read: %v); server %v; load %s\n",
				r, i, mib(res.Agent.RSS), mib(res.Agent.Anon), mib(res.Agent.File), mib(res.Agent.PSS), mib(res.Agent.HWM),
				res.ReadySecs, active, res.FetchSecs, res.SyncedLog, res.Dropped, res.Server, loadAvg())
		}
	}
	for i := range bins {
		rs := all[i]
		med := func(f func(agent1mResult) float64) float64 {
			v := make([]float64, len(rs))
			for j, r := range rs {
				v[j] = f(r)
			}
			return median(v)
		}
		fmt.Printf("binary %d (%s), median of %d: agent VmRSS %.1f MiB (RssAnon %.1f, RssFile %.1f, Pss %.1f, VmHWM %.1f; goal ≤ 100 MiB); /ready %.2f s; SVIDs %.2f s; server RSS %.1f MiB\n",
			i, names[i], len(rs),
			med(func(r agent1mResult) float64 { return mib(r.Agent.RSS) }),
			med(func(r agent1mResult) float64 { return mib(r.Agent.Anon) }),
			med(func(r agent1mResult) float64 { return mib(r.Agent.File) }),
			med(func(r agent1mResult) float64 { return mib(r.Agent.PSS) }),
			med(func(r agent1mResult) float64 { return mib(r.Agent.HWM) }),
			med(func(r agent1mResult) float64 { return r.ReadySecs }),
			med(func(r agent1mResult) float64 { return r.FetchSecs }),
			med(func(r agent1mResult) float64 { return mib(r.Server.RSS) }))
	}
	return nil
}

// agent1mBins is -agent-1m-sigil split into absolute paths.
func agent1mBins() ([]string, error) {
	if *agent1mSigil == "" {
		return nil, nil
	}
	var bins []string
	for _, b := range strings.Split(*agent1mSigil, ",") {
		abs, err := filepath.Abs(b)
		if err != nil {
			return nil, err
		}
		if _, err := os.Stat(abs); err != nil {
			return nil, fmt.Errorf("-agent-1m-sigil: %w", err)
		}
		bins = append(bins, abs)
	}
	return bins, nil
}

// loadAvg is the first three fields of /proc/loadavg.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
