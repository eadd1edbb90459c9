#!/bin/bash
# Garbage collection of a directory chunk store: `mkbootfs gc` against
# `casync gc` and `desync prune` (v1.1.0), each on a store of the same ten
# related Debian trees, keeping the same five. The trees are the Debian minbase rootfs, each less
# 20 files, with 10 files edited and 3 MiB of its own new files in /opt (a
# new image version). mkbootfs's store is made by `mkbootfs convert dir:`
# and casync's by `casync make --digest=sha256 --compression=zstd`, both
# with their default chunk sizes (64 KiB on average); each tool collects
# its own store with the indexes it made of the five even trees; desync
# prune collects casync's store (the same store as casync gc) with
# casync's indexes. mkbootfs runs with --keep-newer 0, since casync and
# desync have no grace period and every chunk here is minutes old. Each
# run collects a fresh copy of the stores, page cache warm; the tools take
# turns. Reports the median seconds of RUNS, store bytes (sum of chunk
# file sizes) and chunks before and after, and the ratios.
#
# Needs casync and the Debian rootfs (scripts/debian-rootfs.sh); desync
# is built once from the Go module proxy into /var/cache/mkbootfs/peers/bin
# (v1.1.0: the proxy serves no @latest).
# Then the eviction cost per container start of the node cache
# (nodecache's BenchmarkEvictPerStart, EVICT_STARTS starts, default 20).
# Env: RUNS (default 5), MKBOOTFS (a built binary; default: built here),
# DESYNC (a desync binary; NO_DESYNC=1 leaves it out),
# MKBOOTFS_DEBIAN_ROOTFS.
set -euo pipefail
cd "$(dirname "$0")/.."

ROOTFS=${MKBOOTFS_DEBIAN_ROOTFS:-/var/cache/mkbootfs/rootfs/bookworm-minbase}
RUNS=${RUNS:-5}
[ -f "$ROOTFS/etc/debian_version" ] || { echo "gc.sh: no Debian rootfs at $ROOTFS: run scripts/debian-rootfs.sh" >&2; exit 1; }
command -v casync >/dev/null || { echo "gc.sh: casync missing: run scripts/setup.sh" >&2; exit 1; }

# Beside the rootfs, so that the trees can be hard links to it.
WORK=$(mktemp -d /var/tmp/gc-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
MKBOOTFS=${MKBOOTFS:-}
if [ -z "$MKBOOTFS" ]; then
	CGO_ENABLED=0 go build -trimpath -o "$WORK/mkbootfs" ./cmd/mkbootfs
	MKBOOTFS=$WORK/mkbootfs
fi

DESYNC=${DESYNC:-/var/cache/mkbootfs/peers/bin/desync}
if [ "${NO_DESYNC:-}" != 1 ] && [ ! -x "$DESYNC" ]; then
	echo "gc.sh: building desync v1.1.0 into $DESYNC" >&2
	mkdir -p "$WORK/desync" "$(dirname "$DESYNC")"
	printf 'module desyncbuild\n\ngo 1.26.8\n' >"$WORK/desync/go.mod"
	(cd "$WORK/desync" && go get github.com/folbricht/desync/cmd/desync@v1.1.0 >/dev/null 2>&1 &&
		CGO_ENABLED=0 go build -trimpath -o "$DESYNC" github.com/folbricht/desync/cmd/desync)
fi

chunk_bytes() { find "$1" -name '*.cacnk' -printf '%s\n' | awk '{s += $1} END {print s + 0}'; }
chunk_count() { find "$1" -name '*.cacnk' | wc -l; }
median() { sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }

# related DIR SEED: the rootfs as hard links, less 20 files, 10 files
# edited (a new file in place of the link), 3 MiB of new files.
related() {
	local dir=$1 seed=$2 f i
	cp -al "$ROOTFS" "$dir" 2>/dev/null || { rm -rf "$dir"; cp -a "$ROOTFS" "$dir"; }
	find "$dir" -type f | sort | shuf --random-source=<(yes "$seed") >"$WORK/files"
	head -20 "$WORK/files" | while read -r f; do rm -f "$f"; done
	sed -n 21,30p "$WORK/files" | while read -r f; do
		{ cat "$f"; echo "edited for $seed"; } >"$f.new"
		chmod --reference="$f" "$f.new"; chown --reference="$f" "$f.new"
		mv -f "$f.new" "$f"
	done
	mkdir -p "$dir/opt/related-$seed"
	for i in 0 1 2; do
		head -c 1M /dev/urandom >"$dir/opt/related-$seed/$i"
	done
}

echo "gc.sh: making 10 related trees and converting them into both stores" >&2
keep_mk=() keep_ca=()
for i in $(seq 0 9); do
	related "$WORK/tree$i" "$i"
	"$MKBOOTFS" convert --store "$WORK/mk" --index "$WORK/mk$i.idx" "dir:$WORK/tree$i" >/dev/null
	casync make --digest=sha256 --compression=zstd --store="$WORK/ca" "$WORK/ca$i.caidx" "$WORK/tree$i" >/dev/null
	if [ $((i % 2)) = 0 ]; then keep_mk+=("$WORK/mk$i.idx") keep_ca+=("$WORK/ca$i.caidx"); fi
	rm -rf "$WORK/tree$i"
done
mkb0=$(chunk_bytes "$WORK/mk") mkn0=$(chunk_count "$WORK/mk")
cab0=$(chunk_bytes "$WORK/ca") can0=$(chunk_count "$WORK/ca")

: >"$WORK/mk.times"; : >"$WORK/ca.times"; : >"$WORK/de.times"
for r in $(seq "$RUNS"); do
	rm -rf "$WORK/mk.run" "$WORK/ca.run" "$WORK/de.run"
	cp -a "$WORK/mk" "$WORK/mk.run"; cp -a "$WORK/ca" "$WORK/ca.run"
	[ "${NO_DESYNC:-}" = 1 ] || cp -a "$WORK/ca" "$WORK/de.run"
	# The stores' metadata in the page cache, as a store in use has it.
	find "$WORK"/*.run -printf ''
	/usr/bin/time -f %e -o "$WORK/t" "$MKBOOTFS" gc --store "$WORK/mk.run" --keep-newer 0 "${keep_mk[@]}" >"$WORK/mk.out"
	cat "$WORK/t" >>"$WORK/mk.times"
	/usr/bin/time -f %e -o "$WORK/t" casync gc --store="$WORK/ca.run" "${keep_ca[@]}" >"$WORK/ca.out" 2>&1
	cat "$WORK/t" >>"$WORK/ca.times"
	if [ "${NO_DESYNC:-}" != 1 ]; then
		/usr/bin/time -f %e -o "$WORK/t" "$DESYNC" --digest sha256 prune --yes --store "$WORK/de.run" "${keep_ca[@]}" >"$WORK/de.out" 2>&1 ||
			{ echo "gc.sh: desync prune failed:" >&2; cat "$WORK/de.out" >&2; exit 1; }
		cat "$WORK/t" >>"$WORK/de.times"
	fi
done
mk=$(median <"$WORK/mk.times") ca=$(median <"$WORK/ca.times")
mkb1=$(chunk_bytes "$WORK/mk.run") mkn1=$(chunk_count "$WORK/mk.run")
cab1=$(chunk_bytes "$WORK/ca.run") can1=$(chunk_count "$WORK/ca.run")
if [ "${NO_DESYNC:-}" != 1 ]; then
	de=$(median <"$WORK/de.times")
	deb1=$(chunk_bytes "$WORK/de.run") den1=$(chunk_count "$WORK/de.run")
else
	de=0 deb1=0 den1=0
fi

awk -v mk="$mk" -v ca="$ca" -v runs="$RUNS" \
	-v mkb0="$mkb0" -v mkn0="$mkn0" -v mkb1="$mkb1" -v mkn1="$mkn1" \
	-v cab0="$cab0" -v can0="$can0" -v cab1="$cab1" -v can1="$can1" \
	-v de="$de" -v deb1="$deb1" -v den1="$den1" 'BEGIN {
	printf "gc of a store of 10 related Debian minbase trees, keeping 5, median of %d runs\n", runs
	printf "  %-40s %6.2f s  store %6.1f -> %6.1f MB, %d -> %d chunks\n", "mkbootfs gc --keep-newer 0", mk, mkb0 / 1e6, mkb1 / 1e6, mkn0, mkn1
	printf "  %-40s %6.2f s  store %6.1f -> %6.1f MB, %d -> %d chunks\n", "casync gc", ca, cab0 / 1e6, cab1 / 1e6, can0, can1
	if (de > 0) printf "  %-40s %6.2f s  store %6.1f -> %6.1f MB, %d -> %d chunks\n", "desync prune (casync'"'"'s store)", de, cab0 / 1e6, deb1 / 1e6, can0, den1
	printf "  time: %.2fx casync gc   store after: %.3fx casync'"'"'s   removed: %.1f MB (mkbootfs), %.1f MB (casync)\n", mk / ca, mkb1 / cab1, (mkb0 - mkb1) / 1e6, (cab0 - cab1) / 1e6
	if (de > 0) printf "  time: %.2fx desync prune   removed: %.1f MB (desync)\n", mk / de, (cab0 - deb1) / 1e6
}'
echo "mkbootfs gc says: $(cat "$WORK/mk.out")"

# The node cache's side: what a container start that brings 40 MiB of new
# chunks into a full cache costs its evictor (nodecache, on a goroutine of
# its own, not on the start's path).
echo "eviction per container start (40 MiB of new chunks into a full node cache):"
go test -run '^$' -bench 'BenchmarkEvictPerStart' -benchtime "${EVICT_STARTS:-20}x" ./nodecache | grep '^Benchmark'
