package docker

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
)

// Container is the part of the Engine API's container inspect answer
// (GET /containers/<id>/json) that the attestor uses. Docker and Podman's
// compatible API both serve this shape.
type Container struct {
	// ID is the container's 64-hex-digit id.
	ID string `json:"Id"`
	// Image is the id of the image the container runs, "sha256:<hex>".
	Image string `json:"Image"`
	// State.Pid is the host pid of the container's init process, 0 when
	// the container is not running.
	State struct {
		Pid int64 `json:"Pid"`
	} `json:"State"`
	// Config is the container's configuration.
	Config struct {
		// Image is the image reference the container was created with
		// ("nginx:1.27", "docker.io/library/nginx:1.27").
		Image string `json:"Image"`
		// Labels are the container's labels (null when it has none).
		Labels map[string]string `json:"Labels"`
		// Env is the container's environment, "KEY=value" strings.
		Env []string `json:"Env"`
	} `json:"Config"`
}

// ParseContainer parses an inspect answer and checks the fields the
// attestor relies on: a 64-hex-digit Id, an Image of the form
// "sha256:<64 hex>" (a bare 64-hex id, as old Podman versions send it,
// gets the prefix), and a Config object. A body that is not one JSON
// object is an error.
func ParseContainer(data []byte) (*Container, error) {
	var c Container
	var probe struct {
		Config json.RawMessage `json:"Config"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("docker: malformed inspect answer: %w", err)
	}
	if dec.More() {
		return nil, errors.New("docker: malformed inspect answer: data after the JSON object")
	}
	if err := json.Unmarshal(data, &probe); err != nil {
		return nil, fmt.Errorf("docker: malformed inspect answer: %w", err)
	}
	if len(probe.Config) == 0 || string(probe.Config) == "null" {
		return nil, errors.New("docker: malformed inspect answer: no Config")
	}
	if !isHex64(c.ID) {
		return nil, fmt.Errorf("docker: malformed inspect answer: Id %q is not 64 hex digits", clip(c.ID))
	}
	switch {
	case isHex64(c.Image):
		c.Image = "sha256:" + c.Image
	case strings.HasPrefix(c.Image, "sha256:") && isHex64(c.Image[len("sha256:"):]):
	default:
		return nil, fmt.Errorf("docker: malformed inspect answer: Image %q is not an image id (sha256:<64 hex>)", clip(c.Image))
	}
	return &c, nil
}

func isHex64(s string) bool {
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

func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}

func sortedKeys(m map[string]string) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// ValidateSelector checks the value of a "docker" selector:
// label:<key>:<value> and env:<key>:<value> with a non-empty key without
// ':'; image_id:sha256:<64 lowercase hex>; image:<ref> with a non-empty
// reference without whitespace.
func ValidateSelector(value string) error {
	kind, rest, ok := strings.Cut(value, ":")
	if !ok {
		return fmt.Errorf("docker selector %q: want label:<k>:<v>, env:<k>:<v>, image_id:sha256:<hex> or image:<ref>", value)
	}
	switch kind {
	case "label", "env":
		k, _, ok := strings.Cut(rest, ":")
		if !ok || k == "" {
			return fmt.Errorf("docker selector %q: want %s:<key>:<value>", value, kind)
		}
		if kind == "env" && !validEnvKey(k) {
			return fmt.Errorf("docker selector %q: %q is not a variable name", value, k)
		}
	case "image_id":
		if !strings.HasPrefix(rest, "sha256:") || !isHex64(rest[len("sha256:"):]) {
			return fmt.Errorf("docker selector %q: want image_id:sha256:<64 lowercase hex digits>", value)
		}
	case "image":
		if rest == "" || strings.ContainsAny(rest, " \t") {
			return fmt.Errorf("docker selector %q: want image:<reference> without spaces", value)
		}
	default:
		return fmt.Errorf("docker selector %q: unknown key %q (want label, env, image_id or image)", value, kind)
	}
	return nil
}
