#!/usr/bin/env bash
# busybox-rootfs.sh DIR: make a minimal root filesystem in DIR (which must not
# exist) from Debian's busybox-static: /bin/busybox, one symlink per applet,
# root and nobody accounts. Every timestamp is fixed, so the tree (and an
# image imported from it) is the same on every run and machine.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

[ $# -eq 1 ] || die "usage: $0 DIR"
dir=$1
busybox=/bin/busybox
[ -x "$busybox" ] || die "$busybox missing: apt-get install busybox-static"
[ ! -e "$dir" ] || die "$dir already exists; remove it or pick another path"

tmp=$dir.tmp.$$
trap 'rm -rf --one-file-system "$tmp"' EXIT
mkdir -p "$tmp"/{bin,sbin,usr/bin,usr/sbin,etc,root,tmp,dev,proc,sys,mnt,run,var}
chmod 1777 "$tmp/tmp"
chmod 700 "$tmp/root"
cp "$busybox" "$tmp/bin/busybox"
# --list-full gives each applet's usual path (bin/sh, usr/bin/env, ...).
"$busybox" --list-full | while read -r applet; do
	case $applet in
	*/*) ;;
	*) continue ;; # linuxrc: not an applet path
	esac
	[ -e "$tmp/$applet" ] && continue
	up=$(dirname "$applet" | sed 's|[^/]*|..|g')
	ln -s "$up/bin/busybox" "$tmp/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$tmp/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$tmp/etc/group"
find "$tmp" -exec touch -h -d @946684800 {} +
mv -T "$tmp" "$dir"
trap - EXIT
