# Configuration of a Sigil agent.
#   sigil agent -config examples/config/agent.hcl
# Flags given on the command line override these settings, for example
#   sigil agent -config agent.hcl -join-token-file /etc/sigil/join-token

agent {
  trust_domain = "example.org"

  # host:port of a server's node API; with several servers, a
  # comma-separated list or a DNS name that resolves to all of them. The
  # agent keeps one stream open and fails over to another server.
  server_address = "127.0.0.1:8081"

  # The agent's identity (key and SVID) and state.
  data_dir = "/var/lib/sigil/agent"

  # The SPIFFE Workload API socket that workloads connect to, in a 0755
  # directory. Default: /run/sigil/agent/public/api.sock for root (or a
  # service user given /run/sigil, e.g. systemd RuntimeDirectory=sigil), else
  # $XDG_RUNTIME_DIR/sigil/agent/public/api.sock. The agent refuses a path
  # with a directory that another user owns or may write to.
  # socket_path = "/run/sigil/agent/public/api.sock"

  # The agent's admin API socket, for `sigil workload explain`, in a 0700
  # directory: only root and the agent's user may use it (it tells which
  # selectors any local process has and which entries the agent holds).
  # Default: private/admin.sock beside the Workload API socket's "public"
  # directory (/run/sigil/agent/private/admin.sock by default), or inside
  # the socket's directory when that is not named "public".
  # admin_socket = "/run/sigil/agent/private/admin.sock"

  # Workload API connections one uid may hold open at once, and all of them
  # (defaults 128 and 4096); raise the first for a user that runs many
  # processes each with its own connection.
  # workload_api_max_connections_per_uid = 128
  # workload_api_max_connections         = 4096

  # How long each workload attestor may take on a Workload API call (they
  # run at the same time); one that fails or runs out of time leaves the
  # caller without an identity. Default 5s.
  # workload_attestor_timeout = "5s"

  # Longest time between two rotation reports to the server (the state of
  # every SVID the agent holds, for the rotation-health alerts); changes
  # are reported at most every 5s. 5s to 10m; the server's alerts
  # report_interval, when set, overrides it. Default 30s.
  # health_report_interval = "30s"

  # The workload X.509-SVIDs the agent holds. Entries a workload asked for
  # (Workload API, SDS, svid_files) within idle_after, and entries with one
  # of the eager selectors, always have an SVID. The others are minted
  # ahead of any request only while the agent holds fewer than max_svids,
  # and lose theirs first (least recently asked for) when it holds more;
  # a workload asking for one gets it minted at once (one signing round
  # trip). Defaults: 1000, none, 10m.
  # svid_cache {
  #   max_svids       = 1000
  #   eager_selectors = ["unix:uid:0"]
  #   idle_after      = "10m"
  # }

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

  # Single-use token from `sigil token generate`, needed for the first start
  # only: afterwards the agent renews the identity kept in data_dir. Keep it
  # in a file of mode 0600 owned by the agent's user (the agent refuses any
  # other), or pass it in SIGIL_JOIN_TOKEN; -join-token TOKEN works but any
  # local user can read a command line.
  # join_token_file = "/etc/sigil/join-token"

  # Plugins, one block each with its own settings. join_token presents the
  # token above (a secret: never written in the block); unix gives
  # workloads the selectors unix:uid:<n>, unix:user:<name>, unix:path:<exe>,
  # unix:sha256:<hash>, ... Without a plugins block these two are the
  # defaults.
  plugins {
    node_attestor "join_token" {}
    workload_attestor "unix" {}
  }

  # The server CA certificates (`sigil bundle show > bundle.pem`), used to
  # authenticate the server on first contact.
  trust_bundle_path = "/etc/sigil/bundle.pem"

  # /live and /ready; omit to disable.
  health_address = "127.0.0.1:8082"

  log_level  = "info"
  log_format = "json"
}
