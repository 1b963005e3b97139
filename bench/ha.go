package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// benchHA measures Raft writes on a 3-server cluster of real processes on
// loopback, beside the raw fsync rate of the same disk, and the time from
// kill -9 of the leader to the first write committed by its successor.
func benchHA(ctx context.Context) error {
	dir, err := os.MkdirTemp("", "sigil-bench-ha-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	fsyncRate, err := rawFsyncRate(dir, 2*time.Second)
	if err != nil {
		return err
	}
	bin, err := buildSigil(ctx, dir)
	if err != nil {
		return fmt.Errorf("ha bench: %w", err)
	}

	nodes, err := startBenchCluster(ctx, bin, dir, 3)
	defer func() {
		for _, n := range nodes {
			n.kill()
		}
	}()
	if err != nil {
		return err
	}
	leader, err := benchLeader(ctx, nodes, nil)
	if err != nil {
		return err
	}
	one := writeRate(ctx, []*benchNode{leader}, 1, 3*time.Second)
	many := writeRate(ctx, []*benchNode{leader}, 64, 3*time.Second)
	var followers []*benchNode
	for _, n := range nodes {
		if n != leader {
			followers = append(followers, n)
		}
	}
	viaFollower := writeRate(ctx, followers, 64, 3*time.Second)

	// Failover: a writer loops on a follower; kill -9 the leader.
	var firstAfter atomic.Int64
	var killedAt atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		ac := followers[0]
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err := createOne(cctx, ac, fmt.Sprintf("failover/%d", i))
			cancel()
			if err == nil && killedAt.Load() != 0 && firstAfter.Load() == 0 {
				firstAfter.Store(time.Now().UnixNano())
				return
			}
		}
	}()
	time.Sleep(300 * time.Millisecond)
	killedAt.Store(time.Now().UnixNano())
	leader.kill()
	deadline := time.Now().Add(30 * time.Second)
	for firstAfter.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	failover := time.Duration(firstAfter.Load() - killedAt.Load())
	if firstAfter.Load() == 0 {
		failover = -1
	}

	fmt.Printf("raft (3 servers, loopback, bolt on %s):\n", dir)
	fmt.Printf("  raw fsync (4 KiB write+fsync, same disk): %8.0f /s\n", fsyncRate)
	fmt.Printf("  entries committed, 1 writer:              %8.0f /s\n", one)
	fmt.Printf("  entries committed, 64 writers (batched):  %8.0f /s\n", many)
	record(newFigure("raft commits, 3 servers, 64 writers", many, "/s", 0, nil, ""))
	fmt.Printf("  entries committed, 64 writers via follower:%7.0f /s\n", viaFollower)
	if failover < 0 {
		fmt.Printf("  kill -9 leader -> first committed write:  none within 30s\n")
	} else {
		fmt.Printf("  kill -9 leader -> first committed write:  %8.0f ms\n", ms(failover))
	}
	return nil
}

// rawFsyncRate is the rate of 4 KiB write+fsync on a file in dir.
func rawFsyncRate(dir string, dur time.Duration) (float64, error) {
	f, err := os.CreateTemp(dir, "fsync-")
	if err != nil {
		return 0, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	buf := make([]byte, 4096)
	n := 0
	start := time.Now()
	for time.Since(start) < dur {
		if _, err := f.Write(buf); err != nil {
			return 0, err
		}
		if err := f.Sync(); err != nil {
			return 0, err
		}
		n++
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

type benchNode struct {
	name, admin, health string
	cmd                 *exec.Cmd
	done                chan struct{}
	conn                *grpc.ClientConn
	adminAPI            sigilv1.AdminClient
	cluster             sigilv1.ClusterAdminClient
}

func (n *benchNode) kill() {
	if n.cmd != nil && n.cmd.Process != nil {
		_ = n.cmd.Process.Kill()
		<-n.done
	}
	if n.conn != nil {
		n.conn.Close()
	}
}

func benchFreeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func startBenchCluster(ctx context.Context, bin, dir string, n int) ([]*benchNode, error) {
	var nodes []*benchNode
	var first string
	for i := 0; i < n; i++ {
		var addrs [3]string
		for j := range addrs {
			a, err := benchFreeAddr()
			if err != nil {
				return nodes, err
			}
			addrs[j] = a
		}
		nd := &benchNode{
			name:   fmt.Sprintf("s%d", i+1),
			admin:  filepath.Join(dir, fmt.Sprintf("s%d", i+1), "admin", "admin.sock"),
			health: addrs[1],
			done:   make(chan struct{}),
		}
		args := []string{"server", "-trust-domain", "bench.sigil.test", "-node-name", nd.name,
			"-data-dir", filepath.Join(dir, nd.name, "data"), "-bind-address", addrs[0], "-health-address", addrs[1],
			"-admin-socket", nd.admin, "-cluster-address", addrs[2], "-raft-heartbeat-timeout", "500ms", "-log-level", "error"}
		if i == 0 {
			first = addrs[2]
		} else {
			args = append(args, "-join", first)
		}
		nd.cmd = exec.CommandContext(ctx, bin, args...)
		nd.cmd.Env = append(os.Environ(), "SIGIL_JOIN_SECRET=sigil-join-v1-fF5fLo4hWTgPz7jngLMTpYFxOjxHa-cuHZH5ObIUltk")
		// Server logs (a killed leader's peers log errors) go to a file
		// beside its data, not into the figures.
		logf, err := os.Create(filepath.Join(dir, nd.name+".log"))
		if err != nil {
			return nodes, err
		}
		nd.cmd.Stdout, nd.cmd.Stderr = logf, logf
		if err := nd.cmd.Start(); err != nil {
			return nodes, err
		}
		go func() { _ = nd.cmd.Wait(); close(nd.done) }()
		nodes = append(nodes, nd)
		readyCtx, cancelReady := context.WithCancel(ctx)
		go func() {
			select {
			case <-nd.done: // exited: stop waiting for it
				cancelReady()
			case <-readyCtx.Done():
			}
		}()
		err = waitHTTP(readyCtx, "http://"+nd.health+"/ready", 60*time.Second)
		cancelReady()
		select {
		case <-nd.done:
			if err != nil {
				err = fmt.Errorf("exited before it was ready (%s)", nd.cmd.ProcessState)
			}
		default:
		}
		if err != nil {
			// Its log says why (a port taken between benchFreeAddr and
			// the server's bind, a failed join, ...).
			tail, _ := os.ReadFile(filepath.Join(dir, nd.name+".log"))
			if len(tail) > 2048 {
				tail = tail[len(tail)-2048:]
			}
			return nodes, fmt.Errorf("ha bench: %s: %w; its log ends:\n%s", nd.name, err, tail)
		}
		conn, err := grpc.NewClient("unix://"+nd.admin, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return nodes, err
		}
		nd.conn, nd.adminAPI, nd.cluster = conn, sigilv1.NewAdminClient(conn), sigilv1.NewClusterAdminClient(conn)
	}
	return nodes, nil
}

func waitHTTP(ctx context.Context, url string, within time.Duration) error {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s not ready within %v", url, within)
}

func benchLeader(ctx context.Context, nodes []*benchNode, except *benchNode) (*benchNode, error) {
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		for _, n := range nodes {
			if n == except {
				continue
			}
			m, err := n.cluster.Members(ctx, &sigilv1.MembersRequest{})
			if err == nil && m.LeaderId != "" {
				for _, l := range nodes {
					if l.name == m.LeaderId && l != except {
						return l, nil
					}
				}
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil, errors.New("ha bench: no leader")
}

var benchSeq atomic.Int64

func createOne(ctx context.Context, n *benchNode, path string) error {
	resp, err := n.adminAPI.BatchCreateEntry(ctx, &sigilv1.BatchCreateEntryRequest{Entries: []*sigilv1.Entry{{
		SpiffeId:  fmt.Sprintf("spiffe://bench.sigil.test/%s/%d", path, benchSeq.Add(1)),
		ParentId:  "spiffe://bench.sigil.test/writer",
		Selectors: []*sigilv1.Selector{{Type: "unix", Value: "uid:1000"}},
	}}})
	if err != nil {
		return err
	}
	if c := resp.Results[0].Status.GetCode(); c != 0 {
		return fmt.Errorf("code %d: %s", c, resp.Results[0].Status.GetMessage())
	}
	return nil
}

// writeRate is entries committed per second by workers writers, each
// writing one entry per call, spread over targets.
func writeRate(ctx context.Context, targets []*benchNode, workers int, dur time.Duration) float64 {
	var n atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			t := targets[w%len(targets)]
			for time.Since(start) < dur {
				cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				if createOne(cctx, t, fmt.Sprintf("rate%d", workers)) == nil {
					n.Add(1)
				}
				cancel()
			}
		}(w)
	}
	wg.Wait()
	return float64(n.Load()) / time.Since(start).Seconds()
}

// buildSigil builds the sigil binary into dir.
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
