#!/usr/bin/env bash
# debian-rootfs.sh [DIR]: cache a Debian bookworm minbase tree in DIR
# (default /var/cache/mkbootfs/rootfs/bookworm-minbase; tests read it through
# testenv.DebianRootfs). Built in DIR.tmp and renamed, so DIR is either
# absent or complete. Does nothing when DIR is complete. Takes ~2 minutes.
# DEBOOTSTRAP_INCLUDE=PKG,... adds packages (scripts/tools-rootfs.sh);
# DEBOOTSTRAP_CACHE_DIR=DIR (absolute) keeps the downloaded .debs for the
# next tree (bench/coldstart.sh builds ten).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
need_root

dir=${1:-${MKBOOTFS_DEBIAN_ROOTFS:-/var/cache/mkbootfs/rootfs/bookworm-minbase}}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

# debootstrap writes etc/debian_version early and removes its own
# debootstrap/ directory last: only both together mean a finished tree.
complete() { [ -f "$1/etc/debian_version" ] && [ ! -e "$1/debootstrap" ]; }

if complete "$dir"; then
	step "Debian rootfs $dir present"
	exit 0
fi
[ ! -e "$dir" ] || die "$dir exists but is incomplete (a debootstrap still running, or one that failed); if no debootstrap runs, remove it and rerun"
command -v debootstrap >/dev/null || die "debootstrap missing: apt-get install debootstrap"

tmp=$dir.tmp
# A failed debootstrap can leave proc/sys mounted inside its target: unmount
# before removing, and never cross into another filesystem.
cleanup() {
	awk -v p="$tmp/" 'index($2, p) == 1 { print $2 }' /proc/self/mounts | sort -r |
		while read -r m; do umount -l "$m" || true; done
	rm -rf --one-file-system "$tmp"
}
cleanup
trap cleanup EXIT
mkdir -p "$(dirname "$dir")"
include=${DEBOOTSTRAP_INCLUDE:+--include=$DEBOOTSTRAP_INCLUDE}
cache=
if [ -n "${DEBOOTSTRAP_CACHE_DIR:-}" ]; then
	mkdir -p "$DEBOOTSTRAP_CACHE_DIR"
	cache=--cache-dir=$DEBOOTSTRAP_CACHE_DIR
fi
step "debootstrap --variant=minbase $include bookworm $dir (log: $tmp.log, ~2 minutes)"
debootstrap --variant=minbase $include $cache bookworm "$tmp" "$mirror" >"$tmp.log" 2>&1 ||
	die "debootstrap into $tmp failed; last lines of $tmp.log: $(tail -n 5 "$tmp.log")"
complete "$tmp" || die "debootstrap finished but $tmp is incomplete; see $tmp.log"
mv -T "$tmp" "$dir"
trap - EXIT
rm -f "$tmp.log"
step "Debian rootfs $dir built ($(du -sh "$dir" | cut -f1))"
