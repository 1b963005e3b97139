//go:build linux

package workloadapi

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"strconv"

	"github.com/sigil-id/sigil/internal/procfs"

	"golang.org/x/sys/unix"
)

// peerFromConn reads the peer credentials of a unix socket connection and
// pins the peer process with a pidfd: from the kernel (SO_PEERPIDFD, Linux
// 6.5+), which refers to the very process that connected, or else opened
// by pid.
func peerFromConn(conn net.Conn, startTime func(int32) (uint64, error)) (*PeerInfo, error) {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return nil, fmt.Errorf("workload API connection is %T, not a unix socket", conn)
	}
	rc, err := uc.SyscallConn()
	if err != nil {
		return nil, err
	}
	var (
		cred    *unix.Ucred
		credErr error
		pidfd   = -1
	)
	if err := rc.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if credErr != nil {
			return
		}
		if pfd, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PEERPIDFD); err == nil {
			pidfd = pfd
		}
	}); err != nil {
		return nil, err
	}
	if credErr != nil {
		return nil, fmt.Errorf("reading peer credentials: %w", credErr)
	}
	if cred.Pid <= 0 {
		return nil, errors.New("peer has no pid (connected from another pid namespace?)")
	}
	if pidfd < 0 {
		pidfd, err = unix.PidfdOpen(int(cred.Pid), 0)
		if err != nil {
			return nil, fmt.Errorf("opening pidfd of peer %d: %w", cred.Pid, err)
		}
	}
	unix.CloseOnExec(pidfd)
	st, err := startTime(cred.Pid)
	if err != nil {
		unix.Close(pidfd)
		return nil, fmt.Errorf("peer %d: %w", cred.Pid, err)
	}
	p := &PeerInfo{
		PID:       cred.Pid,
		UID:       cred.Uid,
		GID:       cred.Gid,
		pidfd:     pidfd,
		startTime: st,
	}
	// The pid may have been reused between connect and the pidfd: the
	// pidfd would then refer to the process that connected (SO_PEERPIDFD)
	// and be dead, or to a newer process whose start time we just read.
	// Check now too, so a connection from a dead peer fails early.
	if err := p.alive(startTime); err != nil {
		p.close()
		return nil, err
	}
	return p, nil
}

// alive reports an error unless the process the connection was pinned to
// still runs under the same pid.
func (p *PeerInfo) alive(startTime func(int32) (uint64, error)) error {
	p.mu.Lock()
	fd := p.pidfd
	p.mu.Unlock()
	if fd < 0 {
		return errors.New("connection closed")
	}
	if err := unix.PidfdSendSignal(fd, 0, nil, 0); err != nil {
		return fmt.Errorf("peer process %d is gone: %w", p.PID, err)
	}
	st, err := startTime(p.PID)
	if err != nil {
		return fmt.Errorf("peer process %d is gone: %w", p.PID, err)
	}
	if st != p.startTime {
		return fmt.Errorf("pid %d was reused by another process", p.PID)
	}
	return nil
}

func (p *PeerInfo) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pidfd >= 0 {
		unix.Close(p.pidfd)
		p.pidfd = -1
	}
}

// procStartTime returns the start time (in clock ticks after boot) of the
// process pid from /proc/<pid>/stat, and fails for a zombie.
func procStartTime(pid int32) (uint64, error) {
	var st uint64
	err := procfs.Read("/proc/"+strconv.Itoa(int(pid))+"/stat", func(b []byte) error {
		var err error
		st, err = parseStat(b)
		return err
	})
	return st, err
}

// parseStat extracts the start time (field 22) from a /proc/<pid>/stat
// line. The command name (field 2) is in parentheses and may itself hold
// spaces and parentheses, so fields are counted after the last ')'.
func parseStat(b []byte) (uint64, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("malformed /proc stat")
	}
	fields := bytes.Fields(b[i+1:])
	// fields[0] is field 3 (state); start time is field 22.
	if len(fields) < 20 {
		return 0, errors.New("malformed /proc stat")
	}
	switch string(fields[0]) {
	case "Z", "X", "x":
		return 0, errors.New("process has exited")
	}
	return strconv.ParseUint(string(fields[19]), 10, 64)
}
