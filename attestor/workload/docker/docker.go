// Package docker is the "docker" workload attestor: it finds the container
// of a process from /proc/<pid>/cgroup and inspects it through the Docker
// Engine API on the engine's unix socket (Podman's Docker-compatible
// socket works too).
//
// Selectors (all of type "docker"):
//
//	label:<key>:<value>   one per container label (keys without ':')
//	image_id:<id>         the image the container runs, "sha256:<64 hex>"
//	image:<ref>           the image reference the container was created with
//	env:<key>:<value>     one per environment variable in EnvAllowList
//
// A process that is not in a container gets no selectors (and no error).
// A container the engine does not know, an engine that cannot be reached
// or does not answer within Timeout, and an answer that is malformed or
// larger than MaxResponseBytes are errors: the Workload API then gives the
// caller no identity.
//
// The container ID comes from the caller's cgroup path, which a process
// with a delegated cgroup subtree can name as it likes. Attest therefore
// also checks that the container's init process (State.Pid) is in the
// cgroup that named the container: a process that made itself a cgroup
// called docker-<someone else's id>.scope gets an error, not that
// container's selectors.
package docker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"time"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/attestor/workload"
	"github.com/sigil-id/sigil/attestor/workload/internal/cgroup"
	"github.com/sigil-id/sigil/registration"
)

// Name is the attestor's name and the type of its selectors.
const Name = "docker"

// Config configures the attestor. Start from DefaultConfig.
type Config struct {
	// SocketPath is the Engine API's unix socket.
	SocketPath string
	// APIVersion is the Engine API version requested ("1.41" asks for
	// /v1.41/containers/<id>/json); Docker 20.10 and later serve it, and
	// Podman 4 and later report it on their compatible socket.
	APIVersion string
	// EnvAllowList names the environment variables that become env
	// selectors; others never do. Empty by default: environments hold
	// secrets.
	EnvAllowList []string
	// ProcRoot is where /proc is mounted.
	ProcRoot string
	// Timeout bounds one attestation's call to the engine.
	Timeout time.Duration
	// MaxResponseBytes bounds the engine's answer; a larger one is an
	// error.
	MaxResponseBytes int64
}

// DefaultConfig returns the defaults: /var/run/docker.sock, API 1.41, no
// environment variables, /proc, 3 s, 1 MiB.
func DefaultConfig() Config {
	return Config{
		SocketPath:       "/var/run/docker.sock",
		APIVersion:       "1.41",
		ProcRoot:         "/proc",
		Timeout:          3 * time.Second,
		MaxResponseBytes: 1 << 20,
	}
}

// Validate checks c.
func (c Config) Validate() error {
	if !filepath.IsAbs(c.SocketPath) {
		return fmt.Errorf("docker: socket_path %q: want an absolute path", c.SocketPath)
	}
	if !validAPIVersion(c.APIVersion) {
		return fmt.Errorf("docker: api_version %q: want a version such as \"1.41\"", c.APIVersion)
	}
	if !filepath.IsAbs(c.ProcRoot) {
		return fmt.Errorf("docker: proc_root %q: want an absolute path", c.ProcRoot)
	}
	if c.Timeout <= 0 || c.Timeout > time.Minute {
		return fmt.Errorf("docker: timeout %v: want more than 0 and at most 1m", c.Timeout)
	}
	if c.MaxResponseBytes < 4<<10 || c.MaxResponseBytes > 64<<20 {
		return fmt.Errorf("docker: max_response_bytes %d: want 4 KiB to 64 MiB", c.MaxResponseBytes)
	}
	seen := map[string]bool{}
	for _, k := range c.EnvAllowList {
		if !validEnvKey(k) {
			return fmt.Errorf("docker: env_allow_list: %q is not a variable name (want letters, digits, '_', '.', '-', no '=' or ':')", k)
		}
		if seen[k] {
			return fmt.Errorf("docker: env_allow_list: %q listed twice", k)
		}
		seen[k] = true
	}
	return nil
}

func validAPIVersion(v string) bool {
	major, minor, ok := strings.Cut(v, ".")
	return ok && isDigits(major) && isDigits(minor) && len(v) <= 8
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

func validEnvKey(k string) bool {
	if k == "" || len(k) > 256 {
		return false
	}
	for _, r := range k {
		if !(r == '_' || r == '.' || r == '-' || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9')) {
			return false
		}
	}
	return true
}

// Attestor is the docker workload attestor. It is safe for concurrent use.
type Attestor struct {
	cfg    Config
	env    map[string]bool
	client *http.Client
}

var _ workload.Attestor = (*Attestor)(nil)

// New returns an attestor for c. It does not contact the engine: the
// engine may start after the agent.
func New(c Config) (*Attestor, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	env := make(map[string]bool, len(c.EnvAllowList))
	for _, k := range c.EnvAllowList {
		env[k] = true
	}
	sock := c.SocketPath
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
		Proxy:                  nil,
		MaxIdleConns:           2,
		IdleConnTimeout:        30 * time.Second,
		MaxResponseHeaderBytes: 64 << 10,
		DisableCompression:     true,
	}
	return &Attestor{
		cfg: c,
		env: env,
		client: &http.Client{
			Transport: tr,
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return http.ErrUseLastResponse
			},
		},
	}, nil
}

// Name returns "docker".
func (a *Attestor) Name() string { return Name }

// Attest returns the docker selectors of the calling process: none when it
// is not in a container, an error when its container cannot be inspected.
func (a *Attestor) Attest(ctx context.Context, c workload.Caller) ([]*sigilv1.Selector, error) {
	entries, err := cgroup.ReadProc(a.cfg.ProcRoot, c.PID)
	if err != nil {
		if errors.Is(err, cgroup.ErrProcessGone) {
			return nil, fmt.Errorf("docker: %w: %w", workload.ErrProcessGone, err)
		}
		return nil, fmt.Errorf("docker: %w", err)
	}
	id, ok := cgroup.ContainerID(entries)
	if !ok {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(ctx, a.cfg.Timeout)
	defer cancel()
	info, err := a.inspect(ctx, id)
	if err != nil {
		return nil, err
	}
	if err := a.checkInit(entries, id, info.State.Pid); err != nil {
		return nil, err
	}
	return a.selectors(info), nil
}

// inspect asks the engine about container id.
func (a *Attestor) inspect(ctx context.Context, id string) (*Container, error) {
	u := "http://docker/v" + a.cfg.APIVersion + "/containers/" + id + "/json"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("docker: %w", err)
	}
	resp, err := a.client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("docker: inspect container %s: no answer from the engine at %s within the time bound: %w", short(id), a.cfg.SocketPath, ctx.Err())
		}
		return nil, fmt.Errorf("docker: inspect container %s: engine at %s unreachable: %w", short(id), a.cfg.SocketPath, unwrapURL(err))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, a.cfg.MaxResponseBytes+1))
	if err != nil {
		return nil, fmt.Errorf("docker: inspect container %s: reading the answer: %w", short(id), unwrapURL(err))
	}
	if int64(len(body)) > a.cfg.MaxResponseBytes {
		return nil, fmt.Errorf("docker: inspect container %s: answer larger than %d bytes", short(id), a.cfg.MaxResponseBytes)
	}
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound:
		return nil, fmt.Errorf("docker: container %s is unknown to the engine at %s (is it run by another runtime?)", short(id), a.cfg.SocketPath)
	default:
		return nil, fmt.Errorf("docker: inspect container %s: engine answered %s: %s", short(id), resp.Status, engineMessage(body))
	}
	info, err := ParseContainer(body)
	if err != nil {
		return nil, err
	}
	if info.ID != id {
		return nil, fmt.Errorf("docker: asked for container %s, the engine described %s", short(id), short(info.ID))
	}
	return info, nil
}

// checkInit checks that the container's init process, pid, is inside the
// caller's container cgroup: the part of the caller's cgroup path up to
// the component that names id, in every hierarchy where the caller's path
// names id.
func (a *Attestor) checkInit(caller []cgroup.Entry, id string, pid int64) error {
	if pid <= 0 || pid > 1<<31-1 {
		return fmt.Errorf("docker: container %s is not running (init pid %d)", short(id), pid)
	}
	initEntries, err := cgroup.ReadProc(a.cfg.ProcRoot, int32(pid))
	if err != nil {
		return fmt.Errorf("docker: container %s: init process %d: %w", short(id), pid, err)
	}
	byHier := make(map[int]string, len(initEntries))
	for _, e := range initEntries {
		byHier[e.HierarchyID] = e.Path
	}
	checked := 0
	for _, e := range caller {
		root, ok := containerRoot(e.Path, id)
		if !ok {
			continue
		}
		checked++
		p, ok := byHier[e.HierarchyID]
		if !ok || (p != root && !strings.HasPrefix(p, root+"/")) {
			return fmt.Errorf("docker: the caller's cgroup %s names container %s, whose init process is not in it: refused", e.Path, short(id))
		}
	}
	if checked == 0 {
		return fmt.Errorf("docker: container %s: no cgroup of the caller names it", short(id))
	}
	return nil
}

// containerRoot cuts path after its last component that contains id.
func containerRoot(path, id string) (string, bool) {
	i := strings.LastIndex(path, id)
	if i < 0 {
		return "", false
	}
	end := strings.IndexByte(path[i:], '/')
	if end < 0 {
		return path, true
	}
	return path[:i+end], true
}

// selectors turns info into selectors, skipping what cannot be a selector
// value (control characters, labels whose key holds ':', image references
// with spaces, values over registration.MaxSelectorValueLen): a skipped
// selector can only make the process match fewer entries.
func (a *Attestor) selectors(info *Container) []*sigilv1.Selector {
	var out []*sigilv1.Selector
	add := func(v string) {
		if len(v) > registration.MaxSelectorValueLen || strings.ContainsAny(v, "\n\r\x00") || ValidateSelector(v) != nil {
			return
		}
		out = append(out, &sigilv1.Selector{Type: Name, Value: v})
	}
	if info.Image != "" {
		add("image_id:" + info.Image)
	}
	if info.Config.Image != "" {
		add("image:" + info.Config.Image)
	}
	for _, k := range sortedKeys(info.Config.Labels) {
		if k == "" || strings.Contains(k, ":") {
			continue
		}
		add("label:" + k + ":" + info.Config.Labels[k])
	}
	seen := map[string]bool{}
	for _, kv := range info.Config.Env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || !a.env[k] || seen[kv] {
			continue
		}
		seen[kv] = true
		add("env:" + k + ":" + v)
	}
	return out
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// engineMessage extracts the "message" of an engine error body, bounded
// and on one line.
func engineMessage(body []byte) string {
	var e struct {
		Message string `json:"message"`
	}
	msg := strings.TrimSpace(string(body))
	if json.Unmarshal(body, &e) == nil && e.Message != "" {
		msg = e.Message
	}
	msg = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, msg)
	if len(msg) > 200 {
		msg = msg[:200] + "…"
	}
	if msg == "" {
		msg = "(no message)"
	}
	return msg
}

// unwrapURL drops net/http's "Get \"http://docker/...\":" prefix, which
// names a made-up host.
func unwrapURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}
