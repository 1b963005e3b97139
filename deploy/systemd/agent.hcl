# Configuration of a Sigil agent run by sigil-agent.service; install it as
# /etc/sigil/agent.hcl (mode 0644: it holds no secret). See
# examples/config/agent.hcl for every setting.
agent {
  trust_domain = "example.org"

  # A server's node API (several: "a:8081,b:8081" or a DNS name).
  server_address = "127.0.0.1:8081"

  # The servers' CA certificates for the first attestation: the output of
  # `sigil bundle show` on a server.
  trust_bundle_path = "/etc/sigil/bundle.pem"

  # The unit's StateDirectory=sigil/agent.
  data_dir = "/var/lib/sigil/agent"

  # The sockets are left at their defaults for a service user, in the
  # unit's RuntimeDirectory=sigil/agent: the Workload API at
  # /run/sigil/agent/public/api.sock, the agent's admin API at
  # /run/sigil/agent/private/admin.sock.

  health_address = "127.0.0.1:8082"  # /live, /ready, /metrics

  log_level  = "info"
  log_format = "json"

  plugins {
    # The join token of the first attestation comes from
    # /etc/sigil/sigil-agent.env (SIGIL_JOIN_TOKEN=...).
    node_attestor "join_token" {}
    workload_attestor "unix" {}
  }
}
