#!/bin/bash
# Kubernetes-style starts through containerd's CRI on a node whose
# snapshotter is `mkbootfs snapshotter`: crictl runp + pull + create +
# start, to its exit, of Debian with python3, gdb, strace and procps
# running `python3 -c 'print(42)'`: the converted image (profiled), the
# original, and (unless --no-soci) the original with its SOCI v0.16.1
# index, in one run, in turns; medians.
#
#   cold   nothing of the image on the node, a new pod. Each cold run has
#          a new containerd and snapshotter with empty roots (no image,
#          content, snapshot, mount nor node cache), with the pause image
#          pulled past the link; "node has bootinit's layer": another
#          boot image was pulled first (as a node of SOCI or eStargz has
#          their snapshotter); "fresh node": not.
#   warm   the image present (and for the converted one its mount and
#          the node cache), a new pod: runp + create + start to exit.
#
# The original runs on the same node with mkbootfs as its snapshotter
# (ordinary layers are kept as containerd's overlayfs keeps them): the
# node's snapshotter must serve every image. SOCI runs on a node of its
# own, with its snapshotter (background fetch off, so that its bytes are
# what a start reads).
#
# It reports seconds (and the phases: runp, pull, create, start to exit),
# bytes over the link, and the ratios against the bars: cold <= 0.05x the
# time and <= 0.03x the bytes on a node that has bootinit's layer, warm
# <= 1.1x.
#
# The link is bench/lib.sh's, as bench/coldstart.sh's (Toxiproxy with
# latency each way; the rate an htb class with a 100 ms buffer, matched
# by the proxy's port on lo), in front of a docker-registry of the bench's own
# that holds every image; the boot image's chunks are in it, next to the
# boot image, and read through the link.
#
# Usage: bench/snapshotter.sh [--rate MBIT] [--delay MS] [--cold-runs N]
#   [--runs N] [--no-soci]
# Env defaults: SNAPBENCH_RATE_MBIT (25), SNAPBENCH_DELAY_MS (10, each
# way), COLD_RUNS (3), RUNS (warm runs of each, 7), SNAPBENCH_SOCI (1:
# with SOCI; it is built once, ~8 minutes on two cores, outside the
# repository, as ../shared/containerd-recipe.md says; a build that fails
# is reported and skipped), MKBOOTFS (a built binary with bootinit beside
# it; default: built here), BENCH_TOOLS (Toxiproxy), PEERS (SOCI's build,
# /var/cache/mkbootfs/peers), MKBOOTFS_CRICTL.
# Needs root, containerd and runc (Debian's), dockerd, docker-registry, tc,
# crictl (scripts/crictl.sh), the pause image (scripts/pause-image.sh).
# The first run builds the Debian tree (~4 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

RATE=${SNAPBENCH_RATE_MBIT:-25}
DELAY=${SNAPBENCH_DELAY_MS:-10}
COLD_RUNS=${COLD_RUNS:-3}
RUNS=${RUNS:-7}
SOCI=${SNAPBENCH_SOCI:-1}
PEERS=${PEERS:-/var/cache/mkbootfs/peers}
CRICTL=${MKBOOTFS_CRICTL:-/var/cache/mkbootfs/bin/crictl}
PAUSE=127.0.0.1:5000/mkbootfs-test/pause:1
PYTHON=$ROOTFS_DIR/bookworm-python-tools
PYTHON_PACKAGES=python3,gdb,strace,procps,libboost-regex1.74.0
SOCI_VERSION=v0.16.1
# The proxy does not serve SOCI's cmd module at v0.16.1: the same commit
# by its pseudo-version.
SOCI_CMD_VERSION=v0.0.0-20260930233240-61147fe7c929

usage() { sed -n '/^# Usage:/,/^# Env/p' "$0" | sed '$d; s/^# //'; }
while [ $# -gt 0 ]; do
	case $1 in
	--rate) RATE=$2; shift ;;
	--delay) DELAY=$2; shift ;;
	--cold-runs) COLD_RUNS=$2; shift ;;
	--runs) RUNS=$2; shift ;;
	--no-soci) SOCI=0 ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; exit 2 ;;
	esac
	shift
done

[[ $RATE =~ ^[0-9]+$ && $RATE -gt 0 ]] || die "--rate $RATE: want a whole number of Mbit/s"
[[ $DELAY =~ ^[0-9]+$ ]] || die "--delay $DELAY: want whole milliseconds"
[[ $COLD_RUNS =~ ^[1-9][0-9]*$ ]] || die "--cold-runs $COLD_RUNS: want a positive number"
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "--runs $RUNS: want a positive number"
[ "$(id -u)" -eq 0 ] || die "run as root (containerd, tc on lo)"
need containerd "apt-get install containerd (scripts/setup.sh)"
need runc "apt-get install runc (scripts/setup.sh)"
need docker "apt-get install docker.io (scripts/setup.sh)"
docker info >/dev/null 2>&1 || die "docker does not answer: run scripts/setup.sh (starts dockerd)"
[ -c /dev/fuse ] || die "/dev/fuse missing: modprobe fuse"
[ -x "$CRICTL" ] || die "no crictl at $CRICTL: run scripts/crictl.sh"
curl -fs -o /dev/null --max-time 5 -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
	"http://127.0.0.1:5000/v2/mkbootfs-test/pause/manifests/1" || die "no pause image $PAUSE: run scripts/pause-image.sh"

# Everything made here is under WORK or listed, and goes on exit.
WORK=$(mktemp -d /var/tmp/snapshotter-bench.XXXXXX)
PIDS=() NODE_PIDS=() DOCKER_IMAGES=()
cleanup() {
	stop_node
	link_cleanup
	local p
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
	docker rmi -f "${DOCKER_IMAGES[@]}" >/dev/null 2>&1 || true
	rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

MKBOOTFS=${MKBOOTFS:-}
if [ -z "$MKBOOTFS" ]; then
	need go "install Go, or pass MKBOOTFS=bin/mkbootfs after make build"
	CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$WORK/bin/" ./cmd/mkbootfs ./cmd/bootinit
	MKBOOTFS=$WORK/bin/mkbootfs
fi

# --- a node: containerd with CRI, and a snapshotter ------------------------

# start_node SNAPSHOTTER [IMAGE...]: a new containerd whose CRI snapshotter
# is mkbootfs (or soci), with nothing but the pause image and IMAGEs,
# pulled past the link.
start_node() {
	local sn=$1 n=$WORK/node port addr
	shift
	stop_node
	mkdir -p "$n/cni" "$n/logs"
	for port in 5000 "$REG" "$REGP"; do
		mkdir -p "$n/certs.d/127.0.0.1:$port"
		printf 'server = "http://127.0.0.1:%s"\n[host."http://127.0.0.1:%s"]\n  capabilities = ["pull", "resolve", "push"]\n' \
			"$port" "$port" >"$n/certs.d/127.0.0.1:$port/hosts.toml"
	done
	case $sn in
	mkbootfs)
		addr=$n/sn.sock
		setsid "$MKBOOTFS" snapshotter --root "$n/sn" --address "$addr" --hosts-dir "$n/certs.d" >"$n/snapshotter.log" 2>&1 &
		;;
	soci)
		addr=$n/soci.sock
		cat >"$n/soci.toml" <<-CONFIG
			metadata_db_no_sync = true
			[pull_modes.soci_v2]
			  enable = true
			[snapshotter]
			  min_layer_size = 0
			[background_fetch]
			  disable = true
			[content_store]
			  type = "soci"
		CONFIG
		setsid "$PEERS/bin/soci-snapshotter-grpc" --address "$addr" --root "$n/soci" --config "$n/soci.toml" --log-level info >"$n/snapshotter.log" 2>&1 &
		;;
	esac
	NODE_PIDS+=($!)
	for _ in $(seq 300); do [ -S "$addr" ] && break; sleep 0.1; done
	[ -S "$addr" ] || die "the $sn snapshotter did not start: $(tail -n 5 "$n/snapshotter.log")"
	cat >"$n/config.toml" <<-CONFIG
		version = 2
		root = "$n/root"
		state = "$n/state"
		[grpc]
		  address = "$n/containerd.sock"
		[ttrpc]
		  address = "$n/containerd.sock.ttrpc"
		[debug]
		  address = "$n/debug.sock"
		[plugins]
		  [plugins."io.containerd.internal.v1.opt"]
		    path = "$n/opt"
		  [plugins."io.containerd.grpc.v1.cri"]
		    sandbox_image = "$PAUSE"
		    stream_server_address = "127.0.0.1"
		    stream_server_port = "0"
		    # This VM's root lacks CAP_SYS_RESOURCE: nothing may lower oom_score_adj.
		    restrict_oom_score_adj = true
		    [plugins."io.containerd.grpc.v1.cri".containerd]
		      snapshotter = "$sn"
		      disable_snapshot_annotations = false
		      default_runtime_name = "runc"
		      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
		        runtime_type = "io.containerd.runc.v2"
		        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
		          SystemdCgroup = false
		          Root = "$n/runc"
		    [plugins."io.containerd.grpc.v1.cri".cni]
		      bin_dir = "$n/cni"
		      conf_dir = "$n/cni"
		    [plugins."io.containerd.grpc.v1.cri".registry]
		      config_path = "$n/certs.d"
		[proxy_plugins]
		  [proxy_plugins.$sn]
		    type = "snapshot"
		    address = "$addr"
	CONFIG
	setsid containerd --config "$n/config.toml" >"$n/containerd.log" 2>&1 &
	NODE_PIDS+=($!)
	for _ in $(seq 300); do cri info >/dev/null 2>&1 && break; sleep 0.1; done
	cri info >/dev/null 2>&1 || die "containerd did not start: $(tail -n 5 "$n/containerd.log")"
	cri pull "$PAUSE" >/dev/null || die "crictl pull $PAUSE failed: $(tail -n 3 "$WORK/crictl.err")"
	local i
	for i in "$@"; do cri pull "$i" >/dev/null || die "crictl pull $i failed: $(tail -n 3 "$WORK/crictl.err")"; done
}
cri() { CRI_CONFIG_FILE=/dev/null "$CRICTL" -r "unix://$WORK/node/containerd.sock" -i "unix://$WORK/node/containerd.sock" -t 10m "$@" 2>>"$WORK/crictl.err"; }

# stop_node stops the node and leaves no container, mount or process of
# it: containerd and the snapshotter it started, the shims of its
# containers and the mount processes of its snapshotter, each by its pid.
stop_node() {
	local n=$WORK/node p pids=()
	[ -d "$n" ] || return 0
	[ -S "$n/containerd.sock" ] && timeout 60 "$CRICTL" -r "unix://$n/containerd.sock" -t 30s rmp -fa >/dev/null 2>&1
	for p in $(grep -lsaF -e "$n/containerd.sock" /proc/[0-9]*/cmdline | cut -d/ -f3); do pids+=("$p"); done
	for p in "$n"/sn/snapshots/*/mkbootfs/pid; do
		[ -f "$p" ] && grep -qsaF "$n/sn/snapshots/" "/proc/$(cat "$p")/cmdline" && pids+=("$(cat "$p")")
	done
	pids+=("${NODE_PIDS[@]}")
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do
		for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$p" 2>/dev/null || true
	done
	NODE_PIDS=()
	awk -v d="$n/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
		while read -r m; do umount -l "$m" 2>/dev/null || true; done
	rm -rf --one-file-system "$n"
}

# start IMAGE NAME [warm]: runp + pull + create + start IMAGE to its exit,
# in a new pod (no pull when warm). It prints seconds in all, bytes over
# the link, and the seconds of each phase: runp, pull, create, start to
# the exit.
start() {
	local image=$1 name=$2 warm=${3:-} n=$WORK/node t0 t1 t2 t3 t4 b0 b1 pod ctr out log
	cat >"$n/pod-$name.json" <<-JSON
		{"metadata": {"name": "bench-$name", "namespace": "default", "uid": "bench-$name", "attempt": 1},
		 "log_directory": "$n/logs",
		 "linux": {"security_context": {"namespace_options": {"network": 2, "pid": 1, "ipc": 0}}}}
	JSON
	cat >"$n/ctr-$name.json" <<-JSON
		{"metadata": {"name": "$name"}, "image": {"image": "$image"}, "log_path": "$name.log", "linux": {}}
	JSON
	log=$n/logs/$name.log
	b0=$(link_sent) t0=$EPOCHREALTIME
	pod=$(cri runp "$n/pod-$name.json") || die "crictl runp failed: $(tail -n 3 "$WORK/crictl.err")"
	t1=$EPOCHREALTIME
	[ -n "$warm" ] || cri pull "$image" >/dev/null || die "crictl pull $image failed: $(tail -n 3 "$WORK/crictl.err")"
	t2=$EPOCHREALTIME
	ctr=$(cri create --no-pull "$pod" "$n/ctr-$name.json" "$n/pod-$name.json") || die "crictl create $image failed: $(tail -n 3 "$WORK/crictl.err")"
	t3=$EPOCHREALTIME
	cri start "$ctr" >/dev/null || die "crictl start $image failed: $(tail -n 3 "$WORK/crictl.err")"
	# Its output first, from the log file: crictl polled at once would
	# take a core from the start it measures.
	for _ in $(seq 30000); do
		grep -qs ' 42$' "$log" && break
		sleep 0.01
	done
	for _ in $(seq 3000); do
		[ -n "$(cri ps -a -q --id "$ctr" --state exited)" ] && break
		sleep 0.02
	done
	t4=$EPOCHREALTIME b1=$(link_sent)
	out=$(cri logs "$ctr" 2>&1)
	[ "$out" = 42 ] || die "$image printed '$out', not 42 (within 5 minutes)"
	cri rmp -f "$pod" >/dev/null
	echo "$(sub "$t4" "$t0") $((b1 - b0)) $(sub "$t1" "$t0") $(sub "$t2" "$t1") $(sub "$t3" "$t2") $(sub "$t4" "$t3")"
}

# --- images ----------------------------------------------------------------

prepare() {
	debian_tree "$PYTHON" "$PYTHON_PACKAGES"
	PLAIN=127.0.0.1:$REG/snapbench/py:plain
	BOOT=127.0.0.1:$REGP/snapbench/py:bootfs
	KEEP=127.0.0.1:$REG/snapbench/keep:bootfs
	DOCKER_IMAGES+=("$PLAIN" "$BOOT" "$KEEP")
	log "docker import of $PYTHON, push"
	# Without the .debs debootstrap leaves, as an image's build would
	# clean them: 298 MB, 110 MB gzipped, as the peers' image.
	push_plain "$PYTHON" "$PLAIN" --exclude='./var/cache/apt/archives/*.deb' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
		--change 'CMD ["python3","-c","print(42)"]'
	PLAIN_GZ=$(manifest_size snapbench/py plain)
	# Pushed through the proxy (not slow yet), so that the boot image
	# records the store behind the link.
	log "converting, profiled (the chunks go to the registry, next to the boot image)"
	"$MKBOOTFS" convert --profile "docker://$PLAIN" "$BOOT" >"$WORK/convert.log" 2>&1 || die "mkbootfs convert: $(tail -n 5 "$WORK/convert.log")"
	log "$(grep -v '^42$' "$WORK/convert.log" | tr '\n' ' ')"
	# Another boot image, pulled first where a node has bootinit's layer.
	scripts/busybox-rootfs.sh "$WORK/busybox" >&2
	"$MKBOOTFS" convert --store "$WORK/keep-store" "dir:$WORK/busybox" "$KEEP" >/dev/null || die "mkbootfs convert of the busybox tree failed"
	docker rmi -f "${DOCKER_IMAGES[@]}" >/dev/null 2>&1 || true
	if [ "$SOCI" = 1 ]; then prepare_soci; fi
}

# build_soci builds SOCI's snapshotter and CLI into PEERS/bin, once.
build_soci() {
	[ -x "$PEERS/bin/soci-snapshotter-grpc" ] && [ -x "$PEERS/bin/soci" ] && return
	need go "install Go to build SOCI"
	need gcc "apt-get install gcc zlib1g-dev"
	log "building SOCI $SOCI_VERSION into $PEERS (once; ~8 minutes; log: $PEERS/build-soci.log)"
	local src=$PEERS/src/soci-snapshotter
	mkdir -p "$PEERS/src" "$PEERS/bin"
	(
		set -e
		cd /
		export GOFLAGS=-mod=mod
		go mod download "github.com/awslabs/soci-snapshotter@$SOCI_VERSION"
		rm -rf "$src"
		cp -r "$(go env GOMODCACHE)/github.com/awslabs/soci-snapshotter@$SOCI_VERSION" "$src"
		dir=$(go mod download -json "github.com/awslabs/soci-snapshotter/cmd@$SOCI_CMD_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
		rm -rf "$src/cmd"
		cp -r "$dir" "$src/cmd"
		chmod -R u+w "$src"
		cd "$src/cmd"
		ld="-X github.com/awslabs/soci-snapshotter/version.Version=$SOCI_VERSION -X github.com/awslabs/soci-snapshotter/version.Revision=${SOCI_CMD_VERSION##*-}"
		CGO_ENABLED=1 go build -ldflags "$ld" -o "$PEERS/bin/soci-snapshotter-grpc.tmp" ./soci-snapshotter-grpc
		CGO_ENABLED=1 go build -ldflags "$ld" -o "$PEERS/bin/soci.tmp" ./soci
		mv "$PEERS/bin/soci.tmp" "$PEERS/bin/soci"
		mv "$PEERS/bin/soci-snapshotter-grpc.tmp" "$PEERS/bin/soci-snapshotter-grpc"
	) >"$PEERS/build-soci.log" 2>&1
}

# prepare_soci: the SOCI index (v2, soci convert) of the plain image,
# pushed next to it. A SOCI that does not build or convert is reported,
# and the run goes on without it.
prepare_soci() {
	if ! build_soci; then
		SOCI=0 SOCI_WHY="SOCI $SOCI_VERSION did not build: $(tail -n 3 "$PEERS/build-soci.log" | tr '\n' ' ')"
		log "$SOCI_WHY"
		return
	fi
	SOCI_IMAGE=127.0.0.1:$REGP/snapbench/py:soci
	local a=$WORK/node/containerd.sock ns=snapbench
	log "soci convert of $PLAIN"
	start_node soci
	if ! ctr -a "$a" -n "$ns" image pull --plain-http "$PLAIN" >"$WORK/soci-convert.log" 2>&1 ||
		! "$PEERS/bin/soci" -a "$a" -n "$ns" --root "$WORK/node/soci" convert "$PLAIN" "127.0.0.1:$REG/snapbench/py:soci" >>"$WORK/soci-convert.log" 2>&1 ||
		! ctr -a "$a" -n "$ns" image push --plain-http "127.0.0.1:$REG/snapbench/py:soci" >>"$WORK/soci-convert.log" 2>&1; then
		SOCI=0 SOCI_WHY="SOCI's index could not be made: $(tail -n 3 "$WORK/soci-convert.log" | tr '\n' ' ')"
		log "$SOCI_WHY"
	fi
	stop_node
}

# --- measurements ------------------------------------------------------------

# T and B: seconds and bytes of each run, by kind; P: phases.
declare -A T B P
# run KIND SNAPSHOTTER IMAGE NAME [NODE-IMAGE...]: a cold run on a new node.
run() {
	local kind=$1 sn=$2 image=$3 name=$4 s b p1 p2 p3 p4
	shift 4
	start_node "$sn" "$@"
	read -r s b p1 p2 p3 p4 <<<"$(start "$image" "$name")"
	lazy_check "$kind" "$b"
	T[$kind]+=" $s" B[$kind]+=" $b" P[$kind.runp]+=" $p1" P[$kind.pull]+=" $p2" P[$kind.create]+=" $p3" P[$kind.start]+=" $p4"
}
# warm KIND IMAGE NAME: a warm run on the node as it is.
warm() {
	local kind=$1 image=$2 name=$3 s b p1 p2 p3 p4
	read -r s b p1 p2 p3 p4 <<<"$(start "$image" "$name" warm)"
	T[$kind]+=" $s" B[$kind]+=" $b" P[$kind.runp]+=" $p1" P[$kind.create]+=" $p3" P[$kind.start]+=" $p4"
}

# lazy_check KIND BYTES: a lazy start that was not (a snapshotter that
# pulled the image whole) is no measurement of it.
lazy_check() {
	local n=$WORK/node
	case $1 in
	boot | fresh)
		grep -q 'boot image, its own layer' "$n/snapshotter.log" ||
			die "$1: the snapshotter mounted no boot image; its log: $(tail -n 5 "$n/snapshotter.log")"
		;;
	soci)
		[ "$2" -lt $((PLAIN_GZ / 2)) ] ||
			die "soci: $2 bytes over the link, the whole image: SOCI pulled it whole; its log: $(grep -i -m 3 'error\|fall' "$n/snapshotter.log")"
		;;
	esac
}

measure() {
	local i plain=127.0.0.1:$REGP/snapbench/py:plain
	log "cold runs, $COLD_RUNS of each, in turn"
	for i in $(seq "$COLD_RUNS"); do
		run plain mkbootfs "$plain" "plain-$i" "$KEEP"
		run boot mkbootfs "$BOOT" "boot-$i" "$KEEP"
		run fresh mkbootfs "$BOOT" "fresh-$i"
		[ "$SOCI" = 1 ] && run soci soci "$SOCI_IMAGE" "soci-$i"
		log "cold run $i: original ${T[plain]##* } s, converted ${T[boot]##* } s (fresh node ${T[fresh]##* } s)${T[soci]:+, SOCI ${T[soci]##* } s}"
	done

	# The original is pulled past the link: its warm starts read nothing
	# of a registry.
	log "warm runs, $RUNS of each, in turn"
	start_node mkbootfs "$KEEP" "$PLAIN"
	start "$PLAIN" plain-warmup warm >/dev/null
	start "$BOOT" boot-warmup >/dev/null
	for i in $(seq "$RUNS"); do
		warm plainwarm "$PLAIN" "plain-warm-$i"
		warm bootwarm "$BOOT" "boot-warm-$i"
	done
	if [ "$SOCI" = 1 ]; then
		start_node soci "$PLAIN"
		start "$PLAIN" plain-warmup warm >/dev/null
		start "$SOCI_IMAGE" soci-warmup >/dev/null
		for i in $(seq "$RUNS"); do
			warm plainsociwarm "$PLAIN" "plain-sociwarm-$i"
			warm sociwarm "$SOCI_IMAGE" "soci-warm-$i"
		done
	fi
	stop_node
}

report() {
	local k
	for k in "${!T[@]}"; do T[$k]=$(echo "${T[$k]}" | median); done
	for k in "${!B[@]}"; do B[$k]=$(echo "${B[$k]}" | median); done
	for k in "${!P[@]}"; do P[$k]=$(echo "${P[$k]}" | median); done
	echo "python3 -c 'print(42)' in Debian + python3, gdb, strace, procps, through containerd $(containerd --version | awk '{print $3}') CRI: crictl runp + pull + create + start, to its exit"
	echo "link: ${RATE} Mbit/s, ${DELAY} ms each way (Toxiproxy + htb on lo; a new GET /v2/ through it: $LINK_CHECK ms); $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg)"
	echo "original: $(mb "$PLAIN_GZ") MB compressed in the registry; medians of $COLD_RUNS cold and $RUNS warm runs; the original on mkbootfs's snapshotter, SOCI on its own"
	printf '%-52s %8s %9s   %6s %6s %6s %6s\n' run seconds "link MB" runp pull create start
	row() { # label kind
		local k=$2
		printf '%-52s %8.2f %9s   %6.2f %6s %6.2f %6.2f\n' "$1" "${T[$k]}" "$(mb "${B[$k]}")" "${P[$k.runp]}" "${P[$k.pull]:--}" "${P[$k.create]}" "${P[$k.start]}"
	}
	row "original, cold" plain
	row "mkbootfs snapshotter, cold, fresh node" fresh
	row "mkbootfs snapshotter, cold, node has bootinit's layer" boot
	[ "$SOCI" = 1 ] && row "SOCI $SOCI_VERSION, cold" soci
	row "original, warm (image present, new pod)" plainwarm
	row "mkbootfs snapshotter, warm" bootwarm
	if [ "$SOCI" = 1 ]; then
		row "original, warm, on SOCI's node" plainsociwarm
		row "SOCI $SOCI_VERSION, warm" sociwarm
	fi
	[ -z "${SOCI_WHY:-}" ] || echo "no SOCI: $SOCI_WHY"
	echo
	bar "cold seconds / original's (node has bootinit's layer)" "$(div "${T[boot]}" "${T[plain]}")" 0.05
	bar "cold bytes / original's (node has bootinit's layer)" "$(div "${B[boot]}" "${B[plain]}")" 0.03
	echo "    fresh node: $(div "${T[fresh]}" "${T[plain]}")x the time, $(div "${B[fresh]}" "${B[plain]}")x the bytes (DESIGN.md's profiled fresh-node bar: 0.07, 0.06)"
	bar "warm seconds / original's warm" "$(div "${T[bootwarm]}" "${T[plainwarm]}")" 1.1
	if [ "$SOCI" = 1 ]; then
		echo "    SOCI: cold $(div "${T[soci]}" "${T[plain]}")x the time, $(div "${B[soci]}" "${B[plain]}")x the bytes; warm $(div "${T[sociwarm]}" "${T[plainsociwarm]}")x its node's original"
	fi
}

began=$SECONDS
link_start
link_proxy registry REGP "$REG" 30
prepare
link_shape "$RATE" "$DELAY"
log "link: ${RATE} Mbit/s down, ${DELAY} ms each way (a GET /v2/ through it: $LINK_CHECK ms); registry 127.0.0.1:$REG behind :$REGP"
measure
link_cleanup
report
echo "bench/snapshotter.sh took $((SECONDS - began)) s"
