// Package systemd is the "systemd" workload attestor: it names the
// systemd unit (service or scope) a process runs in, from the process's
// cgroup, and the unit file that unit was loaded from.
//
// Selectors (both of type "systemd"):
//
//	id:<unit>              the unit, e.g. id:nginx.service, id:session-3.scope
//	fragment_path:<path>   the unit's file, e.g. /usr/lib/systemd/system/nginx.service
//
// The unit is the one systemd itself attributes the process to (what
// `systemctl status <pid>` shows): the first component of the cgroup path
// that is not a slice. Components below it are not trusted: a unit with a
// delegated cgroup subtree (user@<uid>.service, container engines) lets
// the processes in it create cgroups with any name, so a user could make
// "/user.slice/user-1000.slice/user@1000.service/app.slice/sshd.service"
// and would still be id:user@1000.service here, never id:sshd.service.
// A process whose cgroup is in no unit (the root cgroup, cgroupfs-driver
// containers such as /docker/<id>) gets no selectors and no error.
//
// The fragment path is looked up by a FragmentFinder; the one shipped,
// UnitFiles, searches the unit directories in systemd's order and follows
// symbolic links. A unit whose file is not found (a unit created by a
// program at run time and already cleaned up, or one loaded from a
// directory not searched) gets its id selector and no fragment_path
// selector: fewer selectors can only match fewer entries.
//
// The fragment path is not read from systemd over D-Bus: no D-Bus
// library is among the module's dependencies, and a test could not run a
// real bus. FragmentFinder is the seam for a D-Bus implementation.
package systemd

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/attestor/workload"
	"github.com/sigil-id/sigil/attestor/workload/internal/cgroup"
)

// Name is the attestor's name and the type of its selectors.
const Name = "systemd"

// DefaultUnitPaths are the directories searched for the system manager's
// unit files, in systemd's order of precedence.
var DefaultUnitPaths = []string{
	"/run/systemd/transient",
	"/run/systemd/generator.early",
	"/etc/systemd/system",
	"/run/systemd/system",
	"/run/systemd/generator",
	"/usr/local/lib/systemd/system",
	"/usr/lib/systemd/system",
	"/lib/systemd/system",
	"/run/systemd/generator.late",
}

// Config configures the attestor. Start from DefaultConfig.
type Config struct {
	// ProcRoot is where /proc is mounted.
	ProcRoot string
	// UnitPaths are the directories searched for unit files, in order
	// (used when Finder is nil).
	UnitPaths []string
	// Finder finds a unit's fragment path; nil means UnitFiles over
	// UnitPaths.
	Finder FragmentFinder
}

// DefaultConfig returns /proc and DefaultUnitPaths.
func DefaultConfig() Config {
	return Config{ProcRoot: "/proc", UnitPaths: append([]string(nil), DefaultUnitPaths...)}
}

// Validate checks c.
func (c Config) Validate() error {
	if !filepath.IsAbs(c.ProcRoot) {
		return fmt.Errorf("systemd: proc_root %q: want an absolute path", c.ProcRoot)
	}
	if c.Finder == nil && len(c.UnitPaths) == 0 {
		return errors.New("systemd: unit_paths is empty")
	}
	for _, p := range c.UnitPaths {
		if !filepath.IsAbs(p) || filepath.Clean(p) != p {
			return fmt.Errorf("systemd: unit_paths: %q is not an absolute, clean path", p)
		}
	}
	return nil
}

// FragmentFinder finds the file a unit was loaded from.
type FragmentFinder interface {
	// FragmentPath returns the absolute path of unit's file; ok is false
	// when the unit has none that can be found. An error means the
	// lookup itself failed.
	FragmentPath(ctx context.Context, unit string) (path string, ok bool, err error)
}

// UnitFiles is a FragmentFinder that searches unit directories.
type UnitFiles struct {
	// Dirs are searched in order; the first regular file named after the
	// unit wins. For a template instance (name@instance.service) the
	// instance's own file is looked for in every directory first, then
	// the template's (name@.service).
	Dirs []string
}

// FragmentPath implements FragmentFinder. Symbolic links are followed and
// the path of the file they lead to is returned, as systemd reports a
// linked unit; a link to /dev/null (a masked unit) or to anything but a
// regular file is not a fragment.
func (u UnitFiles) FragmentPath(ctx context.Context, unit string) (string, bool, error) {
	names := []string{unit}
	if at := strings.IndexByte(unit, '@'); at > 0 {
		if dot := strings.LastIndexByte(unit, '.'); dot > at+1 {
			names = append(names, unit[:at+1]+unit[dot:])
		}
	}
	for _, name := range names {
		for _, dir := range u.Dirs {
			if err := ctx.Err(); err != nil {
				return "", false, err
			}
			p := filepath.Join(dir, name)
			fi, err := os.Lstat(p)
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) {
				continue
			}
			if err != nil {
				return "", false, err
			}
			if fi.Mode()&fs.ModeSymlink != 0 {
				target, err := filepath.EvalSymlinks(p)
				if err != nil {
					continue // dangling: no fragment here
				}
				fi, err = os.Stat(target)
				if err != nil {
					continue
				}
				p = target
			}
			if fi.Mode().IsRegular() {
				return p, true, nil
			}
		}
	}
	return "", false, nil
}

// Attestor is the systemd workload attestor. It is safe for concurrent
// use.
type Attestor struct {
	procRoot string
	finder   FragmentFinder
}

var _ workload.Attestor = (*Attestor)(nil)

// New returns an attestor for c.
func New(c Config) (*Attestor, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	f := c.Finder
	if f == nil {
		f = UnitFiles{Dirs: append([]string(nil), c.UnitPaths...)}
	}
	return &Attestor{procRoot: c.ProcRoot, finder: f}, nil
}

// Name returns "systemd".
func (a *Attestor) Name() string { return Name }

// Attest returns the systemd selectors of the calling process: none when
// it is in no unit.
func (a *Attestor) Attest(ctx context.Context, c workload.Caller) ([]*sigilv1.Selector, error) {
	entries, err := cgroup.ReadProc(a.procRoot, c.PID)
	if err != nil {
		if errors.Is(err, cgroup.ErrProcessGone) {
			return nil, fmt.Errorf("systemd: %w: %w", workload.ErrProcessGone, err)
		}
		return nil, fmt.Errorf("systemd: %w", err)
	}
	unit, ok := Unit(entries)
	if !ok {
		return nil, nil
	}
	out := []*sigilv1.Selector{{Type: Name, Value: "id:" + unit}}
	p, found, err := a.finder.FragmentPath(ctx, unit)
	if err != nil {
		return nil, fmt.Errorf("systemd: fragment path of %s: %w", unit, err)
	}
	if found && ValidateSelector("fragment_path:"+p) == nil {
		out = append(out, &sigilv1.Selector{Type: Name, Value: "fragment_path:" + p})
	}
	return out, nil
}

// Unit returns the systemd unit a process with these cgroup entries
// belongs to, as systemd attributes it: in the cgroup v2 path (or, without
// one that names a unit, the v1 name=systemd hierarchy's path), the first
// component that is not a slice, if it is a service or scope. ok is false
// when the process is in no such unit.
//
// This differs from cgroup.SystemdUnit, which returns the innermost unit
// name: names below the first unit are made by whoever the unit delegates
// its subtree to, and are not systemd's.
func Unit(entries []cgroup.Entry) (unit string, ok bool) {
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
	for _, p := range strings.Split(path, "/") {
		if p == "" || strings.HasSuffix(p, ".slice") {
			continue
		}
		if validUnitName(p) {
			return p, true
		}
		return "", false
	}
	return "", false
}

// validUnitName reports whether s is a service or scope unit name as
// systemd spells them: at most 255 bytes of letters, digits and ":-_.\@",
// a non-empty prefix and a ".service" or ".scope" suffix.
func validUnitName(s string) bool {
	if len(s) > 255 {
		return false
	}
	prefix, ok := strings.CutSuffix(s, ".service")
	if !ok {
		prefix, ok = strings.CutSuffix(s, ".scope")
	}
	if !ok || prefix == "" || prefix[0] == '@' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte(":-_.\\@", c) >= 0) {
			return false
		}
	}
	return true
}

// ValidateSelector checks the value of a "systemd" selector:
// id:<unit> with a service or scope unit name, or fragment_path:<path>
// with an absolute, clean path.
func ValidateSelector(value string) error {
	key, v, ok := strings.Cut(value, ":")
	switch {
	case ok && key == "id":
		if !validUnitName(v) {
			return fmt.Errorf("systemd selector %q: want id:<name>.service or id:<name>.scope (letters, digits, \":-_.\\@\")", value)
		}
	case ok && key == "fragment_path":
		if !filepath.IsAbs(v) || filepath.Clean(v) != v || strings.ContainsAny(v, "\n\r\x00") {
			return fmt.Errorf("systemd selector %q: want fragment_path:<absolute, clean path>", value)
		}
	default:
		return fmt.Errorf("systemd selector %q: want id:<unit> or fragment_path:<path>", value)
	}
	return nil
}
