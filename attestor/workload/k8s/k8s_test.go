package k8s

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/attestor/workload"
	"github.com/sigil-id/sigil/attestor/workload/k8s/k8stest"
	"github.com/sigil-id/sigil/clock"
)

const token = "kubelet-token-1"

var (
	appID    = k8stest.ID("app")
	sideID   = k8stest.ID("sidecar")
	initID   = k8stest.ID("init")
	debugID  = k8stest.ID("debug")
	otherID  = k8stest.ID("other-node-app")
	webUID   = k8stest.UID("web")
	otherUID = k8stest.UID("other")
)

func webPod() k8stest.Pod {
	return k8stest.Pod{
		Namespace: "shop", Name: "web-7d9f8b6c5-x2x4q", UID: webUID, ServiceAccount: "web", NodeName: "node-1",
		Labels: map[string]string{"app": "web", "pod-template-hash": "7d9f8b6c5"},
		Owners: []k8stest.Owner{{Kind: "ReplicaSet", Name: "web-7d9f8b6c5"}},
		Containers: []k8stest.Container{
			{Name: "app", Image: "registry.example/shop/web:1.4", ImageID: "registry.example/shop/web@sha256:" + k8stest.ID("img"), ID: appID},
			{Name: "sidecar", Image: "envoyproxy/envoy:v1.31.0", ImageID: "docker.io/envoyproxy/envoy@sha256:" + k8stest.ID("envoy"), ID: sideID},
		},
		InitContainers: []k8stest.Container{{Name: "migrate", Image: "registry.example/shop/migrate:1.4", ImageID: "registry.example/shop/migrate@sha256:" + k8stest.ID("m"), ID: initID}},
		Ephemeral:      []k8stest.Container{{Name: "debugger-abcde", Image: "busybox:1.36", ImageID: "docker.io/library/busybox@sha256:" + k8stest.ID("bb"), ID: debugID}},
	}
}

func otherNodePod() k8stest.Pod {
	return k8stest.Pod{
		Namespace: "shop", Name: "web-7d9f8b6c5-zzzzz", UID: otherUID, ServiceAccount: "web", NodeName: "node-2",
		Containers: []k8stest.Container{{Name: "app", Image: "registry.example/shop/web:1.4", ImageID: "x@sha256:" + k8stest.ID("img"), ID: otherID}},
	}
}

type fixture struct {
	t       testing.TB
	kubelet *k8stest.Kubelet
	clock   *clock.Fake
	proc    string
	cfg     Config
}

func newFixture(t testing.TB, pods ...k8stest.Pod) *fixture {
	t.Helper()
	dir := t.TempDir()
	k := k8stest.NewKubelet(token, pods)
	t.Cleanup(k.Close)
	ca := filepath.Join(dir, "ca.pem")
	if err := k.WriteCA(ca); err != nil {
		t.Fatal(err)
	}
	tok := filepath.Join(dir, "token")
	if err := os.WriteFile(tok, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, kubelet: k, clock: clock.NewFake(time.Unix(1_800_000_000, 0)), proc: filepath.Join(dir, "proc")}
	f.cfg = DefaultConfig()
	f.cfg.KubeletURL = k.URL
	f.cfg.TokenPath = tok
	f.cfg.KubeletCAPath = ca
	f.cfg.ProcRoot = f.proc
	f.cfg.Clock = f.clock
	return f
}

func (f *fixture) attestor() *Attestor {
	f.t.Helper()
	a, err := New(f.cfg)
	if err != nil {
		f.t.Fatal(err)
	}
	return a
}

func (f *fixture) cgroup(pid int, content string) {
	f.t.Helper()
	if err := k8stest.WriteCgroup(f.proc, pid, content); err != nil {
		f.t.Fatal(err)
	}
}

// attestAdvancing runs a.Attest for pid while moving the fake clock
// forward whenever the attestor waits on it.
func (f *fixture) attestAdvancing(a *Attestor, pid int32, step time.Duration) ([]*sigilv1.Selector, error) {
	type result struct {
		sel []*sigilv1.Selector
		err error
	}
	done := make(chan result, 1)
	go func() {
		s, err := a.Attest(context.Background(), workload.Caller{PID: pid})
		done <- result{s, err}
	}()
	for {
		select {
		case r := <-done:
			return r.sel, r.err
		default:
		}
		if f.clock.Waiters() > 0 {
			f.clock.Add(step)
		} else {
			time.Sleep(time.Millisecond) // let the attestor reach the clock
		}
	}
}

func values(sel []*sigilv1.Selector) []string {
	var out []string
	for _, s := range sel {
		out = append(out, s.Type+":"+s.Value)
	}
	return out
}

func wantSelectors(t *testing.T, got []*sigilv1.Selector, want ...string) {
	t.Helper()
	if g := strings.Join(values(got), "\n"); g != strings.Join(want, "\n") {
		t.Fatalf("selectors:\n%s\nwant:\n%s", g, strings.Join(want, "\n"))
	}
}

func TestAttestContainers(t *testing.T) {
	f := newFixture(t, webPod(), otherNodePod())
	f.cfg.NodeName = "node-1"
	a := f.attestor()
	f.cgroup(100, k8stest.CgroupV2(webUID, appID))
	f.cgroup(101, k8stest.CgroupV1(webUID, initID))
	f.cgroup(102, k8stest.CgroupV2(webUID, debugID))
	f.cgroup(103, k8stest.CgroupV2(webUID, sideID))

	pod := []string{"k8s:ns:shop", "k8s:sa:web", "k8s:pod-name:web-7d9f8b6c5-x2x4q", "k8s:pod-uid:" + webUID,
		"k8s:pod-label:app:web", "k8s:pod-label:pod-template-hash:7d9f8b6c5", "k8s:pod-owner:ReplicaSet:web-7d9f8b6c5"}
	for _, tc := range []struct {
		pid  int32
		want []string
	}{
		{100, append(append([]string{}, pod...), "k8s:container-name:app", "k8s:container-image:registry.example/shop/web:1.4",
			"k8s:container-image-id:registry.example/shop/web@sha256:"+k8stest.ID("img"), "k8s:node-name:node-1")},
		{101, append(append([]string{}, pod...), "k8s:container-name:migrate", "k8s:container-image:registry.example/shop/migrate:1.4",
			"k8s:container-image-id:registry.example/shop/migrate@sha256:"+k8stest.ID("m"), "k8s:node-name:node-1")},
		{102, append(append([]string{}, pod...), "k8s:container-name:debugger-abcde", "k8s:container-image:busybox:1.36",
			"k8s:container-image-id:docker.io/library/busybox@sha256:"+k8stest.ID("bb"), "k8s:node-name:node-1")},
		{103, append(append([]string{}, pod...), "k8s:container-name:sidecar", "k8s:container-image:envoyproxy/envoy:v1.31.0",
			"k8s:container-image-id:docker.io/envoyproxy/envoy@sha256:"+k8stest.ID("envoy"), "k8s:node-name:node-1")},
	} {
		sel, err := a.Attest(context.Background(), workload.Caller{PID: tc.pid})
		if err != nil {
			t.Fatalf("pid %d: %v", tc.pid, err)
		}
		wantSelectors(t, sel, tc.want...)
		for _, s := range sel {
			if err := ValidateSelector(s.Value); err != nil {
				t.Errorf("produced selector %q does not validate: %v", s.Value, err)
			}
		}
	}
	if n := f.kubelet.Requests(); n != 1 {
		t.Fatalf("kubelet requests = %d, want 1 (the cache answers)", n)
	}
}

func TestHostProcessGetsNoSelectors(t *testing.T) {
	f := newFixture(t, webPod())
	a := f.attestor()
	for pid, cg := range map[int]string{
		200: "0::/system.slice/sshd.service\n",
		201: "0::/user.slice/user-1000.slice/session-4.scope\n",
		202: "0::/system.slice/docker-" + k8stest.ID("plain docker") + ".scope\n", // a container, not a pod's
		203: "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + strings.ReplaceAll(webUID, "-", "_") + ".slice\n",
	} {
		f.cgroup(pid, cg)
		sel, err := a.Attest(context.Background(), workload.Caller{PID: int32(pid)})
		if err != nil || sel != nil {
			t.Errorf("pid %d: %v, %v; want no selectors and no error", pid, values(sel), err)
		}
	}
	if n := f.kubelet.Requests(); n != 0 {
		t.Fatalf("kubelet requests = %d, want 0", n)
	}
}

func TestCacheExpires(t *testing.T) {
	f := newFixture(t, webPod())
	a := f.attestor()
	f.cgroup(100, k8stest.CgroupV2(webUID, appID))
	attest := func() {
		t.Helper()
		if _, err := a.Attest(context.Background(), workload.Caller{PID: 100}); err != nil {
			t.Fatal(err)
		}
	}
	attest()
	f.clock.Add(f.cfg.CacheTTL - time.Millisecond)
	attest()
	if n := f.kubelet.Requests(); n != 1 {
		t.Fatalf("requests = %d, want 1 within cache_ttl", n)
	}
	// A changed label shows after cache_ttl.
	p := webPod()
	p.Labels["app"] = "web2"
	f.kubelet.SetPods([]k8stest.Pod{p})
	f.clock.Add(time.Millisecond)
	sel, err := a.Attest(context.Background(), workload.Caller{PID: 100})
	if err != nil {
		t.Fatal(err)
	}
	if n := f.kubelet.Requests(); n != 2 {
		t.Fatalf("requests = %d, want 2 after cache_ttl", n)
	}
	if !strings.Contains(strings.Join(values(sel), " "), "k8s:pod-label:app:web2") {
		t.Fatalf("selectors %v lack the new label", values(sel))
	}
}

func TestStartingContainerIsWaitedFor(t *testing.T) {
	starting := webPod()
	starting.Containers[0].ID = "" // ContainerCreating: no id yet
	f := newFixture(t, starting)
	a := f.attestor()
	f.cgroup(100, k8stest.CgroupV2(webUID, appID))

	type result struct {
		sel []*sigilv1.Selector
		err error
	}
	done := make(chan result, 1)
	go func() {
		s, err := a.Attest(context.Background(), workload.Caller{PID: 100})
		done <- result{s, err}
	}()
	// Wait until the attestor backs off, then let the container start.
	for f.clock.Waiters() == 0 {
		time.Sleep(time.Millisecond)
	}
	f.kubelet.SetPods([]k8stest.Pod{webPod()})
	for {
		select {
		case r := <-done:
			if r.err != nil {
				t.Fatal(r.err)
			}
			if !strings.Contains(strings.Join(values(r.sel), " "), "k8s:container-name:app") {
				t.Fatalf("selectors %v", values(r.sel))
			}
			if n := f.kubelet.Requests(); n < 2 || n > 3 {
				t.Fatalf("requests = %d, want 2 or 3", n)
			}
			return
		default:
		}
		if f.clock.Waiters() > 0 {
			f.clock.Add(100 * time.Millisecond)
		} else {
			time.Sleep(time.Millisecond)
		}
	}
}

func TestUnknownContainerFailsAfterBound(t *testing.T) {
	f := newFixture(t, webPod(), otherNodePod())
	f.cfg.NodeName = "node-1"
	a := f.attestor()
	unknown := k8stest.ID("unknown")
	f.cgroup(100, k8stest.CgroupV2(webUID, unknown))
	f.cgroup(101, k8stest.CgroupV2(otherUID, otherID)) // a pod of another node
	start := f.clock.Now()
	for _, pid := range []int32{100, 101} {
		_, err := f.attestAdvancing(a, pid, 50*time.Millisecond)
		if err == nil || !strings.Contains(err.Error(), "not listed by the kubelet after 10s") || !strings.HasPrefix(err.Error(), "k8s: container ") {
			t.Fatalf("pid %d: err = %v", pid, err)
		}
	}
	elapsed := f.clock.Now().Sub(start)
	// Fetches are rate-limited to one per min_refresh.
	if n, max := f.kubelet.Requests(), int(elapsed/f.cfg.MinRefresh)+1; n > max || n < 2 {
		t.Fatalf("requests = %d over %v, want 2..%d", n, elapsed, max)
	}
}

func TestFloodOfUnknownContainersSharesFetches(t *testing.T) {
	f := newFixture(t, webPod())
	f.cfg.MaxPoll = time.Second
	a := f.attestor()
	const callers = 40
	for i := 0; i < callers; i++ {
		f.cgroup(300+i, k8stest.CgroupV2(webUID, k8stest.ID("flood"+strconv.Itoa(i))))
	}
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for i := 0; i < callers; i++ {
		wg.Add(1)
		go func(pid int32) {
			defer wg.Done()
			_, err := a.Attest(context.Background(), workload.Caller{PID: pid})
			errs <- err
		}(int32(300 + i))
	}
	for f.clock.Waiters() < callers {
		time.Sleep(time.Millisecond)
	}
	if n := f.kubelet.Requests(); n != 1 {
		t.Fatalf("%d callers at one instant made %d requests, want 1", callers, n)
	}
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	for {
		select {
		case <-finished:
			close(errs)
			for err := range errs {
				if err == nil || !strings.Contains(err.Error(), "not listed") {
					t.Fatalf("err = %v", err)
				}
			}
			// 1s of backoff at one fetch per 500ms at most.
			if n := f.kubelet.Requests(); n > 3 {
				t.Fatalf("requests = %d, want at most 3", n)
			}
			return
		default:
		}
		if f.clock.Waiters() > 0 {
			f.clock.Add(50 * time.Millisecond)
		} else {
			time.Sleep(time.Millisecond)
		}
	}
}

func TestRefusals(t *testing.T) {
	full := k8stest.PodListJSON([]k8stest.Pod{webPod()})
	for _, tc := range []struct {
		name   string
		setup  func(f *fixture)
		cgroup string
		want   string
	}{
		{name: "malformed cgroup", cgroup: "0:/kubepods\n", want: "k8s: cgroup: line 1"},
		{name: "kubelet refuses the token", setup: func(f *fixture) {
			if err := os.WriteFile(f.cfg.TokenPath, []byte("wrong"), 0o600); err != nil {
				t.Fatal(err)
			}
		}, want: "401 Unauthorized (the kubelet refused the token in token_path)"},
		{name: "token file missing", setup: func(f *fixture) { f.cfg.TokenPath = filepath.Join(t.TempDir(), "none") }, want: "k8s: token_path: open"},
		{name: "forbidden", setup: func(f *fixture) { f.kubelet.SetResponse(http.StatusForbidden, []byte(`{"kind":"Status"}`)) }, want: "403 Forbidden (the service account needs get on nodes/pods or nodes/proxy)"},
		{name: "malformed JSON", setup: func(f *fixture) { f.kubelet.SetResponse(http.StatusOK, []byte(`{"kind":"PodList","items":[{`)) }, want: "k8s: kubelet /pods: malformed JSON"},
		{name: "not a pod list", setup: func(f *fixture) {
			f.kubelet.SetResponse(http.StatusOK, []byte(`{"kind":"Status","apiVersion":"v1","status":"Failure"}`))
		}, want: `got kind "Status" apiVersion "v1", want a v1 PodList`},
		{name: "oversized response", setup: func(f *fixture) { f.cfg.MaxResponseBytes = int64(len(full) - 1) }, want: "response larger than max_response_bytes"},
		{name: "bad container id", setup: func(f *fixture) {
			f.kubelet.SetResponse(http.StatusOK, []byte(strings.Replace(string(full), "containerd://"+appID, "containerd://xyz", 1)))
		}, want: `container "app": container id "containerd://xyz"`},
		{name: "kubelet unreachable", setup: func(f *fixture) {
			srv := httptest.NewTLSServer(http.NotFoundHandler())
			f.cfg.KubeletURL = srv.URL
			srv.Close()
		}, want: "k8s: kubelet unreachable"},
		{name: "kubelet hangs", setup: func(f *fixture) {
			f.cfg.FetchTimeout = 100 * time.Millisecond
			t.Cleanup(f.kubelet.Hang())
		}, want: "k8s: kubelet unreachable"},
		{name: "wrong CA", setup: func(f *fixture) {
			if err := os.WriteFile(f.cfg.KubeletCAPath, selfSignedPEM(t), 0o600); err != nil {
				t.Fatal(err)
			}
		}, want: "certificate signed by unknown authority"},
		{name: "pod uid mismatch", cgroup: k8stest.CgroupV2(otherUID, appID), want: "the kubelet puts it in pod " + webUID + " but its cgroup in pod " + otherUID},
		// A user's delegated systemd subtree, where the user can name
		// cgroups after another pod's container: the names prove nothing.
		{name: "pod-shaped cgroup below a user's service",
			cgroup: "0::/user.slice/user-1000.slice/user@1000.service/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" +
				strings.ReplaceAll(webUID, "-", "_") + ".slice/cri-containerd-" + appID + ".scope\n",
			want: "lies below user.slice"},
		{name: "pod-shaped cgroup below a service (v1)",
			cgroup: "12:pids:/system.slice/evil.service/kubepods/besteffort/pod" + webUID + "/" + appID + "\n",
			want:   "lies below evil.service"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, webPod())
			if tc.setup != nil {
				tc.setup(f)
			}
			cg := tc.cgroup
			if cg == "" {
				cg = k8stest.CgroupV2(webUID, appID)
			}
			f.cgroup(100, cg)
			a := f.attestor()
			sel, err := a.Attest(context.Background(), workload.Caller{PID: 100})
			if err == nil || !strings.Contains(err.Error(), tc.want) || sel != nil {
				t.Fatalf("Attest = %v, %v; want error containing %q", values(sel), err, tc.want)
			}
			if strings.Count(err.Error(), "k8s: ") != 1 {
				t.Errorf("error %q: want one k8s: prefix", err)
			}
		})
	}
}

// selfSignedPEM is a CA certificate that signed nothing the fake kubelet
// serves.
func selfSignedPEM(t *testing.T) []byte {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "other CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func TestProcessGone(t *testing.T) {
	f := newFixture(t, webPod())
	a := f.attestor()
	_, err := a.Attest(context.Background(), workload.Caller{PID: 4242})
	if !errors.Is(err, workload.ErrProcessGone) {
		t.Fatalf("err = %v, want ErrProcessGone", err)
	}
}

func TestCallerContextBoundsTheWait(t *testing.T) {
	f := newFixture(t, webPod())
	a := f.attestor()
	f.cgroup(100, k8stest.CgroupV2(webUID, k8stest.ID("unknown")))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := a.Attest(ctx, workload.Caller{PID: 100})
		done <- err
	}()
	for f.clock.Waiters() == 0 {
		time.Sleep(time.Millisecond)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "waiting for the kubelet to list it") {
		t.Fatalf("err = %v", err)
	}
}

func TestReadOnlyPort(t *testing.T) {
	var auth []string
	var mu sync.Mutex
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		auth = append(auth, r.Header.Get("Authorization"))
		mu.Unlock()
		_, _ = w.Write(k8stest.PodListJSON([]k8stest.Pod{webPod()}))
	}))
	defer srv.Close()
	u, _ := url.Parse(srv.URL)
	port, _ := strconv.Atoi(u.Port())
	c := DefaultConfig()
	c.ReadOnlyPort = port
	c.ProcRoot = t.TempDir()
	c.KubeletCAPath = "" // not needed on the read-only port
	if err := k8stest.WriteCgroup(c.ProcRoot, 100, k8stest.CgroupV2(webUID, appID)); err != nil {
		t.Fatal(err)
	}
	a, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	sel, err := a.Attest(context.Background(), workload.Caller{PID: 100})
	if err != nil || len(sel) == 0 {
		t.Fatalf("Attest = %v, %v", values(sel), err)
	}
	if len(auth) != 1 || auth[0] != "" {
		t.Fatalf("requests' Authorization = %q, want one request without a token", auth)
	}
}

func TestTokenIsReread(t *testing.T) {
	f := newFixture(t, webPod())
	a := f.attestor()
	f.cgroup(100, k8stest.CgroupV2(webUID, appID))
	if _, err := a.Attest(context.Background(), workload.Caller{PID: 100}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.cfg.TokenPath, []byte("rotated-away"), 0o600); err != nil {
		t.Fatal(err)
	}
	f.clock.Add(f.cfg.CacheTTL)
	if _, err := a.Attest(context.Background(), workload.Caller{PID: 100}); err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("err = %v, want the rotated token sent (and refused)", err)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"http url", func(c *Config) { c.KubeletURL = "http://127.0.0.1:10255" }, "want https://host:port"},
		{"url with path", func(c *Config) { c.KubeletURL = "https://127.0.0.1:10250/api" }, "want https://host:port"},
		{"no ca", func(c *Config) { c.KubeletCAPath = "" }, "kubelet_ca_path is empty: set it, or skip_kubelet_verify = true"},
		{"no token", func(c *Config) { c.TokenPath = "" }, "token_path is empty"},
		{"bad port", func(c *Config) { c.ReadOnlyPort = 70000 }, "read_only_port 70000"},
		{"zero ttl", func(c *Config) { c.CacheTTL = 0 }, "cache_ttl 0s: want a positive duration"},
		{"refresh over ttl", func(c *Config) { c.MinRefresh = time.Minute }, "min_refresh 1m0s is longer than cache_ttl"},
		{"zero cap", func(c *Config) { c.MaxResponseBytes = 0 }, "max_response_bytes 0"},
		{"no proc", func(c *Config) { c.ProcRoot = "" }, "proc_root is empty"},
	} {
		c := DefaultConfig()
		tc.mod(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "k8s: ") {
			t.Errorf("%s: err = %v, want %q", tc.name, err, tc.want)
		}
	}
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	c := DefaultConfig()
	c.KubeletCAPath = filepath.Join(t.TempDir(), "missing.pem")
	if _, err := New(c); err == nil || !strings.Contains(err.Error(), "kubelet_ca_path") {
		t.Fatalf("New with a missing CA: %v", err)
	}
}

func TestValidateSelector(t *testing.T) {
	for _, ok := range []string{"ns:default", "sa:web", "pod-label:app:web", "pod-label:app:", "pod-owner:ReplicaSet:web-1",
		"container-image:docker.io/library/nginx:1.25", "container-image-id:sha256:ab", "node-name:n1", "pod-uid:" + webUID} {
		if err := ValidateSelector(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "ns", "ns:", "namespace:x", "pod-label:app", "pod-label::v", "pod-owner:ReplicaSet:", "pod-owner:x"} {
		if err := ValidateSelector(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
