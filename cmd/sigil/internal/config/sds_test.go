package config

import "testing"

// The agent's sds_socket is read into Agent.SDSSocket; unset, SDS stays
// on the Workload API socket.
func TestAgentSDSSocket(t *testing.T) {
	f, err := Parse("test.hcl", []byte(`agent { sds_socket = "/run/sigil/agent/sds/sds.sock" }`))
	if err != nil {
		t.Fatal(err)
	}
	if f.Agent.SDSSocket != "/run/sigil/agent/sds/sds.sock" {
		t.Fatalf("SDSSocket = %q", f.Agent.SDSSocket)
	}
	f, err = Parse("test.hcl", []byte(`agent { trust_domain = "example.org" }`))
	if err != nil {
		t.Fatal(err)
	}
	if f.Agent.SDSSocket != "" {
		t.Fatalf("SDSSocket = %q without sds_socket", f.Agent.SDSSocket)
	}
}
