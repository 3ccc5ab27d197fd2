#!/usr/bin/env bash
# Builds the image with podman and runs it for real (CI runs this after the tests):
#   - the base image is made from Debian packages (debootstrap), since no image can be pulled
#     here, and the gateway binary is built on this host (BINARY=prebuilt) since no Rust image
#     can be pulled either; the Dockerfile is otherwise the one used everywhere;
#   - on a fresh volume: healthy (the image's own HEALTHCHECK), the data tree's owners and
#     modes, two dev users each with a ready OpenCode under their own uid, a terminal that
#     runs a typed command, the admin API on its socket for root only (not for a user's
#     terminal, no TCP admin port);
#   - SIGTERM: the container exits 0 well within the grace period, having stopped every
#     OpenCode; started again on the same volume it comes back with the users' homes;
#   - a user's pod as the Kubernetes backend runs it: the home laid out by the init
#     container's command, OpenCode as uid 1000 on a read-only root, the readiness probe;
#   - a read-only volume is refused with a clear message; the default (dev identity on a
#     public address) refuses to start.
# Needs root, podman, runc and debootstrap (.ci/run installs them). Takes a few minutes, most of
# it apt and npm inside the build.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE=${CHAMBERLAIN_VERIFY_BASE:-localhost/chamberlain-base:bookworm}
IMAGE=localhost/chamberlain:verify
NAME=chamberlain-verify-$$
PORT=${CHAMBERLAIN_VERIFY_PORT:-18080}
GRACE=30
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# This host's sandbox refuses container rlimits above what it allows (nproc 65536 is refused
# here, 32768 accepted): ask for modest ones, never above the host's own hard limits.
limit() { local hard; hard=$(ulimit -H "$1"); [ "$hard" = unlimited ] || [ "$hard" -gt "$2" ] && hard=$2; echo "$hard"; }
nofile=$(limit -n 8192); nproc=$(limit -u 4096)
ULIMITS=(--ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc")
podman() { command podman --runtime runc "$@"; }

step() { printf '\n==> container: %s\n' "$*"; }
fail() { echo "container check FAILED: $*" >&2; podman logs "$NAME" 2>&1 | tail -n 60 >&2 || true; exit 1; }

work=$(mktemp -d /var/tmp/chamberlain-verify.XXXXXX)
cleanup() {
    podman rm -f -t 0 "$NAME" "$NAME-pod" >/dev/null 2>&1 || true
    # The image and its build's intermediate images (the base image stays, for the next run).
    podman rmi -f "$IMAGE" >/dev/null 2>&1 || true
    podman image prune -f >/dev/null 2>&1 || true
    rm -rf "$work" container/.prebuilt
}
trap cleanup EXIT

step "base image $BASE"
if ! podman image exists "$BASE"; then
    debootstrap --variant=minbase bookworm "$work/rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1 ||
        { tail -n 30 "$work/debootstrap.log"; fail "debootstrap"; }
    tar -C "$work/rootfs" -c . | podman import - "$BASE" >/dev/null
    rm -rf "$work/rootfs"
fi

step "gateway binary (built on this host)"
cargo build --release --locked --bin chamberlain
install -D -m 0755 target/release/chamberlain container/.prebuilt/chamberlain

step "image $IMAGE"
# This host reaches the registries through a proxy with its own CA: lend the host's trust
# store to the build (a secret, not a layer).
# Docker format: OCI images have no HEALTHCHECK.
podman build --format docker --network=host "${ULIMITS[@]}" -f container/Dockerfile \
    --secret id=build-ca,src=/etc/ssl/certs/ca-certificates.crt \
    --build-arg BASE_IMAGE="$BASE" --build-arg BINARY=prebuilt -t "$IMAGE" .

url="http://127.0.0.1:$PORT"
run_gateway() {
    # podman complains that it cannot set up health timers without systemd (harmless: the
    # check runs the HEALTHCHECK by hand).
    podman run -d --name "$NAME" "${ULIMITS[@]}" -p "127.0.0.1:$PORT:8080" \
        -v "$work/data:/data" \
        -e CHAMBERLAIN_AUTH=dev -e CHAMBERLAIN_ALLOW_INSECURE_DEV=true \
        -e CHAMBERLAIN_STOP_GRACE=10s \
        "$IMAGE" >/dev/null
}
wait_healthy() {
    for _ in $(seq 1 120); do
        curl -fsS "$url/-/healthz" >/dev/null 2>&1 && return 0
        [ "$(podman inspect -f '{{.State.Running}}' "$NAME")" = true ] || fail "the container exited"
        sleep 0.5
    done
    fail "no /-/healthz answer"
}
SOCKET=/run/chamberlain/admin.sock
admin() { podman exec "$NAME" curl -fsS --unix-socket "$SOCKET" "http://admin$1"; }

step "first start on an empty volume"
mkdir -p "$work/data"
run_gateway
wait_healthy
podman healthcheck run "$NAME" || fail "the image's HEALTHCHECK reports unhealthy"
modes=$(cd "$work/data" && stat -c '%n %a %u' . users state shared shared/repos shared/auth shared/config | tr '\n' ';')
[ "$modes" = ". 711 0;users 711 0;state 700 0;shared 750 0;shared/repos 750 0;shared/auth 700 0;shared/config 700 0;" ] ||
    fail "data tree modes: $modes"

step "two dev users, each with their own OpenCode"
for user in alice bob; do
    health=$(curl -fsS --max-time 120 -H "X-Chamberlain-Dev-User: $user" "$url/global/health") ||
        fail "$user's OpenCode did not answer"
    echo "$user: $health"
done
stats=$(admin /stats) || fail "/stats"
python3 - "$stats" <<'PY' || fail "stats: $stats"
import json, sys
stats = json.loads(sys.argv[1])
users = {u["userId"]: u for u in stats["users"]}
assert set(users) == {"alice", "bob"}, users
assert all(u["state"] == "ready" for u in users.values()), users
uids = {u["uid"] for u in users.values()}
assert len(uids) == 2 and 0 not in uids and None not in uids, uids
assert stats["isolation"]["mode"] in ("uid", "both"), stats["isolation"]
print("users", sorted(users), "uids", sorted(uids), "isolation", stats["isolation"]["mode"])
PY
# From outside the container (this host, on the container's own address) the public port
# answers; there is no TCP admin port, inside or out: the admin API is the socket.
ip=$(podman inspect -f '{{.NetworkSettings.IPAddress}}' "$NAME")
[ -n "$ip" ] || fail "no container address"
curl -fsS --max-time 5 "http://$ip:8080/-/healthz" >/dev/null || fail "public port not reachable at $ip"
for where in "$ip" 127.0.0.1; do
    if podman exec "$NAME" curl -sS --max-time 5 "http://$where:9090/stats" >/dev/null 2>&1; then
        fail "an admin port answers on $where:9090"
    fi
done
mode=$(podman exec "$NAME" stat -c '%a %u' "$SOCKET" "$(dirname "$SOCKET")" | tr '\n' ';')
[ "$mode" = "600 0;700 0;" ] || fail "admin socket and its directory: $mode"
echo "public $ip:8080 answers; no admin port; admin socket $SOCKET ($mode)"

step "a terminal through the gateway"
python3 container/terminal_check.py 127.0.0.1 "$PORT" alice \
    'echo "container-$((6*7)) as $(id -u) $(whoami)" | tee ~/terminal-proof.txt' \
    'container-42 as 200001 alice' || fail "the terminal did not run the command as alice"
grep -qx 'container-42 as 200001 alice' "$work/data/users/alice/terminal-proof.txt" ||
    fail "no proof file in alice's home"
python3 container/terminal_check.py 127.0.0.1 "$PORT" alice \
    "curl -s -o /dev/null -w 'admin-%{http_code}' --unix-socket $SOCKET http://admin/stats; echo" \
    'admin-000' || fail "alice's terminal reached the admin socket"

step "SIGTERM within the grace period"
started=$(date +%s%N)
podman stop -t "$GRACE" "$NAME" >/dev/null
elapsed_ms=$((($(date +%s%N) - started) / 1000000))
code=$(podman inspect -f '{{.State.ExitCode}}' "$NAME")
echo "stopped in ${elapsed_ms} ms with exit code $code"
[ "$code" = 0 ] || fail "exit code $code after SIGTERM"
[ "$elapsed_ms" -lt $((GRACE * 1000)) ] || fail "took the whole grace period (${elapsed_ms} ms): SIGKILLed"
podman logs "$NAME" 2>&1 | grep -q "shutdown complete" || fail "no orderly shutdown in the log"

step "started again on the same volume"
podman rm "$NAME" >/dev/null
run_gateway
wait_healthy
curl -fsS --max-time 120 -H "X-Chamberlain-Dev-User: alice" "$url/global/health" >/dev/null ||
    fail "alice's OpenCode did not come back"
[ -f "$work/data/users/alice/terminal-proof.txt" ] || fail "alice's home lost its file"
podman stop -t "$GRACE" "$NAME" >/dev/null
[ "$(podman inspect -f '{{.State.ExitCode}}' "$NAME")" = 0 ] || fail "second stop"
podman rm "$NAME" >/dev/null

step "a user's pod as the Kubernetes backend runs it"
# What kubernetes/src/objects.rs asks of the image: the init container lays out the home and
# OpenCode serves as uid 1000 on a read-only root (a volume for the home, a tmpfs for /tmp,
# every capability dropped), answering the readiness probe. The pod's address is the
# container's (the kubelet would expand $(POD_IP)).
mkdir -p "$work/home"
chown 1000:1000 "$work/home"
pod=(--user 1000:1000 --read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges
    "${ULIMITS[@]}" -v "$work/home:/home/opencode" -e HOME=/home/opencode --entrypoint '')
podman run --rm "${pod[@]}" "$IMAGE" chamberlain __prepare-home /home/opencode ||
    fail "the init container's __prepare-home"
[ -d "$work/home/workspace" ] && [ -d "$work/home/.local/share" ] || fail "no home layout"
podman run -d --name "$NAME-pod" "${pod[@]}" -w /home/opencode/workspace \
    -e USER=opencode -e XDG_CONFIG_HOME=/home/opencode/.config \
    -e XDG_DATA_HOME=/home/opencode/.local/share -e XDG_STATE_HOME=/home/opencode/.local/state \
    -e XDG_CACHE_HOME=/home/opencode/.cache -e TMPDIR=/home/opencode/.tmp \
    -e OPENCODE_DISABLE_AUTOUPDATE=1 -e CHAMBERLAIN_OPENCODE_PORT=4096 \
    -e OPENCODE_SERVER_PASSWORD=verify-password "$IMAGE" \
    sh -c 'exec "$CHAMBERLAIN_OPENCODE_BIN" serve --hostname "$(hostname -i | cut -d" " -f1)" --port 4096 --pure' \
    >/dev/null
probe() { podman exec "$NAME-pod" sh -c 'POD_IP=$(hostname -i | cut -d" " -f1) chamberlain __probe-opencode'; }
ready=
for _ in $(seq 1 240); do
    if probe >/dev/null 2>&1; then ready=1; break; fi
    [ "$(podman inspect -f '{{.State.Running}}' "$NAME-pod")" = true ] ||
        { podman logs "$NAME-pod" 2>&1 | tail -n 30 >&2; fail "OpenCode exited in the pod's shape"; }
    sleep 0.5
done
[ -n "$ready" ] || { podman logs "$NAME-pod" 2>&1 | tail -n 30 >&2; fail "the readiness probe never passed"; }
[ "$(podman exec "$NAME-pod" id -u)" = 1000 ] || fail "the pod's OpenCode is not uid 1000"
podman exec -e OPENCODE_SERVER_PASSWORD=wrong "$NAME-pod" \
    sh -c 'POD_IP=$(hostname -i | cut -d" " -f1) chamberlain __probe-opencode' >/dev/null 2>&1 &&
    fail "the probe passed with a wrong password"
podman rm -f -t 0 "$NAME-pod" >/dev/null
echo "init container, OpenCode as uid 1000 on a read-only root, readiness probe: ok"

step "refusals"
if out=$(podman run --rm "${ULIMITS[@]}" -v "$work/data:/data:ro" -e CHAMBERLAIN_AUTH=dev \
    -e CHAMBERLAIN_ALLOW_INSECURE_DEV=true "$IMAGE" 2>&1); then
    fail "started on a read-only volume"
fi
echo "$out" | grep -q "not writable" || fail "no clear message for a read-only volume: $out"
echo "read-only volume: $(echo "$out" | tail -n 1)"
if out=$(podman run --rm "${ULIMITS[@]}" -v "$work/data:/data" "$IMAGE" 2>&1); then
    fail "started with dev identity on a public address"
fi
echo "default configuration: $(echo "$out" | tail -n 1)"

echo "image size: $(podman image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1 / 1e6}')"
echo "container check passed"
