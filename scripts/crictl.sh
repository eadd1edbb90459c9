#!/usr/bin/env bash
# crictl.sh [DIR]: build crictl, the CRI client the snapshotter's tests and
# bench drive containerd with, from the Go module proxy into DIR (default
# /var/cache/mkbootfs/bin, outside the repository), once: about 5 minutes
# on two cores with a cold module cache. Does nothing when DIR holds this
# version.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

dir=${1:-${MKBOOTFS_TOOLS_BIN:-/var/cache/mkbootfs/bin}}
module=sigs.k8s.io/cri-tools/cmd/crictl
version=v1.37.0
if [ -x "$dir/crictl" ] && [ "$(cat "$dir/crictl.version" 2>/dev/null)" = "$version" ]; then
	step "crictl $version present in $dir"
	exit 0
fi
command -v go >/dev/null || export PATH=/usr/local/go/bin:$PATH
mkdir -p "$dir"
tmp=$(mktemp -d "$dir/.crictl.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
step "go install $module@$version into $dir (log: $dir/crictl.log; ~5 minutes the first time)"
GOBIN=$tmp GOFLAGS=-mod=mod go install "$module@$version" >"$dir/crictl.log" 2>&1 ||
	die "go install $module@$version failed; see $dir/crictl.log"
mv -f "$tmp/crictl" "$dir/crictl"
echo "$version" >"$dir/crictl.version"
step "crictl $version built in $dir"
