package k8s

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
)

// The subset of the v1 PodList that the kubelet's /pods serves and the
// attestor reads.
type podList struct {
	Kind       string `json:"kind"`
	APIVersion string `json:"apiVersion"`
	Items      []pod  `json:"items"`
}

type pod struct {
	Metadata struct {
		Name            string            `json:"name"`
		Namespace       string            `json:"namespace"`
		UID             string            `json:"uid"`
		Labels          map[string]string `json:"labels"`
		OwnerReferences []struct {
			Kind string `json:"kind"`
			Name string `json:"name"`
		} `json:"ownerReferences"`
	} `json:"metadata"`
	Spec struct {
		NodeName            string          `json:"nodeName"`
		ServiceAccountName  string          `json:"serviceAccountName"`
		Containers          []containerSpec `json:"containers"`
		InitContainers      []containerSpec `json:"initContainers"`
		EphemeralContainers []containerSpec `json:"ephemeralContainers"`
	} `json:"spec"`
	Status struct {
		ContainerStatuses          []containerStatus `json:"containerStatuses"`
		InitContainerStatuses      []containerStatus `json:"initContainerStatuses"`
		EphemeralContainerStatuses []containerStatus `json:"ephemeralContainerStatuses"`
	} `json:"status"`
}

type containerSpec struct {
	Name  string `json:"name"`
	Image string `json:"image"`
}

type containerStatus struct {
	Name        string `json:"name"`
	ContainerID string `json:"containerID"`
	Image       string `json:"image"`
	ImageID     string `json:"imageID"`
}

// container is one container of a pod as the kubelet reports it.
type container struct {
	pod *pod
	// status is the container's entry in the pod's status.
	status *containerStatus
	// specImage is the image the pod's spec asks for (may differ from
	// the resolved status.image).
	specImage string
	// selectors are the container's selectors, computed once per fetch.
	selectors []*sigilv1.Selector
}

// parsePodList parses the kubelet's /pods response and indexes its
// containers by container id (the part of status.containerID after
// "<runtime>://"). Pods of other nodes than nodeName (when set) are left
// out. Containers without an id yet (still being created) are not
// indexed. The response must be a v1 PodList; a pod without a name,
// namespace or uid, or a container id that is not 64 lower-case hex
// digits after its runtime prefix, is an error.
func parsePodList(data []byte, nodeName string) (map[string]container, error) {
	var l podList
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&l); err != nil {
		return nil, fmt.Errorf("k8s: kubelet /pods: malformed JSON: %w", err)
	}
	if dec.More() {
		return nil, errors.New("k8s: kubelet /pods: trailing data after the pod list")
	}
	if l.Kind != "PodList" || l.APIVersion != "v1" {
		return nil, fmt.Errorf("k8s: kubelet /pods: got kind %q apiVersion %q, want a v1 PodList", trunc(l.Kind), trunc(l.APIVersion))
	}
	index := make(map[string]container)
	for i := range l.Items {
		p := &l.Items[i]
		md := &p.Metadata
		if md.Name == "" || md.Namespace == "" || md.UID == "" {
			return nil, fmt.Errorf("k8s: kubelet /pods: item %d has no name, namespace or uid", i)
		}
		if nodeName != "" && p.Spec.NodeName != nodeName {
			continue
		}
		specImages := map[string]string{}
		for _, l := range [][]containerSpec{p.Spec.Containers, p.Spec.InitContainers, p.Spec.EphemeralContainers} {
			for _, c := range l {
				specImages[c.Name] = c.Image
			}
		}
		for _, l := range [][]containerStatus{p.Status.ContainerStatuses, p.Status.InitContainerStatuses, p.Status.EphemeralContainerStatuses} {
			for j := range l {
				s := &l[j]
				if s.ContainerID == "" {
					continue
				}
				id, err := containerID(s.ContainerID)
				if err != nil {
					return nil, fmt.Errorf("k8s: kubelet /pods: pod %s/%s container %q: %w", md.Namespace, md.Name, trunc(s.Name), err)
				}
				c := container{pod: p, status: s, specImage: specImages[s.Name]}
				c.selectors = selectors(c)
				index[id] = c
			}
		}
	}
	return index, nil
}

// containerID returns the id of a status.containerID such as
// "containerd://<64 hex>", "cri-o://<id>" or "docker://<id>".
func containerID(s string) (string, error) {
	_, id, ok := strings.Cut(s, "://")
	if !ok || !isHexID(id) {
		return "", fmt.Errorf("container id %q: want <runtime>://<64 hex digits>", trunc(s))
	}
	return id, nil
}

func isHexID(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// trunc shortens s for error messages.
func trunc(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}
