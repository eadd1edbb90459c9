#!/usr/bin/env bash
# setup.sh: install and start everything the tests, benchmarks and demo use
# on a Debian bookworm machine, as root. Safe to run again and again: each
# step checks first and does nothing when its work is done. One line per step.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
need_root

packages=(
	docker.io docker-registry  # container engine, and a real registry to push to
	containerd runc            # the snapshotter's tests start a containerd of their own (never dockerd's)
	casync zstd rsync attr acl fuse3 # peers and checkers of the chunk store, tree and mounts
	debootstrap busybox-static # sample trees and images, made offline
	openssh-server nginx       # chunk servers over SFTP and HTTP
	iproute2 procps kmod curl ca-certificates util-linux
	git make gcc libc6-dev # go test -race needs cgo
)
registry_addr=127.0.0.1:5000
registry_dir=/var/lib/mkbootfs-registry
busybox_image=mkbootfs-test/busybox:latest

# Two setups at once (say two `make test`) would race to start daemons.
# Daemons started below get 9>&- so they do not hold the lock forever.
mkdir -p /run/lock
exec 9>/run/lock/mkbootfs-setup.lock
flock -w 900 9 || die "another scripts/setup.sh has held /run/lock/mkbootfs-setup.lock for 15 minutes"

if ! command -v go >/dev/null; then
	export PATH=/usr/local/go/bin:$PATH
fi
command -v go >/dev/null || die "go not found on PATH nor in /usr/local/go/bin: install Go $(sed -n 's/^go //p' "$here/../go.mod") there"
step "go: $(go version)"

missing=()
for p in "${packages[@]}"; do
	[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
	step "packages: all ${#packages[@]} installed"
else
	step "packages: installing ${missing[*]}"
	# needrestart, if installed, reads every process's /proc/PID/maps and
	# hangs on one blocked on a dead FUSE mount: keep it out of the way.
	export DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1
	# Keep package scripts from starting their services (nginx on :80, sshd
	# on :22, a dockerd): tests start their own on loopback ports.
	# A policy-rc.d already there is the machine's: leave it alone.
	made_policy=
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod +x /usr/sbin/policy-rc.d
		made_policy=1
		trap 'rm -f /usr/sbin/policy-rc.d' EXIT
	fi
	apt-get update -q </dev/null >/var/log/mkbootfs-apt.log 2>&1 ||
		die "apt-get update failed; see /var/log/mkbootfs-apt.log"
	apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null >>/var/log/mkbootfs-apt.log 2>&1 ||
		die "apt-get install ${missing[*]} failed; see /var/log/mkbootfs-apt.log"
	if [ -n "$made_policy" ]; then
		rm -f /usr/sbin/policy-rc.d
		trap - EXIT
	fi
fi
# sshd refuses to start without its privilege separation directory.
mkdir -p /run/sshd

if [ ! -c /dev/fuse ]; then
	modprobe fuse 2>/dev/null || true
	[ -c /dev/fuse ] || die "/dev/fuse missing and modprobe fuse did not create it: this kernel needs FUSE"
fi
step "fuse: /dev/fuse present"

if docker info >/dev/null 2>&1; then
	step "dockerd: running"
else
	if pgrep -x dockerd >/dev/null; then
		step "dockerd: running but not answering yet, waiting"
	else
		step "dockerd: starting (log: /var/log/mkbootfs-dockerd.log)"
		setsid -f dockerd </dev/null >>/var/log/mkbootfs-dockerd.log 2>&1 9>&-
	fi
	for _ in $(seq 60); do
		docker info >/dev/null 2>&1 && break
		sleep 1
	done
	docker info >/dev/null 2>&1 ||
		die "dockerd did not answer \`docker info\` within 60 s; last lines of /var/log/mkbootfs-dockerd.log: $(tail -n 5 /var/log/mkbootfs-dockerd.log)"
	step "dockerd: up, storage driver $(docker info -f '{{.Driver}}')"
fi

"$here/busybox-image.sh" "$busybox_image"
timeout 120 docker run --rm --device /dev/fuse --cap-add SYS_ADMIN "$busybox_image" \
	sh -c 'test -c /dev/fuse && mount -t tmpfs none /mnt' ||
	die "docker run --device /dev/fuse --cap-add SYS_ADMIN $busybox_image could not see /dev/fuse or mount"
step "docker: a container with /dev/fuse and CAP_SYS_ADMIN can mount"

registry_up() { curl -fs -o /dev/null --max-time 2 "http://$registry_addr/v2/"; }
if registry_up; then
	step "registry: running at $registry_addr"
else
	if ss -Hltn "sport = :${registry_addr##*:}" | grep -q .; then
		die "something that is not a docker registry listens on port ${registry_addr##*:}: $(ss -Hltnp "sport = :${registry_addr##*:}")"
	fi
	mkdir -p "$registry_dir/data"
	cat >"$registry_dir/config.yml.tmp" <<-CONFIG
		version: 0.1
		log:
		  level: warn
		storage:
		  filesystem:
		    rootdirectory: $registry_dir/data
		  delete:
		    enabled: true
		http:
		  addr: $registry_addr
	CONFIG
	mv "$registry_dir/config.yml.tmp" "$registry_dir/config.yml"
	step "registry: starting docker-registry at $registry_addr (log: /var/log/mkbootfs-registry.log)"
	setsid -f docker-registry serve "$registry_dir/config.yml" </dev/null >>/var/log/mkbootfs-registry.log 2>&1 9>&-
	for _ in $(seq 30); do
		registry_up && break
		sleep 1
	done
	registry_up || die "docker-registry did not answer http://$registry_addr/v2/ within 30 s; last lines of /var/log/mkbootfs-registry.log: $(tail -n 5 /var/log/mkbootfs-registry.log)"
fi
pushed=$registry_addr/$busybox_image
docker tag "$busybox_image" "$pushed"
timeout 120 docker push -q "$pushed" >/dev/null || die "docker push $pushed failed"
timeout 120 docker pull -q "$pushed" >/dev/null || die "docker pull $pushed failed"
step "registry: pushed and pulled $pushed"

"$here/debian-rootfs.sh"
"$here/tools-rootfs.sh"
"$here/pause-image.sh"
"$here/crictl.sh"
step "done"
