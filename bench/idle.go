package main

// Idle memory and memory after deleting: a `sigil server` and a `sigil
// agent` process with nothing registered, measured as deployed (VmRSS and
// its anonymous and file-backed parts from /proc/PID/status, and the
// proportional set size from /proc/PID/smaps_rollup); then, on the same
// server, N entries created through the admin API and all deleted, and
// the server's RSS once it has settled, against its idle RSS.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

var (
	idleOnly = flag.Bool("idle-only", false,
		"only measure idle RSS of a server and an agent process, and the server's RSS after creating and deleting -idle-entries entries")
	idleSigil = flag.String("idle-sigil", "",
		"with -idle-only: comma-separated sigil binaries to compare, rounds alternating between them (built from ./cmd/sigil when empty)")
	idleRounds  = flag.Int("idle-rounds", 1, "with -idle-only: rounds per binary")
	idleEntries = flag.Int("idle-entries", 100_000, "entries created then deleted for the after-delete figure (0: skip it)")
	idleWindow  = flag.Duration("idle-window", 0,
		"with -idle-only: also sample the server's RSS every 500 ms for this long after the idle read and after the after-delete read, and report its least, mean and largest value over that window (35s covers one of the agent's 30 s reports, which fault code back in after a drop of the executable's pages); 0: off")
	idleServerConfig = flag.String("idle-server-config", "",
		"with -idle-only: a configuration file passed to every server with -config (e.g. a server block holding only code_pages { readahead = false }); the command-line flags still set the rest")
	idleTrace = flag.Bool("idle-trace", false,
		"with -idle-only: run the server at log level info, print its RSS (anon, file) every second from the first creation to the after-delete read, its file-backed mappings' RSS then (smaps) and its log")
	idleFirst = flag.Bool("idle-first-fetch", false,
		"with -idle-only: register an entry for this user when the agent is ready and, once both processes are idle, time the first and second FetchX509SVID of a new workload (the code of the fetch path is paged in then)")
)

const (
	// idleSettle is how long a process is left alone before its idle
	// memory is read (counted from when both are ready), and the least
	// wait after the last deletion. A daemon drops the pages of its
	// executable it does not use once it has been ready for 10 s and is
	// quiet (internal/exepages); the idle figure is the RSS after that,
	// as it is for as long as the daemon stays idle.
	idleSettle = 20 * time.Second
	// afterSettle is the least wait for the RSS after deleting, on top
	// of releaseWait.
	afterSettle = 5 * time.Second
	// idleBatch is the entries per admin batch call.
	idleBatch = 5_000
	// releaseWait is the wait after the last deletion before the
	// server's memory is read: raftstore returns free memory 2 s after
	// 4,096 entries are deleted (then at most every 30 s), and again 2 s
	// after its entry change feed, quiet for 30 s, drops its records;
	// each release asks for a drop of the executable's unused pages,
	// once quiet and at most 30 s after the one before (exepages).
	releaseWait = 70 * time.Second
	// releaseWithin bounds the wait for the RSS to settle after that.
	releaseWithin = 20 * time.Second
)

// procMem is a process's resident memory in bytes.
type procMem struct {
	RSS  int64 `json:"rss"`      // VmRSS
	Anon int64 `json:"rss_anon"` // RssAnon: what the process allocated itself
	File int64 `json:"rss_file"` // RssFile: mapped file pages (the executable), shared
	PSS  int64 `json:"pss"`      // Pss: shared pages divided among their users
	Priv int64 `json:"pss_anon"` // Pss_Anon
	HWM  int64 `json:"vm_hwm"`   // VmHWM: the largest VmRSS so far
}

func (m procMem) String() string {
	return fmt.Sprintf("RSS %5.1f MiB (anon %4.1f, file %4.1f; PSS %5.1f)", mib(m.RSS), mib(m.Anon), mib(m.File), mib(m.PSS))
}

// readProcMem reads pid's memory from /proc/PID/status and
// /proc/PID/smaps_rollup.
func readProcMem(pid int) (procMem, error) {
	var m procMem
	fields := map[string]*int64{"VmRSS:": &m.RSS, "RssAnon:": &m.Anon, "RssFile:": &m.File, "VmHWM:": &m.HWM}
	if err := readKB(fmt.Sprintf("/proc/%d/status", pid), fields); err != nil {
		return m, err
	}
	fields = map[string]*int64{"Pss:": &m.PSS, "Pss_Anon:": &m.Priv}
	if err := readKB(fmt.Sprintf("/proc/%d/smaps_rollup", pid), fields); err != nil {
		return m, err
	}
	return m, nil
}

// readKB fills each field found in path (lines "Name:   123 kB") in bytes.
func readKB(path string, fields map[string]*int64) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("idle: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		p := fields[name+":"]
		if p == nil {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		if err != nil {
			return fmt.Errorf("idle: %s %s %q: %w", path, name, rest, err)
		}
		*p = kb << 10
	}
	return sc.Err()
}

// settledMem waits at least settle, then until pid's RSS changes by
// less than 1 % over three reads 500 ms apart (at most within), and
// returns its memory.
func settledMem(ctx context.Context, pid int, settle, within time.Duration) (procMem, error) {
	deadline := time.Now().Add(settle + within)
	select {
	case <-ctx.Done():
		return procMem{}, ctx.Err()
	case <-time.After(settle):
	}
	var last []int64
	for {
		m, err := readProcMem(pid)
		if err != nil {
			return m, err
		}
		last = append(last, m.RSS)
		if n := len(last); n >= 3 {
			lo, hi := last[n-3], last[n-3]
			for _, v := range last[n-3:] {
				lo, hi = min(lo, v), max(hi, v)
			}
			if float64(hi-lo) < 0.01*float64(hi) || time.Now().After(deadline) {
				return m, nil
			}
		}
		select {
		case <-ctx.Done():
			return m, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// idleResult is one round of one binary.
type idleResult struct {
	Server, Agent procMem
	// After delete (zero when skipped): the server's memory with the
	// entries, and settled after deleting them all.
	Full, After procMem
	CreateSecs  float64
	// With -idle-window: the server's and the agent's RSS over the
	// window after the idle read, and the server's after the
	// after-delete read.
	ServerWin, AgentWin, AfterWin memWindow
	// With -idle-first-fetch: the first and second fetch of a workload
	// on the idle agent (each a new connection), and the agent's memory
	// after them.
	First, Second time.Duration
	AgentFetched  procMem
	// FirstMajFlt is the agent's major page faults (reads from disk)
	// during the first fetch.
	FirstMajFlt int64
}

// idleRun starts bin's server and agent in dir, measures them idle and,
// with entries > 0, measures the server after creating and deleting them.
func idleRun(ctx context.Context, bin, dir string, entries int) (_ idleResult, err error) {
	var res idleResult
	var procs []*exec.Cmd
	defer func() {
		for _, c := range procs {
			_ = c.Process.Kill()
			_ = c.Wait()
		}
	}()
	var addrs [3]string
	for i := range addrs {
		if addrs[i], err = benchFreeAddr(); err != nil {
			return res, err
		}
	}
	admin := filepath.Join(dir, "admin", "admin.sock")
	start := func(name string, args ...string) (*exec.Cmd, error) {
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
		procs = append(procs, cmd)
		return cmd, nil
	}
	srvLevel := "warn"
	traceStart := time.Now()
	if *idleTrace {
		srvLevel = "info"
	}
	srvArgs := []string{"server", "-trust-domain", td.Name(), "-node-name", "s1",
		"-data-dir", filepath.Join(dir, "server"), "-bind-address", addrs[0], "-health-address", addrs[1],
		"-admin-socket", admin, "-log-level", srvLevel}
	if *idleServerConfig != "" {
		srvArgs = append(srvArgs, "-config", *idleServerConfig)
	}
	srv, err := start("server", srvArgs...)
	if err != nil {
		return res, err
	}
	if *idleTrace {
		stop := traceMem(srv.Process.Pid, traceStart)
		defer stop()
		defer func() {
			printFileMappings(srv.Process.Pid)
			if b, err := os.ReadFile(filepath.Join(dir, "server.log")); err == nil {
				fmt.Fprintf(os.Stderr, "server log:\n%s", b)
			}
		}()
	}
	if err := waitHTTP(ctx, "http://"+addrs[1]+"/ready", time.Minute); err != nil {
		return res, fmt.Errorf("server: %w", err)
	}
	out, err := exec.CommandContext(ctx, bin, "token", "generate", "-socket", admin, "-output", "json").Output()
	if err != nil {
		return res, fmt.Errorf("token generate: %w", err)
	}
	var tok struct {
		Token   string `json:"token"`
		AgentID string `json:"agent_id"`
	}
	if err := json.Unmarshal(out, &tok); err != nil {
		return res, fmt.Errorf("token generate: %w", err)
	}
	bundle, err := exec.CommandContext(ctx, bin, "bundle", "show", "-socket", admin).Output()
	if err != nil {
		return res, fmt.Errorf("bundle show: %w", err)
	}
	bundlePath := filepath.Join(dir, "bundle.pem")
	if err := os.WriteFile(bundlePath, bundle, 0o644); err != nil {
		return res, err
	}
	ag, err := start("agent", "agent", "-trust-domain", td.Name(), "-server-address", addrs[0],
		"-data-dir", filepath.Join(dir, "agent"), "-socket-path", filepath.Join(dir, "public", "api.sock"),
		"-join-token", tok.Token, "-trust-bundle-path", bundlePath, "-health-address", addrs[2], "-log-level", "warn")
	if err != nil {
		return res, err
	}
	if err := waitHTTP(ctx, "http://"+addrs[2]+"/ready", time.Minute); err != nil {
		return res, fmt.Errorf("agent: %w", err)
	}
	if *idleFirst {
		// Registered now, before the idle wait: the agent mints its
		// SVID at once, and the fetch path's code is first run by the
		// timed fetch.
		u, err := user.Current()
		if err != nil {
			return res, err
		}
		if out, err := exec.CommandContext(ctx, bin, "entry", "create", "-socket", admin,
			"-spiffe-id", firstFetchID, "-parent-id", tok.AgentID,
			"-selector", "unix:uid:"+u.Uid).CombinedOutput(); err != nil {
			return res, fmt.Errorf("entry create: %v: %s", err, out)
		}
	}
	if *idleTrace {
		fmt.Fprintf(os.Stderr, "trace %+.1fs: both ready\n", time.Since(traceStart).Seconds())
		defer func() { fmt.Fprintf(os.Stderr, "trace: read idle %v, after %v\n", res.Server, res.After) }()
	}
	if res.Server, err = settledMem(ctx, srv.Process.Pid, idleSettle, 10*time.Second); err != nil {
		return res, err
	}
	if res.Agent, err = settledMem(ctx, ag.Process.Pid, 0, 5*time.Second); err != nil {
		return res, err
	}
	if *idleWindow > 0 {
		ws, err := sampleWindows(ctx, []int{srv.Process.Pid, ag.Process.Pid}, *idleWindow)
		if err != nil {
			return res, err
		}
		res.ServerWin, res.AgentWin = ws[0], ws[1]
	}
	if *idleFirst {
		sock := filepath.Join(dir, "public", "api.sock")
		before, err := majorFaults(ag.Process.Pid)
		if err != nil {
			return res, err
		}
		if res.First, err = timedFirstFetch(ctx, sock); err != nil {
			return res, err
		}
		after, err := majorFaults(ag.Process.Pid)
		if err != nil {
			return res, err
		}
		res.FirstMajFlt = after - before
		if res.Second, err = timedFirstFetch(ctx, sock); err != nil {
			return res, err
		}
		if res.AgentFetched, err = readProcMem(ag.Process.Pid); err != nil {
			return res, err
		}
	}
	if entries <= 0 {
		return res, nil
	}
	conn, err := grpc.NewClient("unix://"+admin, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return res, err
	}
	defer conn.Close()
	api := sigilv1.NewAdminClient(conn)
	// The entries are parented to a node that never attests, so the
	// figure is the server's alone: no agent holds or mints them.
	parent := "spiffe://" + td.Name() + "/sigil/agent/bench/idle-node"
	ids := make([]string, 0, entries)
	began := time.Now()
	if *idleTrace {
		fmt.Fprintf(os.Stderr, "trace %+.1fs: creating\n", time.Since(traceStart).Seconds())
	}
	for lo := 0; lo < entries; lo += idleBatch {
		batch := make([]*sigilv1.Entry, 0, idleBatch)
		for i := lo; i < min(lo+idleBatch, entries); i++ {
			batch = append(batch, &sigilv1.Entry{
				SpiffeId: fmt.Sprintf("spiffe://%s/idle/ns-%d/sa-%d", td.Name(), i%50, i),
				ParentId: parent,
				Selectors: []*sigilv1.Selector{
					{Type: "k8s", Value: fmt.Sprintf("ns:ns-%d", i%50)},
					{Type: "k8s", Value: fmt.Sprintf("sa:sa-%d", i)},
				},
			})
		}
		resp, err := api.BatchCreateEntry(ctx, &sigilv1.BatchCreateEntryRequest{Entries: batch})
		if err != nil {
			return res, fmt.Errorf("batch create entry: %w", err)
		}
		for _, r := range resp.Results {
			if r.Status.GetCode() != 0 {
				return res, fmt.Errorf("create entry: %s", r.Status.GetMessage())
			}
			ids = append(ids, r.Entry.GetId())
		}
	}
	res.CreateSecs = time.Since(began).Seconds()
	if *idleTrace {
		fmt.Fprintf(os.Stderr, "trace %+.1fs: created, deleting\n", time.Since(traceStart).Seconds())
	}
	if res.Full, err = readProcMem(srv.Process.Pid); err != nil {
		return res, err
	}
	for lo := 0; lo < len(ids); lo += idleBatch {
		resp, err := api.BatchDeleteEntry(ctx, &sigilv1.BatchDeleteEntryRequest{Ids: ids[lo:min(lo+idleBatch, len(ids))]})
		if err != nil {
			return res, fmt.Errorf("batch delete entry: %w", err)
		}
		for _, r := range resp.Results {
			if r.Status.GetCode() != 0 {
				return res, fmt.Errorf("delete entry %s: %s", r.Id, r.Status.GetMessage())
			}
		}
	}
	if *idleTrace {
		fmt.Fprintf(os.Stderr, "trace %+.1fs: deleted\n", time.Since(traceStart).Seconds())
	}
	left, err := api.ListEntries(ctx, &sigilv1.ListEntriesRequest{PageSize: 2})
	if err != nil {
		return res, fmt.Errorf("list entries: %w", err)
	}
	for _, e := range left.Entries {
		if e.GetSpiffeId() != firstFetchID {
			return res, errors.New("entries left after deleting them all")
		}
	}
	select {
	case <-ctx.Done():
		return res, ctx.Err()
	case <-time.After(releaseWait):
	}
	if res.After, err = settledMem(ctx, srv.Process.Pid, afterSettle, releaseWithin); err != nil {
		return res, err
	}
	if *idleWindow > 0 {
		ws, err := sampleWindows(ctx, []int{srv.Process.Pid}, *idleWindow)
		if err != nil {
			return res, err
		}
		res.AfterWin = ws[0]
	}
	return res, nil
}

// memWindow is the least, mean and largest RSS (and its anonymous and
// file-backed parts, each taken on its own) of a process sampled over a
// window (-idle-window). A drop of the executable's unused pages leaves
// the file-backed part at its lowest, and code that runs periodically
// (the agent's report every 30 s) maps some of it again: one read is
// the figure of one moment of that cycle, the window's figures are not.
type memWindow struct {
	Samples        int
	Min, Mean, Max procMem
}

// summarizeWindow returns the window of samples (zero when there are none).
func summarizeWindow(samples []procMem) memWindow {
	w := memWindow{Samples: len(samples)}
	if len(samples) == 0 {
		return w
	}
	w.Min, w.Max = samples[0], samples[0]
	var sum procMem
	fields := func(m *procMem) []*int64 { return []*int64{&m.RSS, &m.Anon, &m.File} }
	for _, m := range samples {
		lo, hi, tot, v := fields(&w.Min), fields(&w.Max), fields(&sum), fields(&m)
		for i := range v {
			*lo[i] = min(*lo[i], *v[i])
			*hi[i] = max(*hi[i], *v[i])
			*tot[i] += *v[i]
		}
	}
	mean, tot := fields(&w.Mean), fields(&sum)
	for i := range mean {
		*mean[i] = *tot[i] / int64(len(samples))
	}
	return w
}

// sampleWindows reads the memory of each of pids every 500 ms for d and
// returns their windows, in the order of pids.
func sampleWindows(ctx context.Context, pids []int, d time.Duration) ([]memWindow, error) {
	samples := make([][]procMem, len(pids))
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for end := time.Now().Add(d); ; {
		for i, pid := range pids {
			m, err := readProcMem(pid)
			if err != nil {
				return nil, err
			}
			samples[i] = append(samples[i], m)
		}
		if time.Now().After(end) {
			ws := make([]memWindow, len(pids))
			for i := range samples {
				ws[i] = summarizeWindow(samples[i])
			}
			return ws, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}

func (w memWindow) String() string {
	return fmt.Sprintf("RSS %.1f / %.1f / %.1f MiB (anon %.1f / %.1f / %.1f, file %.1f / %.1f / %.1f)",
		mib(w.Min.RSS), mib(w.Mean.RSS), mib(w.Max.RSS), mib(w.Min.Anon), mib(w.Mean.Anon), mib(w.Max.Anon),
		mib(w.Min.File), mib(w.Mean.File), mib(w.Max.File))
}

// majorFaults is process pid's major page faults so far (field 12 of
// /proc/PID/stat).
func majorFaults(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("idle: %w", err)
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(f) < 10 {
		return 0, fmt.Errorf("idle: /proc/%d/stat: malformed", pid)
	}
	return strconv.ParseInt(f[9], 10, 64)
}

// firstFetchID is the SPIFFE ID of -idle-first-fetch's entry.
var firstFetchID = "spiffe://" + td.Name() + "/bench/idle-first"

// timedFirstFetch times one FetchX509SVID of a new Workload API client
// (connection included).
func timedFirstFetch(ctx context.Context, socket string) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	t0 := time.Now()
	client, err := workloadapi.New(ctx, workloadapi.WithAddr("unix://"+socket))
	if err != nil {
		return 0, fmt.Errorf("idle: workload client: %w", err)
	}
	defer client.Close()
	if _, err := client.FetchX509SVID(ctx); err != nil {
		return 0, fmt.Errorf("idle: first fetch: %w", err)
	}
	return time.Since(t0), nil
}

// benchIdle measures idle memory and memory after deleting for each
// binary, rounds alternating between binaries, and prints each round and
// the medians. With record set (one binary, the full bench), it records
// the figures for the summary.
func benchIdle(ctx context.Context, bins []string, rounds, entries int, rec bool) error {
	if rounds < 1 || entries < 0 {
		return errors.New("-idle-rounds must be at least 1 and -idle-entries at least 0")
	}
	dir, err := os.MkdirTemp("", "sigil-bench-idle-")
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
		fmt.Println("memory: sigil built as released (CGO_ENABLED=0 -trimpath -ldflags '-s -w', as make release and the container image)")
	} else {
		// Every binary installed the same way (see installCopy).
		installed := make([]string, len(bins))
		for i, b := range bins {
			if installed[i], err = installCopy(b, filepath.Join(dir, fmt.Sprintf("sigil-%d", i))); err != nil {
				return fmt.Errorf("idle: %w", err)
			}
		}
		bins = installed
	}
	all := make([][]idleResult, len(bins))
	for r := 0; r < rounds; r++ {
		for i, bin := range bins {
			rdir := filepath.Join(dir, fmt.Sprintf("r%d-b%d", r, i))
			for _, sub := range []string{"admin", "public"} {
				if err := os.MkdirAll(filepath.Join(rdir, sub), 0o700); err != nil {
					return err
				}
			}
			res, err := idleRun(ctx, bin, rdir, entries)
			if err != nil {
				return fmt.Errorf("%s: %w", bin, err)
			}
			all[i] = append(all[i], res)
			fmt.Printf("round %d binary %d: server %v  agent %v\n", r, i, res.Server, res.Agent)
			if *idleFirst {
				fmt.Printf("    first fetch %.2f ms (agent: %d major faults), second %.2f ms; agent then %v\n", ms(res.First), res.FirstMajFlt, ms(res.Second), res.AgentFetched)
			}
			if entries > 0 {
				fmt.Printf("    %d entries created in %.1f s: server %v; all deleted: %v = %.2f of idle; peak RSS %.1f MiB\n",
					entries, res.CreateSecs, res.Full, res.After, float64(res.After.RSS)/float64(res.Server.RSS), mib(res.After.HWM))
			}
			if *idleWindow > 0 {
				fmt.Printf("    over %v (least / mean / largest): server idle %v\n", *idleWindow, res.ServerWin)
				fmt.Printf("    over %v (least / mean / largest): agent idle %v\n", *idleWindow, res.AgentWin)
				if entries > 0 {
					fmt.Printf("    over %v (least / mean / largest): after deleting %v; mean %.2f of idle mean, largest %.2f of idle largest\n", *idleWindow, res.AfterWin,
						float64(res.AfterWin.Mean.RSS)/float64(res.ServerWin.Mean.RSS), float64(res.AfterWin.Max.RSS)/float64(res.ServerWin.Max.RSS))
				}
			}
		}
	}
	for i := range bins {
		rs := all[i]
		med := func(f func(idleResult) int64) float64 {
			v := make([]float64, len(rs))
			for j, r := range rs {
				v[j] = float64(f(r))
			}
			sort.Float64s(v)
			if n := len(v); n%2 == 0 {
				return (v[n/2-1] + v[n/2]) / 2
			}
			return v[len(v)/2]
		}
		srv, agent := med(func(r idleResult) int64 { return r.Server.RSS }), med(func(r idleResult) int64 { return r.Agent.RSS })
		if len(bins) > 1 {
			fmt.Printf("binary %d: %s\n", i, names[i])
		}
		if *idleFirst {
			fmt.Printf("memory idle agent, a new workload's first fetch (median of %d): %.2f ms (%.0f major faults), second %.2f ms; agent RSS then %.1f MiB\n", len(rs),
				ms(time.Duration(med(func(r idleResult) int64 { return int64(r.First) }))), med(func(r idleResult) int64 { return r.FirstMajFlt }),
				ms(time.Duration(med(func(r idleResult) int64 { return int64(r.Second) }))),
				mib(int64(med(func(r idleResult) int64 { return r.AgentFetched.RSS }))))
		}
		fmt.Printf("memory idle RSS (median of %d):              server %6.1f MiB (anon %.1f, file %.1f)  agent %6.1f MiB (anon %.1f, file %.1f)  (goal ≤ 20 / ≤ 16 MiB; SPIRE 143/62 MiB)\n",
			len(rs), mib(int64(srv)), mib(int64(med(func(r idleResult) int64 { return r.Server.Anon }))), mib(int64(med(func(r idleResult) int64 { return r.Server.File }))),
			mib(int64(agent)), mib(int64(med(func(r idleResult) int64 { return r.Agent.Anon }))), mib(int64(med(func(r idleResult) int64 { return r.Agent.File }))))
		ratio := 0.0
		if entries > 0 {
			ratio = med(func(r idleResult) int64 { return r.After.RSS * 1000 / r.Server.RSS }) / 1000
			fmt.Printf("memory server RSS after deleting %d entries: %6.1f MiB, %.2f of idle (anon %.1f MiB against %.1f idle, file %.1f against %.1f; peak RSS %.1f MiB; goal ≤ 1.10)\n",
				entries, mib(int64(med(func(r idleResult) int64 { return r.After.RSS }))), ratio,
				mib(int64(med(func(r idleResult) int64 { return r.After.Anon }))), mib(int64(med(func(r idleResult) int64 { return r.Server.Anon }))),
				mib(int64(med(func(r idleResult) int64 { return r.After.File }))), mib(int64(med(func(r idleResult) int64 { return r.Server.File }))),
				mib(int64(med(func(r idleResult) int64 { return r.After.HWM }))))
		}
		if *idleWindow > 0 {
			fmt.Printf("memory server RSS over %v (medians of %d): idle mean %.1f MiB (anon %.1f, file %.1f), largest %.1f MiB (anon %.1f, file %.1f)\n", *idleWindow, len(rs),
				mib(int64(med(func(r idleResult) int64 { return r.ServerWin.Mean.RSS }))), mib(int64(med(func(r idleResult) int64 { return r.ServerWin.Mean.Anon }))),
				mib(int64(med(func(r idleResult) int64 { return r.ServerWin.Mean.File }))),
				mib(int64(med(func(r idleResult) int64 { return r.ServerWin.Max.RSS }))), mib(int64(med(func(r idleResult) int64 { return r.ServerWin.Max.Anon }))),
				mib(int64(med(func(r idleResult) int64 { return r.ServerWin.Max.File }))))
			fmt.Printf("memory agent RSS over %v (medians of %d): idle mean %.1f MiB (anon %.1f, file %.1f), largest %.1f MiB (anon %.1f, file %.1f)\n", *idleWindow, len(rs),
				mib(int64(med(func(r idleResult) int64 { return r.AgentWin.Mean.RSS }))), mib(int64(med(func(r idleResult) int64 { return r.AgentWin.Mean.Anon }))),
				mib(int64(med(func(r idleResult) int64 { return r.AgentWin.Mean.File }))),
				mib(int64(med(func(r idleResult) int64 { return r.AgentWin.Max.RSS }))), mib(int64(med(func(r idleResult) int64 { return r.AgentWin.Max.Anon }))),
				mib(int64(med(func(r idleResult) int64 { return r.AgentWin.Max.File }))))
			if entries > 0 {
				fmt.Printf("memory server RSS over %v after deleting %d entries (medians of %d): mean %.1f MiB (anon %.1f, file %.1f) = %.2f of idle mean, largest %.1f MiB (anon %.1f, file %.1f) = %.2f of idle largest\n", *idleWindow, entries, len(rs),
					mib(int64(med(func(r idleResult) int64 { return r.AfterWin.Mean.RSS }))), mib(int64(med(func(r idleResult) int64 { return r.AfterWin.Mean.Anon }))),
					mib(int64(med(func(r idleResult) int64 { return r.AfterWin.Mean.File }))),
					med(func(r idleResult) int64 { return r.AfterWin.Mean.RSS * 1000 / r.ServerWin.Mean.RSS })/1000,
					mib(int64(med(func(r idleResult) int64 { return r.AfterWin.Max.RSS }))), mib(int64(med(func(r idleResult) int64 { return r.AfterWin.Max.Anon }))),
					mib(int64(med(func(r idleResult) int64 { return r.AfterWin.Max.File }))),
					med(func(r idleResult) int64 { return r.AfterWin.Max.RSS * 1000 / r.ServerWin.Max.RSS })/1000)
			}
		}
		if rec {
			// With a window (make bench takes one), the goals are checked
			// on its largest values: one read is one moment of the cycle
			// of drops and reports, the largest value holds all along.
			idleGoal := func(g *Goal) *Goal {
				if *idleWindow > 0 {
					return nil
				}
				return g
			}
			record(newFigure("idle RSS, server process (anon+file, one read)", mib(int64(srv)), "MiB", 0,
				idleGoal(&Goal{Text: "≤ 20 MiB", Kind: GoalMaxValue, Bound: 20}), "143 MiB"))
			record(newFigure("idle RSS, agent process (anon+file, one read)", mib(int64(agent)), "MiB", 0,
				idleGoal(&Goal{Text: "≤ 16 MiB", Kind: GoalMaxValue, Bound: 16}), "62 MiB"))
			if *idleWindow > 0 {
				over := fmt.Sprintf("largest over %v", *idleWindow)
				record(newFigure("idle RSS, server process (anon+file, "+over+")", mib(int64(med(func(r idleResult) int64 { return r.ServerWin.Max.RSS }))), "MiB", 0,
					&Goal{Text: "≤ 20 MiB", Kind: GoalMaxValue, Bound: 20}, "143 MiB"))
				record(newFigure("idle RSS, agent process (anon+file, "+over+")", mib(int64(med(func(r idleResult) int64 { return r.AgentWin.Max.RSS }))), "MiB", 0,
					&Goal{Text: "≤ 16 MiB", Kind: GoalMaxValue, Bound: 16}, "62 MiB"))
			}
			record(newFigure("idle anonymous RSS, server process", mib(int64(med(func(r idleResult) int64 { return r.Server.Anon }))), "MiB", 0, nil, ""))
			record(newFigure("idle anonymous RSS, agent process", mib(int64(med(func(r idleResult) int64 { return r.Agent.Anon }))), "MiB", 0, nil, ""))
			if entries > 0 {
				record(newFigure(fmt.Sprintf("server RSS after deleting %d entries / idle (one read each)", entries), ratio, "", 0,
					idleGoal(&Goal{Text: "≤ 1.10", Kind: GoalMaxValue, Bound: 1.10}), ""))
				if *idleWindow > 0 {
					largest := med(func(r idleResult) int64 { return r.AfterWin.Max.RSS * 1000 / r.ServerWin.Max.RSS }) / 1000
					record(newFigure(fmt.Sprintf("server RSS after deleting %d entries / idle (largest over %v each)", entries, *idleWindow), largest, "", 0,
						&Goal{Text: "≤ 1.10", Kind: GoalMaxValue, Bound: 1.10}, ""))
				}
			}
		}
	}
	return nil
}

// idleBins is -idle-sigil split into absolute paths.
func idleBins() ([]string, error) {
	if *idleSigil == "" {
		return nil, nil
	}
	var bins []string
	for _, b := range strings.Split(*idleSigil, ",") {
		abs, err := filepath.Abs(b)
		if err != nil {
			return nil, err
		}
		if _, err := os.Stat(abs); err != nil {
			return nil, fmt.Errorf("-idle-sigil: %w", err)
		}
		bins = append(bins, abs)
	}
	return bins, nil
}

// buildSigilRelease builds ./cmd/sigil into dir as `make release` and the
// container image do: static (no cgo, so no pkcs11 key manager), without
// file paths, symbol table or DWARF.
func buildSigilRelease(ctx context.Context, dir string) (string, error) {
	bin := filepath.Join(dir, "sigil-release")
	gomod, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-s -w", "-o", bin, "./cmd/sigil")
	build.Dir = filepath.Dir(strings.TrimSpace(string(gomod)))
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		return "", fmt.Errorf("building sigil: %w", err)
	}
	return installCopy(bin, filepath.Join(dir, "sigil-installed"))
}

// installCopy copies the executable src to dst with plain writes, as an
// installer (cp, a package manager, an image layer) would, and returns
// dst. The linker writes its output through a memory mapping, which on
// kernels with large page-cache folios (ext4 since 6.x) leaves the fresh
// binary in 2 MiB folios that every process running it maps whole (shown
// as FilePmdMapped in smaps): about 6 MiB more resident per process than
// the same binary installed by copying, an artefact of the build, not of
// Sigil.
func installCopy(src, dst string) (string, error) {
	in, err := os.Open(src)
	if err != nil {
		return "", err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o755)
	if err != nil {
		return "", err
	}
	buf := make([]byte, 64<<10)
	for {
		n, rerr := in.Read(buf)
		if n > 0 {
			if _, err := out.Write(buf[:n]); err != nil {
				out.Close()
				return "", err
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			out.Close()
			return "", rerr
		}
	}
	if err := out.Close(); err != nil {
		return "", err
	}
	return dst, nil
}

// traceMem prints pid's memory every second, with the time since began,
// until the returned function is called (-idle-trace).
func traceMem(pid int, began time.Time) (stop func()) {
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			m, err := readProcMem(pid)
			if err != nil {
				return
			}
			fmt.Fprintf(os.Stderr, "trace +%5.1fs: %v HWM %.1f MiB\n", time.Since(began).Seconds(), m, mib(m.HWM))
		}
	}()
	return func() { close(done) }
}

// printFileMappings prints the resident file-backed mappings of pid
// from /proc/PID/smaps (-idle-trace).
func printFileMappings(pid int) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return
	}
	var head string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 5 && strings.Contains(f[0], "-") && !strings.HasSuffix(f[0], ":") {
			head = line
			continue
		}
		if len(f) == 3 && f[0] == "Rss:" && f[1] != "0" && len(strings.Fields(head)) >= 6 {
			fmt.Fprintf(os.Stderr, "smaps: %s kB  %s\n", f[1], head)
		}
	}
}
