#!/bin/sh
# The container's entrypoint (run by tini): prepares the data volume, then becomes the gateway.
#
# Creates shared/repos, shared/auth, shared/config, users/ and state/ on an empty or an existing
# volume, with the owners and modes the gateway itself applies at each start when users get
# their own uids (so an operator can drop keys and repositories in before the first start).
# Refuses, with the reason, a data directory it cannot write. Then `exec`s `chamberlain` with
# the arguments given (default `serve`); configuration comes from the CHAMBERLAIN_* environment.
# Any other command (`bash`, say) is run as is, for debugging.
set -eu

data="${CHAMBERLAIN_DATA_DIR:-/data}"
say() { echo "chamberlain-entrypoint: $*" >&2; }
fail() { say "$*"; exit 1; }

case "${1:-serve}" in
    serve | -*) ;;
    *) exec "$@" ;;
esac

mkdir -p "$data" 2>/dev/null || fail "cannot create the data directory $data"
probe="$data/.chamberlain-write-probe.$$"
if ! (: >"$probe") 2>/dev/null; then
    fail "the data directory $data is not writable by uid $(id -u): mount a writable volume \
there (read-only mounts, and volumes owned by another user, cannot hold users' homes)"
fi
rm -f "$probe"

for dir in users state shared shared/repos shared/auth shared/config; do
    mkdir -p "$data/$dir" || fail "cannot create $data/$dir"
done

if [ "$(id -u)" = 0 ]; then
    # The first id of the uid range is the group users share (read-only) access through.
    range="${CHAMBERLAIN_UID_RANGE:-200000-265535}"
    shared_gid="${range%%-*}"
    case "$shared_gid" in '' | *[!0-9]*) fail "CHAMBERLAIN_UID_RANGE=$range is not FIRST-LAST" ;; esac
    chown 0:0 "$data" "$data/users" "$data/state" 2>/dev/null ||
        fail "cannot chown $data to root: per-user uids need a volume whose owners can be set \
(on EFS: an access point without an enforced POSIX user, and root access for the task)"
    chmod 0711 "$data" "$data/users"
    chmod 0700 "$data/state"
    chown "0:$shared_gid" "$data/shared" "$data/shared/repos"
    chmod 0750 "$data/shared" "$data/shared/repos"
    # The organisation's keys and config reach OpenCode through the gateway, never on disk.
    chown 0:0 "$data/shared/auth" "$data/shared/config"
    chmod 0700 "$data/shared/auth" "$data/shared/config"
else
    say "running as uid $(id -u), not root: users cannot get their own uids (Landlock only)"
fi

case "${1:-}" in
    serve) ;;
    *) set -- serve "$@" ;;
esac
exec /usr/local/bin/chamberlain "$@"
