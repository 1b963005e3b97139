package awskms

import (
	"net/url"
	"strings"
	"testing"
)

func TestCheckEndpoint(t *testing.T) {
	for raw, want := range map[string]string{
		"https://kms.eu-west-1.amazonaws.com":                 "https://kms.eu-west-1.amazonaws.com",
		"https://kms.eu-west-1.amazonaws.com/":                "https://kms.eu-west-1.amazonaws.com",
		"https://vpce-1.kms.eu-west-1.vpce.amazonaws.com:443": "https://vpce-1.kms.eu-west-1.vpce.amazonaws.com:443",
		"http://127.0.0.1:4566":                               "http://127.0.0.1:4566",
		"http://[::1]:4566":                                   "http://[::1]:4566",
		"http://localhost:4566":                               "http://localhost:4566",
	} {
		if got, err := checkEndpoint(raw); err != nil || got != want {
			t.Errorf("checkEndpoint(%q) = %q, %v; want %q", raw, got, err, want)
		}
	}
	for raw, want := range map[string]string{
		"kms.eu-west-1.amazonaws.com":         "scheme must be https",
		"ftp://kms.example.com":               "scheme must be https",
		"http://kms.example.com":              "only allowed to a loopback host",
		"https://":                            "has no host",
		"https://user:secret@kms.example.com": "must not hold credentials",
		"https://kms.example.com/path":        "no path, query or fragment",
		"https://kms.example.com?x=1":         "no path, query or fragment",
		"https://kms.example.com:99999":       "bad port",
		"https://kms.example.com:x":           "not a URL",
		"https://kms.example.com\x00":         "not a URL",
	} {
		_, err := checkEndpoint(raw)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("checkEndpoint(%q) = %v, want %q", raw, err, want)
		}
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("checkEndpoint(%q) leaks the password: %v", raw, err)
		}
	}
}

// FuzzCheckEndpoint checks that an accepted endpoint is an https URL, or
// an http URL to a loopback host, with nothing but scheme and host, and
// that accepting is idempotent.
func FuzzCheckEndpoint(f *testing.F) {
	for _, s := range []string{"https://kms.eu-west-1.amazonaws.com", "http://127.0.0.1:1", "http://[::1]:80/", "https://a@b", "http://10.0.0.1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		ep, err := checkEndpoint(raw)
		if err != nil {
			return
		}
		u, perr := url.Parse(ep)
		if perr != nil {
			t.Fatalf("accepted %q as %q, which does not parse: %v", raw, ep, perr)
		}
		if u.User != nil || u.Path != "" || u.RawQuery != "" || u.Fragment != "" || u.Host == "" {
			t.Fatalf("accepted %q as %q", raw, ep)
		}
		if u.Scheme != "https" && !(u.Scheme == "http" && isLoopback(u.Hostname())) {
			t.Fatalf("accepted %q with scheme %q to host %q", raw, u.Scheme, u.Hostname())
		}
		if again, err := checkEndpoint(ep); err != nil || again != ep {
			t.Fatalf("checkEndpoint(%q) = %q, %v: not idempotent", ep, again, err)
		}
	})
}
