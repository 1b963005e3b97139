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

  # Raft data and, with the disk key manager, this node's keys.
  data_dir = "/var/lib/sigil/server"

  # Node API for agents (gRPC over TLS).
  bind_address = ":8081"

  # Admin API (entries, tokens, bundle, agents). Its directory is created
  # with mode 0700: only the user running the server can use it. Default:
  # /run/sigil/server/private/admin.sock for root (or a service user given
  # /run/sigil, e.g. systemd RuntimeDirectory=sigil), else
  # $XDG_RUNTIME_DIR/sigil/server/private/admin.sock. The server refuses a
  # path with a directory that another user owns or may write to.
  # admin_socket = "/run/sigil/server/private/admin.sock"

  # /live and /ready for supervisors and load balancers; omit to disable.
  health_address = "127.0.0.1:8080"

  # Plugins, one block each with its own settings.
  plugins {
    # How agents prove which node they run on; at least one. join_token:
    # single-use tokens from `sigil token generate`.
    node_attestor "join_token" {}

    # Where this node's CA, JWT and cluster identity keys are kept; exactly
    # one. "disk" keeps them in files of mode 0600, by default under
    # data_dir (keys/ and cluster/keys/); "memory" loses them on restart.
    # (The older flat form key_manager = "disk" still works.)
    key_manager "disk" {
      # directory         = "/var/lib/sigil/server/keys"
      # cluster_directory = "/var/lib/sigil/server/cluster/keys"
    }
  }

  ca_ttl         = "24h"
  x509_svid_ttl  = "1h"
  jwt_svid_ttl   = "5m"
  agent_svid_ttl = "1h"
  join_token_ttl = "10m"

  # A new CA or JWT key is prepared at half the current one's lifetime and
  # published in the bundle; it starts signing only after it has been in
  # the bundle this long. Default: ca_ttl / 6.
  # ca_propagation_delay = "4h"

  # Certificate templates (docs/templates.md): an operator's subject,
  # extra DNS SANs and extensions for X.509-SVIDs and for this server's CA
  # certificates. Relative paths are relative to this file. A template
  # that would break a SPIFFE rule stops the server at start.
  # x509_svid_template_file = "/etc/sigil/svid-template.json"
  # ca_template_file        = "/etc/sigil/ca-template.json"

  # Nested clusters (docs/upstream.md): sign the CA certificates of
  # downstream Sigil clusters of this trust domain, for workloads of
  # entries marked downstream (sigil entry create ... -downstream).
  # allow_downstream = true
  # A downstream cluster's servers instead take their CA certificates from
  # the upstream cluster, in the plugins block:
  #   upstream_authority "sigil" {
  #     server_address      = "10.0.0.1:8081"
  #     workload_api_socket = "/run/sigil-upstream/agent/public/api.sock"
  #   }

  # High availability: give every server a cluster address (Raft and
  # server-to-server traffic, mutual TLS with server SVIDs) and the same
  # join secret; the first server bootstraps, the others join through any
  # member. Leave cluster_address out for a single server.
  # cluster_address   = ":8444"
  # advertise_address = "10.0.0.1:8444"
  # retry_join        = ["10.0.0.2:8444", "10.0.0.3:8444"]
  # The secret from `sigil cluster secret generate`, in a file of mode 0600
  # owned by the server's user (or SIGIL_JOIN_SECRET in the environment):
  #   (umask 077; sigil cluster secret generate > /etc/sigil/join-secret)
  # join_secret_file  = "/etc/sigil/join-secret"

  # Memory (docs/memory.md): once ready for `after` and quiet, the daemon
  # drops the pages of its executable it does not use (the kernel maps
  # 64 KiB around each page the code touches, so nearly the whole binary
  # is resident otherwise: about 25 MiB against 2-10 MiB). The pages
  # leave the page cache if no process maps them; code the daemon runs
  # later is read back from disk. drop = false turns it off. Without
  # readahead, faults read ahead in the code but not in the read-only
  # data (types, constants, function tables, which the garbage collector
  # reads a page here and there: about 5 MiB fewer in an idle server, a
  # few ms more on the first call of a code path); readahead = true reads
  # ahead there too; readahead = false nowhere, which keeps a little less
  # but reads code run for the first time afterwards one page at a time
  # (an agent's first Workload API fetch waits for about 240 disk reads).
  # Defaults: true, 10s, unset.
  # code_pages {
  #   drop      = true
  #   after     = "10s"
  #   readahead = false
  # }

  log_level  = "info"  # debug, info, warn, error
  log_format = "json"  # json or console
}
