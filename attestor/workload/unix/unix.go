// Package unix is the "unix" workload attestor: it reads a process's
// credentials and executable from /proc.
//
// Selectors (all of type "unix"):
//
//	uid:<n>                 effective user id
//	user:<name>             effective user name, when it resolves
//	gid:<n>                 effective group id
//	group:<name>            effective group name, when it resolves
//	supplementary_gid:<n>   one per supplementary group
//	path:<path>             absolute path of the executable
//	sha256:<hex>            SHA-256 of the executable file
//
// The executable's hash is cached by (device, inode, size, mtime), so
// attesting many processes of the same binary hashes it once. When the
// agent may not inspect the executable (no permission to read
// /proc/<pid>/exe), path and sha256 are left out: fewer selectors can only
// match fewer entries.
package unix

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/user"
	"strconv"
	"strings"
	"sync"
	"syscall"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/attestor/workload"
)

// Name is the attestor's name and the type of its selectors.
const Name = "unix"

// maxHashCache bounds the executable hash cache; it is cleared when full.
const maxHashCache = 4096

// Attestor is the unix workload attestor. It is safe for concurrent use.
type Attestor struct {
	procRoot string

	mu     sync.Mutex
	hashes map[fileKey]string
	// hashed counts how many times a file was actually hashed (for tests).
	hashed int
}

type fileKey struct {
	dev, ino  uint64
	size      int64
	mtimeSec  int64
	mtimeNsec int64
}

var _ workload.Attestor = (*Attestor)(nil)

// New returns a unix attestor reading /proc.
func New() *Attestor {
	return &Attestor{procRoot: "/proc", hashes: make(map[fileKey]string)}
}

// Name returns "unix".
func (a *Attestor) Name() string { return Name }

// Attest returns the unix selectors of the process pid.
func (a *Attestor) Attest(ctx context.Context, pid int32) ([]*sigilv1.Selector, error) {
	if pid <= 0 {
		return nil, fmt.Errorf("unix attestor: invalid pid %d", pid)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	dir := fmt.Sprintf("%s/%d", a.procRoot, pid)
	st, err := readStatus(dir + "/status")
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ESRCH) {
			return nil, fmt.Errorf("unix attestor: pid %d: %w", pid, workload.ErrProcessGone)
		}
		return nil, fmt.Errorf("unix attestor: pid %d: %w", pid, err)
	}

	sels := make([]*sigilv1.Selector, 0, 8+len(st.groups))
	add := func(v string) { sels = append(sels, &sigilv1.Selector{Type: Name, Value: v}) }

	add("uid:" + st.uid)
	if u, err := user.LookupId(st.uid); err == nil {
		add("user:" + u.Username)
	}
	add("gid:" + st.gid)
	if g, err := user.LookupGroupId(st.gid); err == nil {
		add("group:" + g.Name)
	}
	for _, g := range st.groups {
		add("supplementary_gid:" + g)
	}

	path, sum, err := a.exe(dir + "/exe")
	switch {
	case err == nil:
		add("path:" + path)
		add("sha256:" + sum)
	case errors.Is(err, fs.ErrPermission):
		// Not allowed to inspect the executable: leave the selectors out.
	case errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ESRCH):
		// Kernel threads have no executable; a process that exited
		// meanwhile is gone.
		if _, serr := os.Stat(dir); serr != nil {
			return nil, fmt.Errorf("unix attestor: pid %d: %w", pid, workload.ErrProcessGone)
		}
	default:
		return nil, fmt.Errorf("unix attestor: pid %d: executable: %w", pid, err)
	}
	return sels, nil
}

type status struct {
	uid, gid string
	groups   []string
}

// readStatus reads the effective uid and gid and the supplementary groups
// from a /proc/<pid>/status file.
func readStatus(path string) (*status, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var st status
	var haveUID, haveGID bool
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fields := strings.Fields(val)
		switch key {
		case "Uid":
			if len(fields) < 2 {
				return nil, fmt.Errorf("malformed Uid line in %s", path)
			}
			if _, err := strconv.ParseUint(fields[1], 10, 32); err != nil {
				return nil, fmt.Errorf("malformed Uid line in %s", path)
			}
			st.uid, haveUID = fields[1], true
		case "Gid":
			if len(fields) < 2 {
				return nil, fmt.Errorf("malformed Gid line in %s", path)
			}
			if _, err := strconv.ParseUint(fields[1], 10, 32); err != nil {
				return nil, fmt.Errorf("malformed Gid line in %s", path)
			}
			st.gid, haveGID = fields[1], true
		case "Groups":
			for _, g := range fields {
				if _, err := strconv.ParseUint(g, 10, 32); err != nil {
					return nil, fmt.Errorf("malformed Groups line in %s", path)
				}
				st.groups = append(st.groups, g)
			}
		}
	}
	if !haveUID || !haveGID {
		return nil, fmt.Errorf("no Uid/Gid in %s", path)
	}
	return &st, nil
}

// exe resolves the executable link and hashes the file it points to. The
// file is opened through the link, so the hash is of the very file the
// process runs even if the path has been replaced since.
func (a *Attestor) exe(link string) (path, sum string, err error) {
	path, err = os.Readlink(link)
	if err != nil {
		return "", "", err
	}
	f, err := os.Open(link)
	if err != nil {
		return "", "", err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", "", err
	}
	key, ok := keyOf(fi)
	if ok {
		a.mu.Lock()
		sum, hit := a.hashes[key]
		a.mu.Unlock()
		if hit {
			return path, sum, nil
		}
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", "", err
	}
	sum = hex.EncodeToString(h.Sum(nil))
	a.mu.Lock()
	a.hashed++
	if ok {
		if len(a.hashes) >= maxHashCache {
			clear(a.hashes)
		}
		a.hashes[key] = sum
	}
	a.mu.Unlock()
	return path, sum, nil
}

func keyOf(fi fs.FileInfo) (fileKey, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fileKey{}, false
	}
	return fileKey{
		dev:       uint64(st.Dev),
		ino:       uint64(st.Ino),
		size:      st.Size,
		mtimeSec:  int64(st.Mtim.Sec),
		mtimeNsec: int64(st.Mtim.Nsec),
	}, true
}
