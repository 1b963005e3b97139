package k8s

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

// kubelet fetches the pod list from the kubelet.
type kubelet struct {
	url       string // .../pods
	tokenPath string // "" for the read-only port
	client    *http.Client
	maxBytes  int64
	nodeName  string
}

func newKubelet(c Config) (*kubelet, error) {
	k := &kubelet{maxBytes: c.MaxResponseBytes, nodeName: c.NodeName}
	tr := &http.Transport{
		Proxy:                 nil, // the kubelet is local: never through a proxy
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          2,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   c.FetchTimeout,
		ResponseHeaderTimeout: c.FetchTimeout,
	}
	if c.ReadOnlyPort != 0 {
		k.url = "http://" + readOnlyHost + ":" + strconv.Itoa(c.ReadOnlyPort) + "/pods"
	} else {
		k.url = strings.TrimSuffix(c.KubeletURL, "/") + "/pods"
		k.tokenPath = c.TokenPath
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if c.SkipKubeletVerify {
			tc.InsecureSkipVerify = true
		} else {
			pem, err := os.ReadFile(c.KubeletCAPath)
			if err != nil {
				return nil, fmt.Errorf("k8s: kubelet_ca_path: %w (set kubelet_ca_path to the CA of the kubelet's serving certificate, or skip_kubelet_verify = true)", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("k8s: kubelet_ca_path %s: no PEM certificate", c.KubeletCAPath)
			}
			tc.RootCAs = pool
		}
		tr.TLSClientConfig = tc
	}
	k.client = &http.Client{
		Transport: tr,
		Timeout:   c.FetchTimeout,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return errors.New("redirect refused")
		},
	}
	return k, nil
}

// pods fetches and parses the kubelet's pod list.
func (k *kubelet) pods(ctx context.Context) (map[string]container, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, k.url, nil)
	if err != nil {
		return nil, fmt.Errorf("k8s: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	if k.tokenPath != "" {
		tok, err := readToken(k.tokenPath)
		if err != nil {
			return nil, err
		}
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := k.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("k8s: kubelet unreachable: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
		hint := ""
		switch resp.StatusCode {
		case http.StatusUnauthorized:
			hint = " (the kubelet refused the token in token_path)"
		case http.StatusForbidden:
			hint = " (the service account needs get on nodes/pods or nodes/proxy)"
		}
		return nil, fmt.Errorf("k8s: kubelet GET %s: %s%s", k.url, resp.Status, hint)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, k.maxBytes+1))
	if err != nil {
		return nil, fmt.Errorf("k8s: kubelet GET %s: %w", k.url, err)
	}
	// Over HTTP/2, an answer cut short when the fetch timeout ends can
	// reach here as a complete empty 200: past the deadline, the kubelet
	// did not answer in time, whatever the body says.
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("k8s: kubelet unreachable: no complete answer in time: %w", err)
	}
	if int64(len(data)) > k.maxBytes {
		return nil, fmt.Errorf("k8s: kubelet GET %s: response larger than max_response_bytes (%d)", k.url, k.maxBytes)
	}
	return parsePodList(data, k.nodeName)
}

func readToken(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("k8s: token_path: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxTokenBytes+1))
	if err != nil {
		return "", fmt.Errorf("k8s: token_path: %w", err)
	}
	if len(b) > maxTokenBytes {
		return "", fmt.Errorf("k8s: token_path %s: larger than %d bytes", path, maxTokenBytes)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" || strings.ContainsAny(tok, " \r\n\t") {
		return "", fmt.Errorf("k8s: token_path %s: empty or not a single token", path)
	}
	return tok, nil
}
