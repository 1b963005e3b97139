package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// attestFloodLimit is the bound SECURITY.md promises for a server under
// 20 concurrent oversized attestations.
const attestFloodLimit = 200 << 20

// benchAttestFlood starts a real `sigil server` process and sends it 20
// concurrent attestation calls of 30 MiB each, from 20 loopback source
// addresses, without a client certificate (an unauthenticated attacker),
// then reports the server's peak resident set (VmHWM) beside the
// 200 MiB bound and how the calls were answered. It is one bounded round.
func benchAttestFlood(ctx context.Context) error {
	const n, size = 20, 30 << 20
	dir, err := os.MkdirTemp("", "sigil-bench-flood-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin, err := buildSigil(ctx, dir)
	if err != nil {
		return fmt.Errorf("attest flood: %w", err)
	}
	var addrs [2]string
	for i := range addrs {
		if addrs[i], err = benchFreeAddr(); err != nil {
			return err
		}
	}
	cmd := exec.CommandContext(ctx, bin, "server", "-trust-domain", "bench.sigil.test", "-node-name", "flood",
		"-data-dir", filepath.Join(dir, "data"), "-bind-address", addrs[0], "-health-address", addrs[1],
		"-admin-socket", filepath.Join(dir, "admin", "admin.sock"), "-log-level", "error")
	logf, err := os.Create(filepath.Join(dir, "server.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	defer func() {
		_ = cmd.Process.Kill()
		<-done
	}()
	if err := waitHTTP(ctx, "http://"+addrs[1]+"/ready", 60*time.Second); err != nil {
		return fmt.Errorf("attest flood: server: %w", err)
	}
	before, err := vmHWM(cmd.Process.Pid)
	if err != nil {
		return err
	}

	// One well-formed AttestRequest whose bulk is an unknown field,
	// shared by all callers.
	msg := protowire.AppendTag(nil, 1, protowire.BytesType)
	msg = protowire.AppendString(msg, "join_token")
	msg = protowire.AppendTag(msg, 2, protowire.BytesType)
	msg = protowire.AppendString(msg, strings.Repeat("ab", 32))
	msg = protowire.AppendTag(msg, 999, protowire.BytesType)
	msg = protowire.AppendVarint(msg, size)
	msg = append(msg, make([]byte, size)...)

	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		byCode = map[codes.Code]int{}
		start  = make(chan struct{})
	)
	for i := 0; i < n; i++ {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 5, byte(2+i))}, Timeout: 10 * time.Second}
		conn, err := grpc.NewClient("passthrough:///"+addrs[0],
			grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{InsecureSkipVerify: true})), //nolint:gosec // the attacker trusts anything
			grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) { return d.DialContext(ctx, "tcp", a) }))
		if err != nil {
			return err
		}
		defer conn.Close()
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			var out []byte
			err := conn.Invoke(cctx, sigilv1.Node_Attest_FullMethodName, msg, &out, grpc.ForceCodec(floodCodec{}))
			mu.Lock()
			byCode[status.Code(err)]++
			mu.Unlock()
		}()
	}
	t0 := time.Now()
	close(start)
	wg.Wait()
	took := time.Since(t0)
	select {
	case <-done:
		return fmt.Errorf("attest flood: the server exited under the flood (log in %s)", logf.Name())
	default:
	}
	after, err := vmHWM(cmd.Process.Pid)
	if err != nil {
		return err
	}
	fmt.Printf("attack %d x 30 MiB unauthenticated attestations: server peak RSS %6.1f MiB (%.1f before; bound %d MiB), answers %v in %v\n",
		n, float64(after)/(1<<20), float64(before)/(1<<20), attestFloodLimit>>20, byCode, took.Round(time.Millisecond))
	if after >= attestFloodLimit {
		return fmt.Errorf("attest flood: server peak RSS %d MiB exceeds %d MiB", after>>20, attestFloodLimit>>20)
	}
	return nil
}

// floodCodec sends a pre-encoded request as is.
type floodCodec struct{}

func (floodCodec) Marshal(v any) ([]byte, error) { return v.([]byte), nil }
func (floodCodec) Unmarshal(data []byte, v any) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (floodCodec) Name() string { return "proto" }

// vmHWM is a process's peak resident set size in bytes.
func vmHWM(pid int) (int64, error) { return procStatus(pid, "VmHWM") }

// vmRSS is a process's resident set size in bytes.
func vmRSS(pid int) (int64, error) { return procStatus(pid, "VmRSS") }

// procStatus is a size field ("VmHWM", "VmRSS") of /proc/PID/status in
// bytes.
func procStatus(pid int, field string) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("attest flood: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("attest flood: %s %q: %w", field, rest, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("attest flood: no %s in /proc/%d/status", field, pid)
}
