package k8s

import (
	"strings"
	"testing"

	"github.com/sigil-id/sigil/attestor/workload/k8s/k8stest"
)

func FuzzParsePodList(f *testing.F) {
	f.Add(k8stest.PodListJSON([]k8stest.Pod{webPod(), otherNodePod()}))
	f.Add(k8stest.PodListJSON(nil))
	f.Add([]byte(`{"kind":"PodList","apiVersion":"v1","items":[{"metadata":{"name":"a","namespace":"b","uid":"c"},"status":{"containerStatuses":[{"name":"x","containerID":"docker://` + appID + `"}]}}]}`))
	f.Add([]byte(`{"kind":"Status"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		index, err := parsePodList(data, "node-1")
		if err != nil {
			if index != nil || !strings.HasPrefix(err.Error(), "k8s: kubelet /pods: ") {
				t.Fatalf("index %v with error %v", index, err)
			}
			return
		}
		for id, c := range index {
			if !isHexID(id) || c.pod == nil || c.status == nil {
				t.Fatalf("bad index entry %q: %+v", id, c)
			}
			if c.pod.Spec.NodeName != "node-1" || c.pod.Metadata.UID == "" {
				t.Fatalf("indexed pod %+v", c.pod.Metadata)
			}
			if got, err := containerID(c.status.ContainerID); err != nil || got != id {
				t.Fatalf("indexed under %q, status id %q", id, c.status.ContainerID)
			}
		}
	})
}

func TestParsePodListTrailingData(t *testing.T) {
	data := append(k8stest.PodListJSON(nil), []byte(`{}`)...)
	if _, err := parsePodList(data, ""); err == nil || !strings.Contains(err.Error(), "trailing data") {
		t.Fatalf("err = %v", err)
	}
	if _, err := parsePodList([]byte(`{"kind":"PodList","apiVersion":"v1","items":[{"metadata":{"name":"a"}}]}`), ""); err == nil || !strings.Contains(err.Error(), "no name, namespace or uid") {
		t.Fatalf("err = %v", err)
	}
}
