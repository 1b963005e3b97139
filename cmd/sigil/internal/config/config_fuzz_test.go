package config

import (
	"reflect"
	"strings"
	"testing"

	"github.com/sigil-id/sigil/plugin"

	// The plugins the binary ships, so that their blocks are decoded.
	_ "github.com/sigil-id/sigil/attestor/node/jointoken"
	_ "github.com/sigil-id/sigil/attestor/workload/unix"
	_ "github.com/sigil-id/sigil/ca/keymanager/disk"
	_ "github.com/sigil-id/sigil/ca/keymanager/memory"
)

// FuzzConfig: Parse never panics on any input; an accepted file parses the
// same way twice, and Validate of its server and agent blocks gives the
// same answer twice and never panics. An accepted server block satisfies
// the lifetime bounds. Building the plugins of an accepted file never
// panics, and its errors are one line.
func FuzzConfig(f *testing.F) {
	f.Add(validFile)
	f.Add(`server { trust_domain = "example.org" }`)
	f.Add(`server {
  trust_domain     = "example.org"
  x509_svid_ttl    = "1s"
  join_token_ttl   = "87600h"
  join_secret_file = "/etc/sigil/join-secret"
  retry_join       = ["10.0.0.1:8082", "10.0.0.2:8082"]
  bootstrap        = false
  allow_downstream = true
}`)
	f.Add(`server {
  trust_domain  = "example.org"
  admin_address = "127.0.0.1:8443"
  admin_ids     = ["spiffe://example.org/ops/alice", "not an id"]
}`)
	f.Add(`agent {
  trust_domain    = "example.org"
  server_address  = "127.0.0.1:8081"
  join_token_file = "/etc/sigil/join-token"
}`)
	f.Add(`server {
  trust_domain = "aws.example"
  federation {
    bundle_endpoint {
      address      = "127.0.0.1:8443"
      profile      = "https_web"
      cert_file    = "chain.pem"
      key_file     = "key.pem"
      refresh_hint = "5m"
    }
    min_refresh = "1s"
    max_refresh = "1h"
    federates_with "gcp.example" {
      bundle_endpoint_url = "https://127.0.0.1:8444"
      endpoint_spiffe_id  = "spiffe://gcp.example/sigil/server"
      bundle_file         = "/dev/null"
    }
  }
}`)
	f.Add(`server { ca_ttl = "one day" }`)
	f.Add("server {\n  trust_domain = \"example.org\"\n  alerts {\n    expiry_critical = \"5m\"\n    max_ids = 7\n    report_interval = \"1m\"\n  }\n}")
	f.Add("server {\n  alerts {\n    max_ids = 0\n    renew_grace = \"x\"\n  }\n}")
	f.Add(`server { unknown = 1 }`)
	f.Add(`server { trust_domain = "Example.org" } agent {}`)
	f.Add("server {\n  trust_domain = \"${x}\"\n}")
	f.Add(`server { trust_domain = 1 + }`)
	f.Add(`server {
  trust_domain = "example.org"
  plugins {
    node_attestor "join_token" {}
    key_manager "disk" { directory = "/var/lib/sigil/keys" }
  }
}`)
	f.Add(`plugins {
  node_attestor "join_token" {}
  workload_attestor "unix" {}
}
agent {
  trust_domain   = "example.org"
  server_address = "127.0.0.1:8081"
}`)
	f.Add(`server {
  key_manager = "memory"
  plugins {
    key_manager "disk" { cluster_directory = "" }
    key_manager "memory" {}
    node_attestor "join_token" { token = "x" }
  }
}`)
	f.Add(`plugins { key_manager "dsik" {} }
server {}
agent {}`)
	f.Add(`agent {
  join_token_file = "/t"
  plugins {
    node_attestor "x509pop" {}
    workload_attestor "unix" {}
    workload_attestor "unix" {}
  }
}`)
	f.Add(`server { plugins { node_attestor {} key_manager "a" "b" {} } }`)
	f.Add(`server {
  trust_domain            = "example.org"
  x509_svid_template_file = "testdata/svid-template.json"
  ca_template_file        = "testdata/ca-template.json"
}`)
	f.Add(`server { x509_svid_template_file = "testdata/ca-template.json" }`)
	f.Add(`server { ca_template_file = "testdata" }`)
	f.Fuzz(func(t *testing.T, src string) {
		file, err := Parse("fuzz.hcl", []byte(src))
		if err != nil {
			if file != nil {
				t.Fatal("a file with an error")
			}
			return
		}
		again, err := Parse("fuzz.hcl", []byte(src))
		if s := file.Server; s != nil {
			// A parsed template holds functions, which DeepEqual never
			// finds equal: compare which templates were parsed.
			if (s.X509SVIDTemplate != nil) != (s.X509SVIDTemplateFile != "") || (s.CATemplate != nil) != (s.CATemplateFile != "") {
				t.Fatal("a template file without its template, or the reverse")
			}
			if again != nil && again.Server != nil {
				again.Server.X509SVIDTemplate, again.Server.CATemplate = s.X509SVIDTemplate, s.CATemplate
			}
		}
		if err != nil || !reflect.DeepEqual(file, again) {
			t.Fatalf("Parse is not deterministic: %v", err)
		}
		if s := file.Server; s != nil {
			err1, err2 := s.Validate(), s.Validate()
			if (err1 == nil) != (err2 == nil) {
				t.Fatal("server Validate is not deterministic")
			}
			if err1 == nil {
				if err := s.validateLifetimes(); err != nil {
					t.Fatalf("accepted server block out of bounds: %v", err)
				}
				for _, d := range []int64{int64(s.CATTL), int64(s.X509SVIDTTL), int64(s.JoinTokenTTL)} {
					if d < 0 {
						t.Fatal("accepted a negative duration")
					}
				}
			}
		}
		if a := file.Agent; a != nil {
			if (a.Validate() == nil) != (a.Validate() == nil) {
				t.Fatal("agent Validate is not deterministic")
			}
		}
		oneLine := func(err error) {
			if err != nil && strings.Contains(err.Error(), "\n") {
				t.Fatalf("plugin error of more than one line: %q", err)
			}
		}
		if s := file.Server; s != nil {
			if blocks, where, err := s.PluginBlocks(); err == nil {
				_, err = plugin.Build(blocks, where, plugin.Env{Role: plugin.RoleServer, DataDir: "/nonexistent"})
				oneLine(err)
			} else {
				oneLine(err)
			}
		}
		if a := file.Agent; a != nil {
			blocks, where := a.PluginBlocks()
			_, err := plugin.Build(blocks, where, plugin.Env{Role: plugin.RoleAgent})
			oneLine(err)
		}
	})
}
