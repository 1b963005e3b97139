package mtls_test

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-id/sigil/mtls"
	"github.com/sigil-id/sigil/mtls/mtlstest"
	"github.com/sigil-id/sigil/mtls/policy"
)

// mutablePolicy is a PolicySource whose policy a test replaces.
type mutablePolicy struct{ p atomic.Pointer[policy.Policy] }

func (m *mutablePolicy) Policy() *policy.Policy { return m.p.Load() }

func (m *mutablePolicy) set(t testing.TB, src string) {
	t.Helper()
	p, err := policy.Parse([]byte(src), "policy.hcl")
	if err != nil {
		t.Fatal(err)
	}
	m.p.Store(p)
}

// handshakeLog records what the VerifyConnection callback of a config
// saw, by wrapping it: how often it ran, and whether the last handshake
// was a resumed session.
type handshakeLog struct {
	calls   atomic.Int32
	resumed atomic.Bool
}

func (h *handshakeLog) wrap(cfg *tls.Config) {
	inner := cfg.VerifyConnection
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		h.calls.Add(1)
		h.resumed.Store(cs.DidResume)
		if inner != nil {
			return inner(cs)
		}
		return nil
	}
}

// resumeServer accepts TLS connections with cfg and answers "ok\n" on each
// one whose handshake succeeds; handshake errors go to errs.
func resumeServer(t *testing.T, cfg *tls.Config) (addr string, errs chan error) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	errs = make(chan error, 16)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				tc := tls.Server(c, cfg)
				tc.SetDeadline(time.Now().Add(10 * time.Second))
				if err := tc.Handshake(); err != nil {
					select {
					case errs <- err:
					default:
					}
					return
				}
				io.WriteString(tc, "ok\n")
			}()
		}
	}()
	return l.Addr().String(), errs
}

// exchange dials addr with cfg, reads the server's answer to the end (which
// also takes in the session tickets) and returns the client's view of the
// connection.
func exchange(addr string, cfg *tls.Config) (tls.ConnectionState, error) {
	d := &net.Dialer{Timeout: 10 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr, cfg)
	if err != nil {
		return tls.ConnectionState{}, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c)
	state := c.ConnectionState()
	if err == nil && string(b) != "ok\n" {
		err = errors.New("unexpected answer " + string(b))
	}
	return state, err
}

// mustResume checks that a connection is accepted and that it resumed the
// earlier TLS session, on both sides.
func mustResume(t *testing.T, addr string, cfg *tls.Config, srvLog, cliLog *handshakeLog) {
	t.Helper()
	st, err := exchange(addr, cfg)
	if err != nil {
		t.Fatalf("resumed connection before the change: %v", err)
	}
	if !st.DidResume || !srvLog.resumed.Load() || !cliLog.resumed.Load() {
		t.Fatalf("session not resumed (client state %v, server saw %v, client saw %v): the test would not cover resumption",
			st.DidResume, srvLog.resumed.Load(), cliLog.resumed.Load())
	}
}

const echoPolicy = `
rule "web-to-echo" {
  from = ["spiffe://example.org/web", "spiffe://partner.org/app"]
  to   = ["service:echo"]
}`

// TestServerReauthorizesResumedSession: a client that resumes a TLS
// session after the server's policy changed to deny it, or after its CA
// left the server's bundle, is refused (server-side client authorization
// runs at every handshake, resumed ones included).
func TestServerReauthorizesResumedSession(t *testing.T) {
	for _, tc := range []struct {
		name   string
		client string
		change func(e *env, pol *mutablePolicy)
		want   string
	}{
		{"policy-deny", clientID, func(_ *env, pol *mutablePolicy) {
			pol.set(t, `rule "other" {
  from = ["spiffe://example.org/batch"]
  to   = ["service:echo"]
}`)
		}, "mtls: permission denied: spiffe://example.org/web may not call service echo"},
		{"trust-removed", partnerID, func(e *env, _ *mutablePolicy) {
			e.server.SetBundles(e.ca.Bundle()) // partner.org is no longer trusted
		}, `client certificate of the resumed TLS session rejected`},
	} {
		for _, version := range []uint16{tls.VersionTLS13, tls.VersionTLS12} {
			t.Run(fmt.Sprintf("%s/%s", tc.name, tls.VersionName(version)), func(t *testing.T) {
				e := newEnv(t)
				pol := &mutablePolicy{}
				pol.set(t, echoPolicy)
				srvCfg := mtls.ServerConfig(e.server, mtls.WithAuthorizer(mtls.NewEnforcer(pol).Authorize), mtls.WithService("echo"), mtls.WithMinVersion(version))
				var srvLog, cliLog handshakeLog
				srvLog.wrap(srvCfg)
				addr, errs := resumeServer(t, srvCfg)

				cliCfg := mtls.ClientConfig(e.source(tc.client), mtls.WithServerID(spiffeid.RequireFromString(serverID)), mtls.WithMinVersion(version))
				cliCfg.MaxVersion = version
				cliCfg.ClientSessionCache = tls.NewLRUClientSessionCache(4)
				cliLog.wrap(cliCfg)

				if st, err := exchange(addr, cliCfg); err != nil || st.DidResume || st.Version != version {
					t.Fatalf("first connection: resumed=%v version=%x err=%v", st.DidResume, st.Version, err)
				}
				mustResume(t, addr, cliCfg, &srvLog, &cliLog)

				tc.change(e, pol)
				before := srvLog.calls.Load()
				if _, err := exchange(addr, cliCfg); err == nil {
					t.Fatal("a resumed session was accepted after the change")
				}
				if srvLog.calls.Load() != before+1 || !srvLog.resumed.Load() {
					t.Fatalf("the refused handshake was not a resumption (server checks %d→%d, resumed %v)", before, srvLog.calls.Load(), srvLog.resumed.Load())
				}
				select {
				case err := <-errs:
					if !strings.Contains(err.Error(), tc.want) {
						t.Fatalf("server refused with %q, want %q", err, tc.want)
					}
				case <-time.After(10 * time.Second):
					t.Fatal("the server reported no handshake error")
				}
				if _, err := exchange(addr, cliCfg); err == nil {
					t.Fatal("a second attempt after the refusal was accepted")
				}
			})
		}
	}
}

// TestClientReauthorizesResumedSession: a client that resumes a session
// re-checks the server: after its own authorizer's policy changed to deny
// the server, or after the server's CA left its bundle, it refuses.
func TestClientReauthorizesResumedSession(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(e *env, cli *mtlstest.Source, pol *mutablePolicy)
		want   string
	}{
		{"policy-deny", func(_ *env, _ *mtlstest.Source, pol *mutablePolicy) {
			pol.set(t, `rule "other" {
  from = ["spiffe://example.org/other-server"]
  to   = ["service:echo"]
}`)
		}, "mtls: permission denied: spiffe://example.org/users may not call service echo"},
		{"trust-removed", func(e *env, cli *mtlstest.Source, _ *mutablePolicy) {
			cli.SetBundles(e.partner.Bundle()) // example.org is no longer trusted
		}, `mtls: server certificate of the resumed TLS session rejected`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			srvCfg := mtls.ServerConfig(e.server)
			var srvLog, cliLog handshakeLog
			srvLog.wrap(srvCfg)
			addr, _ := resumeServer(t, srvCfg)

			pol := &mutablePolicy{}
			pol.set(t, `rule "users-is-echo" {
  from = ["spiffe://example.org/users"]
  to   = ["service:echo"]
}`)
			cli := e.source(clientID)
			cliCfg := mtls.ClientConfig(cli, mtls.WithAuthorizer(mtls.NewEnforcer(pol).Authorize), mtls.WithService("echo"))
			cliCfg.ClientSessionCache = tls.NewLRUClientSessionCache(4)
			cliLog.wrap(cliCfg)

			if st, err := exchange(addr, cliCfg); err != nil || st.DidResume {
				t.Fatalf("first connection: resumed=%v err=%v", st.DidResume, err)
			}
			mustResume(t, addr, cliCfg, &srvLog, &cliLog)

			tc.change(e, cli, pol)
			before := cliLog.calls.Load()
			_, err := exchange(addr, cliCfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("resumed session after the change: %v, want %q", err, tc.want)
			}
			if cliLog.calls.Load() != before+1 || !cliLog.resumed.Load() {
				t.Fatalf("the refused handshake was not a resumption (client checks %d→%d, resumed %v)", before, cliLog.calls.Load(), cliLog.resumed.Load())
			}
		})
	}
}
