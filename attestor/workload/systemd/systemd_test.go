package systemd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/attestor/workload"
	"github.com/sigil-id/sigil/attestor/workload/internal/cgroup"
	"github.com/sigil-id/sigil/registration"
)

const pid = 777

// fakeRoot makes a fake filesystem root with /proc/<pid>/cgroup and the
// unit files given (path relative to the root -> content, or "->target"
// for a symbolic link).
func fakeRoot(t *testing.T, cg string, files map[string]string) (procRoot string, unitPaths []string, root string) {
	t.Helper()
	root = t.TempDir()
	procRoot = filepath.Join(root, "proc")
	if cg != "" {
		write(t, filepath.Join(procRoot, fmt.Sprint(pid), "cgroup"), cg)
	}
	for p, content := range files {
		full := filepath.Join(root, p)
		if target, ok := strings.CutPrefix(content, "->"); ok {
			if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
				t.Fatal(err)
			}
			if !filepath.IsAbs(target) {
				target = filepath.Join(root, target)
			}
			if err := os.Symlink(target, full); err != nil {
				t.Fatal(err)
			}
			continue
		}
		write(t, full, content)
	}
	for _, d := range DefaultUnitPaths {
		unitPaths = append(unitPaths, filepath.Join(root, d))
	}
	return procRoot, unitPaths, root
}

func write(t *testing.T, p, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func attest(t *testing.T, procRoot string, unitPaths []string) ([]string, error) {
	t.Helper()
	c := DefaultConfig()
	c.ProcRoot = procRoot
	c.UnitPaths = unitPaths
	a, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	sels, err := a.Attest(context.Background(), workload.Caller{PID: pid})
	for _, s := range sels {
		if err := registration.ValidateSelectorInput(s); err != nil {
			t.Errorf("produced selector refused by the registry: %v", err)
		}
	}
	return values(sels), err
}

func values(sels []*sigilv1.Selector) []string {
	var out []string
	for _, s := range sels {
		out = append(out, s.Type+":"+s.Value)
	}
	return out
}

const unitFile = "[Service]\nExecStart=/usr/sbin/nginx\n"

func TestAttest(t *testing.T) {
	tests := []struct {
		name  string
		cg    string
		files map[string]string
		want  []string // fragment paths relative to the fake root
	}{
		{"v2 service, vendor unit file", "0::/system.slice/nginx.service\n",
			map[string]string{"usr/lib/systemd/system/nginx.service": unitFile},
			[]string{"systemd:id:nginx.service", "systemd:fragment_path:/usr/lib/systemd/system/nginx.service"}},
		{"v2 service, /etc overrides /usr/lib", "0::/system.slice/nginx.service\n",
			map[string]string{"usr/lib/systemd/system/nginx.service": unitFile, "etc/systemd/system/nginx.service": unitFile},
			[]string{"systemd:id:nginx.service", "systemd:fragment_path:/etc/systemd/system/nginx.service"}},
		{"v1 name=systemd hierarchy", "11:memory:/system.slice/postgresql.service\n3:cpu,cpuacct:/system.slice/postgresql.service\n1:name=systemd:/system.slice/postgresql.service\n",
			map[string]string{"lib/systemd/system/postgresql.service": unitFile},
			[]string{"systemd:id:postgresql.service", "systemd:fragment_path:/lib/systemd/system/postgresql.service"}},
		{"hybrid: v2 line wins", "1:name=systemd:/system.slice/a.service\n0::/system.slice/b.service\n",
			map[string]string{"etc/systemd/system/b.service": unitFile},
			[]string{"systemd:id:b.service", "systemd:fragment_path:/etc/systemd/system/b.service"}},
		{"template instance", "0::/system.slice/system-getty.slice/getty@tty1.service\n",
			map[string]string{"usr/lib/systemd/system/getty@.service": unitFile},
			[]string{"systemd:id:getty@tty1.service", "systemd:fragment_path:/usr/lib/systemd/system/getty@.service"}},
		{"instance file beats template", "0::/system.slice/system-getty.slice/getty@tty1.service\n",
			map[string]string{"usr/lib/systemd/system/getty@.service": unitFile, "usr/lib/systemd/system/getty@tty1.service": unitFile},
			[]string{"systemd:id:getty@tty1.service", "systemd:fragment_path:/usr/lib/systemd/system/getty@tty1.service"}},
		{"transient session scope", "0::/user.slice/user-1000.slice/session-3.scope\n",
			map[string]string{"run/systemd/transient/session-3.scope": "[Scope]\n"},
			[]string{"systemd:id:session-3.scope", "systemd:fragment_path:/run/systemd/transient/session-3.scope"}},
		{"linked unit: the link's target", "0::/system.slice/app.service\n",
			map[string]string{"opt/app/app.service": unitFile, "etc/systemd/system/app.service": "->opt/app/app.service"},
			[]string{"systemd:id:app.service", "systemd:fragment_path:/opt/app/app.service"}},
		{"unit file not found: id only", "0::/system.slice/run-u42.service\n", nil,
			[]string{"systemd:id:run-u42.service"}},
		{"masked file skipped, next directory used", "0::/system.slice/nginx.service\n",
			map[string]string{"etc/systemd/system/nginx.service": "->/dev/null", "usr/lib/systemd/system/nginx.service": unitFile},
			[]string{"systemd:id:nginx.service", "systemd:fragment_path:/usr/lib/systemd/system/nginx.service"}},
		{"a directory is not a unit file", "0::/system.slice/nginx.service\n",
			map[string]string{"etc/systemd/system/nginx.service/x": ""},
			[]string{"systemd:id:nginx.service"}},
		{"user manager: the delegated subtree's names are not trusted", "0::/user.slice/user-1000.slice/user@1000.service/app.slice/sshd.service\n",
			map[string]string{"usr/lib/systemd/system/sshd.service": unitFile, "usr/lib/systemd/system/user@.service": unitFile},
			[]string{"systemd:id:user@1000.service", "systemd:fragment_path:/usr/lib/systemd/system/user@.service"}},
		{"container scope (docker, systemd driver)", "0::/system.slice/docker-" + strings.Repeat("a", 64) + ".scope\n", nil,
			[]string{"systemd:id:docker-" + strings.Repeat("a", 64) + ".scope"}},
		{"root cgroup: no unit", "0::/\n", nil, nil},
		{"slice only: no unit", "0::/user.slice\n", nil, nil},
		{"cgroupfs container: no unit", "0::/docker/" + strings.Repeat("b", 64) + "\n", nil, nil},
		{"kubepods cgroupfs: no unit even with a unit-like name below", "0::/kubepods/burstable/podx/sshd.service\n", nil, nil},
		{"v1 without name=systemd: no unit", "4:memory:/system.slice/nginx.service\n", nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			procRoot, dirs, root := fakeRoot(t, tt.cg, tt.files)
			got, err := attest(t, procRoot, dirs)
			if err != nil {
				t.Fatal(err)
			}
			var want []string
			for _, w := range tt.want {
				if p, ok := strings.CutPrefix(w, "systemd:fragment_path:"); ok {
					w = "systemd:fragment_path:" + filepath.Join(root, p)
				}
				want = append(want, w)
			}
			if !slices.Equal(got, want) {
				t.Fatalf("selectors:\n got %q\nwant %q", got, want)
			}
		})
	}
}

func TestAttestRefusals(t *testing.T) {
	procRoot, dirs, _ := fakeRoot(t, "", nil)
	if _, err := attest(t, procRoot, dirs); !errors.Is(err, workload.ErrProcessGone) || !strings.HasPrefix(err.Error(), "systemd: ") {
		t.Fatalf("missing process: err %v, want ErrProcessGone", err)
	}
	procRoot, dirs, _ = fakeRoot(t, "not a cgroup file\n", nil)
	if sels, err := attest(t, procRoot, dirs); err == nil || sels != nil || !strings.HasPrefix(err.Error(), "systemd: cgroup: ") {
		t.Fatalf("malformed cgroup: selectors %v err %v, want an error", sels, err)
	}
}

type failingFinder struct{}

func (failingFinder) FragmentPath(context.Context, string) (string, bool, error) {
	return "", false, errors.New("bus unreachable")
}

func TestFinderErrorFailsClosed(t *testing.T) {
	procRoot, _, _ := fakeRoot(t, "0::/system.slice/nginx.service\n", nil)
	a, err := New(Config{ProcRoot: procRoot, Finder: failingFinder{}})
	if err != nil {
		t.Fatal(err)
	}
	sels, err := a.Attest(context.Background(), workload.Caller{PID: pid})
	if err == nil || sels != nil || err.Error() != "systemd: fragment path of nginx.service: bus unreachable" {
		t.Fatalf("selectors %v, err %v", sels, err)
	}
}

func TestUnitFilesHonoursContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := (UnitFiles{Dirs: []string{t.TempDir()}}).FragmentPath(ctx, "a.service"); !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v", err)
	}
}

func TestUnitDiffersFromInnermost(t *testing.T) {
	e := []cgroup.Entry{{HierarchyID: 0, Path: "/system.slice/containerd.service/evil.service"}}
	if u, _ := Unit(e); u != "containerd.service" {
		t.Fatalf("unit %q, want containerd.service", u)
	}
}

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]Config{
		"proc_root":  {ProcRoot: "proc", UnitPaths: DefaultUnitPaths},
		"unit_paths": {ProcRoot: "/proc", UnitPaths: []string{"/etc/../x"}},
		"empty":      {ProcRoot: "/proc"},
	} {
		if err := c.Validate(); err == nil || !strings.HasPrefix(err.Error(), "systemd: ") {
			t.Errorf("%s: err %v", name, err)
		}
	}
}

func TestValidateSelector(t *testing.T) {
	for _, v := range []string{"id:nginx.service", "id:getty@tty1.service", "id:session-3.scope", `id:sys-devices-x\x2dy.service`,
		"fragment_path:/usr/lib/systemd/system/nginx.service"} {
		if err := ValidateSelector(v); err != nil {
			t.Errorf("%q refused: %v", v, err)
		}
	}
	for _, v := range []string{"id:", "id:nginx", "id:.service", "id:a b.service", "id:a/b.service", "id:@.service", "id:x.slice",
		"fragment_path:relative", "fragment_path:/a/../b", "unit:x.service", "nginx.service"} {
		if err := ValidateSelector(v); err == nil {
			t.Errorf("%q accepted", v)
		}
	}
}
