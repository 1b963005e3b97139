package health

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestHandler(t *testing.T) {
	readyCh := make(chan struct{})
	var healthErr error
	ready := All(Closed(readyCh, "server is starting"), func() error { return healthErr })
	h := Handler(ready)

	tests := []struct {
		name     string
		setup    func()
		method   string
		path     string
		wantCode int
		wantBody string
	}{
		{"live while starting", nil, "GET", "/live", 200, "live"},
		{"not ready while starting", nil, "GET", "/ready", 503, "not ready: server is starting"},
		{"ready after Ready closed", func() { close(readyCh) }, "GET", "/ready", 200, "ready"},
		{"unhealthy agent", func() { healthErr = errors.New("agent SVID expired") }, "GET", "/ready", 503, "not ready: agent SVID expired"},
		{"still live when unhealthy", nil, "GET", "/live", 200, "live"},
		{"healthy again", func() { healthErr = nil }, "HEAD", "/ready", 200, ""},
		{"post refused", nil, "POST", "/ready", 405, "method not allowed"},
		{"unknown path", nil, "GET", "/metrics", 404, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.setup != nil {
				tt.setup()
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(tt.method, tt.path, nil))
			if rec.Code != tt.wantCode {
				t.Errorf("code = %d, want %d", rec.Code, tt.wantCode)
			}
			if tt.wantBody != "" && strings.TrimSpace(rec.Body.String()) != tt.wantBody {
				t.Errorf("body = %q, want %q", rec.Body.String(), tt.wantBody)
			}
		})
	}
}

func TestStart(t *testing.T) {
	s, err := Start("127.0.0.1:0", func() error { return nil }, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + s.Addr().String() + "/ready")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || strings.TrimSpace(string(body)) != "ready" {
		t.Errorf("got %d %q", resp.StatusCode, body)
	}
	if err := s.Stop(context.Background()); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if _, err := http.Get("http://" + s.Addr().String() + "/live"); err == nil {
		t.Error("endpoint still answers after Stop")
	}

	// A busy address is reported by Start itself.
	s2, err := Start("127.0.0.1:0", func() error { return nil }, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Stop(context.Background())
	if _, err := Start(s2.Addr().String(), func() error { return nil }, nil); err == nil {
		t.Error("Start on a busy address succeeded")
	}
}
