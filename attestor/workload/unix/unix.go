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
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/user"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/sigil-id/sigil/internal/procfs"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/attestor/workload"
)

// Name is the attestor's name and the type of its selectors.
const Name = "unix"

// maxHashCache bounds the executable hash cache; it is cleared when full.
const maxHashCache = 4096

// maxQuickMemo bounds the memo of AttestQuick's answers (about 1 KiB
// each); it is cleared when full.
const maxQuickMemo = 1024

// Attestor is the unix workload attestor. It is safe for concurrent use.
type Attestor struct {
	procRoot string

	mu     sync.Mutex
	hashes map[fileKey]string
	// quick holds AttestQuick's answers (at most maxQuickMemo).
	quick map[quickKey]*quickAnswer
	// hashed counts how many times a file was actually hashed (for tests).
	hashed int

	users, groups *nameCache
}

// nameTTL is how long a resolved user or group name is reused. Names come
// from NSS (files, LDAP, ...), which is slow and often a cgo call; ids are
// what the kernel vouches for, so a name that changes takes effect within
// nameTTL.
const nameTTL = 30 * time.Second

// nameCache caches id -> name resolutions, including failures.
type nameCache struct {
	resolve func(id string) (string, error)
	now     func() time.Time

	mu    sync.Mutex
	names map[string]cachedName
}

type cachedName struct {
	name string
	ok   bool
	at   time.Time
}

func newNameCache(resolve func(string) (string, error)) *nameCache {
	return &nameCache{resolve: resolve, now: time.Now, names: make(map[string]cachedName)}
}

// cached returns id's name from the cache when it is there and fresh:
// name and ok as lookup returns them, and fresh false otherwise.
func (c *nameCache) cached(id string) (name string, ok, fresh bool) {
	now := c.now()
	c.mu.Lock()
	e, hit := c.names[id]
	c.mu.Unlock()
	if hit && now.Sub(e.at) < nameTTL {
		return e.name, e.ok, true
	}
	return "", false, false
}

func (c *nameCache) lookup(id string) (string, bool) {
	if name, ok, fresh := c.cached(id); fresh {
		return name, ok
	}
	now := c.now()
	name, err := c.resolve(id)
	e := cachedName{name: name, ok: err == nil, at: now}
	c.mu.Lock()
	if len(c.names) >= maxHashCache {
		clear(c.names)
	}
	c.names[id] = e
	c.mu.Unlock()
	return e.name, e.ok
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
	return &Attestor{
		procRoot: "/proc",
		hashes:   make(map[fileKey]string),
		quick:    make(map[quickKey]*quickAnswer),
		users: newNameCache(func(id string) (string, error) {
			u, err := user.LookupId(id)
			if err != nil {
				return "", err
			}
			return u.Username, nil
		}),
		groups: newNameCache(func(id string) (string, error) {
			g, err := user.LookupGroupId(id)
			if err != nil {
				return "", err
			}
			return g.Name, nil
		}),
	}
}

// Name returns "unix".
func (a *Attestor) Name() string { return Name }

// Attest returns the unix selectors of the calling process. The user and
// group selectors come from c, the credentials the kernel reported when the
// caller connected, so a caller that has since exec'd a set-user-ID program
// is still the user it was. The executable selectors describe the file the
// process runs now; the Workload API checks afterwards that it is the file
// it ran when it connected.
func (a *Attestor) Attest(ctx context.Context, c workload.Caller) ([]*sigilv1.Selector, error) {
	if c.PID <= 0 {
		return nil, fmt.Errorf("unix attestor: invalid pid %d", c.PID)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	sels, _, err := a.attest(c, false)
	return sels, err
}

// AttestQuick is Attest when it can answer from what it holds without
// anything that may block or take long: the user and group names are in
// their caches (user name services may be remote) and the executable's
// hash is cached (hashing reads the whole file). It then reads only
// /proc (the executable link and a stat of it, and the status file when
// c has no groups) and returns ok true with Attest's answer; otherwise
// it returns ok false, having cached nothing, and the caller runs Attest.
// Its answers are memoized by caller identity (ids and executable file)
// and given again while everything they were made of is unchanged: the
// slice and selectors returned are shared and must not be modified.
// The Workload API runs attestors that have it inline, without a
// goroutine or a timer, when every attestor answers this way.
func (a *Attestor) AttestQuick(c workload.Caller) (sels []*sigilv1.Selector, ok bool, err error) {
	return a.attest(c, true)
}

// attest is Attest, and AttestQuick when quick is set: then it returns
// ok false instead of resolving a name or hashing a file.
func (a *Attestor) attest(c workload.Caller, quick bool) (_ []*sigilv1.Selector, ok bool, _ error) {
	pid := c.PID
	if pid <= 0 {
		return nil, true, fmt.Errorf("unix attestor: invalid pid %d", pid)
	}
	dir := a.procRoot + "/" + strconv.Itoa(int(pid))
	groups := c.Groups
	if groups == nil {
		// The kernel did not report the groups (SO_PEERGROUPS needs
		// Linux 4.13): read them from /proc. Supplementary groups do not
		// change on exec.
		st, err := readStatus(dir + "/status")
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ESRCH) {
				return nil, true, fmt.Errorf("unix attestor: pid %d: %w", pid, workload.ErrProcessGone)
			}
			return nil, true, fmt.Errorf("unix attestor: pid %d: %w", pid, err)
		}
		groups = st.Groups
	}

	uid := strconv.FormatUint(uint64(c.UID), 10)
	gid := strconv.FormatUint(uint64(c.GID), 10)
	var uname, gname string
	var uok, gok bool
	if quick {
		var fresh bool
		if uname, uok, fresh = a.users.cached(uid); !fresh {
			return nil, false, nil
		}
		if gname, gok, fresh = a.groups.cached(gid); !fresh {
			return nil, false, nil
		}
	} else {
		uname, uok = a.users.lookup(uid)
		gname, gok = a.groups.lookup(gid)
	}

	var path, sum string
	var err error
	var memo *quickAnswer
	if quick {
		var file fileKey
		var hit bool
		path, file, sum, err = a.exeQuick(dir + "/exe")
		if err == errNotCached {
			return nil, false, nil
		}
		if err == nil {
			key := quickKey{uid: c.UID, gid: c.GID, file: file}
			a.mu.Lock()
			memo, hit = a.quick[key]
			a.mu.Unlock()
			if hit && memo.matches(path, sum, uname, uok, gname, gok, groups) {
				// Full slice expression: a caller that appends gets a
				// copy, never a write into the shared array.
				return memo.sels[:len(memo.sels):len(memo.sels)], true, nil
			}
			memo = &quickAnswer{key: key, path: path, sum: sum, uname: uname, uok: uok, gname: gname, gok: gok,
				groups: append([]uint32(nil), groups...)}
		}
	} else {
		path, sum, err = a.exe(dir + "/exe")
	}

	sels := make([]*sigilv1.Selector, 0, 6+len(groups))
	add := func(v string) { sels = append(sels, &sigilv1.Selector{Type: Name, Value: v}) }
	add("uid:" + uid)
	if uok {
		add("user:" + uname)
	}
	add("gid:" + gid)
	if gok {
		add("group:" + gname)
	}
	for _, g := range groups {
		add("supplementary_gid:" + strconv.FormatUint(uint64(g), 10))
	}
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
			return nil, true, fmt.Errorf("unix attestor: pid %d: %w", pid, workload.ErrProcessGone)
		}
	default:
		return nil, true, fmt.Errorf("unix attestor: pid %d: executable: %w", pid, err)
	}
	if memo != nil {
		memo.sels = sels
		a.mu.Lock()
		if len(a.quick) >= maxQuickMemo {
			clear(a.quick)
		}
		a.quick[memo.key] = memo
		a.mu.Unlock()
		return sels[:len(sels):len(sels)], true, nil
	}
	return sels, true, nil
}

// quickKey names a caller identity, for the selectors of AttestQuick:
// its user and group ids as the kernel reported them at connect, and the
// executable file it runs.
type quickKey struct {
	uid, gid uint32
	file     fileKey
}

// quickAnswer is what AttestQuick answered for a quickKey, with what else
// the answer was made of; it is given again only while all of it is
// unchanged. Its selectors are shared by every caller given them and
// never modified.
type quickAnswer struct {
	key          quickKey
	path, sum    string
	uname, gname string
	uok, gok     bool
	groups       []uint32
	sels         []*sigilv1.Selector
}

// matches reports whether q was made of these executable path and hash,
// names and supplementary groups.
func (q *quickAnswer) matches(path, sum, uname string, uok bool, gname string, gok bool, groups []uint32) bool {
	return q.path == path && q.sum == sum && q.uname == uname && q.uok == uok && q.gname == gname && q.gok == gok &&
		slices.Equal(q.groups, groups)
}

// errNotCached is exe's answer in quick mode for a file whose hash is not
// cached.
var errNotCached = errors.New("executable hash not cached")

// readStatus reads the credentials of a process from its /proc status
// file.
func readStatus(path string) (procfs.Status, error) {
	st, err := procfs.ReadStatus(path)
	if err != nil && errors.Is(err, procfs.ErrMalformedStatus) {
		return procfs.Status{}, fmt.Errorf("%s: %w", path, err)
	}
	return st, err
}

// exeQuick is exe in quick mode that also returns the key of the file:
// it resolves the link and stats the file the process runs, and returns
// errNotCached when that file's hash is not cached.
func (a *Attestor) exeQuick(link string) (path string, file fileKey, sum string, err error) {
	path, err = os.Readlink(link)
	if err != nil {
		return "", fileKey{}, "", err
	}
	var st syscall.Stat_t
	if err := syscall.Stat(link, &st); err != nil {
		// As exe: the hash cannot be found without the stat.
		return "", fileKey{}, "", errNotCached
	}
	file = keyOfStat(&st)
	a.mu.Lock()
	sum, hit := a.hashes[file]
	a.mu.Unlock()
	if !hit {
		return "", fileKey{}, "", errNotCached
	}
	return path, file, sum, nil
}

// exe resolves the executable link and hashes the file it points to. The
// file is opened through the link, so the hash is of the very file the
// process runs even if the path has been replaced since.
// AttestQuick uses exeQuick instead, which hashes nothing.
func (a *Attestor) exe(link string) (path, sum string, err error) {
	path, err = os.Readlink(link)
	if err != nil {
		return "", "", err
	}
	// The link resolves to the very file the process runs, whatever
	// happened to its path since: a stat of it finds a cached hash with
	// one system call.
	if fi, err := os.Stat(link); err == nil {
		if key, ok := keyOf(fi); ok {
			a.mu.Lock()
			sum, hit := a.hashes[key]
			a.mu.Unlock()
			if hit {
				return path, sum, nil
			}
		}
	}
	f, err := os.Open(link)
	if err != nil {
		return "", "", err
	}
	defer f.Close()
	// Cache under the key of the file as opened and hashed.
	fi, err := f.Stat()
	if err != nil {
		return "", "", err
	}
	key, ok := keyOf(fi)
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
	return keyOfStat(st), true
}

func keyOfStat(st *syscall.Stat_t) fileKey {
	return fileKey{
		dev:       uint64(st.Dev),
		ino:       uint64(st.Ino),
		size:      st.Size,
		mtimeSec:  int64(st.Mtim.Sec),
		mtimeNsec: int64(st.Mtim.Nsec),
	}
}
