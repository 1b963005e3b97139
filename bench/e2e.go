package main

import (
	"context"
	"crypto/x509"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/sigil-id/sigil/agent"
	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/attestor/node/jointoken"
	"github.com/sigil-id/sigil/attestor/workload"
	"github.com/sigil-id/sigil/attestor/workload/unix"
)

// Flags of the agent's measurement alone (-e2e-only).
var (
	e2eOnly = flag.Bool("e2e-only", false,
		"only measure the agent: X.509-SVIDs end to end through a real agent (this process) against a `sigil server` process, "+
			"with the CPU per SVID of each; agent start -> first SVID with 1,000 and 10,000 entries; admin batches of 10,000 entries alone")
	e2eSigil  = flag.String("e2e-sigil", "", "with -e2e-only: a prebuilt sigil binary for the server (default: build ./cmd/sigil)")
	e2eRounds = flag.Int("e2e-rounds", 3, "with -e2e-only: rounds of each measurement (medians are printed)")
	e2eSVIDs  = flag.Int("e2e-svids", 5000, "with -e2e-only: entries minted end to end per round (at most 10,000)")
	e2ePerf   = flag.String("e2e-server-perf", "",
		"with -e2e-only: record the server process with `perf record -g` during each round's minting into PREFIX.<round>.data (read it with perf report)")
	e2eGCTrace = flag.Bool("e2e-server-gctrace", false,
		"with -e2e-only: run the server with GODEBUG=gctrace=1 and print how many garbage collections it ran during each round's minting")
)

// e2eServerEnv holds the -e2e-server-env settings, in order.
var e2eServerEnv []string

func init() {
	flag.Func("e2e-server-env",
		"with -e2e-only: a NAME=VALUE setting added to the server process's environment (e.g. GOGC=200), not to this process's; may be given several times",
		func(v string) error {
			if name, _, ok := strings.Cut(v, "="); !ok || name == "" {
				return fmt.Errorf("want NAME=VALUE, not %q", v)
			}
			e2eServerEnv = append(e2eServerEnv, v)
			return nil
		})
}

// serverEnv is the server process's environment: this process's, with
// the -e2e-server-env settings and, with -e2e-server-gctrace,
// gctrace=1 added to GODEBUG (to the one given, if any); nil (inherit)
// with neither.
func serverEnv() []string {
	if !*e2eGCTrace && len(e2eServerEnv) == 0 {
		return nil
	}
	env := append(os.Environ(), e2eServerEnv...)
	if *e2eGCTrace {
		debug := "gctrace=1"
		for _, kv := range env {
			if v, ok := strings.CutPrefix(kv, "GODEBUG="); ok && v != "" {
				debug = v + ",gctrace=1" // the last one is the one exec keeps
			}
		}
		env = append(env, "GODEBUG="+debug)
	}
	return env
}

// adminBatchSize is the size of the admin batches timed alone: the
// largest one call may carry (server.MaxAdminBatch).
const adminBatchSize = 10000

// adminBatchRate times rounds BatchCreateEntry calls of adminBatchSize
// entries each, with no agent minting meanwhile: the entries are parented
// to an ID that no agent has, so no sync stream carries them. Each
// round's entries are deleted (not timed) before the next. It returns the
// median entries created per second.
func adminBatchRate(ctx context.Context, admin sigilv1.AdminClient, rounds int) (float64, error) {
	var rates []float64
	for r := range rounds {
		entries := make([]*sigilv1.Entry, adminBatchSize)
		for i := range entries {
			entries[i] = &sigilv1.Entry{
				SpiffeId:  fmt.Sprintf("spiffe://%s/bench/admin%d/%d", td.Name(), r, i),
				ParentId:  fmt.Sprintf("spiffe://%s/bench/nobody", td.Name()),
				Selectors: []*sigilv1.Selector{noWorkloadSelector(fmt.Sprintf("admin%d-%d", r, i))},
			}
		}
		start := time.Now()
		created, err := admin.BatchCreateEntry(ctx, &sigilv1.BatchCreateEntryRequest{Entries: entries})
		if err != nil {
			return 0, err
		}
		took := time.Since(start)
		ids := make([]string, 0, len(created.Results))
		for _, res := range created.Results {
			if res.Status.Code != 0 {
				return 0, fmt.Errorf("create: %s", res.Status.Message)
			}
			ids = append(ids, res.Entry.Id)
		}
		if _, err := admin.BatchDeleteEntry(ctx, &sigilv1.BatchDeleteEntryRequest{Ids: ids}); err != nil {
			return 0, err
		}
		rates = append(rates, float64(adminBatchSize)/took.Seconds())
	}
	return median(rates), nil
}

// median is the middle value of v (the mean of the two middle ones for
// an even count); v is sorted in place.
func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// noWorkloadSelector is a selector no workload has (a unix user name no
// user has), known to a server process as well as to this one.
func noWorkloadSelector(name string) *sigilv1.Selector {
	return &sigilv1.Selector{Type: "unix", Value: "user:sigil-bench-" + name}
}

// selfCPU is the user + system CPU time this process has used so far.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// e2eServer is a `sigil server` process and an admin client to it.
type e2eServer struct {
	cmd      *exec.Cmd
	logPath  string // the server's stdout and stderr
	nodeAddr string
	admin    sigilv1.AdminClient
	conn     *grpc.ClientConn
	bundle   []*x509.Certificate
}

func (s *e2eServer) stop() {
	if s.conn != nil {
		s.conn.Close()
	}
	if s.cmd != nil && s.cmd.Process != nil {
		_ = s.cmd.Process.Kill()
		_ = s.cmd.Wait()
	}
}

// startE2EServer starts bin's server in dir and reads its bundle.
func startE2EServer(ctx context.Context, bin, dir string) (_ *e2eServer, err error) {
	s := &e2eServer{}
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
	adminSock := filepath.Join(dir, "admin", "admin.sock")
	s.logPath = filepath.Join(dir, "server.log")
	logf, err := os.Create(s.logPath)
	if err != nil {
		return nil, err
	}
	s.cmd = exec.CommandContext(ctx, bin, "server", "-trust-domain", td.Name(), "-node-name", "s1",
		"-data-dir", filepath.Join(dir, "server"), "-bind-address", s.nodeAddr, "-health-address", health,
		"-admin-socket", adminSock, "-log-level", "warn")
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	s.cmd.Env = serverEnv()
	if err := s.cmd.Start(); err != nil {
		return nil, err
	}
	if err := waitHTTP(ctx, "http://"+health+"/ready", time.Minute); err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	if s.conn, err = grpc.NewClient("unix://"+adminSock, grpc.WithTransportCredentials(insecure.NewCredentials())); err != nil {
		return nil, err
	}
	s.admin = sigilv1.NewAdminClient(s.conn)
	b, err := s.admin.GetBundle(ctx, &sigilv1.GetBundleRequest{})
	if err != nil {
		return nil, err
	}
	for _, a := range b.GetX509Authorities() {
		c, err := x509.ParseCertificate(a.GetCertificate())
		if err != nil {
			return nil, err
		}
		s.bundle = append(s.bundle, c)
	}
	return s, nil
}

// e2eRound is one end-to-end measurement.
type e2eRound struct {
	rate                float64       // SVIDs/s from the entries' creation to the last SVID in the agent
	agentCPU, serverCPU time.Duration // per SVID
	gcs                 int           // the server's collections (with -e2e-server-gctrace)
	lastGC              string        // the last one's gctrace line
	minflt              float64       // the server's minor page faults per SVID
}

// procMinFlt is the number of minor page faults process pid has taken
// (a page of memory touched for the first time, or again after the
// runtime gave it back to the kernel); zero when /proc does not say.
func procMinFlt(pid int) uint64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 8 {
		return 0
	}
	n, _ := strconv.ParseUint(f[7], 10, 64) // field 10 of stat(5)
	return n
}

// gcCount is the number of garbage collections the server has logged
// with GODEBUG=gctrace=1 (-e2e-server-gctrace), and the last one's line;
// zero without it.
func (s *e2eServer) gcCount() (int, string) {
	if !*e2eGCTrace {
		return 0, ""
	}
	b, err := os.ReadFile(s.logPath)
	if err != nil {
		return 0, ""
	}
	n, last := 0, ""
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "gc ") {
			n, last = n+1, line
		}
	}
	return n, last
}

// e2eMint starts a fresh agent in this process against s, creates n
// entries for it (selectors no workload has; the agent's cache holds all
// of them, so it mints every one ahead of requests), and times them until
// the agent has minted every SVID, with this process's and the server's
// CPU time meanwhile.
func e2eMint(ctx context.Context, s *e2eServer, dir string, round, n int) (e2eRound, error) {
	var r e2eRound
	tok, err := s.admin.CreateJoinToken(ctx, &sigilv1.CreateJoinTokenRequest{})
	if err != nil {
		return r, err
	}
	acfg := agent.DefaultConfig()
	acfg.TrustDomain = td
	acfg.ServerAddress = s.nodeAddr
	acfg.DataDir = filepath.Join(dir, fmt.Sprintf("agent%d", round))
	acfg.SocketPath = filepath.Join(dir, fmt.Sprintf("e2e%d", round), "api.sock")
	acfg.NodeAttestor = jointoken.NewAttestor(tok.Token)
	acfg.WorkloadAttestors = []workload.Attestor{unix.New()}
	acfg.TrustBundle = s.bundle
	acfg.SVIDCache.MaxSVIDs = n + 1
	ag, err := agent.New(acfg)
	if err != nil {
		return r, err
	}
	actx, stop := context.WithCancel(ctx)
	aerr := make(chan error, 1)
	go func() { aerr <- ag.Run(actx) }()
	defer func() { stop(); <-aerr }()
	select {
	case <-ag.Ready():
	case err := <-aerr:
		aerr <- err
		return r, err
	case <-time.After(30 * time.Second):
		return r, fmt.Errorf("agent not ready")
	}
	entries := make([]*sigilv1.Entry, n)
	for i := range entries {
		entries[i] = &sigilv1.Entry{
			SpiffeId: fmt.Sprintf("spiffe://%s/bench/e2e%d/%d", td.Name(), round, i), ParentId: tok.AgentId,
			Selectors: []*sigilv1.Selector{noWorkloadSelector(fmt.Sprintf("e2e%d-%d", round, i))},
		}
	}
	if *e2ePerf != "" {
		out := fmt.Sprintf("%s.%d.data", *e2ePerf, round)
		perf := exec.CommandContext(ctx, "perf", "record", "-q", "-g", "-F", "2000", "-o", out, "-p", strconv.Itoa(s.cmd.Process.Pid))
		perf.Stderr = os.Stderr
		if err := perf.Start(); err != nil {
			return r, fmt.Errorf("%s: %w", perf.Path, err)
		}
		time.Sleep(300 * time.Millisecond) // let it attach
		defer func() {
			_ = perf.Process.Signal(syscall.SIGINT)
			_ = perf.Wait()
		}()
	}
	cpu0, err := procCPU(s.cmd.Process.Pid)
	if err != nil {
		return r, err
	}
	gc0, _ := s.gcCount()
	flt0 := procMinFlt(s.cmd.Process.Pid)
	self0 := selfCPU()
	start := time.Now()
	// The response echoes every entry created. It is kept as raw bytes
	// (the unknown fields of an Empty) and decoded after the timing:
	// decoding 5,000 entries is the bench's work, not the agent's, and
	// would count as the agent's CPU (this process's).
	var raw emptypb.Empty
	if err := s.conn.Invoke(ctx, sigilv1.Admin_BatchCreateEntry_FullMethodName,
		&sigilv1.BatchCreateEntryRequest{Entries: entries}, &raw); err != nil {
		return r, err
	}
	var ids []string
	created := func() error {
		var resp sigilv1.BatchCreateEntryResponse
		if err := proto.Unmarshal(raw.ProtoReflect().GetUnknown(), &resp); err != nil {
			return fmt.Errorf("create: %w", err)
		}
		for _, res := range resp.Results {
			if res.Status.Code != 0 {
				return fmt.Errorf("create: %s", res.Status.Message)
			}
			ids = append(ids, res.Entry.Id)
		}
		if len(ids) != n {
			return fmt.Errorf("create: %d results for %d entries", len(ids), n)
		}
		return nil
	}
	defer func() {
		if ids == nil {
			_ = created()
		}
		_, _ = s.admin.BatchDeleteEntry(ctx, &sigilv1.BatchDeleteEntryRequest{Ids: ids})
		_, _ = s.admin.EvictAgent(ctx, &sigilv1.EvictAgentRequest{SpiffeId: tok.AgentId})
	}()
	deadline := start.Add(2 * time.Minute)
	for ag.SVIDsMinted() < uint64(n) {
		if time.Now().After(deadline) {
			if err := created(); err != nil {
				return r, err
			}
			return r, fmt.Errorf("agent minted fewer than %d SVIDs in 2 minutes", n)
		}
		// Reading the counter costs well under a microsecond and no
		// lock (a scrape of every metric costs hundreds): polled every
		// millisecond, the time measured is at most that late.
		time.Sleep(time.Millisecond)
	}
	took := time.Since(start)
	self1 := selfCPU()
	cpu1, err := procCPU(s.cmd.Process.Pid)
	if err != nil {
		return r, err
	}
	if err := created(); err != nil {
		return r, err
	}
	gc1, last := s.gcCount()
	r.gcs, r.lastGC = gc1-gc0, last
	r.minflt = float64(procMinFlt(s.cmd.Process.Pid)-flt0) / float64(n)
	r.rate = float64(n) / took.Seconds()
	r.agentCPU = (self1 - self0) / time.Duration(n)
	r.serverCPU = (cpu1 - cpu0) / time.Duration(n)
	return r, nil
}

// benchE2EOnly is -e2e-only: benchE2E with agent start and admin batches,
// then the summary.
func benchE2EOnly(ctx context.Context, bin string, rounds, n int, jsonOut string) error {
	if err := benchE2E(ctx, bin, rounds, n, true); err != nil {
		return err
	}
	return summarize(jsonOut)
}

// benchE2E measures rounds of the end-to-end minting of n SVIDs (e2eMint)
// against a server process of bin (built from ./cmd/sigil when empty) and,
// with all set, a fresh agent's start with 1,000 and 10,000 entries in
// each round and admin batches alone; it prints each round and records
// the medians.
func benchE2E(ctx context.Context, bin string, rounds, n int, all bool) error {
	if rounds < 1 || n < 1 || n > adminBatchSize {
		return fmt.Errorf("-e2e-rounds must be at least 1 and -e2e-svids between 1 and %d", adminBatchSize)
	}
	dir, err := os.MkdirTemp("", "sigil-bench-e2e-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if bin == "" {
		if bin, err = buildSigil(ctx, dir); err != nil {
			return err
		}
	}
	s, err := startE2EServer(ctx, bin, dir)
	if err != nil {
		return err
	}
	defer s.stop()
	fmt.Printf("e2e    %s; server %s (own process), agent in this process\n", machine(), bin)
	var rates, agentCPU, serverCPU, start1k, start10k []float64
	for i := range rounds {
		r, err := e2eMint(ctx, s, dir, i, n)
		if err != nil {
			return fmt.Errorf("end to end, round %d: %w", i+1, err)
		}
		fmt.Printf("round %d  X.509-SVIDs end to end via agent: %7.0f /s  agent CPU %6.1f µs/SVID  server CPU %6.1f µs/SVID  (%d entries)",
			i+1, r.rate, us(r.agentCPU), us(r.serverCPU), n)
		if *e2eGCTrace {
			fmt.Printf("  server GCs %d, minor page faults %.2f/SVID (last GC: %s)", r.gcs, r.minflt, r.lastGC)
		}
		fmt.Println()
		rates = append(rates, r.rate)
		agentCPU = append(agentCPU, us(r.agentCPU))
		serverCPU = append(serverCPU, us(r.serverCPU))
		if !all {
			continue
		}
		for _, c := range []struct {
			others int
			out    *[]float64
		}{{1000, &start1k}, {9999, &start10k}} {
			d, err := benchAgentStart(ctx, s.nodeAddr, s.bundle, s.admin, filepath.Join(dir, fmt.Sprintf("start%d", i)), c.others)
			if err != nil {
				return fmt.Errorf("agent start, %d entries, round %d: %w", c.others+1, i+1, err)
			}
			fmt.Printf("round %d  agent start -> first SVID, %5d entries: %.3f s\n", i+1, c.others+1, d.Seconds())
			*c.out = append(*c.out, d.Seconds())
		}
	}
	fmt.Printf("issue  X.509-SVIDs end to end via agent:     %9.0f /s  (median of %d; agent CPU %.1f µs/SVID, server CPU %.1f µs/SVID; server in its own process)\n",
		median(rates), rounds, median(agentCPU), median(serverCPU))
	// The limit is measured by make bench (zero, so not shown, in
	// -e2e-only).
	record(newFigure("X.509-SVIDs end to end via agent (server process)", median(rates), "/s", limits.VerifySign,
		&Goal{Text: "≥ 6000/s", Kind: GoalMinValue, Bound: 6000}, "~500/s"))
	record(newFigure("agent CPU per X.509-SVID minted", median(agentCPU), "µs", 0, nil, ""))
	record(newFigure("server CPU per X.509-SVID minted", median(serverCPU), "µs", 0, nil, ""))
	if !all {
		return nil
	}
	admin, err := adminBatchRate(ctx, s.admin, rounds)
	if err != nil {
		return fmt.Errorf("admin batches: %w", err)
	}
	fmt.Printf("start  agent start -> first SVID:            %9.3f s (1,000 entries)  %.3f s (10,000 entries)  (medians)\n", median(start1k), median(start10k))
	fmt.Printf("admin  entries created, admin batches alone: %9.0f /s  (median of %d batches of %d, no agent minting)\n", admin, rounds, adminBatchSize)
	record(newFigure("agent start -> first SVID, 1,000 entries", median(start1k), "s", 0,
		&Goal{Text: "≤ 0.25 s", Kind: GoalMaxValue, Bound: 0.25}, "7.4 s"))
	record(newFigure("agent start -> first SVID, 10,000 entries", median(start10k), "s", 0,
		&Goal{Text: "≤ 1 s", Kind: GoalMaxValue, Bound: 1}, "15.3 s at 5,000"))
	record(adminBatchFigure(admin))
	return nil
}

// adminBatchFigure is the row of admin batches timed alone.
func adminBatchFigure(rate float64) Figure {
	return newFigure("entries created, admin batches of 10,000 alone (median)", rate, "/s", 0,
		&Goal{Text: "≥ 20000/s", Kind: GoalMinValue, Bound: 20000}, "536–792/s")
}
