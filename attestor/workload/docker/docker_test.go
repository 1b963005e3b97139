package docker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/attestor/workload"
	"github.com/sigil-id/sigil/registration"
)

const (
	ctrID   = "3f4b8e1c2d9a7b6e5f4c3b2a1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e"
	imageID = "sha256:a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90"
	initPID = 4242
	callPID = 4300
)

// dockerPayload is a trimmed answer of Docker 26's GET
// /v1.41/containers/<id>/json, with the fields around the ones used.
func dockerPayload(id string, pid int) string {
	return fmt.Sprintf(`{
  "Id": %q,
  "Created": "2026-11-30T12:00:00.000000000Z",
  "Path": "/docker-entrypoint.sh",
  "Args": ["nginx", "-g", "daemon off;"],
  "State": {"Status": "running", "Running": true, "Paused": false, "Pid": %d, "ExitCode": 0,
            "StartedAt": "2026-11-30T12:00:01.000000000Z"},
  "Image": %q,
  "Name": "/web",
  "RestartCount": 0,
  "Driver": "overlay2",
  "HostConfig": {"NetworkMode": "bridge", "Privileged": false},
  "Mounts": [],
  "Config": {
    "Hostname": "3f4b8e1c2d9a",
    "User": "",
    "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "APP_ROLE=frontend", "DB_PASSWORD=hunter2", "ODD=a:b c=d", "NL=x\ny", "APP_ROLE=frontend"],
    "Cmd": ["nginx", "-g", "daemon off;"],
    "Image": "nginx:1.27",
    "WorkingDir": "",
    "Entrypoint": ["/docker-entrypoint.sh"],
    "Labels": {"com.example.team": "payments", "maintainer": "NGINX Docker Maintainers", "bad:key": "x", "empty": ""}
  },
  "NetworkSettings": {"IPAddress": "172.17.0.2"}
}`, id, pid, imageID)
}

// podmanPayload is the shape of Podman 4's compatible API answer: no
// labels (null), fully qualified image reference, Podman's own variables.
func podmanPayload(id string, pid int) string {
	return fmt.Sprintf(`{
  "Id": %q,
  "Created": "2026-11-30T12:00:00Z",
  "Path": "sleep",
  "Args": ["infinity"],
  "State": {"Status": "running", "Running": true, "Pid": %d, "OOMKilled": false},
  "Image": %q,
  "ResolvConfPath": "",
  "Name": "box",
  "Platform": "linux",
  "Config": {"Hostname": "3f4b8e1c2d9a", "Env": ["container=podman", "HOSTNAME=3f4b8e1c2d9a", "APP_ROLE=batch"],
             "Cmd": ["sleep", "infinity"], "Image": "docker.io/library/alpine:3.20", "Labels": null,
             "StopSignal": "15"}
}`, id, pid, strings.TrimPrefix(imageID, "sha256:"))
}

// engine is a fake Docker Engine on a unix socket.
type engine struct {
	sock     string
	requests atomic.Int32
	handler  http.HandlerFunc
}

func newEngine(t *testing.T, h http.HandlerFunc) *engine {
	t.Helper()
	dir, err := os.MkdirTemp("", "dockerd") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	e := &engine{sock: filepath.Join(dir, "docker.sock"), handler: h}
	ln, err := net.Listen("unix", e.sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.requests.Add(1)
		e.handler(w, r)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return e
}

// serve answers /v1.41/containers/<id>/json with payload for known ids and
// the engine's 404 otherwise.
func serve(payloads map[string]string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, ok := strings.CutPrefix(r.URL.Path, "/v1.41/containers/")
		id, ok2 := strings.CutSuffix(id, "/json")
		if r.Method != http.MethodGet || !ok || !ok2 {
			http.Error(w, `{"message":"page not found"}`, http.StatusNotFound)
			return
		}
		p, known := payloads[id]
		if !known {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusNotFound)
			fmt.Fprintf(w, `{"message":"No such container: %s"}`, id)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, p)
	}
}

// procTree writes <root>/<pid>/cgroup for each pid.
func procTree(t *testing.T, cgroups map[int]string) string {
	t.Helper()
	root := t.TempDir()
	for pid, content := range cgroups {
		d := filepath.Join(root, fmt.Sprint(pid))
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "cgroup"), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func newAttestor(t *testing.T, sock, procRoot string, mod func(*Config)) *Attestor {
	t.Helper()
	c := DefaultConfig()
	c.SocketPath = sock
	c.ProcRoot = procRoot
	c.EnvAllowList = []string{"APP_ROLE", "ODD", "NL"}
	if mod != nil {
		mod(&c)
	}
	a, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func values(sels []*sigilv1.Selector) []string {
	var out []string
	for _, s := range sels {
		out = append(out, s.Type+":"+s.Value)
	}
	slices.Sort(out)
	return out
}

var systemdDriver = "0::/system.slice/docker-" + ctrID + ".scope\n"

func TestAttestDockerContainer(t *testing.T) {
	e := newEngine(t, serve(map[string]string{ctrID: dockerPayload(ctrID, initPID)}))
	root := procTree(t, map[int]string{initPID: systemdDriver, callPID: systemdDriver})
	a := newAttestor(t, e.sock, root, nil)
	sels, err := a.Attest(context.Background(), workload.Caller{PID: callPID})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"docker:env:APP_ROLE:frontend",
		"docker:env:ODD:a:b c=d",
		"docker:image:nginx:1.27",
		"docker:image_id:" + imageID,
		"docker:label:com.example.team:payments",
		"docker:label:empty:",
		"docker:label:maintainer:NGINX Docker Maintainers",
	}
	if got := values(sels); !slices.Equal(got, want) {
		t.Fatalf("selectors:\n got %q\nwant %q", got, want)
	}
	// Every selector produced is one an entry may hold.
	for _, s := range sels {
		if err := registration.ValidateSelectorInput(s); err != nil {
			t.Errorf("produced selector refused by the registry: %v", err)
		}
	}
}

func TestEnvAllowListEnforced(t *testing.T) {
	e := newEngine(t, serve(map[string]string{ctrID: dockerPayload(ctrID, initPID)}))
	root := procTree(t, map[int]string{initPID: systemdDriver, callPID: systemdDriver})
	for _, allow := range [][]string{nil, {"APP_ROLE"}} {
		a := newAttestor(t, e.sock, root, func(c *Config) { c.EnvAllowList = allow })
		sels, err := a.Attest(context.Background(), workload.Caller{PID: callPID})
		if err != nil {
			t.Fatal(err)
		}
		var env []string
		for _, v := range values(sels) {
			if strings.HasPrefix(v, "docker:env:") {
				env = append(env, v)
			}
			if strings.Contains(v, "hunter2") || strings.Contains(v, "PATH") {
				t.Fatalf("allow list %q: a variable not listed became a selector: %s", allow, v)
			}
		}
		want := []string(nil)
		if len(allow) > 0 {
			want = []string{"docker:env:APP_ROLE:frontend"}
		}
		if !slices.Equal(env, want) {
			t.Fatalf("allow list %q: env selectors %q, want %q", allow, env, want)
		}
	}
}

func TestAttestPodmanContainerCgroupV1(t *testing.T) {
	cg := "12:pids:/machine.slice/libpod-" + ctrID + ".scope\n" +
		"4:memory:/machine.slice/libpod-" + ctrID + ".scope\n" +
		"1:name=systemd:/machine.slice/libpod-" + ctrID + ".scope\n"
	e := newEngine(t, serve(map[string]string{ctrID: podmanPayload(ctrID, initPID)}))
	root := procTree(t, map[int]string{initPID: cg, callPID: cg})
	a := newAttestor(t, e.sock, root, nil)
	sels, err := a.Attest(context.Background(), workload.Caller{PID: callPID})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"docker:env:APP_ROLE:batch",
		"docker:image:docker.io/library/alpine:3.20",
		"docker:image_id:" + imageID, // the bare id gets its sha256: prefix
	}
	if got := values(sels); !slices.Equal(got, want) {
		t.Fatalf("selectors:\n got %q\nwant %q", got, want)
	}
}

func TestAttestNestedCgroupInContainer(t *testing.T) {
	// A container running systemd: init in init.scope, services beside it.
	base := "0::/system.slice/docker-" + ctrID + ".scope"
	e := newEngine(t, serve(map[string]string{ctrID: dockerPayload(ctrID, initPID)}))
	root := procTree(t, map[int]string{initPID: base + "/init.scope\n", callPID: base + "/system.slice/app.service\n"})
	a := newAttestor(t, e.sock, root, nil)
	sels, err := a.Attest(context.Background(), workload.Caller{PID: callPID})
	if err != nil || len(sels) == 0 {
		t.Fatalf("selectors %v, err %v", values(sels), err)
	}
}

func TestAttestNotInContainer(t *testing.T) {
	e := newEngine(t, serve(nil))
	root := procTree(t, map[int]string{callPID: "0::/user.slice/user-1000.slice/session-2.scope\n"})
	a := newAttestor(t, e.sock, root, nil)
	sels, err := a.Attest(context.Background(), workload.Caller{PID: callPID})
	if err != nil || sels != nil {
		t.Fatalf("selectors %v, err %v; want none and no error", sels, err)
	}
	if n := e.requests.Load(); n != 0 {
		t.Fatalf("the engine was asked %d times about a process in no container", n)
	}
}

func TestAttestRefusals(t *testing.T) {
	other := strings.Repeat("ab", 32)
	spoofed := "0::/user.slice/user-1000.slice/user@1000.service/docker-" + ctrID + ".scope\n"
	tests := []struct {
		name    string
		handler http.HandlerFunc
		procs   map[int]string
		mod     func(*Config)
		want    string
	}{
		{"unknown container", serve(map[string]string{}), nil, nil, "unknown to the engine"},
		{"malformed JSON", serve(map[string]string{ctrID: `{"Id": "` + ctrID + `", "Config": {`}), nil, nil, "malformed inspect answer"},
		{"not JSON", serve(map[string]string{ctrID: `<html>proxy error</html>`}), nil, nil, "malformed inspect answer"},
		{"no Config", serve(map[string]string{ctrID: `{"Id": "` + ctrID + `", "Image": "` + imageID + `"}`}), nil, nil, "no Config"},
		{"bad image id", serve(map[string]string{ctrID: strings.Replace(dockerPayload(ctrID, initPID), imageID, "nginx", 1)}), nil, nil, "not an image id"},
		{"another container described", serve(map[string]string{ctrID: dockerPayload(other, initPID)}), nil, nil, "the engine described"},
		{"oversized answer", serve(map[string]string{ctrID: dockerPayload(ctrID, initPID) + strings.Repeat(" ", 8<<10)}), nil,
			func(c *Config) { c.MaxResponseBytes = 4 << 10 }, "larger than 4096 bytes"},
		{"engine error", func(w http.ResponseWriter, _ *http.Request) {
			http.Error(w, `{"message":"server\nerror"}`, http.StatusInternalServerError)
		}, nil, nil, "500 Internal Server Error: server error"},
		{"container not running", serve(map[string]string{ctrID: dockerPayload(ctrID, 0)}), nil, nil, "is not running"},
		{"init process not in the caller's container cgroup", serve(map[string]string{ctrID: dockerPayload(ctrID, initPID)}),
			map[int]string{initPID: systemdDriver, callPID: spoofed}, nil, "whose init process is not in it"},
		{"init process gone", serve(map[string]string{ctrID: dockerPayload(ctrID, initPID)}),
			map[int]string{callPID: systemdDriver}, nil, "init process 4242"},
		{"malformed caller cgroup", serve(nil), map[int]string{callPID: "garbage\n"}, nil, "cgroup"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEngine(t, tt.handler)
			procs := tt.procs
			if procs == nil {
				procs = map[int]string{initPID: systemdDriver, callPID: systemdDriver}
			}
			a := newAttestor(t, e.sock, procTree(t, procs), tt.mod)
			sels, err := a.Attest(context.Background(), workload.Caller{PID: callPID})
			if err == nil || sels != nil {
				t.Fatalf("selectors %v, err %v; want an error", values(sels), err)
			}
			if !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), "docker: ") || strings.Contains(err.Error(), "docker: docker:") {
				t.Fatalf("error %q, want it to start with \"docker: \" once and mention %q", err, tt.want)
			}
		})
	}
}

func TestAttestSocketMissing(t *testing.T) {
	root := procTree(t, map[int]string{initPID: systemdDriver, callPID: systemdDriver})
	a := newAttestor(t, filepath.Join(t.TempDir(), "no.sock"), root, nil)
	_, err := a.Attest(context.Background(), workload.Caller{PID: callPID})
	if err == nil || !strings.Contains(err.Error(), "unreachable") || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("err %v; want the engine unreachable because the socket does not exist", err)
	}
}

func TestAttestProcessGone(t *testing.T) {
	a := newAttestor(t, "/nonexistent.sock", t.TempDir(), nil)
	_, err := a.Attest(context.Background(), workload.Caller{PID: callPID})
	if !errors.Is(err, workload.ErrProcessGone) {
		t.Fatalf("err %v; want ErrProcessGone", err)
	}
}

// An engine that accepts the request and never answers: the caller's
// context ends the attestation, with an error.
func TestAttestEngineHangsCallerContext(t *testing.T) {
	asked := make(chan struct{})
	e := newEngine(t, func(w http.ResponseWriter, r *http.Request) {
		close(asked)
		<-r.Context().Done()
	})
	root := procTree(t, map[int]string{initPID: systemdDriver, callPID: systemdDriver})
	a := newAttestor(t, e.sock, root, nil)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-asked; cancel() }()
	_, err := a.Attest(ctx, workload.Caller{PID: callPID})
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "no answer from the engine") {
		t.Fatalf("err %v; want no answer, context canceled", err)
	}
}

// The attestor's own Timeout bounds the call even when the caller's
// context has none.
func TestAttestEngineHangsTimeout(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	e := newEngine(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	})
	root := procTree(t, map[int]string{initPID: systemdDriver, callPID: systemdDriver})
	a := newAttestor(t, e.sock, root, func(c *Config) { c.Timeout = 1 }) // 1ns: already over
	_, err := a.Attest(context.Background(), workload.Caller{PID: callPID})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err %v; want the deadline exceeded", err)
	}
}

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("default config refused: %v", err)
	}
	bad := map[string]func(*Config){
		"socket_path":        func(c *Config) { c.SocketPath = "docker.sock" },
		"api_version":        func(c *Config) { c.APIVersion = "v1.41/../x" },
		"proc_root":          func(c *Config) { c.ProcRoot = "" },
		"timeout":            func(c *Config) { c.Timeout = 0 },
		"max_response_bytes": func(c *Config) { c.MaxResponseBytes = 10 },
		"env_allow_list":     func(c *Config) { c.EnvAllowList = []string{"A=B"} },
		"env_allow_list ":    func(c *Config) { c.EnvAllowList = []string{"A", "A"} },
	}
	for key, mod := range bad {
		c := DefaultConfig()
		mod(&c)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), strings.TrimSpace(key)) {
			t.Errorf("%s: err %v; want an error naming it", key, err)
		}
	}
}

func TestValidateSelector(t *testing.T) {
	good := []string{"label:a:b", "label:a:", "env:APP_ROLE:x:y", "image_id:" + imageID, "image:nginx:1.27",
		"image:registry.example.com:5000/app@sha256:" + strings.Repeat("0", 64)}
	for _, v := range good {
		if err := ValidateSelector(v); err != nil {
			t.Errorf("%q refused: %v", v, err)
		}
	}
	bad := []string{"label", "label:", "label::v", "env:A=B:c", "image_id:abc", "image_id:" + strings.ToUpper(imageID),
		"image:", "image:a b", "pod:x"}
	for _, v := range bad {
		if err := ValidateSelector(v); err == nil {
			t.Errorf("%q accepted", v)
		}
	}
}

func TestOddValuesSkipped(t *testing.T) {
	payload := `{"Id":"` + ctrID + `","Image":"` + imageID + `","State":{"Pid":4242},
 "Config":{"Image":"bad ref","Labels":{"nl":"a\nb","nul":"a\u0000b","ok":"x y:z","long":"` + strings.Repeat("v", 5000) + `"},
 "Env":["APP_ROLE=a\rb","APP_ROLE","APP_ROLE=ok"]}}`
	e := newEngine(t, serve(map[string]string{ctrID: payload}))
	root := procTree(t, map[int]string{initPID: systemdDriver, callPID: systemdDriver})
	a := newAttestor(t, e.sock, root, nil)
	sels, err := a.Attest(context.Background(), workload.Caller{PID: callPID})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"docker:env:APP_ROLE:ok", "docker:image_id:" + imageID, "docker:label:ok:x y:z"}
	if got := values(sels); !slices.Equal(got, want) {
		t.Fatalf("selectors:\n got %q\nwant %q", got, want)
	}
}

func TestAttestCgroupfsDriverV1(t *testing.T) {
	cg := "12:pids:/docker/" + ctrID + "\n" +
		"5:memory:/docker/" + ctrID + "\n" +
		"1:name=systemd:/docker/" + ctrID + "\n" +
		"0::/system.slice/containerd.service\n"
	e := newEngine(t, serve(map[string]string{ctrID: dockerPayload(ctrID, initPID)}))
	root := procTree(t, map[int]string{initPID: cg, callPID: cg})
	a := newAttestor(t, e.sock, root, nil)
	sels, err := a.Attest(context.Background(), workload.Caller{PID: callPID})
	if err != nil || !slices.Contains(values(sels), "docker:image_id:"+imageID) {
		t.Fatalf("selectors %v, err %v", values(sels), err)
	}
	// The init process in another container's cgroup in one hierarchy:
	// refused.
	other := strings.Replace(cg, "5:memory:/docker/"+ctrID, "5:memory:/docker/"+strings.Repeat("c", 64), 1)
	root = procTree(t, map[int]string{initPID: other, callPID: cg})
	a = newAttestor(t, e.sock, root, nil)
	if _, err := a.Attest(context.Background(), workload.Caller{PID: callPID}); err == nil || !strings.Contains(err.Error(), "whose init process is not in it") {
		t.Fatalf("err %v; want the init process refused", err)
	}
}
