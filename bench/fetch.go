package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"

	sigilwl "github.com/sigil-id/sigil/workloadapi"
)

// Flags of the deployed-fetch measurement alone (-fetch-only).
var (
	fetchOnly = flag.Bool("fetch-only", false,
		"only measure cached FetchX509SVID as deployed (server, agent and workload in 3 processes)")
	fetchSigil = flag.String("sigil", "",
		"with -fetch-only: comma-separated prebuilt sigil binaries to measure instead of building ./cmd/sigil; "+
			"with two or more, each gets its own server and agent and their rounds alternate (before/after comparisons)")
	fetchRounds = flag.Int("fetch-rounds", 1,
		"with -fetch-only: rounds of -fetch-calls timed fetches per binary (alternating binaries; medians are printed)")
	fetchPerf = flag.String("agent-perf", "",
		"with -fetch-only: record the agent process with `perf record -g` during the timed fetches into PREFIX.<binary>.<round>.data")
	fetchStrace = flag.String("agent-strace", "",
		"with -fetch-only: count the agent's system calls with `strace -f -c` during the timed fetches into PREFIX.<binary>.<round>.txt (slows the agent: read counts, not times)")
	fetchGCTrace = flag.Bool("agent-gctrace", false,
		"with -fetch-only: run the agents with GODEBUG=gctrace=1 and count their garbage collections during the timed fetches")
	rawFetchServer = flag.String("raw-fetch-server", "",
		"internal: serve a fixed X509SVIDResponse on this unix socket, with no attestation (the fetch limit)")
)

// rawFetch is a Workload API server that answers every FetchX509SVID with
// the same response, built once: no attestation, no header check, no
// cache, no metrics. Timing the fetch client against it gives the limit
// of a cached fetch on this machine (gRPC over a unix socket, and the
// client's parsing of the SVID), beside which the agent's figure is read.
// It runs with the agent's gRPC transport options
// (workloadapi.TransportOptions), so that it stays the limit.
type rawFetch struct {
	workloadpb.UnimplementedSpiffeWorkloadAPIServer
	resp *workloadpb.X509SVIDResponse
}

func (r *rawFetch) FetchX509SVID(_ *workloadpb.X509SVIDRequest, stream grpc.ServerStreamingServer[workloadpb.X509SVIDResponse]) error {
	return stream.Send(r.resp)
}

// rawFetchResponse makes a CA and one P-256 X.509-SVID signed by it, as
// the response of the fetch limit and floor servers.
func rawFetchResponse() (*workloadpb.X509SVIDResponse, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "raw fetch CA"},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
		URIs: []*url.URL{td.ID().URL()},
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		return nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	id := spiffeid.RequireFromPath(td, "/bench/raw")
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour),
		URIs: []*url.URL{id.URL()}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, key.Public(), caKey)
	if err != nil {
		return nil, err
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return &workloadpb.X509SVIDResponse{Svids: []*workloadpb.X509SVID{{
		SpiffeId: id.String(), X509Svid: leafDER, X509SvidKey: pkcs8, Bundle: caDER,
	}}}, nil
}

// serveRawFetch is the -raw-fetch-server process: it serves
// rawFetchResponse on socket with gRPC until killed.
func serveRawFetch(socket string) error {
	resp, err := rawFetchResponse()
	if err != nil {
		return err
	}
	l, err := net.Listen("unix", socket)
	if err != nil {
		return err
	}
	g := grpc.NewServer(sigilwl.TransportOptions(sigilwl.Limits{})...)
	workloadpb.RegisterSpiffeWorkloadAPIServer(g, &rawFetch{resp: resp})
	return g.Serve(l)
}

// fetchDeployment is one server and one agent process of a sigil binary,
// with an entry for this user, ready to serve cached fetches.
type fetchDeployment struct {
	bin      string
	dir      string
	socket   string
	srv, ag  *exec.Cmd
	srvRSS   int64 // idle, before the entry exists
	agentRSS int64
}

func (d *fetchDeployment) stop() {
	for _, cmd := range []*exec.Cmd{d.ag, d.srv} {
		if cmd != nil && cmd.Process != nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	}
}

// startFetchDeployment starts bin's server and agent in dir and creates
// an entry for this process's uid parented to the agent.
func startFetchDeployment(ctx context.Context, bin, dir string) (_ *fetchDeployment, err error) {
	d := &fetchDeployment{bin: bin, dir: dir}
	defer func() {
		if err != nil {
			d.stop()
		}
	}()
	var addrs [3]string
	for i := range addrs {
		if addrs[i], err = benchFreeAddr(); err != nil {
			return nil, err
		}
	}
	admin := filepath.Join(dir, "admin", "admin.sock")
	d.socket = filepath.Join(dir, "public", "api.sock")
	start := func(name string, args ...string) (*exec.Cmd, error) {
		logf, err := os.Create(filepath.Join(dir, name+".log"))
		if err != nil {
			return nil, err
		}
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.Stdout, cmd.Stderr = logf, logf
		if name == "agent" && *fetchGCTrace {
			cmd.Env = append(os.Environ(), "GODEBUG=gctrace=1")
		}
		return cmd, cmd.Start()
	}
	d.srv, err = start("server", "server", "-trust-domain", td.Name(), "-node-name", "s1",
		"-data-dir", filepath.Join(dir, "server"), "-bind-address", addrs[0], "-health-address", addrs[1],
		"-admin-socket", admin, "-log-level", "warn")
	if err != nil {
		return nil, err
	}
	if err := waitHTTP(ctx, "http://"+addrs[1]+"/ready", time.Minute); err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	out, err := exec.CommandContext(ctx, bin, "token", "generate", "-socket", admin, "-output", "json").Output()
	if err != nil {
		return nil, fmt.Errorf("token generate: %w", err)
	}
	var tok struct {
		Token   string `json:"token"`
		AgentID string `json:"agent_id"`
	}
	if err := json.Unmarshal(out, &tok); err != nil {
		return nil, err
	}
	bundle, err := exec.CommandContext(ctx, bin, "bundle", "show", "-socket", admin).Output()
	if err != nil {
		return nil, fmt.Errorf("bundle show: %w", err)
	}
	bundlePath := filepath.Join(dir, "bundle.pem")
	if err := os.WriteFile(bundlePath, bundle, 0o644); err != nil {
		return nil, err
	}
	d.ag, err = start("agent", "agent", "-trust-domain", td.Name(), "-server-address", addrs[0],
		"-data-dir", filepath.Join(dir, "agent"), "-socket-path", d.socket, "-join-token", tok.Token,
		"-trust-bundle-path", bundlePath, "-health-address", addrs[2], "-log-level", "warn")
	if err != nil {
		return nil, err
	}
	if err := waitHTTP(ctx, "http://"+addrs[2]+"/ready", time.Minute); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	// Idle: both processes started, no entry yet. Settle briefly first.
	time.Sleep(time.Second)
	if d.srvRSS, err = vmRSS(d.srv.Process.Pid); err != nil {
		return nil, err
	}
	if d.agentRSS, err = vmRSS(d.ag.Process.Pid); err != nil {
		return nil, err
	}
	u, err := user.Current()
	if err != nil {
		return nil, err
	}
	if out, err := exec.CommandContext(ctx, bin, "entry", "create", "-socket", admin,
		"-spiffe-id", "spiffe://"+td.Name()+"/bench/deployed", "-parent-id", tok.AgentID,
		"-selector", "unix:uid:"+u.Uid).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("entry create: %v: %s", err, out)
	}
	return d, nil
}

// fetchRefs are the two reference servers of the cached fetch, each in a
// process of its own: the limit (gRPC with the agent's transport options,
// a fixed response) and the floor (a minimal HTTP/2 responder; see
// fetchfloor.go).
type fetchRefs struct {
	limitSock, floorSock string
	limit, floor         *exec.Cmd
}

func startFetchRefs(ctx context.Context, dir string) (*fetchRefs, error) {
	r := &fetchRefs{limitSock: filepath.Join(dir, "raw.sock"), floorSock: filepath.Join(dir, "floor.sock")}
	r.limit = exec.CommandContext(ctx, os.Args[0], "-raw-fetch-server", r.limitSock)
	r.floor = exec.CommandContext(ctx, os.Args[0], "-floor-fetch-server", r.floorSock)
	for _, c := range []*exec.Cmd{r.limit, r.floor} {
		c.Stderr = os.Stderr
		if err := c.Start(); err != nil {
			r.stop()
			return nil, err
		}
	}
	return r, nil
}

func (r *fetchRefs) stop() {
	for _, c := range []*exec.Cmd{r.limit, r.floor} {
		if c != nil && c.Process != nil {
			_ = c.Process.Kill()
			_ = c.Wait()
		}
	}
}

// benchFetchDeployed measures cached FetchX509SVID latency as deployed:
// a `sigil server` process, a `sigil agent` process, and the workload in a
// third process, all on loopback and unix sockets.
func benchFetchDeployed(ctx context.Context) error {
	dir, err := os.MkdirTemp("", "sigil-bench-fetch-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin, err := buildSigil(ctx, dir)
	if err != nil {
		return err
	}
	d, err := startFetchDeployment(ctx, bin, dir)
	if err != nil {
		return err
	}
	defer d.stop()
	// The idle RSS goals are judged by -idle-only's rows (bench/idle.go),
	// on a binary built and installed as released; these are the RSS of
	// the fetch deployment's processes before the timed fetches.
	fmt.Printf("memory RSS before the fetches, deployed:   server %6.1f MiB  agent %6.1f MiB  (idle RSS: see -idle-only)\n", mib(d.srvRSS), mib(d.agentRSS))
	record(newFigure("RSS before the fetches, server process", mib(d.srvRSS), "MiB", 0, nil, ""))
	record(newFigure("RSS before the fetches, agent process", mib(d.agentRSS), "MiB", 0, nil, ""))
	refs, err := startFetchRefs(ctx, dir)
	if err != nil {
		return err
	}
	defer refs.stop()
	lim, err := fetchFromChild(ctx, refs.limitSock)
	if err != nil {
		return fmt.Errorf("limit: %w", err)
	}
	floor, err := fetchFromChild(ctx, refs.floorSock)
	if err != nil {
		return fmt.Errorf("floor: %w", err)
	}
	lat, err := fetchFromChild(ctx, d.socket)
	if err != nil {
		return err
	}
	p50, p99 := percentiles(lat)
	lim50, lim99 := percentiles(lim)
	fl50, fl99 := percentiles(floor)
	fmt.Printf("limit  cached fetch, gRPC server with a fixed response: p50 %8.3f ms  p99 %8.3f ms\n", ms(lim50), ms(lim99))
	fmt.Printf("floor  cached fetch, minimal HTTP/2 responder:        p50 %8.3f ms  p99 %8.3f ms  (no server answers this client faster here)\n", ms(fl50), ms(fl99))
	fmt.Printf("fetch  cached FetchX509SVID, deployed:      p50 %8.3f ms  p99 %8.3f ms  (server, agent and workload in 3 processes; target 0.5 ms p99)\n", ms(p50), ms(p99))
	recordFetchFigures(p50, p99, lim50, lim99, fl50, fl99)
	return nil
}

// recordFetchFigures records the cached fetch's figures beside the
// limit's (the ratio column), and the floor's p99 beside the goal.
func recordFetchFigures(p50, p99, lim50, lim99, fl50, fl99 time.Duration) {
	record(newFigure("cached fetch p50, floor of any server (minimal HTTP/2 responder)", ms(fl50), "ms", 0, nil, ""))
	record(newFigure("cached fetch p99, floor of any server (minimal HTTP/2 responder)", ms(fl99), "ms", 0, nil, ""))
	record(newFigure("cached fetch p50, deployed (3 processes)", ms(p50), "ms", ms(lim50), nil, ""))
	record(newFigure("cached fetch p99, deployed (3 processes)", ms(p99), "ms", ms(lim99),
		&Goal{Text: "≤ 0.5 ms", Kind: GoalMaxValue, Bound: 0.5}, "2.17 ms"))
}

// benchFetchOnly is -fetch-only: the deployed cached fetch alone, for
// one or more sigil binaries (-sigil; built from ./cmd/sigil when empty),
// each in its own server and agent processes, rounds alternating between
// binaries, optionally with the agent recorded by perf (-agent-perf).
func benchFetchOnly(ctx context.Context, jsonOut string) error {
	if *fetchRounds < 1 {
		return errors.New("-fetch-rounds must be at least 1")
	}
	dir, err := os.MkdirTemp("", "sigil-bench-fetch-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	var bins []string
	if *fetchSigil == "" {
		bin, err := buildSigil(ctx, dir)
		if err != nil {
			return err
		}
		bins = []string{bin}
	} else {
		for _, b := range strings.Split(*fetchSigil, ",") {
			if _, err := os.Stat(b); err != nil {
				return fmt.Errorf("-sigil: %w", err)
			}
			abs, err := filepath.Abs(b)
			if err != nil {
				return err
			}
			bins = append(bins, abs)
		}
	}
	// The limit and the floor: the same client against a gRPC server and
	// a minimal HTTP/2 responder doing nothing per call, each in a
	// process of its own. They take the rounds' first slots.
	refs, err := startFetchRefs(ctx, dir)
	if err != nil {
		return err
	}
	defer refs.stop()
	deps := make([]*fetchDeployment, len(bins))
	for i, bin := range bins {
		ddir := filepath.Join(dir, strconv.Itoa(i))
		if err := os.MkdirAll(ddir, 0o700); err != nil {
			return err
		}
		d, err := startFetchDeployment(ctx, bin, ddir)
		if err != nil {
			return fmt.Errorf("%s: %w", bin, err)
		}
		defer d.stop()
		deps[i] = d
		fmt.Printf("binary %d: %s (idle RSS server %.1f MiB, agent %.1f MiB)\n", i, bin, mib(d.srvRSS), mib(d.agentRSS))
	}
	p50s := make([][]time.Duration, len(bins))
	p99s := make([][]time.Duration, len(bins))
	var limit50, limit99, limitCPU, floor50, floor99, floorCPU []time.Duration
	cpus := make([][]time.Duration, len(bins))
	gcRates := make([][]float64, len(bins))
	for r := 0; r < *fetchRounds; r++ {
		lat, cpu, err := timedFetch(ctx, refs.limitSock, refs.limit.Process.Pid)
		if err != nil {
			return fmt.Errorf("limit: %w", err)
		}
		p50, p99 := percentiles(lat)
		limit50, limit99 = append(limit50, p50), append(limit99, p99)
		limitCPU = append(limitCPU, cpu)
		fmt.Printf("round %d limit:    p50 %.3f ms  p99 %.3f ms  server CPU %5.1f µs/call  (%d calls; gRPC, fixed response, no attestation)\n", r, ms(p50), ms(p99), us(cpu), len(lat))
		lat, cpu, err = timedFetch(ctx, refs.floorSock, refs.floor.Process.Pid)
		if err != nil {
			return fmt.Errorf("floor: %w", err)
		}
		p50, p99 = percentiles(lat)
		floor50, floor99 = append(floor50, p50), append(floor99, p99)
		floorCPU = append(floorCPU, cpu)
		fmt.Printf("round %d floor:    p50 %.3f ms  p99 %.3f ms  server CPU %5.1f µs/call  (%d calls; minimal HTTP/2 responder)\n", r, ms(p50), ms(p99), us(cpu), len(lat))
		for j := range bins {
			// Alternate which binary goes first in each round.
			i := j
			if r%2 == 1 {
				i = len(bins) - 1 - j
			}
			d := deps[i]
			var perf *exec.Cmd
			switch pid := strconv.Itoa(d.ag.Process.Pid); {
			case *fetchPerf != "":
				out := fmt.Sprintf("%s.%d.%d.data", *fetchPerf, i, r)
				perf = exec.CommandContext(ctx, "perf", "record", "-q", "-g", "-F", "2000", "-o", out, "-p", pid)
			case *fetchStrace != "":
				out := fmt.Sprintf("%s.%d.%d.txt", *fetchStrace, i, r)
				perf = exec.CommandContext(ctx, "strace", "-f", "-c", "-o", out, "-p", pid)
			}
			if perf != nil {
				perf.Stderr = os.Stderr
				if err := perf.Start(); err != nil {
					return fmt.Errorf("%s: %w", perf.Path, err)
				}
				time.Sleep(300 * time.Millisecond) // let it attach
			}
			gcBefore := agentGCs(d)
			lat, cpu, err := timedFetch(ctx, d.socket, d.ag.Process.Pid)
			gcs := agentGCs(d) - gcBefore
			if perf != nil {
				_ = perf.Process.Signal(syscall.SIGINT)
				_ = perf.Wait()
			}
			if err != nil {
				return fmt.Errorf("%s: %w", d.bin, err)
			}
			p50, p99 := percentiles(lat)
			p50s[i], p99s[i] = append(p50s[i], p50), append(p99s[i], p99)
			cpus[i] = append(cpus[i], cpu)
			fmt.Printf("round %d binary %d: p50 %.3f ms  p99 %.3f ms  agent CPU %5.1f µs/call  (%d calls)", r, i, ms(p50), ms(p99), us(cpu), len(lat))
			if *fetchGCTrace {
				per := float64(gcs) * 1000 / float64(len(lat)+200)
				gcRates[i] = append(gcRates[i], per)
				fmt.Printf("  agent GCs %d (%.2f per 1,000 calls)", gcs, per)
			}
			fmt.Println()
		}
	}
	median := func(d []time.Duration) time.Duration {
		s := append([]time.Duration(nil), d...)
		sort.Slice(s, func(a, b int) bool { return s[a] < s[b] })
		return s[len(s)/2]
	}
	lim50, lim99 := median(limit50), median(limit99)
	fl50, fl99 := median(floor50), median(floor99)
	fmt.Printf("limit  cached fetch from a gRPC server doing nothing per call: median of %d rounds p50 %.3f ms  p99 %.3f ms  server CPU %.1f µs/call\n", *fetchRounds, ms(lim50), ms(lim99), us(median(limitCPU)))
	fmt.Printf("floor  cached fetch from a minimal HTTP/2 responder: median of %d rounds p50 %.3f ms  p99 %.3f ms  server CPU %.1f µs/call\n", *fetchRounds, ms(fl50), ms(fl99), us(median(floorCPU)))
	for i := range bins {
		p50, p99, cpu := median(p50s[i]), median(p99s[i]), median(cpus[i])
		fmt.Printf("fetch  cached FetchX509SVID, deployed, binary %d: median of %d rounds p50 %.3f ms  p99 %.3f ms  agent CPU %.1f µs/call", i, *fetchRounds, ms(p50), ms(p99), us(cpu))
		if i > 0 {
			fmt.Printf("  (ratio to binary 0: p50 %.2f, p99 %.2f, CPU %.2f)", float64(p50)/float64(median(p50s[0])), float64(p99)/float64(median(p99s[0])), float64(cpu)/float64(median(cpus[0])))
		}
		if *fetchGCTrace {
			s := slices.Clone(gcRates[i])
			slices.Sort(s)
			fmt.Printf("  agent GCs per 1,000 calls %.2f", s[len(s)/2])
		}
		fmt.Println()
	}
	last := len(bins) - 1
	fmt.Printf("       last binary beside the limit: p50 %.2fx, p99 %.2fx\n",
		float64(median(p50s[last]))/float64(lim50), float64(median(p99s[last]))/float64(lim99))
	recordFetchFigures(median(p50s[last]), median(p99s[last]), lim50, lim99, fl50, fl99)
	return summarize(jsonOut)
}

// agentGCs is how many garbage collections d's agent has logged (with
// -agent-gctrace; 0 otherwise).
func agentGCs(d *fetchDeployment) int {
	if !*fetchGCTrace {
		return 0
	}
	b, err := os.ReadFile(filepath.Join(d.dir, "agent.log"))
	if err != nil {
		return 0
	}
	n := 0
	for line := range strings.Lines(string(b)) {
		if strings.HasPrefix(line, "gc ") {
			n++
		}
	}
	return n
}

// procCPU is the user + system CPU time process pid has used so far
// (from /proc/PID/stat, in clock ticks of 10 ms).
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	utime, err1 := strconv.ParseUint(f[11], 10, 64)
	stime, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond, nil
}

// timedFetch runs the fetch client against socket and returns its
// latencies and the CPU time process pid (the server side) used meanwhile
// per timed call (the warm-up calls included in the count).
func timedFetch(ctx context.Context, socket string, pid int) ([]time.Duration, time.Duration, error) {
	before, err := procCPU(pid)
	if err != nil {
		return nil, 0, err
	}
	lat, err := fetchFromChild(ctx, socket)
	if err != nil {
		return nil, 0, err
	}
	after, err := procCPU(pid)
	if err != nil {
		return nil, 0, err
	}
	return lat, (after - before) / time.Duration(len(lat)+200), nil
}

// us is d in microseconds.
func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// mib is bytes in MiB.
func mib(b int64) float64 { return float64(b) / (1 << 20) }

// fetchFromChild runs this program as a workload process that fetches
// from socket until it holds an SVID, then measures cached fetches.
func fetchFromChild(ctx context.Context, socket string) ([]time.Duration, error) {
	out, err := exec.CommandContext(ctx, os.Args[0], "-fetch-calls", strconv.Itoa(fetchCalls), "-fetch-client", socket).Output()
	if err != nil {
		return nil, fmt.Errorf("fetch client: %w", err)
	}
	var lat []time.Duration
	if err := json.Unmarshal(out, &lat); err != nil || len(lat) == 0 {
		return nil, fmt.Errorf("fetch client output: %v", err)
	}
	return lat, nil
}
