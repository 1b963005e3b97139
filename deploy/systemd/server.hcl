# Configuration of a Sigil server run by sigil-server.service; install it
# as /etc/sigil/server.hcl (mode 0644: it holds no secret). See
# examples/config/server.hcl for every setting.
server {
  trust_domain = "example.org"

  # The unit's StateDirectory=sigil/server.
  data_dir = "/var/lib/sigil/server"

  # The admin socket is left at its default for a service user,
  # /run/sigil/server/private/admin.sock: in the unit's
  # RuntimeDirectory=sigil/server. `sudo sigil entry ...` finds it there.

  bind_address   = ":8081"           # node API, for the agents
  health_address = "127.0.0.1:8080"  # /live, /ready, /metrics

  # A cluster of servers: the same settings on each, the join secret in
  # /etc/sigil/sigil-server.env as SIGIL_JOIN_SECRET=... (README.md).
  # cluster_address   = ":8444"
  # advertise_address = "10.0.0.1:8444"
  # retry_join        = ["10.0.0.1:8444"]

  log_level  = "info"
  log_format = "json"

  plugins {
    node_attestor "join_token" {}
    key_manager "disk" {}
  }
}
