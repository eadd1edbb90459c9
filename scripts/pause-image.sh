#!/usr/bin/env bash
# pause-image.sh [REF]: build the pod sandbox ("pause") image offline, a
# static C program of a few hundred kB (pause/pause.c), and push it to the
# local registry as REF (default 127.0.0.1:5000/mkbootfs-test/pause:1), for
# the containerd the snapshotter's tests start. Does nothing when the
# registry has REF.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

ref=${1:-127.0.0.1:5000/mkbootfs-test/pause:1}
registry=${ref%%/*}
repo_tag=${ref#*/}
manifest="http://$registry/v2/${repo_tag%:*}/manifests/${repo_tag##*:}"
if curl -fs -o /dev/null --max-time 5 -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' "$manifest"; then
	step "pause image $ref in the registry"
	exit 0
fi
command -v gcc >/dev/null || die "gcc missing: apt-get install gcc libc6-dev"
work=$(mktemp -d)
trap 'rm -rf --one-file-system "$work"' EXIT
mkdir "$work/root"
gcc -static -Os -s -o "$work/root/pause" "$here/pause/pause.c" || die "gcc -static $here/pause/pause.c failed"
tar -C "$work/root" --numeric-owner --owner=0 --group=0 --mtime=@0 -cf - . |
	docker import --change 'ENTRYPOINT ["/pause"]' - "$ref" >/dev/null ||
	die "docker import of the pause image as $ref (is dockerd running? scripts/setup.sh starts it)"
timeout 120 docker push -q "$ref" >/dev/null || die "docker push $ref failed"
step "pause image $ref built ($(stat -c %s "$work/root/pause") bytes) and pushed"
