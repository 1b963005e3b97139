# Configuration of one Sigil server node.
#   sigil server -config examples/config/server.hcl
# Flags given on the command line override these settings, for example
#   sigil server -config server.hcl -node-name s2 -bind-address :9081
# Durations use Go syntax: "90s", "30m", "1h", "24h".

server {
  # The trust domain this cluster is the certificate authority of.
  trust_domain = "example.org"

  # This node's name; its SPIFFE ID is spiffe://example.org/sigil/server/s1.
  # Default: the hostname.
  node_name = "s1"

  # Raft data and, with key_manager = "disk", this node's CA key.
  data_dir = "/var/lib/sigil/server"

  # Node API for agents (gRPC over TLS).
  bind_address = ":8081"

  # Admin API (entries, tokens, bundle, agents). Its directory is created
  # with mode 0700: only the user running the server can use it.
  admin_socket = "/tmp/sigil-server/private/admin.sock"

  # /live and /ready for supervisors and load balancers; omit to disable.
  health_address = "127.0.0.1:8080"

  # "disk" keeps the CA key in data_dir; "memory" loses it on restart.
  key_manager = "disk"

  ca_ttl         = "24h"
  x509_svid_ttl  = "1h"
  agent_svid_ttl = "1h"
  join_token_ttl = "10m"

  log_level  = "info"  # debug, info, warn, error
  log_format = "json"  # json or console
}
