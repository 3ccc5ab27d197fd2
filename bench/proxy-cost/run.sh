#!/bin/bash
# What one proxied small GET costs each proxy in CPU time and heap allocations: the gateway,
# nginx `proxy_pass` (when installed) and the floor (actix-web + awc alone, `floor.rs`).
#
#   bench/proxy-cost/run.sh [ROUNDS] [SECONDS]     (defaults: 3 rounds of 10 s each)
#   GATEWAY_BIN=/path/to/older/chamberlain bench/proxy-cost/run.sh   (a before/after)
#
# Needs root, wrk, perf and openssl; build first (`cargo build --release --bins` and
# `cargo build --release -p chamberlain-bench`). Starts a fake OpenCode, two gateways (each
# with its user's own fake OpenCode): one with the dev identity (uids 730000-730999) and one
# verifying a signed token as production does (`--auth jwt`, uids 731000-731999), nginx and
# the floor in front of the directly started one, then loads each in turn with
# `wrk -t1 -c32` while `perf stat` counts that proxy's processes only: CPU time (task-clock)
# and, through a uprobe on glibc's malloc, allocations. Per request, these are steadier than requests/s on a shared machine,
# where the load generator, the proxy and the upstream share the cores. Everything it starts
# is ended when it exits. See bench/RESULTS.md for what was measured with it.
set -euo pipefail
rounds=${1:-3}
seconds=${2:-10}
here=$(cd "$(dirname "$0")" && pwd)
release=$here/../../target/release
gateway_bin=${GATEWAY_BIN:-$release/chamberlain}
for tool in wrk perf openssl; do
    command -v $tool >/dev/null || { echo "run.sh: $tool is not installed" >&2; exit 2; }
done
[ -x "$gateway_bin" ] || { echo "run.sh: $gateway_bin not found; build first" >&2; exit 2; }
for bin in fake-opencode chamberlain-bench; do
    [ -x "$release/$bin" ] || { echo "run.sh: $release/$bin not found; build first" >&2; exit 2; }
done
work=$(mktemp -d)
pids=()
probe=""
cleanup() {
    for pid in "${pids[@]}"; do
        # Its children noted first and ended last: nginx's master starts a new worker for
        # each one that ends while it lives.
        local children
        children=$(pgrep -P "$pid" || true)
        kill -9 "$pid" 2>/dev/null || true
        [ -z "$children" ] || kill -9 $children 2>/dev/null || true
    done
    # The gateway's user's OpenCode, should the gateway have died before ending it.
    pkill -9 -f "$release/fake-opencode" 2>/dev/null || true
    wait 2>/dev/null || true
    [ -z "$probe" ] || perf probe -q -d "$probe" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

wait_for() { # FILE PATTERN
    for _ in $(seq 300); do
        grep -qE "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "run.sh: gave up waiting for '$2' in $1" >&2
    cat "$1" >&2
    exit 1
}

OPENCODE_SERVER_PASSWORD=bench "$release/fake-opencode" serve --hostname 127.0.0.1 --port 0 \
    > "$work/upstream.log" 2>&1 &
pids+=($!)
wait_for "$work/upstream.log" "listening on"
upstream=$(grep -oE '127\.0\.0\.1:[0-9]+' "$work/upstream.log" | head -1)
auth="Basic $(printf opencode:bench | base64)"

# A gateway on a port of its own choosing; sets $gateway_addr and $gateway_pid.
start_gateway() { # NAME UID-RANGE HEADER ARGS...
    local name=$1 uids=$2 header=$3
    shift 3
    "$gateway_bin" serve --listen 127.0.0.1:0 --admin-listen off --system-accounts=off \
        --data-dir "$work/$name" --uid-range "$uids" --opencode-bin "$release/fake-opencode" \
        "$@" > "$work/$name.log" 2>&1 &
    gateway_pid=$!
    pids+=($gateway_pid)
    wait_for "$work/$name.log" "chamberlain listening public=http://"
    gateway_addr=$(grep -oE 'listening public=http://[0-9.:]+' "$work/$name.log" | head -1 | sed 's|.*http://||')
    for _ in $(seq 300); do
        curl -sf -H "$header" "http://$gateway_addr/small" >/dev/null && break
        sleep 0.1
    done
    curl -sf -H "$header" "http://$gateway_addr/small" >/dev/null \
        || { echo "run.sh: the gateway did not answer" >&2; cat "$work/$name.log" >&2; exit 1; }
}

# A token as an identity provider signs it (the size of a Cognito ID token, with groups),
# with the test key of tests/fixtures; valid for two hours.
b64url() { base64 -w0 | tr '+/' '-_' | tr -d '='; }
fixtures=$here/../../tests/fixtures
jwt_claims=$(python3 -c 'import json, sys, time; print(json.dumps({
    "sub": "5f0c2a4e-8d1b-4c3a-9e7f-0b6d2c1a3e5f", "iss": "bench", "exp": int(time.time()) + 7200,
    "iat": int(time.time()), "auth_time": int(time.time()), "token_use": "id",
    "email": "bench.user@example.com", "email_verified": True, "name": "Bench User",
    "cognito:username": "bench.user", "cognito:groups": ["team-%d" % i for i in range(8)],
    "aud": "4q5r6s7t8u9v0w1x2y3z4a5b6c", "event_id": "0f1e2d3c-4b5a-6978-8695-a4b3c2d1e0f9",
    "origin_jti": "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d", "jti": "d4c3b2a1-f6e5-4b7a-9d8c-5c4b3a2f1e0d"}))')
jwt_signed=$(printf '{"alg":"EdDSA","typ":"JWT","kid":"bench"}' | b64url).$(printf '%s' "$jwt_claims" | b64url)
printf '%s' "$jwt_signed" > "$work/jwt.in"
jwt=$jwt_signed.$(openssl pkeyutl -sign -inkey "$fixtures/ed25519-test-private.pem" -rawin \
    -in "$work/jwt.in" | b64url)

start_gateway gateway 730000-730999 "X-Chamberlain-Dev-User: bench"
gateway=$gateway_addr dev_pid=$gateway_pid
start_gateway gateway-jwt 731000-731999 "Authorization: Bearer $jwt" --auth jwt \
    --jwt-public-key "$fixtures/ed25519-test-public.pem" --jwt-issuer bench
gateway_jwt=$gateway_addr jwt_pid=$gateway_pid

"$release/chamberlain-bench" floor "$upstream" "$auth" > "$work/floor.log" 2>&1 &
floor_pid=$!
pids+=($floor_pid)
wait_for "$work/floor.log" "floor listening on"
floor=$(grep -oE '127\.0\.0\.1:[0-9]+' "$work/floor.log" | head -1)

nginx_bin=${NGINX_BIN:-$(command -v nginx || true)}
[ -n "$nginx_bin" ] || { [ -x /usr/sbin/nginx ] && nginx_bin=/usr/sbin/nginx; } || true
nginx=""
if [ -n "$nginx_bin" ]; then
    nginx_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    mkdir -p "$work/nginx"
    cat > "$work/nginx/nginx.conf" <<CONF
daemon off;
master_process on;
worker_processes auto;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 100000000;
    client_body_temp_path $work/nginx/body;
    proxy_temp_path $work/nginx/proxy;
    fastcgi_temp_path $work/nginx/fastcgi;
    uwsgi_temp_path $work/nginx/uwsgi;
    scgi_temp_path $work/nginx/scgi;
    upstream opencode { server $upstream; keepalive 64; keepalive_requests 100000000; }
    server {
        listen 127.0.0.1:$nginx_port backlog=4096;
        location / {
            proxy_pass http://opencode;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "$auth";
        }
    }
}
CONF
    "$nginx_bin" -c "$work/nginx/nginx.conf" -p "$work/nginx" > "$work/nginx.log" 2>&1 &
    nginx_pid=$!
    pids+=($nginx_pid)
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$nginx_port/small" >/dev/null && break; sleep 0.1; done
    nginx=127.0.0.1:$nginx_port
else
    echo "nginx: not installed (apt-get install nginx-light, or set NGINX_BIN); no comparison"
fi

# Allocations: a uprobe on glibc's malloc, when perf can place one. A hit costs a trap, so
# allocations are counted in a run of their own, never while CPU time is measured.
libc=$(ldd "$release/chamberlain" | awk '/libc\.so/ {print $3}')
if perf probe -q -x "$libc" --add chamberlain_malloc=malloc 2>/dev/null; then
    probe=probe_libc:chamberlain_malloc
else
    echo "allocations: perf cannot place a uprobe on $libc here; CPU time only"
fi

# Per request of one wrk run against ADDRESS, of EVENT summed over PIDS.
per_request() { # EVENT SECONDS ADDRESS HEADER PIDS
    local event=$1 secs=$2 addr=$3 header=$4 pids=$5
    perf stat -x, -e "$event" -p "$pids" -o "$work/stat" -- sleep "$secs" &
    local stat=$!
    wrk -t1 -c32 -d"$secs" -H "$header" "http://$addr/small" > "$work/wrk"
    wait $stat
    if grep -q 'Non-2xx' "$work/wrk"; then
        echo "run.sh: $addr answered errors" >&2; cat "$work/wrk" >&2; exit 1
    fi
    local requests
    requests=$(grep -oE '[0-9]+ requests in' "$work/wrk" | cut -d' ' -f1)
    awk -F, -v req="$requests" -v secs="$secs" -v event="$event" '
        index($3, event) == 1 { printf "%.0f %.6f\n", req / secs, $1 / req }' "$work/stat"
}

measure() { # LABEL ADDRESS HEADER PIDS
    local label=$1 addr=$2 header=$3 pids=$4 rps cpu mallocs=""
    wrk -t1 -c32 -d2 -H "$header" "http://$addr/small" > /dev/null
    read -r rps cpu < <(per_request task-clock "$seconds" "$addr" "$header" "$pids")
    if [ -n "$probe" ]; then
        read -r _ mallocs < <(per_request "$probe" 3 "$addr" "$header" "$pids")
    fi
    awk -v label="$label" -v rps="$rps" -v cpu="$cpu" -v mallocs="$mallocs" 'BEGIN {
        printf "%-9s %8s req/s  %5.1f µs CPU/request", label, rps, cpu * 1000
        if (mallocs != "") printf "  %5.1f mallocs/request", mallocs
        printf "\n" }'
}

nginx_pids=""
[ -z "$nginx" ] || nginx_pids=$(pgrep -d, -P "$nginx_pid"),$nginx_pid
echo "upstream: fake OpenCode; wrk -t1 -c32, ${seconds}s per run; CPU and allocations of the proxy's processes only"
for round in $(seq "$rounds"); do
    measure gateway "$gateway" "X-Chamberlain-Dev-User: bench" "$dev_pid"
    measure "gw (jwt)" "$gateway_jwt" "Authorization: Bearer $jwt" "$jwt_pid"
    measure floor "$floor" "X-Nothing: 1" "$floor_pid"
    [ -z "$nginx" ] || measure nginx "$nginx" "X-Nothing: 1" "$nginx_pids"
done
