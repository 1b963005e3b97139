#!/usr/bin/env bash
# Two Sigil trust domains on one machine, aws.example and gcp.example, each
# a server and an agent; federated both ways through their bundle
# endpoints; a client workload in aws.example calls a greeter workload in
# gcp.example over mutual TLS with the mtls library. See README.md.
#
#   examples/federation/run.sh            # from anywhere in the repository
#
# Environment:
#   WORK=DIR        where configs, data, sockets and logs go (default: a new
#                   temporary directory, removed at the end unless KEEP=1)
#   KEEP=1          leave everything running and WORK in place; print how
#                   to stop it
#   SIGIL=PATH      a sigil binary to use instead of building one
#   BASE_PORT=N     first of the 21 loopback ports used (default 18400)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BASE_PORT=${BASE_PORT:-18400}
KEEP=${KEEP:-0}
if [[ -z "${WORK:-}" ]]; then
	WORK=$(mktemp -d "${TMPDIR:-/tmp}/sigil-federation.XXXXXX")
fi
mkdir -p "$WORK/bin"
chmod 700 "$WORK"
PIDS=()

cleanup() {
	local status=$?
	if [[ "$KEEP" == 1 ]]; then
		echo
		echo "Left running (KEEP=1): pids ${PIDS[*]:-none}; stop with: kill ${PIDS[*]:-}"
		echo "Files in $WORK"
		return
	fi
	for pid in "${PIDS[@]:-}"; do
		[[ -n "$pid" ]] && kill "$pid" 2>/dev/null || true
	done
	for pid in "${PIDS[@]:-}"; do
		[[ -n "$pid" ]] && wait "$pid" 2>/dev/null || true
	done
	if [[ $status -ne 0 ]]; then
		for f in "$WORK"/*/*.log "$WORK"/*.log; do
			[[ -f "$f" ]] || continue
			echo "---- last lines of $f"
			tail -n 20 "$f"
		done
	fi
	rm -rf "$WORK"
	exit $status
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }

# Build sigil and the two example programs.
step "building"
if [[ -z "${SIGIL:-}" ]]; then
	SIGIL="$WORK/bin/sigil"
	(cd "$ROOT" && go build -o "$SIGIL" ./cmd/sigil)
fi
(cd "$ROOT" && go build -o "$WORK/bin/fed-server" ./examples/federation/server &&
	go build -o "$WORK/bin/fed-client" ./examples/federation/client)

# port OFFSET prints BASE_PORT+OFFSET.
port() { echo $((BASE_PORT + $1)); }

# waitready URL NAME waits (up to 60 s) until URL answers 200.
waitready() {
	for _ in $(seq 1 120); do
		if "$SIGIL" healthcheck -url "$1" -timeout 1s >/dev/null 2>&1; then
			return 0
		fi
		sleep 0.5
	done
	echo "$2 did not become ready; see its log" >&2
	return 1
}

# start_domain NAME TD OFFSET: a server with a bundle endpoint (https_spiffe),
# configured from a file.
start_domain() {
	local name=$1 td=$2 off=$3 dir="$WORK/$1"
	mkdir -p "$dir"
	chmod 700 "$dir"
	cat >"$dir/server.hcl" <<EOF
server {
  trust_domain   = "$td"
  node_name      = "s1"
  data_dir       = "$dir/server-data"
  bind_address   = "127.0.0.1:$(port $((off + 1)))"
  admin_socket   = "$dir/admin/admin.sock"
  health_address = "127.0.0.1:$(port "$off")"
  log_level      = "info"

  plugins {
    node_attestor "join_token" {}
    key_manager "disk" {}
  }

  federation {
    # This trust domain's bundle, for the trust domains that federate
    # with it. https_spiffe: served with the server's SVID
    # spiffe://$td/sigil/server, which partners verify against the
    # bundle they hold.
    bundle_endpoint {
      address      = "127.0.0.1:$(port $((off + 3)))"
      profile      = "https_spiffe"
      refresh_hint = "10s"
    }
    min_refresh = "1s"
  }
}
EOF
	"$SIGIL" server -config "$dir/server.hcl" >"$dir/server.log" 2>&1 &
	PIDS+=($!)
	waitready "http://127.0.0.1:$(port "$off")/ready" "the $td server"
	echo "$td: server up (node API :$(port $((off + 1))), bundle endpoint https://127.0.0.1:$(port $((off + 3))))"
}

# start_agent NAME TD OFFSET: an agent attested with a join token.
start_agent() {
	local name=$1 td=$2 off=$3 dir="$WORK/$1"
	local admin="$dir/admin/admin.sock" tok
	"$SIGIL" bundle show -socket "$admin" >"$dir/bootstrap.pem"
	tok=$("$SIGIL" token generate -socket "$admin")
	TOKEN=$(awk '/^Token/ {print $3}' <<<"$tok")
	AGENT_ID=$(awk '/^Agent SPIFFE ID/ {print $5}' <<<"$tok")
	cat >"$dir/agent.hcl" <<EOF
agent {
  trust_domain      = "$td"
  server_address    = "127.0.0.1:$(port $((off + 1)))"
  data_dir          = "$dir/agent-data"
  socket_path       = "$dir/public/api.sock"
  trust_bundle_path = "$dir/bootstrap.pem"
  health_address    = "127.0.0.1:$(port $((off + 2)))"
  log_level         = "info"
}
EOF
	SIGIL_JOIN_TOKEN=$TOKEN "$SIGIL" agent -config "$dir/agent.hcl" >"$dir/agent.log" 2>&1 &
	PIDS+=($!)
	waitready "http://127.0.0.1:$(port $((off + 2)))/ready" "the $td agent"
	echo "$td: agent $AGENT_ID up (Workload API $dir/public/api.sock)"
}

step "starting two trust domains"
start_domain aws aws.example 0
start_domain gcp gcp.example 10
AWS_ADMIN="$WORK/aws/admin/admin.sock"
GCP_ADMIN="$WORK/gcp/admin/admin.sock"

# Each side bootstraps with the other's bundle (in production: carried
# out of band once, e.g. in the GitOps repository), then keeps it current
# from the other's endpoint.
step "federating aws.example <-> gcp.example"
"$SIGIL" bundle show -format spiffe -socket "$AWS_ADMIN" >"$WORK/aws.example.bundle.json"
"$SIGIL" bundle show -format spiffe -socket "$GCP_ADMIN" >"$WORK/gcp.example.bundle.json"
"$SIGIL" federation create -socket "$AWS_ADMIN" -trust-domain gcp.example \
	-bundle-endpoint-url "https://127.0.0.1:$(port 13)" -profile https_spiffe \
	-endpoint-spiffe-id spiffe://gcp.example/sigil/server -bundle-file "$WORK/gcp.example.bundle.json"
"$SIGIL" federation create -socket "$GCP_ADMIN" -trust-domain aws.example \
	-bundle-endpoint-url "https://127.0.0.1:$(port 3)" -profile https_spiffe \
	-endpoint-spiffe-id spiffe://aws.example/sigil/server -bundle-file "$WORK/aws.example.bundle.json"
# Fetch once now through the endpoints (otherwise the next refresh does).
"$SIGIL" federation refresh -socket "$AWS_ADMIN" -trust-domain gcp.example
"$SIGIL" federation refresh -socket "$GCP_ADMIN" -trust-domain aws.example

step "starting the agents"
start_agent aws aws.example 0
AWS_AGENT=$AGENT_ID
start_agent gcp gcp.example 10
GCP_AGENT=$AGENT_ID

# The workloads, told apart by executable path; each entry federates with
# the other trust domain, so its workload receives that bundle.
step "registering the workloads"
"$SIGIL" entry create -socket "$GCP_ADMIN" -parent-id "$GCP_AGENT" \
	-spiffe-id spiffe://gcp.example/example/greeter \
	-selector "unix:uid:$(id -u)" -selector "unix:path:$WORK/bin/fed-server" \
	-federates-with aws.example
"$SIGIL" entry create -socket "$AWS_ADMIN" -parent-id "$AWS_AGENT" \
	-spiffe-id spiffe://aws.example/example/client \
	-selector "unix:uid:$(id -u)" -selector "unix:path:$WORK/bin/fed-client" \
	-federates-with gcp.example

step "greeter in gcp.example, client in aws.example"
SPIFFE_ENDPOINT_SOCKET="unix://$WORK/gcp/public/api.sock" "$WORK/bin/fed-server" \
	-addr "127.0.0.1:$(port 20)" -policy "$ROOT/examples/federation/policy.hcl" >"$WORK/greeter.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 120); do
	grep -q "listening on" "$WORK/greeter.log" && break
	sleep 0.5
done
grep -q "listening on" "$WORK/greeter.log" || { echo "the greeter did not start" >&2; cat "$WORK/greeter.log" >&2; exit 1; }
SPIFFE_ENDPOINT_SOCKET="unix://$WORK/aws/public/api.sock" "$WORK/bin/fed-client" \
	-url "https://127.0.0.1:$(port 20)/hello" -server-id spiffe://gcp.example/example/greeter -n 3 -interval 500ms

step "bundles as each side sees them"
echo "-- aws.example:"
"$SIGIL" bundle list -socket "$AWS_ADMIN"
echo "-- gcp.example:"
"$SIGIL" bundle list -socket "$GCP_ADMIN"
echo
echo "federation example: OK"
