package config

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"go.uber.org/zap/zapcore"
)

const validFile = `
# A full server and agent configuration.
server {
  trust_domain   = "example.org"
  node_name      = "s1"
  data_dir       = "/var/lib/sigil/server"
  bind_address   = ":8081"
  admin_socket   = "/run/sigil/admin.sock"
  health_address = "127.0.0.1:8080"
  key_manager    = "disk"
  ca_ttl         = "24h"
  x509_svid_ttl  = "1h"
  agent_svid_ttl = "90m"
  join_token_ttl = "10m"
  log_level      = "debug"
  log_format     = "json"
}

agent {
  trust_domain      = "example.org"
  server_address    = "127.0.0.1:8081"
  data_dir          = "/var/lib/sigil/agent"
  socket_path       = "/run/sigil/api.sock"
  admin_socket      = "/run/sigil/private/admin.sock"
  join_token        = "abc"
  trust_bundle_path = "/etc/sigil/bundle.pem"
  health_address    = "127.0.0.1:8082"
  log_level         = "warn"
  log_format        = "console"

  workload_api_max_connections_per_uid = 512
  workload_api_max_connections         = 8192
  workload_attestor_timeout            = "2s"
}
`

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		src     string
		wantErr string // substring; "" means success
		check   func(t *testing.T, f *File)
	}{
		{
			name: "valid file",
			src:  validFile,
			check: func(t *testing.T, f *File) {
				want := Server{
					TrustDomain: "example.org", NodeName: "s1", DataDir: "/var/lib/sigil/server",
					BindAddress: ":8081", AdminSocket: "/run/sigil/admin.sock", HealthAddress: "127.0.0.1:8080",
					KeyManager: "disk", CATTL: 24 * time.Hour, X509SVIDTTL: time.Hour,
					AgentSVIDTTL: 90 * time.Minute, JoinTokenTTL: 10 * time.Minute,
					Log: Log{Level: "debug", Format: "json"},
				}
				// Plugins (what the file says of plugins) is checked in
				// plugins_test.go.
				if f.Server == nil || f.Server.Plugins == nil || f.Server.Plugins.Block != nil {
					t.Fatalf("server plugins = %+v, want a file without a plugins block", f.Server)
				}
				got := *f.Server
				got.Plugins = nil
				if got != want {
					t.Errorf("server = %+v, want %+v", got, want)
				}
				wantA := Agent{
					TrustDomain: "example.org", ServerAddress: "127.0.0.1:8081", DataDir: "/var/lib/sigil/agent",
					SocketPath: "/run/sigil/api.sock", AdminSocket: "/run/sigil/private/admin.sock", JoinToken: "abc", TrustBundlePath: "/etc/sigil/bundle.pem",
					HealthAddress: "127.0.0.1:8082", Log: Log{Level: "warn", Format: "console"},
					MaxWorkloadConnsPerUID: 512, MaxWorkloadConns: 8192,
					WorkloadAttestorTimeout: 2 * time.Second,
				}
				if f.Agent == nil || f.Agent.Plugins == nil || f.Agent.Plugins.Block != nil {
					t.Fatalf("agent plugins = %+v, want a file without a plugins block", f.Agent)
				}
				gotA := *f.Agent
				gotA.Plugins = nil
				if gotA != wantA {
					t.Errorf("agent = %+v, want %+v", gotA, wantA)
				}
			},
		},
		{
			name: "server only",
			src:  `server { trust_domain = "example.org" }`,
			check: func(t *testing.T, f *File) {
				if f.Server == nil || f.Server.TrustDomain != "example.org" || f.Agent != nil {
					t.Errorf("got %+v", f)
				}
			},
		},
		{
			name:    "unknown attribute",
			src:     "server {\n  trust_domain = \"example.org\"\n  bind_adress = \":8081\"\n}",
			wantErr: `3,3: Unsupported argument; An argument named "bind_adress" is not expected here. Did you mean "bind_address"?`,
		},
		{
			name:    "unknown block",
			src:     `client { }`,
			wantErr: `Unsupported block type`,
		},
		{
			name:    "bad duration",
			src:     `server { ca_ttl = "24 hours" }`,
			wantErr: `test.hcl: server.ca_ttl: invalid duration "24 hours"`,
		},
		{
			name:    "negative duration",
			src:     `server { x509_svid_ttl = "-1h" }`,
			wantErr: `server.x509_svid_ttl: invalid duration "-1h": must not be negative`,
		},
		{
			name:    "wrong type",
			src:     `agent { server_address = ["a", "b"] }`,
			wantErr: `test.hcl:1,26: Unsuitable value type`,
		},
		{
			name:    "syntax error",
			src:     `server { trust_domain = }`,
			wantErr: `test.hcl:1,`,
		},
		{
			name:    "duplicate block",
			src:     "server {}\nserver {}",
			wantErr: `Duplicate server block`,
		},
		{
			name: "allow_downstream",
			src:  "server {\n  trust_domain = \"example.org\"\n  allow_downstream = true\n}",
			check: func(t *testing.T, f *File) {
				if f.Server == nil || !f.Server.AllowDownstream {
					t.Errorf("got %+v, want allow_downstream", f.Server)
				}
			},
		},
		{
			name: "admin_address and admin_ids",
			src:  "server {\n  admin_address = \"127.0.0.1:8443\"\n  admin_ids = [\"spiffe://example.org/ops/alice\", \"spiffe://example.org/ci\"]\n}",
			check: func(t *testing.T, f *File) {
				if f.Server == nil || f.Server.AdminAddress != "127.0.0.1:8443" || f.Server.AdminIDs != "spiffe://example.org/ops/alice,spiffe://example.org/ci" {
					t.Errorf("got %+v, want the admin address and ids", f.Server)
				}
			},
		},
		{
			name:    "admin_ids not a list",
			src:     "server {\n  admin_ids = \"spiffe://example.org/ops\"\n}",
			wantErr: `Unsuitable value type`,
		},
		{
			name:    "allow_downstream not a bool",
			src:     "server {\n  allow_downstream = \"yes\"\n}",
			wantErr: `test.hcl:2,23: Unsuitable value type; Unsuitable value: a bool is required`,
		},
		{
			name:    "negative workload connection limit",
			src:     `agent { workload_api_max_connections_per_uid = -1 }`,
			wantErr: `workload_api_max_connections_per_uid and workload_api_max_connections must not be negative`,
		},
		{
			name:    "negative workload attestor timeout",
			src:     `agent { workload_attestor_timeout = "-1s" }`,
			wantErr: `test.hcl: agent.workload_attestor_timeout: invalid duration "-1s": must not be negative`,
		},
		{
			name:    "bad workload attestor timeout",
			src:     `agent { workload_attestor_timeout = "soon" }`,
			wantErr: `test.hcl: agent.workload_attestor_timeout: invalid duration "soon"`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := Parse("test.hcl", []byte(tt.src))
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("Parse succeeded, want error containing %q", tt.wantErr)
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %q, want it to contain %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "\n") {
					t.Errorf("error spans several lines: %q", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			tt.check(t, f)
		})
	}
}

func TestLoadFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "server.hcl")
	if err := os.WriteFile(path, []byte(validFile), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := LoadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if f.Server.NodeName != "s1" {
		t.Errorf("node name = %q", f.Server.NodeName)
	}
	if _, err := LoadFile(filepath.Join(t.TempDir(), "missing.hcl")); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("missing file: err = %v", err)
	}
}

func TestServerFlagOverride(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want func(s *Server)
	}{
		{
			name: "no flags keep the file",
			args: nil,
			want: func(s *Server) {},
		},
		{
			name: "set flags override",
			args: []string{"--bind-address", "127.0.0.1:9000", "--x509-svid-ttl=30m", "--log-level", "error"},
			want: func(s *Server) {
				s.BindAddress = "127.0.0.1:9000"
				s.X509SVIDTTL = 30 * time.Minute
				s.Log.Level = "error"
			},
		},
		{
			name: "rotation lifetimes",
			args: []string{"--jwt-svid-ttl", "2m", "--ca-propagation-delay=10s"},
			want: func(s *Server) {
				s.JWTSVIDTTL = 2 * time.Minute
				s.CAPropagationDelay = 10 * time.Second
			},
		},
		{
			name: "allow downstream",
			args: []string{"--allow-downstream"},
			want: func(s *Server) { s.AllowDownstream = true },
		},
		{
			name: "remote administration",
			args: []string{"--admin-address", "127.0.0.1:8443", "--admin-id", "spiffe://example.org/a", "--admin-id=spiffe://example.org/b"},
			want: func(s *Server) {
				s.AdminAddress = "127.0.0.1:8443"
				s.AdminIDs = "spiffe://example.org/a,spiffe://example.org/b"
			},
		},
		{
			name: "explicit empty value overrides too",
			args: []string{"--health-address="},
			want: func(s *Server) { s.HealthAddress = "" },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := Parse("test.hcl", []byte(validFile))
			if err != nil {
				t.Fatal(err)
			}
			want := *f.Server
			tt.want(&want)

			fs := pflag.NewFlagSet("server", pflag.ContinueOnError)
			flags := NewServerFlags(fs)
			if err := fs.Parse(tt.args); err != nil {
				t.Fatal(err)
			}
			got := *f.Server
			flags.Apply(&got)
			if got != want {
				t.Errorf("got  %+v\nwant %+v", got, want)
			}
		})
	}
}

func TestAgentFlagOverride(t *testing.T) {
	f, err := Parse("test.hcl", []byte(validFile))
	if err != nil {
		t.Fatal(err)
	}
	fs := pflag.NewFlagSet("agent", pflag.ContinueOnError)
	flags := NewAgentFlags(fs)
	if err := fs.Parse([]string{"--join-token", "xyz", "--socket-path", "/tmp/a.sock"}); err != nil {
		t.Fatal(err)
	}
	got := *f.Agent
	flags.Apply(&got)
	want := *f.Agent
	want.JoinToken = "xyz"
	want.SocketPath = "/tmp/a.sock"
	if got != want {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}
}

func TestBadDurationFlag(t *testing.T) {
	fs := pflag.NewFlagSet("server", pflag.ContinueOnError)
	fs.SetOutput(&bytes.Buffer{})
	NewServerFlags(fs)
	if err := fs.Parse([]string{"--ca-ttl", "forever"}); err == nil {
		t.Fatal("bad duration flag accepted")
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name    string
		v       interface{ Validate() error }
		wantErr string
	}{
		{"server ok", &Server{TrustDomain: "example.org"}, ""},
		{"server no trust domain", &Server{}, "trust_domain is required"},
		{"server bad trust domain", &Server{TrustDomain: "Bad Domain"}, `trust_domain "Bad Domain" is invalid`},
		{"server bad log level", &Server{TrustDomain: "example.org", Log: Log{Level: "loud"}}, `log_level "loud" is invalid`},
		{"server bad log format", &Server{TrustDomain: "example.org", Log: Log{Format: "xml"}}, `log_format "xml" is invalid`},
		{"agent ok", &Agent{TrustDomain: "example.org", ServerAddress: "s:8081"}, ""},
		{"agent no server", &Agent{TrustDomain: "example.org"}, "server_address is required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.v.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func TestNewLogger(t *testing.T) {
	var buf bytes.Buffer
	log, err := NewLogger(Log{Level: "warn"}, "json", &buf)
	if err != nil {
		t.Fatal(err)
	}
	log.Info("hidden")
	log.Warn("shown")
	out := buf.String()
	if strings.Contains(out, "hidden") || !strings.Contains(out, `"msg":"shown"`) {
		t.Errorf("json output = %q", out)
	}

	buf.Reset()
	log, err = NewLogger(Log{}, "console", &buf)
	if err != nil {
		t.Fatal(err)
	}
	log.Info("hello")
	if strings.HasPrefix(buf.String(), "{") || !strings.Contains(buf.String(), "hello") {
		t.Errorf("console output = %q", buf.String())
	}

	if _, err := NewLogger(Log{Level: "verbose"}, "json", nil); err == nil {
		t.Error("bad level accepted")
	}
}

// The console format prints the full date, time and zone of every line.
func TestConsoleLogFullTimestamp(t *testing.T) {
	var buf bytes.Buffer
	log, err := NewLogger(Log{}, "console", &buf)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 3, 4, 7, 30, 41, 0, time.FixedZone("CET", 3600))
	if err := log.Core().Write(zapcore.Entry{Level: zapcore.InfoLevel, Time: at, Message: "CA expires"}, nil); err != nil {
		t.Fatal(err)
	}
	if got := buf.String(); !strings.HasPrefix(got, "2026-03-04T07:30:41.000+01:00\t") {
		t.Errorf("console line = %q, want it to start with 2026-03-04T07:30:41.000+01:00", got)
	}
}
