//go:build linux

package workloadapi

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync/atomic"
	"unicode"
	"unicode/utf8"

	"github.com/sigil-id/sigil/internal/procfs"

	"golang.org/x/sys/unix"
)

// peerFromConn reads the peer credentials of a unix socket connection,
// pins the peer process with a pidfd (from the kernel, SO_PEERPIDFD on
// Linux 6.5+, which refers to the very process that connected, or else
// opened by pid) and records the executable it runs.
func peerFromConn(conn net.Conn, r *procReader) (*PeerInfo, error) {
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
		groups  []uint32
		pidfd   = -1
	)
	if err := rc.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if credErr != nil {
			return
		}
		groups = peerGroups(int(fd))
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
	dir := "/proc/" + strconv.Itoa(int(cred.Pid))
	p := &PeerInfo{
		PID:      cred.Pid,
		UID:      cred.Uid,
		GID:      cred.Gid,
		Groups:   groups,
		pidfd:    pidfd,
		exePath:  dir + "/exe",
		statPath: dir + "/stat",
	}
	exe, err := r.exe(p)
	if err != nil {
		p.close()
		return nil, fmt.Errorf("peer %d: %w", cred.Pid, err)
	}
	p.exe = exe
	// Read by pid: whichever process the pid names now. The check below
	// (alive) proves it is the pinned one.
	st, err := procStartTime(p)
	if err != nil {
		p.close()
		return nil, fmt.Errorf("peer %d: %w", cred.Pid, err)
	}
	p.startTime = st
	// The pid may have been reused between connect and the pidfd: the
	// pidfd would then refer to the process that connected (SO_PEERPIDFD)
	// and be dead, or to a newer process whose start time we just read.
	// And the peer may have exec'd a set-user-ID program between connect
	// and now. Check now too, so such a connection fails early.
	if err := p.alive(r); err != nil {
		p.close()
		return nil, err
	}
	return p, nil
}

// peerGroups returns the supplementary groups the peer of the unix socket
// fd had when it connected (SO_PEERGROUPS, Linux 4.13+), or nil when the
// kernel does not say.
func peerGroups(fd int) []uint32 {
	b, err := unix.GetsockoptString(fd, unix.SOL_SOCKET, unix.SO_PEERGROUPS)
	if err != nil || len(b)%4 != 0 {
		return nil
	}
	groups := make([]uint32, 0, len(b)/4)
	for i := 0; i < len(b); i += 4 {
		groups = append(groups, binary.NativeEndian.Uint32([]byte(b[i:i+4])))
	}
	return groups
}

// Reasons a connection's process is no longer the one that connected.
var (
	errCredsChanged = errors.New("changed its user or group since it connected")
	errExecd        = errors.New("runs another program than when it connected")
)

// alive reports an error unless the process the connection was pinned to
// still runs under the same pid, with the effective user and group it
// connected with, and the program it ran when it connected. Everything
// read by pid is read before the liveness check (r.startTime: for the
// server, pinnedStartTime, which asks the pidfd whether the pinned
// process has exited), so that a pid reused meanwhile cannot pass with
// another process's answers; the credentials are read from the pidfd,
// the process itself.
func (p *PeerInfo) alive(r *procReader) error {
	p.fdMu.RLock()
	defer p.fdMu.RUnlock()
	if p.pidfd < 0 {
		return errors.New("connection closed")
	}
	st, err := r.status(p)
	if err != nil {
		return fmt.Errorf("peer process %d is gone: %w", p.PID, err)
	}
	exe, err := r.exe(p)
	if err != nil {
		return fmt.Errorf("peer process %d is gone: %w", p.PID, err)
	}
	// The liveness check (pinnedStartTime, on the pidfd), after every
	// read by pid.
	start, err := r.startTime(p)
	if err != nil {
		return fmt.Errorf("peer process %d is gone: %w", p.PID, err)
	}
	if start != p.startTime {
		return fmt.Errorf("pid %d was reused by another process", p.PID)
	}
	if st.EUID != p.UID || st.EGID != p.GID {
		return fmt.Errorf("peer process %d %w (uid %d gid %d then, %d %d now)", p.PID, errCredsChanged, p.UID, p.GID, st.EUID, st.EGID)
	}
	if exe.errno == uintptr(unix.ENOENT) && p.exe.errno == 0 {
		// It ran a program and has none now: its main thread has
		// exited and released its memory (the rest of the process may
		// still be exiting; the pidfd reports the exit only once every
		// thread is done).
		return fmt.Errorf("peer process %d is gone: its main thread has exited", p.PID)
	}
	if exe != p.exe {
		return fmt.Errorf("peer process %d %w", p.PID, errExecd)
	}
	return nil
}

func (p *PeerInfo) close() {
	p.fdMu.Lock()
	if p.pidfd >= 0 {
		unix.Close(p.pidfd)
		p.pidfd = -1
	}
	p.fdMu.Unlock()
	p.mu.Lock()
	release := p.release
	p.release = nil
	p.mu.Unlock()
	if release != nil {
		release()
	}
}

// procExe identifies the executable of the peer's process by a stat of
// /proc/<pid>/exe, which follows the link to the very file the process
// runs.
func procExe(p *PeerInfo) (exeID, error) {
	var st unix.Stat_t
	err := unix.Stat(p.exePath, &st)
	switch {
	case err == nil:
		return exeID{
			dev: st.Dev, ino: st.Ino, size: st.Size,
			mtimeSec: st.Mtim.Sec, mtimeNsec: st.Mtim.Nsec,
		}, nil
	case errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM):
		// The agent may not inspect this process's executable.
		return exeID{errno: uintptr(unix.EACCES)}, nil
	case errors.Is(err, unix.ENOENT):
		// A kernel thread, or a process that exited: the liveness
		// check tells which.
		return exeID{errno: uintptr(unix.ENOENT)}, nil
	default:
		return exeID{}, err
	}
}

// pidfdInfoUnsupported is set once the kernel refused PIDFD_GET_INFO
// (before Linux 6.13): procStatus then reads the status file.
var pidfdInfoUnsupported atomic.Bool

// procStatus returns the effective user and group of the peer's process:
// from its pidfd (PIDFD_GET_INFO, one ioctl on the process itself, Linux
// 6.13+) or, on older kernels, from /proc/<pid>/status.
func procStatus(p *PeerInfo) (procfs.Status, error) {
	if !pidfdInfoUnsupported.Load() {
		info := unix.PidfdInfo{Mask: unix.PIDFD_INFO_CREDS}
		err := unix.IoctlPidfdInfo(p.pidfd, &info)
		switch {
		case err == nil && info.Mask&unix.PIDFD_INFO_CREDS != 0:
			return procfs.Status{EUID: info.Euid, EGID: info.Egid}, nil
		case err == nil:
			return procfs.Status{}, errors.New("PIDFD_GET_INFO returned no credentials")
		case errors.Is(err, unix.ENOTTY), errors.Is(err, unix.EINVAL):
			pidfdInfoUnsupported.Store(true)
		default:
			return procfs.Status{}, err
		}
	}
	return procStatusFile(p)
}

// procStatusFile reads the peer's credentials from /proc/<pid>/status.
func procStatusFile(p *PeerInfo) (procfs.Status, error) {
	return procfs.ReadStatus("/proc/" + strconv.Itoa(int(p.PID)) + "/status")
}

// pinnedStartTime is the start time of the process a connection is
// pinned to while that process has not exited: the start time read by
// pid at handshake (PeerInfo.startTime), after checking on the pidfd,
// the process itself, that it has not exited. It fails for a process
// that has exited, a zombie included, as procStartTime does.
//
// It gives what procStartTime would read at this moment, with one cheap
// system call instead of opening, generating and parsing
// /proc/<pid>/stat: a pid is reused only once its process has exited and
// been reaped, so while the pinned process has not exited its pid names
// it, and the start time read by that pid at handshake (after the pidfd
// was taken) is its own. Reads by pid made before this check are
// therefore of the pinned process whenever it passes.
func pinnedStartTime(p *PeerInfo) (uint64, error) {
	exited, err := pidfdExited(p.pidfd)
	if err != nil {
		return 0, err
	}
	if exited {
		return 0, errors.New("process has exited")
	}
	return p.startTime, nil
}

// pidfdExited reports whether the process pidfd refers to has exited:
// poll(2) finds a pidfd readable once every thread of the process has
// exited (a zombie not yet reaped included) and, with POLLHUP, once it has
// been reaped. It does not block.
func pidfdExited(pidfd int) (bool, error) {
	fds := [1]unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds[:], 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("polling pidfd: %w", err)
		}
		if n > 0 && fds[0].Revents&unix.POLLNVAL != 0 {
			return false, errors.New("polling pidfd: not an open descriptor")
		}
		return n > 0, nil
	}
}

// procStartTime returns the start time (in clock ticks after boot) of the
// peer's process from /proc/<pid>/stat, and fails for a zombie.
func procStartTime(p *PeerInfo) (uint64, error) {
	var st uint64
	err := procfs.Read(p.statPath, func(b []byte) error {
		var err error
		st, err = parseStat(b)
		return err
	})
	return st, err
}

// pidStartTime is procStartTime for a pid, through the path of its stat
// file.
func pidStartTime(pid int32) (uint64, error) {
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
// Fields are split as bytes.Fields splits them, without allocating.
func parseStat(b []byte) (uint64, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("malformed /proc stat")
	}
	// Field 3 (state) is the first after the name; start time is
	// field 22, the 20th.
	var state, start []byte
	n := 0
	for rest := b[i+1:]; n < 20; n++ {
		var f []byte
		if f, rest = nextField(rest); f == nil {
			break
		}
		switch n {
		case 0:
			state = f
		case 19:
			start = f
		}
	}
	if n < 20 {
		return 0, errors.New("malformed /proc stat")
	}
	switch string(state) {
	case "Z", "X", "x":
		return 0, errors.New("process has exited")
	}
	return strconv.ParseUint(string(start), 10, 64)
}

// nextField returns the first field of b (a run of bytes that are not
// white space as bytes.Fields sees it) and what follows it; nil when b
// holds none.
func nextField(b []byte) (field, rest []byte) {
	i := 0
	for i < len(b) {
		r, w := rune(b[i]), 1
		if r >= utf8.RuneSelf {
			r, w = utf8.DecodeRune(b[i:])
		}
		if !unicode.IsSpace(r) {
			break
		}
		i += w
	}
	if i == len(b) {
		return nil, nil
	}
	j := i
	for j < len(b) {
		r, w := rune(b[j]), 1
		if r >= utf8.RuneSelf {
			r, w = utf8.DecodeRune(b[j:])
		}
		if unicode.IsSpace(r) {
			break
		}
		j += w
	}
	return b[i:j], b[j:]
}
