package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

func writeSecret(t *testing.T, content string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestReadSecretFile(t *testing.T) {
	const secret = "sigil-join-v1-c2VjcmV0"
	good := writeSecret(t, secret+"\n", 0o600)
	if got, err := ReadSecretFile("join_secret_file", good); err != nil || got != secret {
		t.Fatalf("0600 file: %q %v", got, err)
	}
	if got, err := ReadSecretFile("join_secret_file", writeSecret(t, secret, 0o400)); err != nil || got != secret {
		t.Fatalf("0400 file: %q %v", got, err)
	}
	cases := []struct{ name, path, want string }{
		{"world readable", writeSecret(t, secret, 0o644), "is accessible by group or others (mode 0644): a secret file must be readable only by its owner; run: chmod 600 "},
		{"group readable", writeSecret(t, secret, 0o640), "(mode 0640)"},
		{"other writable", writeSecret(t, secret, 0o602), "(mode 0602)"},
		{"empty", writeSecret(t, " \n", 0o600), "is empty"},
		{"too large", writeSecret(t, strings.Repeat("s", maxSecretFileSize+1), 0o600), "is larger than 4096 bytes"},
		{"directory", t.TempDir(), "is not a regular file"},
		{"missing", filepath.Join(t.TempDir(), "nope"), "no such file"},
	}
	if os.Geteuid() == 0 {
		// Only root can give a file to another user; as root, a file of
		// any owner other than root must be refused.
		p := writeSecret(t, secret, 0o600)
		if err := os.Chown(p, 12345, 12345); err != nil {
			t.Fatal(err)
		}
		cases = append(cases, struct{ name, path, want string }{"other owner", p, "is owned by uid 12345, not by the user running sigil (uid 0) or root; run: chown 0 "})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := ReadSecretFile("join_secret_file", c.path)
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), "config: join_secret_file") {
				t.Fatalf("got %q, %v; want an error containing %q", got, err, c.want)
			}
			if strings.Contains(err.Error(), secret) {
				t.Fatalf("error reveals the secret: %v", err)
			}
		})
	}
}

func TestResolveJoinSecretAndToken(t *testing.T) {
	file := writeSecret(t, "from-file\n", 0o600)
	env := func(v string) func(string) string {
		return func(k string) string {
			if k == EnvJoinSecret || k == EnvJoinToken {
				return v
			}
			return ""
		}
	}
	for _, c := range []struct {
		name, value, file, env, want, err string
	}{
		{"value", "inline", "", "from-env", "inline", ""},
		{"file", "", file, "from-env", "from-file", ""},
		{"env", "", "", "from-env\n", "from-env", ""},
		{"nothing", "", "", "", "", ""},
		{"both", "inline", file, "", "", "both join_"},
		{"bad file", "", writeSecret(t, "x", 0o644), "", "", "chmod 600"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := &Server{JoinSecret: c.value, JoinSecretFile: c.file}
			err := s.ResolveJoinSecret(env(c.env))
			a := &Agent{JoinToken: c.value, JoinTokenFile: c.file}
			aerr := a.ResolveJoinToken(env(c.env))
			for _, got := range []struct {
				v   string
				err error
			}{{s.JoinSecret, err}, {a.JoinToken, aerr}} {
				if c.err != "" {
					if got.err == nil || !strings.Contains(got.err.Error(), c.err) {
						t.Fatalf("got %v, want error containing %q", got.err, c.err)
					}
					continue
				}
				if got.err != nil || got.v != c.want {
					t.Fatalf("got %q, %v; want %q", got.v, got.err, c.want)
				}
			}
		})
	}
}

func TestSecretFileKeysAndFlags(t *testing.T) {
	f, err := Parse("x.hcl", []byte(`
server {
  trust_domain     = "example.org"
  join_secret_file = "/etc/sigil/join-secret"
}
agent {
  trust_domain    = "example.org"
  server_address  = "127.0.0.1:8081"
  join_token_file = "/etc/sigil/join-token"
}
`))
	if err != nil {
		t.Fatal(err)
	}
	if f.Server.JoinSecretFile != "/etc/sigil/join-secret" || f.Agent.JoinTokenFile != "/etc/sigil/join-token" {
		t.Fatalf("file keys not read: %+v %+v", f.Server, f.Agent)
	}

	fs := pflag.NewFlagSet("server", pflag.ContinueOnError)
	sf := NewServerFlags(fs)
	if err := fs.Parse([]string{"--join-secret-file", "/s"}); err != nil {
		t.Fatal(err)
	}
	s := &Server{}
	sf.Apply(s)
	if s.JoinSecretFile != "/s" || len(sf.Warnings()) != 0 {
		t.Fatalf("-join-secret-file: %+v %v", s, sf.Warnings())
	}
	fs = pflag.NewFlagSet("server", pflag.ContinueOnError)
	sf = NewServerFlags(fs)
	if err := fs.Parse([]string{"--join-secret", "x"}); err != nil {
		t.Fatal(err)
	}
	if w := sf.Warnings(); len(w) != 1 || !strings.Contains(w[0], "/proc/<pid>/cmdline") || !strings.Contains(w[0], "-join-secret-file") || strings.Contains(w[0], "x ") {
		t.Fatalf("-join-secret warning: %v", w)
	}

	fs = pflag.NewFlagSet("agent", pflag.ContinueOnError)
	af := NewAgentFlags(fs)
	if err := fs.Parse([]string{"--join-token-file", "/t"}); err != nil {
		t.Fatal(err)
	}
	a := &Agent{}
	af.Apply(a)
	if a.JoinTokenFile != "/t" || len(af.Warnings()) != 0 {
		t.Fatalf("-join-token-file: %+v %v", a, af.Warnings())
	}
	fs = pflag.NewFlagSet("agent", pflag.ContinueOnError)
	af = NewAgentFlags(fs)
	if err := fs.Parse([]string{"--join-token", "tok"}); err != nil {
		t.Fatal(err)
	}
	if w := af.Warnings(); len(w) != 1 || !strings.Contains(w[0], "SIGIL_JOIN_TOKEN") {
		t.Fatalf("-join-token warning: %v", w)
	}
}

func TestServerLifetimeBounds(t *testing.T) {
	for _, c := range []struct {
		name string
		set  func(s *Server)
		want string
	}{
		{"defaults", func(s *Server) {}, ""},
		{"x509 at minimum", func(s *Server) { s.X509SVIDTTL = 4 * time.Second }, ""},
		{"x509 1s", func(s *Server) { s.X509SVIDTTL = time.Second }, "x509_svid_ttl 1s is too short: the minimum is 4s"},
		{"agent 2s", func(s *Server) { s.AgentSVIDTTL = 2 * time.Second }, "agent_svid_ttl 2s is too short"},
		{"jwt 1s", func(s *Server) { s.JWTSVIDTTL = time.Second }, "jwt_svid_ttl 1s is too short"},
		{"token a day", func(s *Server) { s.JoinTokenTTL = 24 * time.Hour }, ""},
		{"token 10 years", func(s *Server) { s.JoinTokenTTL = 10 * 365 * 24 * time.Hour }, "join_token_ttl 87600h0m0s out of range: want 1s to 24h0m0s"},
		{"token 500ms", func(s *Server) { s.JoinTokenTTL = 500 * time.Millisecond }, "join_token_ttl 500ms out of range"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := &Server{TrustDomain: "example.org"}
			c.set(s)
			err := s.Validate()
			if c.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want %q", err, c.want)
			}
		})
	}
}
