#!/bin/sh
# The container's entrypoint (run by tini): prepares the data volume, then becomes the gateway.
#
# `chamberlain prepare-data` lays out an empty or an existing volume with the owners and modes
# the gateway itself applies at each start when users get their own uids (so an operator can
# drop keys and repositories in before the first start); the layout is the gateway's own
# (src/data_dir.rs), not repeated here. It refuses, with the reason, a data directory it cannot
# write or whose owners it cannot set. Then `exec`s `chamberlain` with the arguments given
# (default `serve`); configuration comes from the CHAMBERLAIN_* environment, read by both
# (CHAMBERLAIN_DATA_DIR, CHAMBERLAIN_UID_RANGE). Any other command (`bash`, say) is run as is,
# for debugging.
set -eu

case "${1:-serve}" in
    serve | -*) ;;
    *) exec "$@" ;;
esac

# On failure it has said why, in its last line.
/usr/local/bin/chamberlain prepare-data --data-dir "${CHAMBERLAIN_DATA_DIR:-/data}" || exit 1

case "${1:-}" in
    serve) ;;
    *) set -- serve "$@" ;;
esac
exec /usr/local/bin/chamberlain "$@"
