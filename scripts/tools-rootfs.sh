#!/usr/bin/env bash
# tools-rootfs.sh [DIR]: cache a Debian bookworm tools tree in DIR (default
# /var/cache/mkbootfs/rootfs/bookworm-tools): minbase plus gdb, strace,
# procps and iproute2, the tools image the tests of `mkbootfs attach` bring
# into a container. Built by debian-rootfs.sh in DIR.tmp and renamed, so DIR
# is either absent or complete; does nothing when DIR is complete. ~3 minutes.
set -euo pipefail
here=$(dirname "$0")
dir=${1:-${MKBOOTFS_TOOLS_ROOTFS:-/var/cache/mkbootfs/rootfs/bookworm-tools}}
# debootstrap does not resolve virtual packages: gdb needs
# libboost-regex1.74.0-icu72, which libboost-regex1.74.0 provides.
DEBOOTSTRAP_INCLUDE=gdb,strace,procps,iproute2,libboost-regex1.74.0 exec "$here/debian-rootfs.sh" "$dir"
