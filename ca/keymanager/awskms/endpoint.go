package awskms

import (
	"fmt"
	"net"
	"net/url"
	"strings"
)

// checkEndpoint validates an endpoint override and returns it in the form
// the SDK takes (scheme://host[:port]). It must be an https URL with a host
// and nothing else (no user, path, query or fragment); plain http is
// accepted only for a loopback host (a local test double), since KMS
// replies carry the public keys a server certifies.
func checkEndpoint(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("%q is not a URL: %w", raw, err)
	}
	switch {
	case u.Scheme != "https" && u.Scheme != "http":
		return "", fmt.Errorf("%q: the scheme must be https", raw)
	case u.Host == "" || u.Hostname() == "":
		return "", fmt.Errorf("%q has no host", raw)
	case u.User != nil:
		return "", fmt.Errorf("%q must not hold credentials (they come from the AWS environment or shared config)", u.Redacted())
	case u.Path != "" && u.Path != "/", u.RawQuery != "", u.Fragment != "", u.Opaque != "":
		return "", fmt.Errorf("%q: an endpoint is scheme://host[:port], with no path, query or fragment", raw)
	case u.Scheme == "http" && !isLoopback(u.Hostname()):
		return "", fmt.Errorf("%q: plain http is only allowed to a loopback host; use https", raw)
	}
	if p := u.Port(); p != "" {
		if _, err := net.LookupPort("tcp", p); err != nil || strings.TrimLeft(p, "0123456789") != "" {
			return "", fmt.Errorf("%q: bad port %q", raw, p)
		}
	}
	return u.Scheme + "://" + u.Host, nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
