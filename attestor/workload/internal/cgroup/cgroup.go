// Package cgroup reads and interprets /proc/<pid>/cgroup for the workload
// attestors that identify a process by its container or systemd unit
// (k8s, docker, systemd).
//
// The file has one line per hierarchy, "hierarchy-ID:controller-list:path":
// cgroup v1 has one line per mounted hierarchy ("4:memory:/kubepods/..."),
// cgroup v2 a single line "0::/path". ParseProcCgroup is strict: a file
// that does not have this shape is an error, so that an attestor fails
// closed rather than guessing. ContainerID, PodUID and SystemdUnit look
// for the names that container runtimes (containerd, CRI-O, Docker with
// the cgroupfs or systemd driver, Podman) and systemd give cgroups.
package cgroup

import (
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/sigil-id/sigil/attestor/workload"
)

// MaxFileSize bounds how much of /proc/<pid>/cgroup ReadProc reads; a
// larger file is an error. Real files are well under 4 KiB.
const MaxFileSize = 64 << 10

// maxLines bounds the number of entries ParseProcCgroup accepts.
const maxLines = 256

// Entry is one line of /proc/<pid>/cgroup.
type Entry struct {
	// HierarchyID is the hierarchy's id: 0 for the cgroup v2 unified
	// hierarchy, positive for a v1 hierarchy.
	HierarchyID int
	// Controllers are the controllers bound to the hierarchy (v1), such
	// as "cpu", "cpuacct" or "name=systemd"; empty for v2.
	Controllers []string
	// Path is the process's cgroup in that hierarchy, absolute ("/" for
	// the root).
	Path string
}

// ErrProcessGone is wrapped by ReadProc's error when the process does not
// exist (its /proc directory is missing). It is workload.ErrProcessGone,
// so attestors may return ReadProc's error as it is.
var ErrProcessGone = workload.ErrProcessGone

// ReadProc reads and parses <procRoot>/<pid>/cgroup. An error wraps
// ErrProcessGone when that file does not exist.
func ReadProc(procRoot string, pid int32) ([]Entry, error) {
	if pid <= 0 {
		return nil, fmt.Errorf("cgroup: invalid pid %d", pid)
	}
	name := filepath.Join(procRoot, strconv.FormatInt(int64(pid), 10), "cgroup")
	// Plain system calls rather than os.Open: this is on the path of
	// every Workload API call, and the file is small.
	fd, err := syscall.Open(name, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	for err == syscall.EINTR {
		fd, err = syscall.Open(name, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	}
	if err != nil {
		if err == syscall.ENOENT || err == syscall.ESRCH {
			return nil, fmt.Errorf("cgroup: pid %d: %w", pid, ErrProcessGone)
		}
		return nil, fmt.Errorf("cgroup: open %s: %w", name, err)
	}
	defer syscall.Close(fd)
	var buf [4096]byte
	data := buf[:0]
	for {
		if len(data) == cap(data) {
			if len(data) > MaxFileSize {
				return nil, fmt.Errorf("cgroup: %s is larger than %d bytes", name, MaxFileSize)
			}
			data = append(data, 0)[:len(data)]
		}
		n, err := syscall.Read(fd, data[len(data):cap(data)])
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("cgroup: read %s: %w", name, err)
		}
		if n == 0 {
			break
		}
		data = data[:len(data)+n]
	}
	if len(data) > MaxFileSize {
		return nil, fmt.Errorf("cgroup: %s is larger than %d bytes", name, MaxFileSize)
	}
	entries, err := ParseProcCgroup(data)
	if err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, name)
	}
	return entries, nil
}

// ParseProcCgroup parses the contents of a /proc/<pid>/cgroup file. Every
// line must be "id:controllers:path" with a non-negative decimal id, an
// absolute path and no empty controller names; the v2 line (id 0) has no
// controllers. An empty file, or one with more than 256 lines or a
// duplicate hierarchy id, is an error. Paths are returned as the kernel
// wrote them (it escapes nothing; paths may contain ':').
func ParseProcCgroup(data []byte) ([]Entry, error) {
	s := string(data)
	s = strings.TrimSuffix(s, "\n")
	if s == "" {
		return nil, errors.New("cgroup: empty cgroup file")
	}
	lines := strings.Split(s, "\n")
	if len(lines) > maxLines {
		return nil, fmt.Errorf("cgroup: more than %d lines", maxLines)
	}
	entries := make([]Entry, 0, len(lines))
	seen := make(map[int]bool, len(lines))
	for i, line := range lines {
		e, err := parseLine(line)
		if err != nil {
			return nil, fmt.Errorf("cgroup: line %d: %w", i+1, err)
		}
		if seen[e.HierarchyID] {
			return nil, fmt.Errorf("cgroup: line %d: duplicate hierarchy id %d", i+1, e.HierarchyID)
		}
		seen[e.HierarchyID] = true
		entries = append(entries, e)
	}
	return entries, nil
}

func parseLine(line string) (Entry, error) {
	idStr, rest, ok := strings.Cut(line, ":")
	if !ok {
		return Entry{}, fmt.Errorf("%q: want id:controllers:path", line)
	}
	ctrl, path, ok := strings.Cut(rest, ":")
	if !ok {
		return Entry{}, fmt.Errorf("%q: want id:controllers:path", line)
	}
	if idStr == "" || len(idStr) > 9 || strings.Trim(idStr, "0123456789") != "" {
		return Entry{}, fmt.Errorf("%q: bad hierarchy id %q", line, idStr)
	}
	id, _ := strconv.Atoi(idStr)
	if !strings.HasPrefix(path, "/") {
		return Entry{}, fmt.Errorf("%q: path %q is not absolute", line, path)
	}
	if strings.ContainsAny(path, "\x00\r") {
		return Entry{}, fmt.Errorf("%q: path has a control character", line)
	}
	e := Entry{HierarchyID: id, Path: path}
	if ctrl != "" {
		for _, c := range strings.Split(ctrl, ",") {
			if c == "" || strings.ContainsAny(c, " \t\x00\r") {
				return Entry{}, fmt.Errorf("%q: bad controller list %q", line, ctrl)
			}
			e.Controllers = append(e.Controllers, c)
		}
	}
	if id == 0 && len(e.Controllers) > 0 {
		return Entry{}, fmt.Errorf("%q: the v2 hierarchy (id 0) has no controllers", line)
	}
	return e, nil
}

// ContainerID returns the 64-hex-digit container id found in the entries'
// paths: the last path component that names a container, in any of the
// forms
//
//	/kubepods/burstable/pod<uid>/<id>                  (cgroupfs driver)
//	/kubepods.slice/.../cri-containerd-<id>.scope      (containerd, systemd driver)
//	/kubepods.slice/.../crio-<id>.scope                (CRI-O)
//	/system.slice/docker-<id>.scope, /docker/<id>      (Docker)
//	/machine.slice/libpod-<id>.scope, /libpod_parent/libpod-<id> (Podman)
//
// ok is false when no entry names a container, and also when entries name
// different containers (an ambiguous process is not attested as either).
// The "conmon" cgroups of CRI-O and Podman (crio-conmon-<id>.scope,
// libpod-conmon-<id>.scope) are not containers.
func ContainerID(entries []Entry) (id string, ok bool) {
	for _, e := range entries {
		c, found := containerIDInPath(e.Path)
		if !found {
			continue
		}
		if id != "" && id != c {
			return "", false
		}
		id = c
	}
	return id, id != ""
}

func containerIDInPath(path string) (string, bool) {
	parts := strings.Split(path, "/")
	for i := len(parts) - 1; i >= 0; i-- {
		if id, ok := containerIDInName(parts[i]); ok {
			return id, true
		}
	}
	return "", false
}

// containerPrefixes are the prefixes runtimes put before the id of a
// container's cgroup ("" for the bare id of the cgroupfs drivers).
var containerPrefixes = []string{"cri-containerd-", "crio-", "docker-", "libpod-", ""}

func containerIDInName(name string) (string, bool) {
	name = strings.TrimSuffix(name, ".scope")
	for _, p := range containerPrefixes {
		if !strings.HasPrefix(name, p) {
			continue
		}
		rest := name[len(p):]
		if isHexID(rest) {
			return rest, true
		}
	}
	return "", false
}

func isHexID(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// PodUID returns the uid of the Kubernetes pod whose cgroup contains the
// process: the "pod<uid>" component of a kubepods path, in the cgroupfs
// form (/kubepods/besteffort/pod<uid>/...) or the systemd form
// (/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid
// with '_' for '-'>.slice/...), with the dashes restored; a kubelet that
// runs in a container itself (kind) nests these under kubelet-kubepods
// slices; seen from inside a cgroup namespace the path is relative
// ("/../../kubepods-besteffort-pod<uid>.slice/..."). ok is false
// when no entry is in a pod, or entries name different pods.
func PodUID(entries []Entry) (uid string, ok bool) {
	for _, e := range entries {
		u, found := podUIDInPath(e.Path)
		if !found {
			continue
		}
		if uid != "" && uid != u {
			return "", false
		}
		uid = u
	}
	return uid, uid != ""
}

func podUIDInPath(path string) (string, bool) {
	for _, p := range strings.Split(path, "/") {
		if s, ok := strings.CutSuffix(p, ".slice"); ok {
			// kubepods-burstable-pod<uid>.slice, kubepods-pod<uid>.slice
			i := strings.LastIndex(s, "-pod")
			if i < 0 || !strings.Contains(s[:i], "kubepods") {
				continue
			}
			if u, ok := podUID(strings.ReplaceAll(s[i+len("-pod"):], "_", "-")); ok {
				return u, true
			}
			continue
		}
		// The cgroupfs form: a pod<uid> component, under /kubepods or,
		// seen from inside a cgroup namespace, under "..".
		if u, ok := strings.CutPrefix(p, "pod"); ok {
			if u, ok := podUID(u); ok {
				return u, true
			}
		}
	}
	return "", false
}

// podUID checks that u is a UUID-shaped pod uid (lower-case, 8-4-4-4-12)
// and returns it.
func podUID(u string) (string, bool) {
	if len(u) != 36 {
		return "", false
	}
	for i := 0; i < len(u); i++ {
		c := u[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return "", false
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
				return "", false
			}
		}
	}
	return u, true
}

// SystemdUnit returns the innermost systemd unit (a name ending in
// ".service" or ".scope") of the process: the last such component of the
// cgroup v2 path, or of the v1 "name=systemd" hierarchy's path when there
// is no v2 entry with a unit. ok is false when neither names a unit.
func SystemdUnit(entries []Entry) (unit string, ok bool) {
	var v1 string
	for _, e := range entries {
		switch {
		case e.HierarchyID == 0:
			if u, ok := unitInPath(e.Path); ok {
				return u, true
			}
		case hasController(e.Controllers, "name=systemd"):
			if u, ok := unitInPath(e.Path); ok {
				v1 = u
			}
		}
	}
	return v1, v1 != ""
}

func hasController(cs []string, c string) bool {
	for _, x := range cs {
		if x == c {
			return true
		}
	}
	return false
}

func unitInPath(path string) (string, bool) {
	parts := strings.Split(path, "/")
	for i := len(parts) - 1; i >= 0; i-- {
		p := parts[i]
		if (strings.HasSuffix(p, ".service") || strings.HasSuffix(p, ".scope")) && len(p) > len(".scope") {
			return p, true
		}
	}
	return "", false
}

// UnderService returns the first component of an entry's path that is a
// systemd service unit (it ends in ".service") or a user slice
// ("user.slice", "user-<uid>.slice"), and whether there is one. The
// cgroups below a service may be delegated to the service's user —
// systemd's user@<uid>.service is delegated to that user, who can then
// create cgroups with any name, including names shaped like a pod's or a
// container's (".../user@1000.service/kubepods-pod<uid>.slice/
// cri-containerd-<id>.scope"). Kubernetes pods are never below a service
// or a user slice, so an attestor that trusts a pod or container name in
// the path must refuse a path for which UnderService is true.
func UnderService(entries []Entry) (component string, ok bool) {
	for _, e := range entries {
		for _, p := range strings.Split(e.Path, "/") {
			if strings.HasSuffix(p, ".service") || p == "user.slice" ||
				(strings.HasPrefix(p, "user-") && strings.HasSuffix(p, ".slice")) {
				return p, true
			}
		}
	}
	return "", false
}
