package cgroup

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const (
	cid  = "9be8a1b3c5e7d9f1a2b4c6d8e0f1a3b5c7d9e1f2a4b6c8d0e2f4a6b8c0d2e4f6"
	cid2 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	pod  = "2c48913c-b29f-11e7-9350-020968147796"
	podU = "2c48913c_b29f_11e7_9350_020968147796"
)

// cases are /proc/<pid>/cgroup files as found on real hosts, with what
// ContainerID, PodUID and SystemdUnit make of them.
var cases = []struct {
	name      string
	file      string
	container string
	pod       string
	unit      string
}{
	{
		name: "v1 kubepods burstable cgroupfs docker",
		file: `12:pids:/kubepods/burstable/pod` + pod + `/` + cid + `
11:hugetlb:/kubepods/burstable/pod` + pod + `/` + cid + `
10:net_prio,net_cls:/kubepods/burstable/pod` + pod + `/` + cid + `
9:perf_event:/kubepods/burstable/pod` + pod + `/` + cid + `
8:cpuset:/kubepods/burstable/pod` + pod + `/` + cid + `
7:devices:/kubepods/burstable/pod` + pod + `/` + cid + `
6:freezer:/kubepods/burstable/pod` + pod + `/` + cid + `
5:memory:/kubepods/burstable/pod` + pod + `/` + cid + `
4:blkio:/kubepods/burstable/pod` + pod + `/` + cid + `
3:cpuacct,cpu:/kubepods/burstable/pod` + pod + `/` + cid + `
2:rdma:/
1:name=systemd:/kubepods/burstable/pod` + pod + `/` + cid + `
0::/
`,
		container: cid, pod: pod,
	},
	{
		name: "v1 kubepods guaranteed cgroupfs",
		file: `4:memory:/kubepods/pod` + pod + `/` + cid + `
3:cpu,cpuacct:/kubepods/pod` + pod + `/` + cid + `
1:name=systemd:/kubepods/pod` + pod + `/` + cid + `
`,
		container: cid, pod: pod,
	},
	{
		name: "v1 kubepods besteffort systemd driver containerd",
		file: `11:memory:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod` + podU + `.slice/cri-containerd-` + cid + `.scope
3:cpu,cpuacct:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod` + podU + `.slice/cri-containerd-` + cid + `.scope
1:name=systemd:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod` + podU + `.slice/cri-containerd-` + cid + `.scope
`,
		container: cid, pod: pod, unit: "cri-containerd-" + cid + ".scope",
	},
	{
		name:      "v2 kubepods burstable systemd driver containerd",
		file:      "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + podU + ".slice/cri-containerd-" + cid + ".scope\n",
		container: cid, pod: pod, unit: "cri-containerd-" + cid + ".scope",
	},
	{
		name:      "v2 kubepods guaranteed systemd driver CRI-O",
		file:      "0::/kubepods.slice/kubepods-pod" + podU + ".slice/crio-" + cid + ".scope\n",
		container: cid, pod: pod, unit: "crio-" + cid + ".scope",
	},
	{
		name:      "v2 CRI-O container with nested init cgroup",
		file:      "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + podU + ".slice/crio-" + cid + ".scope/container\n",
		container: cid, pod: pod, unit: "crio-" + cid + ".scope",
	},
	{
		name:      "v2 CRI-O conmon is not the container",
		file:      "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + podU + ".slice/crio-conmon-" + cid + ".scope\n",
		container: "", pod: pod, unit: "crio-conmon-" + cid + ".scope",
	},
	{
		name:      "v2 kubepods cgroupfs driver",
		file:      "0::/kubepods/besteffort/pod" + pod + "/" + cid + "\n",
		container: cid, pod: pod,
	},
	{
		name:      "v2 kind node (nested kubelet)",
		file:      "0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod" + podU + ".slice/cri-containerd-" + cid + ".scope\n",
		container: cid, pod: pod, unit: "cri-containerd-" + cid + ".scope",
	},
	{
		name:      "v2 pod sandbox cgroup, no container",
		file:      "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + podU + ".slice\n",
		container: "", pod: pod,
	},
	{
		name:      "v2 seen from a private cgroup namespace (systemd driver)",
		file:      "0::/../../kubepods-besteffort-pod" + podU + ".slice/cri-containerd-" + cid + ".scope\n",
		container: cid, pod: pod, unit: "cri-containerd-" + cid + ".scope",
	},
	{
		name:      "v2 seen from a private cgroup namespace (cgroupfs driver)",
		file:      "0::/../../../besteffort/pod" + pod + "/" + cid + "\n",
		container: cid, pod: pod,
	},
	{
		name: "a slice named pod-something outside kubepods is not a pod",
		file: "0::/system.slice/foo-pod" + podU + ".slice/bar.service\n",
		unit: "bar.service",
	},
	{
		name: "v1 docker cgroupfs driver",
		file: `9:memory:/docker/` + cid + `
4:cpu,cpuacct:/docker/` + cid + `
1:name=systemd:/docker/` + cid + `
`,
		container: cid,
	},
	{
		name:      "v2 docker systemd driver",
		file:      "0::/system.slice/docker-" + cid + ".scope\n",
		container: cid, unit: "docker-" + cid + ".scope",
	},
	{
		name: "v1 docker systemd driver",
		file: `5:memory:/system.slice/docker-` + cid + `.scope
1:name=systemd:/system.slice/docker-` + cid + `.scope
`,
		container: cid, unit: "docker-" + cid + ".scope",
	},
	{
		name:      "v2 podman rootful",
		file:      "0::/machine.slice/libpod-" + cid + ".scope/container\n",
		container: cid, unit: "libpod-" + cid + ".scope",
	},
	{
		name:      "v2 podman rootless",
		file:      "0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-" + cid + ".scope\n",
		container: cid, unit: "libpod-" + cid + ".scope",
	},
	{
		name:      "v2 podman conmon",
		file:      "0::/machine.slice/libpod-conmon-" + cid + ".scope\n",
		container: "", unit: "libpod-conmon-" + cid + ".scope",
	},
	{
		name: "v1 podman cgroupfs",
		file: `4:memory:/libpod_parent/libpod-` + cid + `
1:name=systemd:/libpod_parent/libpod-` + cid + `
`,
		container: cid,
	},
	{
		name: "v2 systemd service",
		file: "0::/system.slice/nginx.service\n",
		unit: "nginx.service",
	},
	{
		name: "v1 systemd service",
		file: `12:pids:/system.slice/sshd.service
5:memory:/system.slice/sshd.service
3:cpu,cpuacct:/system.slice
1:name=systemd:/system.slice/sshd.service
`,
		unit: "sshd.service",
	},
	{
		name: "v2 template service instance",
		file: "0::/system.slice/system-getty.slice/getty@tty1.service\n",
		unit: "getty@tty1.service",
	},
	{
		name: "v2 init.scope",
		file: "0::/init.scope\n",
		unit: "init.scope",
	},
	{
		name: "v2 user session scope",
		file: "0::/user.slice/user-1000.slice/session-3.scope\n",
		unit: "session-3.scope",
	},
	{
		name: "v2 user manager app scope",
		file: "0::/user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-firefox-4242.scope\n",
		unit: "app-gnome-firefox-4242.scope",
	},
	{
		name: "v2 service with delegated sub-cgroup",
		file: "0::/system.slice/containerd.service/payload\n",
		unit: "containerd.service",
	},
	{
		name: "hybrid v1 name=systemd and empty v2",
		file: `1:name=systemd:/user.slice/user-1000.slice/session-2.scope
0::/
`,
		unit: "session-2.scope",
	},
	{
		name: "v2 root (container with private cgroup namespace)",
		file: "0::/\n",
	},
	{
		name: "path with colon",
		file: "0::/system.slice/weird:name.service\n",
		unit: "weird:name.service",
	},
	{
		name: "id-shaped name that is too short is not a container",
		file: "0::/docker/" + cid[:63] + "\n",
	},
	{
		name: "upper-case hex is not a container id",
		file: "0::/docker/" + strings.ToUpper(cid) + "\n",
	},
	{
		name: "two different containers are ambiguous",
		file: "4:memory:/docker/" + cid + "\n1:name=systemd:/docker/" + cid2 + "\n",
	},
}

func TestParseAndInterpret(t *testing.T) {
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			entries, err := ParseProcCgroup([]byte(tc.file))
			if err != nil {
				t.Fatalf("ParseProcCgroup: %v", err)
			}
			if n := strings.Count(strings.TrimSuffix(tc.file, "\n"), "\n") + 1; len(entries) != n {
				t.Fatalf("got %d entries, want %d", len(entries), n)
			}
			c, ok := ContainerID(entries)
			if c != tc.container || ok != (tc.container != "") {
				t.Errorf("ContainerID = %q, %v; want %q", c, ok, tc.container)
			}
			p, ok := PodUID(entries)
			if p != tc.pod || ok != (tc.pod != "") {
				t.Errorf("PodUID = %q, %v; want %q", p, ok, tc.pod)
			}
			u, ok := SystemdUnit(entries)
			if u != tc.unit || ok != (tc.unit != "") {
				t.Errorf("SystemdUnit = %q, %v; want %q", u, ok, tc.unit)
			}
		})
	}
}

func TestParseEntries(t *testing.T) {
	entries, err := ParseProcCgroup([]byte("3:cpu,cpuacct:/a/b\n1:name=systemd:/x\n0::/y:z\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []Entry{
		{HierarchyID: 3, Controllers: []string{"cpu", "cpuacct"}, Path: "/a/b"},
		{HierarchyID: 1, Controllers: []string{"name=systemd"}, Path: "/x"},
		{HierarchyID: 0, Path: "/y:z"},
	}
	if len(entries) != len(want) {
		t.Fatalf("got %d entries", len(entries))
	}
	for i := range want {
		g, w := entries[i], want[i]
		if g.HierarchyID != w.HierarchyID || g.Path != w.Path || strings.Join(g.Controllers, ",") != strings.Join(w.Controllers, ",") {
			t.Errorf("entry %d = %+v, want %+v", i, g, w)
		}
	}
}

func TestParseRefuses(t *testing.T) {
	for _, tc := range []struct{ name, file, want string }{
		{"empty", "", "empty"},
		{"only newline", "\n", "empty"},
		{"no colons", "hello\n", "want id:controllers:path"},
		{"one colon", "0:/x\n", "want id:controllers:path"},
		{"bad id", "x::/\n", "bad hierarchy id"},
		{"negative id", "-1::/\n", "bad hierarchy id"},
		{"empty id", "::/\n", "bad hierarchy id"},
		{"relative path", "0::system.slice\n", "not absolute"},
		{"empty path", "0::\n", "not absolute"},
		{"empty controller", "3:cpu,,cpuacct:/\n", "bad controller list"},
		{"v2 with controllers", "0:memory:/\n", "no controllers"},
		{"duplicate id", "0::/a\n0::/b\n", "duplicate hierarchy id"},
		{"blank line", "0::/a\n\n1:name=systemd:/\n", "line 2"},
		{"NUL in path", "0::/a\x00b\n", "control character"},
		{"too many lines", strings.Repeat("1:x:/\n", 300), "more than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseProcCgroup([]byte(tc.file))
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "cgroup: ") {
				t.Fatalf("err = %v, want cgroup: ...%q...", err, tc.want)
			}
		})
	}
}

func TestReadProc(t *testing.T) {
	root := t.TempDir()
	write := func(pid, content string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Join(root, pid), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, pid, "cgroup"), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("42", "0::/system.slice/docker-"+cid+".scope\n")
	write("43", "garbage\n")
	write("44", "0::/"+strings.Repeat("a", MaxFileSize)+"\n")

	// A file larger than the first read buffer is read whole.
	var big strings.Builder
	for i := 1; i <= 120; i++ {
		fmt.Fprintf(&big, "%d:ctl%d:/kubepods/burstable/pod%s/%s\n", i, i, pod, cid)
	}
	write("45", big.String())
	if entries, err := ReadProc(root, 45); err != nil || len(entries) != 120 || entries[119].Path != "/kubepods/burstable/pod"+pod+"/"+cid {
		t.Fatalf("%d-byte file: %d entries, %v", big.Len(), len(entries), err)
	}

	entries, err := ReadProc(root, 42)
	if err != nil {
		t.Fatal(err)
	}
	if id, ok := ContainerID(entries); !ok || id != cid {
		t.Fatalf("ContainerID = %q, %v", id, ok)
	}
	if _, err := ReadProc(root, 41); !errors.Is(err, ErrProcessGone) {
		t.Errorf("missing pid: err = %v, want ErrProcessGone", err)
	}
	if _, err := ReadProc(root, 43); err == nil || !strings.Contains(err.Error(), "want id:controllers:path") {
		t.Errorf("malformed: err = %v", err)
	}
	if _, err := ReadProc(root, 44); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("oversized: err = %v", err)
	}
	if _, err := ReadProc(root, 0); err == nil || !strings.Contains(err.Error(), "invalid pid") {
		t.Errorf("pid 0: err = %v", err)
	}
	// The real /proc of this process parses.
	if _, err := ReadProc("/proc", int32(os.Getpid())); err != nil {
		t.Errorf("real /proc: %v", err)
	}
}

func FuzzParseProcCgroup(f *testing.F) {
	for _, tc := range cases {
		f.Add([]byte(tc.file))
	}
	f.Add([]byte("0::/\n"))
	f.Add([]byte("x:y"))
	f.Fuzz(func(t *testing.T, data []byte) {
		entries, err := ParseProcCgroup(data)
		if err != nil {
			if entries != nil {
				t.Fatal("entries with an error")
			}
			return
		}
		if len(entries) == 0 {
			t.Fatal("no entries and no error")
		}
		for _, e := range entries {
			if !strings.HasPrefix(e.Path, "/") || e.HierarchyID < 0 {
				t.Fatalf("bad entry %+v", e)
			}
		}
		if id, ok := ContainerID(entries); ok && !isHexID(id) {
			t.Fatalf("ContainerID %q is not 64 hex digits", id)
		}
		if u, ok := PodUID(entries); ok {
			if _, ok := podUID(u); !ok {
				t.Fatalf("PodUID %q is not a uid", u)
			}
		}
		if u, ok := SystemdUnit(entries); ok && !strings.HasSuffix(u, ".service") && !strings.HasSuffix(u, ".scope") {
			t.Fatalf("SystemdUnit %q", u)
		}
	})
}

func TestUnderService(t *testing.T) {
	for path, want := range map[string]string{
		"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podx.slice/cri-containerd-a.scope": "",
		"/kubepods/burstable/podx/abc":                                        "",
		"/system.slice/docker-abc.scope/kubelet.slice/kubelet-kubepods.slice": "",
		"/user.slice/user-1000.slice/user@1000.service/app.slice/x.scope":     "user.slice",
		"/../../user-1000.slice/user@1000.service/kubepods.slice":             "user-1000.slice",
		"/system.slice/evil.service/kubepods/besteffort/podx/abc":             "evil.service",
	} {
		got, ok := UnderService([]Entry{{Path: path}})
		if got != want || ok != (want != "") {
			t.Errorf("UnderService(%q) = %q, %v; want %q", path, got, ok, want)
		}
	}
}
