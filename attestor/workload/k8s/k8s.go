// Package k8s is the "k8s" workload attestor: it finds the container of a
// process from its cgroup (/proc/<pid>/cgroup) and that container's pod
// from the kubelet's /pods API on the same node, and describes the
// process by its pod and container.
//
// Selectors (all of type "k8s"):
//
//	ns:<namespace>                    the pod's namespace
//	sa:<service account>              the pod's service account
//	pod-name:<name>                   the pod's name
//	pod-uid:<uid>                     the pod's uid
//	pod-label:<key>:<value>           one per pod label
//	pod-owner:<kind>:<name>           one per owner reference (e.g. ReplicaSet)
//	container-name:<name>             the container's name in the pod
//	container-image:<image>           the container's image, as the kubelet
//	                                  reports it and as the spec names it
//	container-image-id:<id>           the image's id (digest) from the status
//	node-name:<node>                  the pod's node
//
// Regular, init and ephemeral containers are all matched.
//
// What is attested, and what fails:
//
//   - A process whose cgroup names no container of a pod (a process on
//     the host, or a container that the kubelet did not start) gets no k8s
//     selectors and no error: on a Kubernetes node the agent serves host
//     processes too, which the unix attestor describes. This cannot widen
//     any identity: an entry needs all its selectors, and such a process
//     has no k8s ones.
//   - A process in a pod's container that the kubelet does not list is
//     waited for (the kubelet reports a container's id only once it has
//     started), fetching the pod list again with backoff for at most
//     Config.MaxPoll; then attestation fails. A kubelet that cannot be
//     reached or answers with an error, a malformed cgroup file and a pod
//     list that cannot be parsed fail the attestation too: the Workload API
//     then serves nothing (fail closed).
//
// The pod list is cached for Config.CacheTTL. A lookup of a container the
// cache does not hold fetches it again, but never more often than once per
// Config.MinRefresh, and concurrent lookups share one fetch: a flood of
// callers in unknown containers does not hammer the kubelet.
package k8s

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	"go.uber.org/zap"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/attestor/workload"
	"github.com/sigil-id/sigil/attestor/workload/internal/cgroup"
	"github.com/sigil-id/sigil/clock"
)

// Name is the attestor's name and the type of its selectors.
const Name = "k8s"

// Attestor is the k8s workload attestor. It is safe for concurrent use.
type Attestor struct {
	cfg     Config
	clock   clock.Clock
	kubelet *kubelet

	mu sync.Mutex
	// index is the last fetched pod list, by container id; fetched is
	// when it was fetched (zero: never).
	index   map[string]container
	fetched time.Time
	// lastTry is when the last fetch started and lastErr its error.
	lastTry time.Time
	lastErr error
	// inflight is closed when the fetch under way ends; nil when none.
	inflight chan struct{}
	// fetches counts fetches (for tests).
	fetches int
}

// New returns an attestor for c, which it validates. It reads the
// kubelet CA file but does not contact the kubelet.
func New(c Config) (*Attestor, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	k, err := newKubelet(c)
	if err != nil {
		return nil, err
	}
	if c.Logger != nil {
		if c.ReadOnlyPort != 0 {
			c.Logger.Warn("k8s workload attestor uses the kubelet's unauthenticated read-only port", zap.Int("read_only_port", c.ReadOnlyPort))
		} else if c.SkipKubeletVerify {
			c.Logger.Warn("k8s workload attestor does not verify the kubelet's certificate (skip_kubelet_verify)", zap.String("kubelet_url", c.KubeletURL))
		}
	}
	return &Attestor{cfg: c, clock: c.Clock, kubelet: k}, nil
}

// Name returns "k8s".
func (a *Attestor) Name() string { return Name }

// Attest returns the k8s selectors of the process c.PID; see the package
// documentation for when it returns none and when an error.
func (a *Attestor) Attest(ctx context.Context, c workload.Caller) ([]*sigilv1.Selector, error) {
	entries, err := cgroup.ReadProc(a.cfg.ProcRoot, c.PID)
	if err != nil {
		if errors.Is(err, cgroup.ErrProcessGone) {
			return nil, fmt.Errorf("k8s: pid %d: %w", c.PID, workload.ErrProcessGone)
		}
		return nil, fmt.Errorf("k8s: %w", err)
	}
	id, ok := cgroup.ContainerID(entries)
	if !ok {
		return nil, nil
	}
	podUID, ok := cgroup.PodUID(entries)
	if !ok {
		return nil, nil
	}
	if unit, under := cgroup.UnderService(entries); under {
		// A pod's cgroup is never below a service or a user slice; a
		// process there may have named its own cgroup after another
		// pod's container (a user's delegated user@<uid>.service
		// subtree), so the names prove nothing: fail closed.
		return nil, fmt.Errorf("k8s: pid %d: its cgroup names container %s of pod %s but lies below %s, where the names can be chosen by an unprivileged user; refusing",
			c.PID, short(id), podUID, unit)
	}
	ct, err := a.find(ctx, id)
	if err != nil {
		return nil, err
	}
	if ct.pod.Metadata.UID != podUID {
		return nil, fmt.Errorf("k8s: container %s: the kubelet puts it in pod %s but its cgroup in pod %s", short(id), ct.pod.Metadata.UID, podUID)
	}
	// The selectors are shared by every caller in the container: the
	// slice is the caller's, the selectors are read-only.
	return slices.Clone(ct.selectors), nil
}

// find returns the container id, waiting with backoff up to MaxPoll for
// the kubelet to list it.
func (a *Attestor) find(ctx context.Context, id string) (container, error) {
	deadline := a.clock.Now().Add(a.cfg.MaxPoll)
	backoff := firstBackoff
	for {
		ct, ok, err := a.lookup(ctx, id)
		if err != nil {
			return container{}, err
		}
		if ok {
			return ct, nil
		}
		left := deadline.Sub(a.clock.Now())
		if left <= 0 {
			return container{}, fmt.Errorf("k8s: container %s: not listed by the kubelet after %v", short(id), a.cfg.MaxPoll)
		}
		wait := min(backoff, left)
		backoff = min(2*backoff, maxBackoff)
		select {
		case <-ctx.Done():
			return container{}, fmt.Errorf("k8s: container %s: waiting for the kubelet to list it: %w", short(id), ctx.Err())
		case <-a.clock.After(wait):
		}
	}
}

// lookup finds id in the cached pod list, fetching the list when it is
// older than CacheTTL, or when it does not hold id and the last fetch is
// at least MinRefresh old. ok is false when id is not listed.
func (a *Attestor) lookup(ctx context.Context, id string) (ct container, ok bool, err error) {
	a.mu.Lock()
	for {
		now := a.clock.Now()
		fresh := !a.fetched.IsZero() && now.Sub(a.fetched) < a.cfg.CacheTTL
		if fresh {
			if ct, ok := a.index[id]; ok {
				a.mu.Unlock()
				return ct, true, nil
			}
		}
		if a.inflight != nil {
			ch := a.inflight
			a.mu.Unlock()
			select {
			case <-ch:
			case <-ctx.Done():
				return container{}, false, fmt.Errorf("k8s: waiting for the kubelet: %w", ctx.Err())
			}
			a.mu.Lock()
			continue
		}
		if !a.lastTry.IsZero() && now.Sub(a.lastTry) < a.cfg.MinRefresh {
			// Fetched too recently to fetch again: answer from what the
			// last fetch gave.
			err := a.lastErr
			fresh := !a.fetched.IsZero() && now.Sub(a.fetched) < a.cfg.CacheTTL
			a.mu.Unlock()
			if err != nil && !fresh {
				return container{}, false, err
			}
			return container{}, false, nil
		}
		a.startFetch(now)
	}
}

// startFetch fetches the pod list in the background; a.mu is held.
func (a *Attestor) startFetch(now time.Time) {
	ch := make(chan struct{})
	a.inflight = ch
	a.lastTry = now
	a.fetches++
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), a.cfg.FetchTimeout)
		defer cancel()
		index, err := a.kubelet.pods(ctx)
		a.mu.Lock()
		defer a.mu.Unlock()
		a.lastErr = err
		if err == nil {
			a.index = index
			a.fetched = a.clock.Now()
		}
		a.inflight = nil
		close(ch)
	}()
}

func selectors(ct container) []*sigilv1.Selector {
	p := ct.pod
	var out []*sigilv1.Selector
	add := func(v string) { out = append(out, &sigilv1.Selector{Type: Name, Value: v}) }
	add("ns:" + p.Metadata.Namespace)
	if p.Spec.ServiceAccountName != "" {
		add("sa:" + p.Spec.ServiceAccountName)
	}
	add("pod-name:" + p.Metadata.Name)
	add("pod-uid:" + p.Metadata.UID)
	keys := make([]string, 0, len(p.Metadata.Labels))
	for k := range p.Metadata.Labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		add("pod-label:" + k + ":" + p.Metadata.Labels[k])
	}
	for _, o := range p.Metadata.OwnerReferences {
		add("pod-owner:" + o.Kind + ":" + o.Name)
	}
	add("container-name:" + ct.status.Name)
	if ct.status.Image != "" {
		add("container-image:" + ct.status.Image)
	}
	if ct.specImage != "" && ct.specImage != ct.status.Image {
		add("container-image:" + ct.specImage)
	}
	if ct.status.ImageID != "" {
		add("container-image-id:" + ct.status.ImageID)
	}
	if p.Spec.NodeName != "" {
		add("node-name:" + p.Spec.NodeName)
	}
	return out
}

// short abbreviates a container id for messages, as runtimes do.
func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
