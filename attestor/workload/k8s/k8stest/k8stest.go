// Package k8stest is a fake kubelet for the tests and benchmarks of the
// k8s workload attestor: an HTTPS server on loopback that serves /pods as
// the kubelet does (a v1 PodList with the fields a real kubelet fills in),
// checks the bearer token, and counts requests; and helpers that write
// fake /proc/<pid>/cgroup files.
package k8stest

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// Owner is a pod's owner reference.
type Owner struct{ Kind, Name string }

// Container is a container of a fake pod. ID is its 64-hex container id,
// "" for a container that is still being created (the kubelet lists it
// without an id).
type Container struct {
	Name, Image, ImageID, ID string
}

// Pod is a fake pod.
type Pod struct {
	Namespace, Name, UID, ServiceAccount, NodeName string
	Labels                                         map[string]string
	Owners                                         []Owner
	Containers, InitContainers, Ephemeral          []Container
}

// ID returns a deterministic 64-hex container id made from s.
func ID(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

// UID returns a deterministic pod uid made from s.
func UID(s string) string {
	h := ID(s)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// PodListJSON renders pods as the kubelet's /pods response.
func PodListJSON(pods []Pod) []byte {
	items := make([]any, 0, len(pods))
	for _, p := range pods {
		items = append(items, podJSON(p))
	}
	b, err := json.Marshal(map[string]any{
		"kind": "PodList", "apiVersion": "v1", "metadata": map[string]any{}, "items": items,
	})
	if err != nil {
		panic(err)
	}
	return b
}

func podJSON(p Pod) map[string]any {
	var owners []any
	for _, o := range p.Owners {
		owners = append(owners, map[string]any{
			"apiVersion": "apps/v1", "kind": o.Kind, "name": o.Name, "uid": UID(o.Name),
			"controller": true, "blockOwnerDeletion": true,
		})
	}
	md := map[string]any{
		"name": p.Name, "namespace": p.Namespace, "uid": p.UID, "resourceVersion": "48213",
		"creationTimestamp": "2026-11-30T12:00:00Z", "labels": p.Labels,
		"annotations": map[string]any{"kubernetes.io/config.seen": "2026-11-30T12:00:01.123456789Z", "kubernetes.io/config.source": "api"},
	}
	if owners != nil {
		md["ownerReferences"] = owners
	}
	specs := func(cs []Container, ephemeral bool) []any {
		var out []any
		for _, c := range cs {
			s := map[string]any{
				"name": c.Name, "image": c.Image, "resources": map[string]any{},
				"terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
				"imagePullPolicy": "IfNotPresent",
				"volumeMounts": []any{map[string]any{"name": "kube-api-access-x7k2p", "readOnly": true,
					"mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}},
			}
			if ephemeral {
				s["targetContainerName"] = "app"
				s["stdin"] = true
				s["tty"] = true
			}
			out = append(out, s)
		}
		return out
	}
	statuses := func(cs []Container, init bool) []any {
		var out []any
		for _, c := range cs {
			s := map[string]any{
				"name": c.Name, "image": c.Image, "imageID": "", "restartCount": 0, "ready": false,
				"state":     map[string]any{"waiting": map[string]any{"reason": "ContainerCreating"}},
				"lastState": map[string]any{},
			}
			if c.ID != "" {
				s["containerID"] = "containerd://" + c.ID
				s["imageID"] = c.ImageID
				s["started"] = true
				s["ready"] = !init
				if init {
					s["state"] = map[string]any{"terminated": map[string]any{"exitCode": 0, "reason": "Completed",
						"startedAt": "2026-11-30T12:00:02Z", "finishedAt": "2026-11-30T12:00:03Z", "containerID": "containerd://" + c.ID}}
				} else {
					s["state"] = map[string]any{"running": map[string]any{"startedAt": "2026-11-30T12:00:04Z"}}
				}
			}
			out = append(out, s)
		}
		return out
	}
	spec := map[string]any{
		"containers": specs(p.Containers, false), "restartPolicy": "Always",
		"terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
		"serviceAccountName": p.ServiceAccount, "serviceAccount": p.ServiceAccount,
		"nodeName": p.NodeName, "securityContext": map[string]any{}, "schedulerName": "default-scheduler",
		"tolerations": []any{map[string]any{"key": "node.kubernetes.io/not-ready", "operator": "Exists",
			"effect": "NoExecute", "tolerationSeconds": 300}},
		"priority": 0, "enableServiceLinks": true, "preemptionPolicy": "PreemptLowerPriority",
	}
	status := map[string]any{
		"phase": "Running", "hostIP": "10.0.0.7", "podIP": "10.244.1.17",
		"podIPs": []any{map[string]any{"ip": "10.244.1.17"}}, "startTime": "2026-11-30T12:00:01Z",
		"qosClass": "BestEffort",
		"conditions": []any{map[string]any{"type": "Ready", "status": "True", "lastProbeTime": nil,
			"lastTransitionTime": "2026-11-30T12:00:05Z"}},
		"containerStatuses": statuses(p.Containers, false),
	}
	if len(p.InitContainers) > 0 {
		spec["initContainers"] = specs(p.InitContainers, false)
		status["initContainerStatuses"] = statuses(p.InitContainers, true)
	}
	if len(p.Ephemeral) > 0 {
		spec["ephemeralContainers"] = specs(p.Ephemeral, true)
		status["ephemeralContainerStatuses"] = statuses(p.Ephemeral, false)
	}
	return map[string]any{"metadata": md, "spec": spec, "status": status}
}

// Kubelet is a fake kubelet serving /pods over HTTPS on loopback.
type Kubelet struct {
	// URL is the server's base URL (https://127.0.0.1:<port>).
	URL   string
	srv   *httptest.Server
	token string

	mu       sync.Mutex
	body     []byte
	status   int
	requests int
	hang     chan struct{}
}

// NewKubelet starts a fake kubelet that requires the bearer token token
// (any token when empty) and serves the pods.
func NewKubelet(token string, pods []Pod) *Kubelet {
	k := &Kubelet{token: token, body: PodListJSON(pods), status: http.StatusOK}
	k.srv = httptest.NewTLSServer(http.HandlerFunc(k.serve))
	k.URL = k.srv.URL
	return k
}

func (k *Kubelet) serve(w http.ResponseWriter, r *http.Request) {
	k.mu.Lock()
	k.requests++
	body, status, hang := k.body, k.status, k.hang
	k.mu.Unlock()
	if hang != nil {
		select {
		case <-hang:
		case <-r.Context().Done():
		}
		return
	}
	if r.URL.Path != "/pods" || r.Method != http.MethodGet {
		http.NotFound(w, r)
		return
	}
	if k.token != "" && r.Header.Get("Authorization") != "Bearer "+k.token {
		http.Error(w, "Unauthorized", http.StatusUnauthorized)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// SetPods makes the kubelet serve pods.
func (k *Kubelet) SetPods(pods []Pod) { k.SetResponse(http.StatusOK, PodListJSON(pods)) }

// SetResponse makes the kubelet answer /pods with status and body.
func (k *Kubelet) SetResponse(status int, body []byte) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.status, k.body = status, body
}

// Hang makes the kubelet accept requests and never answer them until
// the returned function is called.
func (k *Kubelet) Hang() (release func()) {
	ch := make(chan struct{})
	k.mu.Lock()
	k.hang = ch
	k.mu.Unlock()
	return func() {
		k.mu.Lock()
		defer k.mu.Unlock()
		if k.hang == ch {
			k.hang = nil
			close(ch)
		}
	}
}

// Requests returns how many requests the kubelet received.
func (k *Kubelet) Requests() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.requests
}

// WriteCA writes the kubelet's serving certificate (self-signed, so also
// its CA) as PEM to path.
func (k *Kubelet) WriteCA(path string) error {
	b := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: k.srv.Certificate().Raw})
	return os.WriteFile(path, b, 0o600)
}

// Close stops the kubelet.
func (k *Kubelet) Close() {
	k.mu.Lock()
	if k.hang != nil {
		close(k.hang)
		k.hang = nil
	}
	k.mu.Unlock()
	k.srv.Close()
}

// CgroupV2 is the cgroup v2 file of a process in container id of the
// pod with uid podUID, with containerd and the systemd cgroup driver.
func CgroupV2(podUID, id string) string {
	return fmt.Sprintf("0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod%s.slice/cri-containerd-%s.scope\n",
		strings.ReplaceAll(podUID, "-", "_"), id)
}

// CgroupV1 is the cgroup v1 file of a process in container id of the
// pod with uid podUID, with the cgroupfs driver.
func CgroupV1(podUID, id string) string {
	var b strings.Builder
	for i, c := range []string{"pids", "memory", "cpu,cpuacct", "devices", "freezer"} {
		fmt.Fprintf(&b, "%d:%s:/kubepods/burstable/pod%s/%s\n", 12-i, c, podUID, id)
	}
	fmt.Fprintf(&b, "1:name=systemd:/kubepods/burstable/pod%s/%s\n0::/\n", podUID, id)
	return b.String()
}

// WriteCgroup writes content as <procRoot>/<pid>/cgroup.
func WriteCgroup(procRoot string, pid int, content string) error {
	dir := filepath.Join(procRoot, strconv.Itoa(pid))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "cgroup"), []byte(content), 0o644)
}
