package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"time"
)

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
	var addrs [3]string
	for i := range addrs {
		if addrs[i], err = benchFreeAddr(); err != nil {
			return err
		}
	}
	admin := filepath.Join(dir, "admin", "admin.sock")
	socket := filepath.Join(dir, "public", "api.sock")
	start := func(name string, args ...string) (*exec.Cmd, error) {
		logf, err := os.Create(filepath.Join(dir, name+".log"))
		if err != nil {
			return nil, err
		}
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.Stdout, cmd.Stderr = logf, logf
		return cmd, cmd.Start()
	}
	stop := func(cmd *exec.Cmd) {
		if cmd != nil && cmd.Process != nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	}
	srv, err := start("server", "server", "-trust-domain", td.Name(), "-node-name", "s1",
		"-data-dir", filepath.Join(dir, "server"), "-bind-address", addrs[0], "-health-address", addrs[1],
		"-admin-socket", admin, "-log-level", "warn")
	defer stop(srv)
	if err != nil {
		return err
	}
	if err := waitHTTP(ctx, "http://"+addrs[1]+"/ready", time.Minute); err != nil {
		return fmt.Errorf("server: %w", err)
	}
	out, err := exec.CommandContext(ctx, bin, "token", "generate", "-socket", admin, "-output", "json").Output()
	if err != nil {
		return fmt.Errorf("token generate: %w", err)
	}
	var tok struct {
		Token   string `json:"token"`
		AgentID string `json:"agent_id"`
	}
	if err := json.Unmarshal(out, &tok); err != nil {
		return err
	}
	bundle, err := exec.CommandContext(ctx, bin, "bundle", "show", "-socket", admin).Output()
	if err != nil {
		return fmt.Errorf("bundle show: %w", err)
	}
	bundlePath := filepath.Join(dir, "bundle.pem")
	if err := os.WriteFile(bundlePath, bundle, 0o644); err != nil {
		return err
	}
	ag, err := start("agent", "agent", "-trust-domain", td.Name(), "-server-address", addrs[0],
		"-data-dir", filepath.Join(dir, "agent"), "-socket-path", socket, "-join-token", tok.Token,
		"-trust-bundle-path", bundlePath, "-health-address", addrs[2], "-log-level", "warn")
	defer stop(ag)
	if err != nil {
		return err
	}
	if err := waitHTTP(ctx, "http://"+addrs[2]+"/ready", time.Minute); err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	// Idle: both processes started, no entry yet. Settle briefly first.
	time.Sleep(time.Second)
	srvRSS, err := vmRSS(srv.Process.Pid)
	if err != nil {
		return err
	}
	agRSS, err := vmRSS(ag.Process.Pid)
	if err != nil {
		return err
	}
	fmt.Printf("memory idle RSS, deployed:                 server %6.1f MiB  agent %6.1f MiB  (goal ≤ 20 / ≤ 16 MiB; SPIRE 143/62 MiB)\n", mib(srvRSS), mib(agRSS))
	record(newFigure("idle RSS, server process", mib(srvRSS), "MiB", 0,
		&Goal{Text: "≤ 20 MiB", Kind: GoalMaxValue, Bound: 20}, "143 MiB"))
	record(newFigure("idle RSS, agent process", mib(agRSS), "MiB", 0,
		&Goal{Text: "≤ 16 MiB", Kind: GoalMaxValue, Bound: 16}, "62 MiB"))
	u, err := user.Current()
	if err != nil {
		return err
	}
	if out, err := exec.CommandContext(ctx, bin, "entry", "create", "-socket", admin,
		"-spiffe-id", "spiffe://"+td.Name()+"/bench/deployed", "-parent-id", tok.AgentID,
		"-selector", "unix:uid:"+u.Uid).CombinedOutput(); err != nil {
		return fmt.Errorf("entry create: %v: %s", err, out)
	}
	lat, err := fetchFromChild(ctx, socket)
	if err != nil {
		return err
	}
	p50, p99 := percentiles(lat)
	fmt.Printf("fetch  cached FetchX509SVID, deployed:      p50 %8.3f ms  p99 %8.3f ms  (server, agent and workload in 3 processes; target 0.5 ms p99)\n", ms(p50), ms(p99))
	record(newFigure("cached fetch p50, deployed (3 processes)", ms(p50), "ms", 0, nil, ""))
	record(newFigure("cached fetch p99, deployed (3 processes)", ms(p99), "ms", 0,
		&Goal{Text: "≤ 0.5 ms", Kind: GoalMaxValue, Bound: 0.5}, "2.17 ms"))
	return nil
}

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
