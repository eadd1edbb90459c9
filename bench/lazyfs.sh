#!/bin/bash
# Full-tree read (`tar -cf - . | wc -c`; piped, since GNU tar skips file data
# when it writes to /dev/null) and metadata walks (`find . -xdev | wc -l`,
# `ls -lR`) of the Debian rootfs: the native directory, lazyfs over a local
# store (cold: empty cache and page cache dropped; warm) and `casync mount`
# of the same tree. Prints the median seconds of RUNS rounds, the ratios,
# the mount process's peak RSS, and each bar of DESIGN.md.
#
# "Warm" is the steady state: measured after one more untimed pass, since
# after a cold pass the kernel still sends lazyfs a few hundred reads and
# listings (measured: 387 READ, 38 READDIRPLUS, 65 READLINK), and none after.
#
# Needs root (drop_caches, FUSE), casync, and the Debian rootfs
# (scripts/debian-rootfs.sh). Env: RUNS (default 3), MKBOOTFS (a built
# binary; default: built here), MKBOOTFS_DEBIAN_ROOTFS.
set -euo pipefail
cd "$(dirname "$0")/.."

ROOTFS=${MKBOOTFS_DEBIAN_ROOTFS:-/var/cache/mkbootfs/rootfs/bookworm-minbase}
RUNS=${RUNS:-3}
if [ ! -f "$ROOTFS/etc/debian_version" ]; then
	echo "lazyfs.sh: no Debian rootfs at $ROOTFS: run scripts/debian-rootfs.sh" >&2
	exit 1
fi
for tool in casync tar rsync mountpoint; do
	command -v "$tool" >/dev/null || { echo "lazyfs.sh: $tool missing: run scripts/setup.sh" >&2; exit 1; }
done

WORK=$(mktemp -d /var/tmp/lazyfs-bench.XXXXXX)
MNT=$WORK/mnt
mkdir -p "$MNT"
MOUNT_PID=
cleanup() {
	if [ -n "$MOUNT_PID" ]; then kill -INT "$MOUNT_PID" 2>/dev/null || true; wait "$MOUNT_PID" 2>/dev/null || true; fi
	mountpoint -q "$MNT" && umount -l "$MNT"
	rm -rf "$WORK"
}
trap cleanup EXIT

MKBOOTFS=${MKBOOTFS:-}
if [ -z "$MKBOOTFS" ]; then
	CGO_ENABLED=0 go build -o "$WORK/mkbootfs" ./cmd/mkbootfs
	MKBOOTFS=$WORK/mkbootfs
fi

echo "tree: $ROOTFS ($(du -sh "$ROOTFS" | cut -f1), $(find "$ROOTFS" -xdev | wc -l) entries); $RUNS rounds; $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg)"
"$MKBOOTFS" convert --store "$WORK/store" --index "$WORK/debian.idx" "dir:$ROOTFS"
casync make --digest=sha256 --compression=zstd --store="$WORK/castr" "$WORK/debian.caidx" "$ROOTFS" >/dev/null

drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
# secs CMD...: run CMD in the tree at $DIR, print its wall time in seconds.
secs() {
	local t0 t1
	t0=$(date +%s.%N)
	(cd "$DIR" && eval "$1" >/dev/null) || echo "lazyfs.sh: '$1' in $DIR failed" >&2
	t1=$(date +%s.%N)
	awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", b - a }'
}
TAR='tar -cf - . | wc -c'
FIND='find . -xdev | wc -l'
LSLR='ls -lR'

wait_mount() {
	for _ in $(seq 300); do mountpoint -q "$MNT" && return 0; sleep 0.05; done
	echo "lazyfs.sh: $MNT did not mount" >&2
	exit 1
}
unmount() {
	kill -INT "$MOUNT_PID"
	wait "$MOUNT_PID" || true
	MOUNT_PID=
	mountpoint -q "$MNT" && umount "$MNT"
	return 0
}

declare -A T
add() { T[$1]="${T[$1]:-} $2"; }
HWM=0
for round in $(seq "$RUNS"); do
	DIR=$ROOTFS
	drop; add native_cold "$(secs "$TAR")"

	rm -rf "$WORK/cache"
	"$MKBOOTFS" mount --cache "$WORK/cache" --store "$WORK/store" --stats "$WORK/debian.idx" "$MNT" >"$WORK/stats.txt" 2>"$WORK/mount.log" &
	MOUNT_PID=$!
	wait_mount
	DIR=$MNT
	drop; add lazyfs_cold "$(secs "$TAR")"
	# Warm: one untimed pass each, then native and lazyfs alternate, so
	# that the load of a shared machine weighs on both alike.
	for DIR in "$ROOTFS" "$MNT"; do secs "$TAR" >/dev/null; done
	for what in "warm:$TAR" "find:$FIND" "lslr:$LSLR"; do
		DIR=$ROOTFS; add "native_${what%%:*}" "$(secs "${what#*:}")"
		DIR=$MNT; add "lazyfs_${what%%:*}" "$(secs "${what#*:}")"
	done
	hwm=$(awk '/VmHWM/ { print $2 }' "/proc/$MOUNT_PID/status")
	[ "$hwm" -gt "$HWM" ] && HWM=$hwm
	unmount

	# The same without the cache directory: what keeping chunks costs.
	"$MKBOOTFS" mount --store "$WORK/store" "$WORK/debian.idx" "$MNT" 2>>"$WORK/mount.log" &
	MOUNT_PID=$!
	wait_mount
	DIR=$MNT
	drop; add nocache_cold "$(secs "$TAR")"
	unmount
done
echo "lazyfs mount stats (last round):"
sed 's/^/  /' "$WORK/stats.txt"

# casync mount is an order of magnitude slower: one round.
casync mount --store="$WORK/castr" "$WORK/debian.caidx" "$MNT" &
MOUNT_PID=$!
wait_mount
DIR=$MNT
drop; add casync_cold "$(secs "$TAR")"
secs "$TAR" >/dev/null
add casync_warm "$(secs "$TAR")"
add casync_find "$(secs "$FIND")"
add casync_lslr "$(secs "$LSLR")"
kill -INT "$MOUNT_PID"; wait "$MOUNT_PID" || true; MOUNT_PID=
mountpoint -q "$MNT" && umount "$MNT"

median() { tr ' ' '\n' | grep . | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
declare -A M
for k in "${!T[@]}"; do M[$k]=$(echo "${T[$k]}" | median); done

printf '\n%-22s %9s %9s %9s %13s %13s\n' "seconds (median)" native lazyfs casync lazyfs/native casync/native
for what in cold warm find lslr; do
	label=$(case $what in cold) echo "tar, cold" ;; warm) echo "tar, warm" ;; find) echo "find, warm" ;; lslr) echo "ls -lR, warm" ;; esac)
	printf '%-22s %9s %9s %9s %12.2fx %12.2fx\n' "$label" "${M[native_$what]}" "${M[lazyfs_$what]}" "${M[casync_$what]}" \
		"$(awk -v a="${M[lazyfs_$what]}" -v b="${M[native_$what]}" 'BEGIN { print a / b }')" \
		"$(awk -v a="${M[casync_$what]}" -v b="${M[native_$what]}" 'BEGIN { print a / b }')"
done
printf '%-22s %9s %9s %9s %12.2fx\n' "tar, cold, no cache" "${M[native_cold]}" "${M[nocache_cold]}" - \
	"$(awk -v a="${M[nocache_cold]}" -v b="${M[native_cold]}" 'BEGIN { print a / b }')"
printf 'mount process peak RSS (VmHWM): %.1f MiB\n' "$(awk -v k="$HWM" 'BEGIN { print k / 1024 }')"

bar() { # name ratio limit
	awk -v n="$1" -v r="$2" -v l="$3" 'BEGIN { printf "bar %-28s %6.2f <= %-5s %s\n", n, r, l, (r <= l ? "PASS" : "FAIL") }'
}
echo
ratio() { awk -v a="${M[lazyfs_$1]}" -v b="${M[native_$1]}" 'BEGIN { print a / b }'; }
bar "cold read / native" "$(ratio cold)" 2
bar "warm read / native" "$(ratio warm)" 1.2
bar "find, warm / native" "$(ratio find)" 1.5
bar "ls -lR, warm / native" "$(ratio lslr)" 1.5
bar "mount RSS, MiB" "$(awk -v k="$HWM" 'BEGIN { print k / 1024 }')" 40
