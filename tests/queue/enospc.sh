#!/bin/sh
# enospc.sh UNIT_STORE — run `UNIT_STORE enospc DIR` with DIR on a 48 MiB
# tmpfs mounted in a private mount namespace (nothing is left mounted
# outside it). Needs root and unshare(1): fails without them.
set -eu
bin=$1
if [ "$(id -u)" != 0 ]; then
  echo "enospc.sh: needs root (mount tmpfs)" >&2
  exit 1
fi
command -v unshare >/dev/null || { echo "enospc.sh: unshare(1) missing" >&2; exit 1; }
mnt=$(mktemp -d /tmp/tern-store-enospc-XXXXXX)
trap 'rmdir "$mnt"' EXIT
unshare -m sh -c 'mount --make-rprivate / 2>/dev/null || true
  mount -t tmpfs -o size=48M,mode=0700 tmpfs "$1" && exec "$2" enospc "$1/spool"' \
  sh "$mnt" "$bin"
