#!/bin/bash
# Convert the Debian minbase rootfs (chunk + hash + compress + write into a
# local store, durably) with `mkbootfs convert dir:` and with
# `casync make --digest=sha256 --compression=zstd` in the same run: median
# seconds of RUNS alternating rounds from a warm page cache, store sizes
# (sum of chunk file sizes), peak RSS, and the ratios against DESIGN.md's
# bars (>= 3x faster, store <= 1.05x casync's, RSS <= 200 MiB).
#
# Needs casync and the Debian rootfs (scripts/debian-rootfs.sh). Env: RUNS
# (default 3), MKBOOTFS (a built binary; default: built here),
# MKBOOTFS_DEBIAN_ROOTFS.
set -euo pipefail
cd "$(dirname "$0")/.."

ROOTFS=${MKBOOTFS_DEBIAN_ROOTFS:-/var/cache/mkbootfs/rootfs/bookworm-minbase}
RUNS=${RUNS:-3}
[ -f "$ROOTFS/etc/debian_version" ] || { echo "convert.sh: no Debian rootfs at $ROOTFS: run scripts/debian-rootfs.sh" >&2; exit 1; }
command -v casync >/dev/null || { echo "convert.sh: casync missing: run scripts/setup.sh" >&2; exit 1; }

WORK=$(mktemp -d /var/tmp/convert-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
MKBOOTFS=${MKBOOTFS:-}
if [ -z "$MKBOOTFS" ]; then
	CGO_ENABLED=0 go build -trimpath -o "$WORK/mkbootfs" ./cmd/mkbootfs
	MKBOOTFS=$WORK/mkbootfs
fi

# Warm the page cache so both read the tree from memory.
tar -cf - -C "$ROOTFS" . | wc -c >/dev/null

chunk_bytes() { find "$1" -name '*.cacnk' -printf '%s\n' | awk '{s += $1} END {print s + 0}'; }
median() { sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }

: >"$WORK/mk.times"; : >"$WORK/ca.times"; : >"$WORK/mk.rss"
# Each run writes a fresh store and none is deleted until the end: ext4
# makes creating files slow for a while after many were deleted (its
# recently_deleted inode scan), which would tax whichever tool runs next.
for i in $(seq "$RUNS"); do
	/usr/bin/time -f '%e %M' -o "$WORK/t" "$MKBOOTFS" convert --store "$WORK/mk$i" --index "$WORK/mk.idx" "dir:$ROOTFS" >/dev/null
	read -r secs rss <"$WORK/t"; echo "$secs" >>"$WORK/mk.times"; echo "$rss" >>"$WORK/mk.rss"
	/usr/bin/time -f '%e %M' -o "$WORK/t" casync make --digest=sha256 --compression=zstd --store="$WORK/ca$i" "$WORK/ca.caidx" "$ROOTFS" >/dev/null
	read -r secs _ <"$WORK/t"; echo "$secs" >>"$WORK/ca.times"
done
mk=$(median <"$WORK/mk.times"); ca=$(median <"$WORK/ca.times"); rss=$(sort -n "$WORK/mk.rss" | tail -1)
mkb=$(chunk_bytes "$WORK/mk1"); cab=$(chunk_bytes "$WORK/ca1")
mkn=$(find "$WORK/mk1" -name '*.cacnk' | wc -l); can=$(find "$WORK/ca1" -name '*.cacnk' | wc -l)
awk -v mk="$mk" -v ca="$ca" -v mkb="$mkb" -v cab="$cab" -v mkn="$mkn" -v can="$can" -v rss="$rss" -v runs="$RUNS" 'BEGIN {
	printf "convert of the Debian minbase rootfs, median of %d runs\n", runs
	printf "  %-40s %7.2f s  store %6.1f MB in %d chunks\n", "mkbootfs convert dir:", mk, mkb / 1e6, mkn
	printf "  %-40s %7.2f s  store %6.1f MB in %d chunks\n", "casync make --digest=sha256 --compression=zstd", ca, cab / 1e6, can
	printf "  speed: %.2fx casync (bar >= 3x)   store: %.3fx casync (bar <= 1.05x)   mkbootfs peak RSS %.0f MiB (bar <= 200)\n", ca / mk, mkb / cab, rss / 1024
}'
