#!/usr/bin/env bash
# demo.sh: the main job end to end, on this machine. Builds the sample app
# image (sample/app) offline, pushes it to the local registry, converts it
# into a boot image there, and runs the original and the converted image
# with docker run: the converted one pulls a few MB and fetches its files
# lazily; their outputs must match. Then converts a sample tree (the cached
# Debian rootfs when scripts/debian-rootfs.sh has made it, else a busybox
# rootfs) into a chunk store and an index, extracts it, and checks that
# rsync finds no difference at all (contents, modes, owners, hard links,
# ACLs, xattrs, times). `make demo` builds bin/ and runs scripts/setup.sh
# first.
#
# Environment: DEMO_SOURCE=DIR picks the tree; MKBOOTFS_DEMO_DIR (default
# /var/lib/mkbootfs/demo) holds the store, index and extracted tree; it is
# emptied at the start of every run.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/scripts/lib.sh"
need_root

mkbootfs=${MKBOOTFS:-$root/bin/mkbootfs}
work=${MKBOOTFS_DEMO_DIR:-/var/lib/mkbootfs/demo}
debian=${MKBOOTFS_DEBIAN_ROOTFS:-/var/cache/mkbootfs/rootfs/bookworm-minbase}
store=$work/store
index=$work/rootfs.idx
out=$work/out

[ -x "$mkbootfs" ] || die "$mkbootfs missing: run make build (or make demo)"

# Each step is a function; the list at the bottom runs them in order and
# times them. Later steps (boot image, docker run) are added the same way.

registry=127.0.0.1:5000
app=$registry/mkbootfs-sample/app:1

step_app() {
	rm -rf --one-file-system "$work"
	mkdir -p "$work"
	docker build -q -t "$app" "$root/sample/app" >/dev/null || die "docker build of sample/app (scripts/busybox-image.sh makes its base)"
	docker push -q "$app" >/dev/null || die "docker push $app (scripts/setup.sh starts the registry)"
	# --profile runs the app once and lays out first what its start reads.
	"$mkbootfs" convert --profile --store "$store" "$app" "$app-bootfs" -- demo ||
		die "mkbootfs convert --profile --store $store $app $app-bootfs -- demo"
	docker rmi -f "$app-bootfs" >/dev/null 2>&1 || true
	docker volume rm -f mkbootfs-demo-cache >/dev/null 2>&1 || true
	want=$(docker run --rm "$app" demo) || die "docker run $app"
	got=$(docker run --rm --device /dev/fuse --cap-add SYS_ADMIN -v mkbootfs-demo-cache:/.bootfs/cache \
		-v "$store:/.bootfs/store:ro" "$app-bootfs" demo) || die "docker run of the boot image $app-bootfs"
	printf '%s\n' "$got" | sed 's/^/    /'
	[ "$got" = "$want" ] || die "the converted image printed something else than the original: $want"
	step "docker run $app-bootfs: same output as $app"
}

step_source() {
	if [ -n "${DEMO_SOURCE:-}" ]; then
		src=$DEMO_SOURCE
	elif [ -f "$debian/etc/debian_version" ] && [ ! -e "$debian/debootstrap" ]; then
		src=$debian
	else
		src=/var/cache/mkbootfs/rootfs/busybox
		[ -d "$src" ] || "$root/scripts/busybox-rootfs.sh" "$src"
	fi
	[ -d "$src" ] || die "sample tree $src is not a directory"
	src_entries=$(find "$src" | wc -l)
	# Hard links count once, as in the index.
	src_bytes=$(find "$src" -type f -printf '%i %s\n' | sort -u | awk '{ n += $2 } END { print n + 0 }')
	step "source $src: $src_entries entries, $(human "$src_bytes") in files"
	rm -rf --one-file-system "$store" "$index" "$out"
}

step_convert() {
	"$mkbootfs" convert --store "$store" --index "$index" "dir:$src" ||
		die "mkbootfs convert --store $store --index $index dir:$src"
	chunks=$(find "$store" -name '*.cacnk' | wc -l)
	store_bytes=$(find "$store" -name '*.cacnk' -printf '%s\n' | awk '{ n += $1 } END { print n + 0 }')
	step "store $store: $chunks chunks, $(human "$store_bytes"); index $index: $(human "$(stat -c %s "$index")")"
}

step_inspect() {
	"$mkbootfs" inspect "$index" | sed 's/^/    /' || die "mkbootfs inspect $index"
}

step_extract() {
	# The whole tree, devices and setuid bits too: verify compares it all.
	"$mkbootfs" extract --devices --same-permissions --store "$store" "$index" "$out" ||
		die "mkbootfs extract --devices --same-permissions --store $store $index $out"
}

step_verify() {
	diffs=$(rsync -naHAXc --delete -i "$src/" "$out/") || die "rsync -naHAXc --delete $src/ $out/ failed"
	if [ -n "$diffs" ]; then
		printf '%s\n' "$diffs" | head -n 20 >&2
		die "the extracted tree $out differs from $src in $(printf '%s\n' "$diffs" | wc -l) entries (first 20 above; rsync -i notation)"
	fi
	step "rsync -naHAXc --delete $src/ $out/: no difference"
}

human() { numfmt --to=si --format=%.1f --suffix=B "$1"; }

steps=(app source convert inspect extract verify)
total_start=$(date +%s.%N)
for s in "${steps[@]}"; do
	start=$(date +%s.%N)
	"step_$s"
	step "$s: $(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f s", b - a }')"
done
step "OK: $src ($src_entries entries, $(human "$src_bytes")) -> $chunks chunks, $(human "$store_bytes") in $store; extracted and verified in $(awk -v a="$total_start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f s", b - a }')"
