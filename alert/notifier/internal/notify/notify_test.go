package notify

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestPostStatuses(t *testing.T) {
	const secret = "s3cr3t-routing-key"
	var got []byte
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, _ = io.ReadAll(r.Body)
		if r.Header.Get("Content-Type") != "application/json" || r.Method != http.MethodPost {
			t.Errorf("request %s %q", r.Method, r.Header.Get("Content-Type"))
		}
		switch r.URL.Path {
		case "/ok":
			w.WriteHeader(http.StatusAccepted)
		case "/busy":
			w.WriteHeader(http.StatusTooManyRequests)
		case "/down":
			w.WriteHeader(http.StatusBadGateway)
			io.WriteString(w, "upstream "+secret+" broke "+strings.Repeat("x", 5000))
		case "/bad":
			w.WriteHeader(http.StatusBadRequest)
			io.WriteString(w, `{"status":"invalid event"}`)
		case "/moved":
			http.Redirect(w, r, "/ok", http.StatusFound)
		}
	}))
	defer srv.Close()
	c := NewClient(5 * time.Second)
	post := func(path string) error {
		return Post(context.Background(), c, Request{URL: srv.URL + path, Label: "receiver", Body: []byte(`{"a":1}`), Secrets: []string{secret}})
	}
	if err := post("/ok"); err != nil || string(got) != `{"a":1}` {
		t.Fatalf("ok: %v, body %q", err, got)
	}
	for path, want := range map[string]string{
		"/busy":  "429 Too Many Requests: the receiver may accept a retry",
		"/down":  "502 Bad Gateway",
		"/bad":   "400 Bad Request (\"{\\\"status\\\":\\\"invalid event\\\"}\"): the receiver refused the request; a retry will not succeed",
		"/moved": "302 Found: redirects are not followed",
	} {
		err := post(path)
		if err == nil || !strings.Contains(err.Error(), want) || !strings.HasPrefix(err.Error(), "POST receiver: ") {
			t.Errorf("%s: %v, want %q", path, err, want)
			continue
		}
		if strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), srv.URL) {
			t.Errorf("%s: error leaks the secret or URL: %v", path, err)
		}
		if len(err.Error()) > 400 {
			t.Errorf("%s: error of %d bytes: the snippet is not bounded", path, len(err.Error()))
		}
		var se *StatusError
		if !errors.As(err, &se) || se.Retryable() != (path == "/busy" || path == "/down") {
			t.Errorf("%s: %T retryable wrong", path, err)
		}
	}
	// A transport error names the label, not the URL.
	srv.Close()
	if err := post("/ok"); err == nil || strings.Contains(err.Error(), srv.URL) || !strings.Contains(err.Error(), "POST receiver") {
		t.Errorf("closed receiver: %v", err)
	}
}

func TestPostHonoursContext(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }))
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Post(ctx, NewClient(time.Minute), Request{URL: srv.URL, Label: "r"}); !errors.Is(err, context.Canceled) || strings.Contains(err.Error(), srv.URL) {
		t.Fatalf("cancelled: %v", err)
	}
}

func TestCheckURLAndCommon(t *testing.T) {
	for _, ok := range []string{"http://127.0.0.1:9093", "https://am.example.com/prefix/"} {
		if _, err := CheckURL(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for bad, want := range map[string]string{
		"ftp://x":        "scheme",
		"http://":        "no host",
		"https://u:p@x/": "user info",
		"http://x/#frag": "fragment",
		"127.0.0.1:9093": "not a URL",
		"http://[::1":    "not a URL",
	} {
		if _, err := CheckURL(bad); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", bad, err, want)
		}
	}
	c := Common{}
	if err := c.Validate("x"); err != nil || c.Name != "x" || c.MinSeverity != "warning" || c.Timeout != DefaultTimeout {
		t.Errorf("defaults: %+v %v", c, err)
	}
	c = Common{MinSeverity: "loud"}
	if err := c.Validate("x"); err == nil {
		t.Error("bad severity accepted")
	}
	if got := Truncate("héllo wörld", 4); got != "h…" {
		t.Errorf("Truncate = %q", got)
	}
}
