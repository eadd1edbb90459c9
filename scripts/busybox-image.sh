#!/usr/bin/env bash
# busybox-image.sh [TAG]: make the docker image TAG (default
# mkbootfs-test/busybox:latest) offline, by `docker import` of the tree
# busybox-rootfs.sh makes. Does nothing when the image exists already.
set -euo pipefail
here=$(dirname "$0")
. "$here/lib.sh"

tag=${1:-mkbootfs-test/busybox:latest}
if docker image inspect "$tag" >/dev/null 2>&1; then
	step "image $tag exists"
	exit 0
fi
work=$(mktemp -d)
trap 'rm -rf --one-file-system "$work"' EXIT
"$here/busybox-rootfs.sh" "$work/rootfs"
tar -C "$work/rootfs" --numeric-owner -cf - . |
	docker import --change 'CMD ["/bin/sh"]' - "$tag" >/dev/null ||
	die "docker import of the busybox rootfs as $tag (is dockerd running? scripts/setup.sh starts it)"
step "image $tag imported"
