package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sigil-id/sigil/attestor/workload/k8s/k8stest"
	"github.com/sigil-id/sigil/internal/eventually"
)

// k8sWorkloadPods are the pods of the fake kubelet: "web" (service
// account web) and "batch" (service account batch), in namespace shop on
// node-1, and one pod of node-2 that the agent must ignore.
func k8sWorkloadPods() []k8stest.Pod {
	pod := func(name, sa, node string) k8stest.Pod {
		return k8stest.Pod{
			Namespace: "shop", Name: name, UID: k8stest.UID(name), ServiceAccount: sa, NodeName: node,
			Labels: map[string]string{"app": name},
			Owners: []k8stest.Owner{{Kind: "ReplicaSet", Name: name + "-5c7d8"}},
			Containers: []k8stest.Container{{Name: "main", Image: "registry.example/" + name + ":1",
				ImageID: "registry.example/" + name + "@sha256:" + k8stest.ID(name+"-image"), ID: k8stest.ID(name + "-main")}},
		}
	}
	return []k8stest.Pod{pod("web", "web", "node-1"), pod("batch", "batch", "node-1"), pod("elsewhere", "web", "node-2")}
}

// newK8sWorkloadAgent writes the config of an agent (join token) whose
// workload attestors are unix and k8s, the latter pointed at the fake
// kubelet k over loopback TLS and at the fake proc root procRoot.
func newK8sWorkloadAgent(t *testing.T, s *server, dir string, k *k8stest.Kubelet, procRoot string) *agent {
	t.Helper()
	a := newAgent(t, s, dir)
	ca := filepath.Join(dir, "kubelet-ca.pem")
	if err := k.WriteCA(ca); err != nil {
		t.Fatal(err)
	}
	token := filepath.Join(dir, "sa-token")
	if err := os.WriteFile(token, []byte("agent-sa-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(a.config)
	if err != nil {
		t.Fatal(err)
	}
	plugins := fmt.Sprintf(`  plugins {
    node_attestor "join_token" {}
    workload_attestor "unix" {}
    workload_attestor "k8s" {
      kubelet_url     = %q
      token_path      = %q
      kubelet_ca_path = %q
      node_name       = "node-1"
      proc_root       = %q
      max_poll        = "1s"
    }
  }
}
`, k.URL, token, ca, procRoot)
	cfg := strings.TrimSuffix(strings.TrimSpace(string(raw)), "}") + plugins
	if err := os.WriteFile(a.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return a
}

// fetchOnce makes one FetchX509Context call as this process.
func fetchOnce(socket string) (*workloadapi.X509Context, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return workloadapi.FetchX509Context(ctx, workloadapi.WithAddr("unix://"+socket))
}

// TestWorkloadK8sSelectsByNamespaceAndServiceAccount: a real agent with
// the k8s workload attestor, reading this test process's cgroup from a
// fake proc root and its pod from a fake kubelet over TLS, serves the
// SVID of an entry selected by k8s:ns + k8s:sa to a go-spiffe workload.
// When the process's cgroup puts it in a pod of another service account
// it gets no identity; in a container the kubelet does not list, its
// attestation fails closed after max_poll, with the reason in the
// agent's log; on the host (no container) it gets no k8s selectors, so
// only an entry without k8s selectors serves it.
func TestWorkloadK8sSelectsByNamespaceAndServiceAccount(t *testing.T) {
	root := t.TempDir()
	k := k8stest.NewKubelet("agent-sa-token", k8sWorkloadPods())
	defer k.Close()
	procRoot := filepath.Join(root, "proc")
	pid := os.Getpid()
	setCgroup := func(content string) {
		t.Helper()
		if err := k8stest.WriteCgroup(procRoot, pid, content); err != nil {
			t.Fatal(err)
		}
	}
	setCgroup(k8stest.CgroupV2(k8stest.UID("web"), k8stest.ID("web-main")))

	s := newServer(t, filepath.Join(root, "server"))
	s.start()
	a := newK8sWorkloadAgent(t, s, filepath.Join(root, "agent"), k, procRoot)
	a.start()

	web := "spiffe://" + trustDomain + "/ns/shop/sa/web"
	createEntry(t, s, web, a.id, "k8s:ns:shop", "k8s:sa:web")
	xc := fetchID(t, a.socket, web)
	if len(xc.SVIDs) != 1 {
		t.Fatalf("served %d SVIDs, want 1", len(xc.SVIDs))
	}
	if !strings.Contains(a.logText(), "k8s:container-image-id:registry.example/web@sha256:") {
		t.Error("the agent's debug log does not show the k8s selectors of the caller")
	}

	// In the batch pod (service account batch): no identity.
	setCgroup(k8stest.CgroupV1(k8stest.UID("batch"), k8stest.ID("batch-main")))
	if xc, err := fetchOnce(a.socket); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("a process of the batch pod: %v, %v; want PermissionDenied", xc, err)
	}

	// In a pod of another node (same namespace and service account, but
	// the agent's node_name is node-1): the kubelet's answer is ignored,
	// the container is unknown, and attestation fails closed.
	setCgroup(k8stest.CgroupV2(k8stest.UID("elsewhere"), k8stest.ID("elsewhere-main")))
	if xc, err := fetchOnce(a.socket); err == nil || status.Code(err) == codes.OK {
		t.Fatalf("a process of another node's pod got %v", xc)
	}
	eventually.NoError(t, 10*time.Second, func() error {
		if !strings.Contains(a.logText(), "not listed by the kubelet after 1s") {
			return fmt.Errorf("the agent did not log why the unknown container got nothing")
		}
		return nil
	})

	// Back in the web pod: served again.
	setCgroup(k8stest.CgroupV2(k8stest.UID("web"), k8stest.ID("web-main")))
	fetchID(t, a.socket, web)

	// A host process: no k8s selectors and no error, so an entry on the
	// uid alone serves it, and the k8s entry does not.
	setCgroup("0::/user.slice/user-1000.slice/session-1.scope\n")
	host := "spiffe://" + trustDomain + "/host/uid"
	createEntry(t, s, host, a.id, uidSelector(t))
	xc = fetchID(t, a.socket, host)
	for _, svid := range xc.SVIDs {
		if svid.ID.String() == web {
			t.Fatalf("a host process was served %s", web)
		}
	}
	if n := k.Requests(); n < 1 {
		t.Fatalf("the fake kubelet got %d requests", n)
	}
}
