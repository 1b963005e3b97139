package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// trustDomain is the trust domain of the cluster the tool starts.
const trustDomain = "scale.sigil.test"

// joinSecret is the cluster join secret of a 3-server run (loopback only,
// a throwaway cluster).
const joinSecret = "sigil-join-v1-fF5fLo4hWTgPz7jngLMTpYFxOjxHa-cuHZH5ObIUltk"

// server is one `sigil server` process: its addresses, its admin clients,
// and the garbage collections its runtime reported (GODEBUG=gctrace=1).
type server struct {
	name                    string
	bin, dir                string
	args                    []string
	nodeAddr, health, admin string
	cmd                     *exec.Cmd
	pid                     atomic.Int64 // of the running process, read by the RSS guard
	// peak is the highest RSS seen of the server's processes: the RSS
	// guard's samples and each process's VmHWM, read before it is killed
	// and at the end of the run (notePeak).
	peak       atomic.Int64
	started    time.Time
	done       chan struct{}
	conn       *grpc.ClientConn
	adminAPI   sigilv1.AdminClient
	clusterAPI sigilv1.ClusterAdminClient
	gcMu       sync.Mutex
	gcs        []gcEvent
	gcWake     chan struct{} // closed and replaced on every new collection
}

// gcEvent is one line of the Go runtime's GC trace.
type gcEvent struct {
	startedAt float64 // seconds since the process started
	liveMiB   int     // heap marked live
}

// gcLine matches "gc 12 @3.456s 1%: ... 10->11->5 MB, 12 MB goal, ...".
var gcLine = regexp.MustCompile(`^gc \d+ @([0-9.]+)s .* (\d+)->(\d+)->(\d+) MB, `)

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// startCluster starts n servers under dir, the first bootstrapping and the
// others joining it, each ready (its /ready endpoint answering) before the
// next starts.
func startCluster(ctx context.Context, bin, dir string, n int) ([]*server, error) {
	var nodes []*server
	var first string
	for i := 0; i < n; i++ {
		var addrs [3]string
		for j := range addrs {
			a, err := freeAddr()
			if err != nil {
				return nodes, fmt.Errorf("free port: %w", err)
			}
			addrs[j] = a
		}
		s := &server{name: fmt.Sprintf("s%d", i+1), bin: bin, nodeAddr: addrs[0], health: addrs[1]}
		s.dir = filepath.Join(dir, s.name)
		s.admin = filepath.Join(s.dir, "admin", "admin.sock")
		s.args = []string{"server", "-trust-domain", trustDomain, "-node-name", s.name,
			"-data-dir", filepath.Join(s.dir, "data"), "-bind-address", s.nodeAddr, "-health-address", s.health,
			"-admin-socket", s.admin, "-log-level", "warn"}
		if n > 1 {
			s.args = append(s.args, "-cluster-address", addrs[2], "-raft-heartbeat-timeout", "1s")
			if i == 0 {
				first = addrs[2]
			} else {
				s.args = append(s.args, "-join", first)
			}
		}
		nodes = append(nodes, s)
		if err := s.start(ctx); err != nil {
			return nodes, err
		}
		if err := s.waitReady(ctx, 2*time.Minute); err != nil {
			return nodes, err
		}
		conn, err := grpc.NewClient("unix://"+s.admin, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return nodes, fmt.Errorf("%s admin: %w", s.name, err)
		}
		s.conn, s.adminAPI, s.clusterAPI = conn, sigilv1.NewAdminClient(conn), sigilv1.NewClusterAdminClient(conn)
	}
	return nodes, nil
}

// start starts the process (again, after kill) with the same arguments.
// Its output goes to a log file beside its data; the GC trace lines are
// parsed on the way.
func (s *server) start(ctx context.Context) error {
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return fmt.Errorf("%s: %w", s.name, err)
	}
	logf, err := os.OpenFile(filepath.Join(s.dir, "server.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("%s: %w", s.name, err)
	}
	cmd := exec.CommandContext(ctx, s.bin, s.args...)
	cmd.Env = append(os.Environ(), "GODEBUG=gctrace=1", "SIGIL_JOIN_SECRET="+joinSecret)
	cmd.Stdout = logf
	stderr, err := cmd.StderrPipe()
	if err != nil {
		logf.Close()
		return fmt.Errorf("%s: %w", s.name, err)
	}
	s.gcMu.Lock()
	s.gcs = nil
	s.gcWake = make(chan struct{})
	s.gcMu.Unlock()
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("%s: starting %s: %w", s.name, s.bin, err)
	}
	s.cmd, s.started, s.done = cmd, time.Now(), make(chan struct{})
	s.pid.Store(int64(cmd.Process.Pid))
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		s.scanTrace(stderr, logf)
	}()
	done := s.done
	go func() {
		<-copied // Wait closes the pipe: read it all first
		_ = cmd.Wait()
		logf.Close()
		close(done)
	}()
	return nil
}

// scanTrace copies the process's stderr to logf and records every GC
// trace line.
func (s *server) scanTrace(r io.Reader, logf io.Writer) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		fmt.Fprintln(logf, line)
		m := gcLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		at, _ := strconv.ParseFloat(m[1], 64)
		live, _ := strconv.Atoi(m[4])
		s.gcMu.Lock()
		s.gcs = append(s.gcs, gcEvent{startedAt: at, liveMiB: live})
		close(s.gcWake)
		s.gcWake = make(chan struct{})
		s.gcMu.Unlock()
	}
}

// notePeak raises s.peak to the running process's VmHWM.
func (s *server) notePeak() {
	if hwm, err := procStatusBytes(int(s.pid.Load()), "VmHWM:"); err == nil {
		s.raisePeak(hwm)
	}
}

// raisePeak raises s.peak to v.
func (s *server) raisePeak(v int64) {
	for {
		p := s.peak.Load()
		if v <= p || s.peak.CompareAndSwap(p, v) {
			return
		}
	}
}

// kill stops the process with SIGKILL and waits for it.
func (s *server) kill() {
	s.notePeak()
	if s.cmd != nil && s.cmd.Process != nil {
		_ = s.cmd.Process.Kill()
		<-s.done
	}
}

// close kills the process and closes the admin connection.
func (s *server) close() {
	s.kill()
	if s.conn != nil {
		s.conn.Close()
	}
}

// waitReady polls /ready until it answers 200, at most within.
func (s *server) waitReady(ctx context.Context, within time.Duration) error {
	deadline := time.Now().Add(within)
	url := "http://" + s.health + "/ready"
	client := &http.Client{Timeout: 2 * time.Second}
	for time.Now().Before(deadline) {
		select {
		case <-s.done:
			return fmt.Errorf("%s exited before it was ready (see %s)", s.name, filepath.Join(s.dir, "server.log"))
		default:
		}
		if resp, err := client.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s not ready within %v", s.name, within)
}

// rss is the process's VmRSS in bytes.
func (s *server) rss() (int64, error) {
	return vmRSS(int(s.pid.Load()))
}

func vmRSS(pid int) (int64, error) { return procStatusBytes(pid, "VmRSS:") }

// procStatusBytes is the field (e.g. "VmRSS:") of /proc/PID/status, in
// bytes.
func procStatusBytes(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("%s of %d: %w", strings.TrimSuffix(field, ":"), pid, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("no %s for pid %d", strings.TrimSuffix(field, ":"), pid)
}

// liveHeap is the heap (bytes, MiB resolution) marked live by the first
// collection that started after this call. The server collects when its
// heap grows, so the call makes it allocate: it pages through the entries
// with admin ListEntries pages of 1,000 entries (little is in flight)
// until a collection has run, at most within.
func (s *server) liveHeap(ctx context.Context, within time.Duration) (int64, error) {
	mark := time.Since(s.started).Seconds()
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	found := make(chan int64, 1)
	go func() {
		for {
			s.gcMu.Lock()
			wake := s.gcWake
			for _, g := range s.gcs {
				if g.startedAt > mark {
					s.gcMu.Unlock()
					found <- int64(g.liveMiB) << 20
					cancel()
					return
				}
			}
			s.gcMu.Unlock()
			select {
			case <-wake:
			case <-ctx.Done():
				return
			}
		}
	}()
	// Two callers, pages of 1,000 entries (well under 1 MiB in flight),
	// wrapping around.
	var wg sync.WaitGroup
	for w := 0; w < 2; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			token := ""
			for i := 0; i < 10_000_000 && ctx.Err() == nil; i++ {
				resp, err := s.adminAPI.ListEntries(ctx, &sigilv1.ListEntriesRequest{PageSize: 1000, PageToken: token})
				if err != nil {
					if ctx.Err() == nil {
						time.Sleep(10 * time.Millisecond)
					}
					continue
				}
				token = resp.NextPageToken
			}
		}()
	}
	wg.Wait()
	select {
	case live := <-found:
		return live, nil
	default:
		return 0, fmt.Errorf("%s: no garbage collection within %v", s.name, within)
	}
}

// settledRSS waits (at most within) until the process's RSS changes by
// less than 1 % over three polls 300 ms apart, and returns it.
func (s *server) settledRSS(ctx context.Context, within time.Duration) (int64, error) {
	deadline := time.Now().Add(within)
	var last []int64
	for {
		r, err := s.rss()
		if err != nil {
			return 0, err
		}
		last = append(last, r)
		if n := len(last); n >= 3 {
			lo, hi := last[n-3], last[n-3]
			for _, v := range last[n-3:] {
				lo, hi = min(lo, v), max(hi, v)
			}
			if float64(hi-lo) < 0.01*float64(hi) {
				return r, nil
			}
		}
		if time.Now().After(deadline) {
			return r, nil
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(300 * time.Millisecond):
		}
	}
}

// leader returns the server that is the Raft leader, asking each in turn
// (at most 30 s).
func leader(ctx context.Context, nodes []*server) (*server, error) {
	if len(nodes) == 1 {
		return nodes[0], nil
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		for _, n := range nodes {
			m, err := n.clusterAPI.Members(ctx, &sigilv1.MembersRequest{})
			if err == nil && m.LeaderId != "" {
				for _, l := range nodes {
					if l.name == m.LeaderId {
						return l, nil
					}
				}
			}
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil, errors.New("no leader within 30s")
}

// buildSigil builds ./cmd/sigil of this module into dir.
func buildSigil(ctx context.Context, dir string) (string, error) {
	bin := filepath.Join(dir, "sigil")
	gomod, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/sigil")
	build.Dir = filepath.Dir(strings.TrimSpace(string(gomod)))
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		return "", fmt.Errorf("building sigil: %w", err)
	}
	return bin, nil
}
