#!/bin/bash
# Cold start on an emulated slow link, and dedup of related images.
#
# coldstart: for each workload, store and kind of conversion (with the
# workload's access profile, `convert --profile`, and without one, as
# `mkbootfs convert IMAGE` gives), in one run, these starts of the boot
# image against the plain image:
#   fresh node   boot image pull (bootinit's layer too) + lazy run, empty
#                cache volume, against plain cold: docker pull + run, no
#                image on the node
#   node         the same on a node that has bootinit's layer (another
#                boot image pulled first, past the link)
#   second       the next start on that node, cache volume kept, against
#                plain warm (docker run, image present)
#   third on     every later start (--steady of them a run), against
#                plain warm
# Plain and converted starts take turns: each run of the loop does plain
# cold, every fresh and node start, and the warm starts with plain warm
# ones in between; the table is of medians over --runs. Each row gives
# seconds and bytes moved over the link, both as a ratio against plain
# (fresh and node against plain cold's seconds and bytes; second and
# third on against plain warm's seconds, their bytes against plain
# cold's), and the chunks the start fetched, then the bars. A command
# workload is timed to its exit (docker run returns), a server to its
# first HTTP response. Each workload's image has its start as its CMD,
# which is what `convert` without a profile sees.
# Workloads:
#   apt   Debian minbase, `apt-get --version`
#   http  Debian + python3, `python3 -m http.server`
#   py42  Debian + python3, gdb, strace, procps, `python3 -c 'print(42)'`
#   few   that image, `cat /etc/os-release`: a start that reads a few
#         files of a large image
# The link: every server on 127.0.0.1 behind a Toxiproxy with a latency
# toxic on both streams, and an htb class per proxy (bench/lib.sh's link:
# on a device of the run's own, to which lo sends the proxy's packets) that
# limits the download direction to the rate and counts its bytes.
# Containers run with --network host to reach them.
# Its own docker-registry (temp storage) holds both images; chunks come
# from `mkbootfs serve --http` (http) and, in a second converted image,
# from the registry next to the boot image (oci). bootinit gets a nonce
# appended for the run, so that no image outside it holds its layer and a
# fresh node pulls it.
#
# dedup: 10 related Debian images, each rebuilt from scratch by debootstrap
# as one tree (minbase, then each adding packages), converted into one
# store, against the sum of their gzip layers, against `casync make` of all
# 10 into one store, and against the largest image's own store.
#
# Usage: bench/coldstart.sh [--mode all|coldstart|dedup] [--rate MBIT]
#   [--delay MS] [--workloads apt,http,py42,few] [--stores http,oci]
#   [--profiles profiled,unprofiled] [--runs N] [--steady N]
#   [--convert-flags 'FLAGS']
# Quick, while developing (one workload, one store, one run; ~4 minutes):
#   bench/coldstart.sh --mode coldstart --workloads py42 --stores http --runs 1 --steady 2
# Every row of every workload (~10 minutes a run, plus ~8 to prepare):
#   bench/coldstart.sh --mode coldstart --runs 3
# Env defaults: COLDSTART_MODE, COLDSTART_RATE_MBIT (25),
# COLDSTART_DELAY_MS (10, each way), COLDSTART_WORKLOADS, COLDSTART_STORES,
# COLDSTART_PROFILES, RUNS (3), COLDSTART_STEADY (3), COLDSTART_CONVERT_FLAGS
# (more flags for every convert), MKBOOTFS (a built binary with bootinit
# beside it; default: built here), BENCH_TOOLS (where Toxiproxy is
# installed; /var/cache/mkbootfs/toxiproxy-v2.12.0).
# Needs root, dockerd, docker-registry, tc, debootstrap, casync, go (to
# install Toxiproxy once). The first run builds Debian trees into
# /var/cache/mkbootfs/rootfs (each image ~3 minutes; dedup: ~15 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=${COLDSTART_MODE:-all}
RATE=${COLDSTART_RATE_MBIT:-25}
DELAY=${COLDSTART_DELAY_MS:-10}
WORKLOADS=${COLDSTART_WORKLOADS:-apt,http,py42,few}
STORES=${COLDSTART_STORES:-http,oci}
PROFILES=${COLDSTART_PROFILES:-profiled,unprofiled}
RUNS=${RUNS:-3}
STEADY=${COLDSTART_STEADY:-3}
CONVERT_FLAGS=${COLDSTART_CONVERT_FLAGS:-}
# log, die, need, free_port, wait_http, toxi, manifest_size, the numbers'
# helpers, TOOLS, ROOTFS_DIR, DEBS.
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
MINBASE=${MKBOOTFS_DEBIAN_ROOTFS:-$ROOTFS_DIR/bookworm-minbase}

usage() { sed -n '/^# Usage:/,/^# Env/p' "$0" | sed '$d; s/^# //'; }
while [ $# -gt 0 ]; do
	case $1 in
	--mode) MODE=$2; shift ;;
	--rate) RATE=$2; shift ;;
	--delay) DELAY=$2; shift ;;
	--workloads) WORKLOADS=$2; shift ;;
	--stores) STORES=$2; shift ;;
	--profiles) PROFILES=$2; shift ;;
	--runs) RUNS=$2; shift ;;
	--steady) STEADY=$2; shift ;;
	--convert-flags) CONVERT_FLAGS=$2; shift ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; exit 2 ;;
	esac
	shift
done

case $MODE in all | coldstart | dedup) ;; *) die "--mode $MODE: want all, coldstart or dedup" ;; esac
for kind in ${STORES//,/ }; do
	case $kind in http | oci) ;; *) die "--stores $STORES: want http (mkbootfs serve), oci (the registry), or both: http,oci" ;; esac
done
for prof in ${PROFILES//,/ }; do
	case $prof in profiled | unprofiled) ;; *) die "--profiles $PROFILES: want profiled (convert --profile), unprofiled (convert), or both" ;; esac
done
for w in ${WORKLOADS//,/ }; do
	case $w in apt | http | py42 | few) ;; *) die "--workloads $WORKLOADS: unknown workload $w (want apt, http, py42, few)" ;; esac
done
[[ $RATE =~ ^[0-9]+$ && $RATE -gt 0 ]] || die "--rate $RATE: want a whole number of Mbit/s"
[[ $DELAY =~ ^[0-9]+$ ]] || die "--delay $DELAY: want whole milliseconds"
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "--runs $RUNS: want a positive number"
[[ $STEADY =~ ^[1-9][0-9]*$ ]] || die "--steady $STEADY: want a positive number"
[ "$(id -u)" -eq 0 ] || die "run as root (tc on lo, docker, debootstrap)"

# Everything made here is listed, and removed on exit by cleanup.
WORK=$(mktemp -d /var/tmp/coldstart-bench.XXXXXX)
RUN_ID=$(basename "$WORK" | cut -d. -f2 | tr 'A-Z' 'a-z')
PIDS=() VOLUMES=()
cleanup() {
	local v p
	docker ps -aq --filter "name=^coldstart-$RUN_ID-" | xargs -r docker rm -f >/dev/null 2>&1 || true
	forget_images
	for v in "${VOLUMES[@]}"; do docker volume rm -f "$v" >/dev/null 2>&1 || true; done
	link_cleanup
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

MKBOOTFS=${MKBOOTFS:-}
if [ -z "$MKBOOTFS" ]; then
	need go "install Go, or pass MKBOOTFS=bin/mkbootfs after make build"
	CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$WORK/bin/mkbootfs" ./cmd/mkbootfs
	CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$WORK/bin/bootinit" ./cmd/bootinit
	MKBOOTFS=$WORK/bin/mkbootfs
fi
# bootinit with this run's nonce after its end (the ELF loader reads only
# what its headers name): its layer is this run's alone.
BOOTINIT=$WORK/bootinit
cp "$(dirname "$MKBOOTFS")/bootinit" "$BOOTINIT" || die "no bootinit beside $MKBOOTFS: build both (make build)"
printf '\nbench/coldstart.sh %s\n' "$RUN_ID" >>"$BOOTINIT"

# --- helpers -------------------------------------------------------------

chunk_bytes() { find "$1" -name '*.cacnk' -printf '%s\n' | awk '{s += $1} END {print s + 0}'; }
chunk_count() { find "$1" -name '*.cacnk' | wc -l; }

# --- coldstart -------------------------------------------------------------

# IMAGES are every reference this run made; forget_images removes them
# from the docker daemon (a cold run starts with none of them).
IMAGES=()
forget_images() {
	local i
	for i in "${IMAGES[@]}"; do docker rmi -f "$i" >/dev/null 2>&1 || true; done
}

start_link() {
	docker info >/dev/null 2>&1 || die "docker does not answer: run scripts/setup.sh (starts dockerd)"
	[ -c /dev/fuse ] || die "/dev/fuse missing: modprobe fuse"
	link_start
	free_port CHUNK
	# Both proxies add DELAY each way; the htb classes limit what they
	# send towards the client (docker, or bootinit) and count it.
	link_proxy registry REGP "$REG" 10
	link_proxy chunks CHUNKP "$CHUNK" 20
	link_shape "$RATE" "$DELAY"
	log "link: ${RATE} Mbit/s down, ${DELAY} ms each way (a GET /v2/ through it: $LINK_CHECK ms); registry 127.0.0.1:$REG behind :$REGP, chunk server :$CHUNK behind :$CHUNKP"
}
# sent: bytes sent so far over the shaped link (both classes).
sent() { link_sent; }


# workload W: set ROOTFS, INCLUDE (the packages debootstrap adds to
# minbase), EXCLUDE (tar patterns left out of the image), CMD (the image's,
# as JSON), CHECK (a pattern its first output line matches) and SERVER (1
# for a server timed to its first response).
workload() {
	SERVER=0 EXCLUDE=
	case $1 in
	apt) ROOTFS=$MINBASE INCLUDE= CMD='["apt-get","--version"]' CHECK='apt *' ;;
	http)
		ROOTFS=$ROOTFS_DIR/bookworm-python INCLUDE=python3 SERVER=1 CHECK=
		CMD='["python3","-m","http.server","8000","--bind","127.0.0.1"]'
		;;
	py42 | few)
		# debootstrap does not resolve virtual packages: gdb needs
		# libboost-regex1.74.0-icu72, which libboost-regex1.74.0 provides.
		ROOTFS=$ROOTFS_DIR/bookworm-python-tools INCLUDE=python3,gdb,strace,procps,libboost-regex1.74.0
		# Without the .debs debootstrap leaves, as an image's build
		# would clean them: 298 MB, 110 MB gzipped, as the peers' image.
		EXCLUDE=./var/cache/apt/archives/*.deb
		if [ "$1" = py42 ]; then
			CMD='["python3","-c","print(42)"]' CHECK=42
		else
			CMD='["cat","/etc/os-release"]' CHECK='PRETTY_NAME=*'
		fi
		;;
	esac
}

# prepare W: push W's plain image and, for each store and profile kind, its
# boot image to the registry. A file naming this run makes the plain layer
# one that no image in the daemon shares, so a pull moves all of it.
declare -A PLAIN_GZ CHUNKS_TOTAL CHUNK_URL PROFILE_NOTE
prepare() {
	local w=$1 out kind prof boot
	local plain=127.0.0.1:$REG/coldstart/$w:plain
	workload "$w"
	if [ -n "$INCLUDE" ]; then
		DEBOOTSTRAP_CACHE_DIR=$DEBS DEBOOTSTRAP_INCLUDE=$INCLUDE scripts/debian-rootfs.sh "$ROOTFS" >&2
	else
		[ -f "$ROOTFS/etc/debian_version" ] || scripts/debian-rootfs.sh "$ROOTFS" >&2
	fi
	IMAGES+=("$plain" "127.0.0.1:$REGP/coldstart/$w:plain")
	mkdir -p "$WORK/nonce/etc"
	echo "bench/coldstart.sh run $RUN_ID, workload $w" >"$WORK/nonce/etc/mkbootfs-coldstart"
	log "$w: docker import of $ROOTFS, push"
	tar -C "$ROOTFS" --xattrs --xattrs-include='*' ${EXCLUDE:+--exclude="$EXCLUDE"} -cf - . -C "$WORK/nonce" ./etc/mkbootfs-coldstart |
		docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
			--change "CMD $CMD" - "$plain" >/dev/null
	docker push -q "$plain" >/dev/null || die "docker push $plain failed"
	PLAIN_GZ[$w]=$(manifest_size "coldstart/$w" plain)
	local flags=()
	read -r -a flags <<<"$CONVERT_FLAGS"
	for kind in ${STORES//,/ }; do
		for prof in ${PROFILES//,/ }; do
			boot=127.0.0.1:$REG/coldstart/$w:bootfs-$kind-$prof
			IMAGES+=("$boot" "127.0.0.1:$REGP/coldstart/$w:bootfs-$kind-$prof")
			local args=(--bootinit "$BOOTINIT" "${flags[@]}")
			[ "$kind" = http ] && args+=(--store "$WORK/store")
			if [ "$prof" = profiled ]; then
				out=$(convert_profiled "$w" "${args[@]}" "docker://$plain" "$boot") || die "mkbootfs convert --profile $plain $boot: $out"
			else
				out=$("$MKBOOTFS" convert "${args[@]}" "docker://$plain" "$boot" 2>&1) || die "mkbootfs convert $plain $boot: $out"
			fi
			log "$w, $kind, $prof: $(echo "$out" | tr '\n' ' ')"
			CHUNKS_TOTAL[$w.$kind.$prof]=$(echo "$out" | sed -n 's/.* in \([0-9]*\) chunks.*/\1/p' | tail -1)
			PROFILE_NOTE[$w.$kind.$prof]=$(echo "$out" | grep '^profile:' | tail -1 || true)
			if [ "$kind" = http ]; then
				CHUNK_URL[$w.$kind.$prof]=http://127.0.0.1:$CHUNKP/
			else
				# The boot image records the registry it was pushed to; its
				# containers read the same repository through the link.
				CHUNK_URL[$w.$kind.$prof]=$(echo "$out" | sed -n 's/.*chunks from \(oci:[^ ,]*\).*/\1/p' | tail -1 | sed "s|127.0.0.1:$REG/|127.0.0.1:$REGP/|")
				[ -n "${CHUNK_URL[$w.$kind.$prof]}" ] || die "mkbootfs convert did not say where $boot reads its chunks: $out"
			fi
		done
	done
	forget_images
}

# convert_profiled W CONVERT-ARGS...: convert with the access profile of
# workload W's start: the image's CMD, or for the server its start on a
# free port, asked for a response while the profiling run lasts.
convert_profiled() {
	local w=$1 port pid
	shift
	if [ "$w" != http ]; then
		"$MKBOOTFS" convert --profile "$@" 2>&1
		return
	fi
	free_port port
	"$MKBOOTFS" convert --profile --profile-timeout 20s "$@" -- python3 -m http.server "$port" --bind 127.0.0.1 >"$WORK/profile.out" 2>&1 &
	pid=$!
	for _ in $(seq 3000); do
		curl -fs -o /dev/null --max-time 5 "http://127.0.0.1:$port/" && break
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.01
	done
	local rc=0
	wait "$pid" || rc=$?
	cat "$WORK/profile.out"
	return $rc
}

# start_app W IMAGE DOCKER-RUN-FLAGS...: run workload W and print the time
# (EPOCHREALTIME) it was done: a command's exit, a server's first response.
start_app() {
	local w=$1 image=$2
	shift 2
	workload "$w"
	if [ "$SERVER" = 0 ]; then
		local out first
		out=$(docker run --rm --network host "$@" "$image" 2>"$WORK/run.err") ||
			die "docker run $image ($CMD) failed: $(tail -n 5 "$WORK/run.err")"
		echo "$EPOCHREALTIME"
		first=${out%%$'\n'*}
		# shellcheck disable=SC2053 # CHECK is a pattern
		[[ $first == $CHECK ]] || die "docker run $image ($CMD) printed '$first', not '$CHECK': $(tail -n 5 "$WORK/run.err")"
		return
	fi
	local port name=coldstart-$RUN_ID-$BASHPID-$RANDOM ready=
	free_port port
	docker run -d --name "$name" --network host "$@" "$image" \
		python3 -m http.server "$port" --bind 127.0.0.1 >/dev/null 2>"$WORK/run.err" ||
		die "docker run $image python3 -m http.server failed: $(tail -n 5 "$WORK/run.err")"
	for i in $(seq 30000); do
		if curl -fs -o /dev/null --max-time 5 "http://127.0.0.1:$port/"; then
			ready=$EPOCHREALTIME
			break
		fi
		# Checking the container costs a docker round trip: not each time.
		if [ $((i % 50)) -eq 0 ] && [ "$(docker inspect -f '{{.State.Running}}' "$name")" != true ]; then
			die "$name ($image) exited before serving: $(docker logs "$name" 2>&1 | tail -n 5)"
		fi
		sleep 0.01
	done
	[ -n "$ready" ] || die "$name ($image) did not answer http://127.0.0.1:$port/ within 5 minutes"
	# A converted container gets a stop, not a kill: bootinit writes
	# fetched chunks into the cache volume as the app exits. A plain
	# one has python as PID 1, which ignores SIGTERM: kill it.
	[ $# -gt 0 ] && docker stop -t 30 "$name" >/dev/null
	docker rm -f "$name" >/dev/null
	echo "$ready"
}

# fetched KIND CACHE-DIR: chunks in the cache volume, and for our chunk
# server the chunks it has sent (a check on the cache count).
fetched() {
	local n
	n=$(chunk_count "$2")
	if [ "$1" = http ]; then
		echo "$n $(grep -c 'method=GET .*\.cacnk status=200' "$WORK/serve.log" || true)"
	else
		echo "$n 0"
	fi
}

# SAMPLES[W|KIND|PROF|ROW] are "seconds:bytes:chunks" of each start, in
# runs; plain's are W|plain|-|cold and, in turn with each boot image's
# warm starts, W|KIND|PROF|plainwarm.
declare -A SAMPLES
sample() { SAMPLES[$1]+=" $2:$3:$4"; }

plain_cold() {
	local w=$1 plain=127.0.0.1:$REGP/coldstart/$1:plain t0 ready b0 b1
	log "$w: plain cold"
	forget_images
	sync
	b0=$(sent) t0=$EPOCHREALTIME
	docker pull -q "$plain" >/dev/null || die "docker pull $plain failed"
	ready=$(start_app "$w" "$plain")
	b1=$(sent)
	sample "$w|plain|-|cold" "$(sub "$ready" "$t0")" $((b1 - b0)) 0
}

# boot_run W KIND PROF ROW VOLUME PULL: one start of the boot image with
# the cache VOLUME, after pulling it past the link if PULL is 1.
boot_run() {
	local w=$1 kind=$2 prof=$3 row=$4 vol=$5 pull=$6 boot=127.0.0.1:$REGP/coldstart/$1:bootfs-$2-$3
	local t0 ready b0 b1 n0 s0 n1 s1 cache
	cache=$(docker volume inspect -f '{{.Mountpoint}}' "$vol")
	sync
	read -r n0 s0 <<<"$(fetched "$kind" "$cache")"
	b0=$(sent) t0=$EPOCHREALTIME
	if [ "$pull" = 1 ]; then
		docker pull -q "$boot" >/dev/null || die "docker pull $boot failed"
	fi
	ready=$(start_app "$w" "$boot" --device /dev/fuse --cap-add SYS_ADMIN -v "$vol:/.bootfs/cache" \
		-e "MKBOOTFS_STORE=${CHUNK_URL[$w.$kind.$prof]}")
	b1=$(sent)
	read -r n1 s1 <<<"$(fetched "$kind" "$cache")"
	local chunks=$((n1 - n0))
	[ "$kind" = http ] && chunks+=/$((s1 - s0))
	sample "$w|$kind|$prof|$row" "$(sub "$ready" "$t0")" $((b1 - b0)) "$chunks"
	LAST_PULL=$((b1 - b0))
}

# new_volume W KIND PROF: an empty cache volume for the boot image, in
# VOL (not printed: VOLUMES must grow in this shell, not a subshell's).
new_volume() {
	VOL=coldstart-$RUN_ID-$1-$2-$3
	VOLUMES+=("$VOL")
	docker volume rm -f "$VOL" >/dev/null
	docker volume create "$VOL" >/dev/null
}

# boot_fresh W KIND PROF: the boot image's start on a fresh node.
boot_fresh() {
	local w=$1 kind=$2 prof=$3 vol b0
	log "$w, $kind, $prof: fresh node"
	forget_images
	new_volume "$w" "$kind" "$prof"
	vol=$VOL
	b0=$(sent)
	boot_run "$w" "$kind" "$prof" fresh "$vol" 1
	# bootinit's layer (3.7 MB) must have moved over the link.
	[ "$LAST_PULL" -gt 1000000 ] ||
		log "WARNING: $w, $kind, $prof: the fresh start moved $LAST_PULL bytes, too few for bootinit's layer"
}

# boot_node W KIND PROF: on a node that has bootinit's layer, a first
# start, the second, and STEADY more, each warm one in turn with plain's.
boot_node() {
	local w=$1 kind=$2 prof=$3 vol i t0 ready plain=127.0.0.1:$REG/coldstart/$1:plain
	log "$w, $kind, $prof: node has bootinit's layer, second start, $STEADY more, plain warm in turn"
	forget_images
	docker pull -q "$KEEP" >/dev/null || die "docker pull $KEEP failed"
	new_volume "$w" "$kind" "$prof"
	vol=$VOL
	boot_run "$w" "$kind" "$prof" node "$vol" 1
	# The plain image comes from the registry's own port, not over the
	# link, and runs once first: its own first start is not a warm one.
	docker pull -q "$plain" >/dev/null || die "docker pull $plain failed"
	start_app "$w" "$plain" >/dev/null
	for i in $(seq 0 "$STEADY"); do
		t0=$EPOCHREALTIME
		ready=$(start_app "$w" "$plain")
		sample "$w|$kind|$prof|plainwarm" "$(sub "$ready" "$t0")" 0 0
		if [ "$i" = 0 ]; then
			boot_run "$w" "$kind" "$prof" second "$vol" 0
		else
			boot_run "$w" "$kind" "$prof" steady "$vol" 0
		fi
	done
}

# field N SAMPLES: the Nth field (1 seconds, 2 bytes, 3 chunks) of each.
field() { tr ' ' '\n' | grep . | cut -d: -f"$1"; }
med() { echo "${SAMPLES[$1]:-}" | field "$2" | median; }
# med_chunks KEY: the median of the cache's count, with the server's
# median after a slash for an http store.
med_chunks() {
	local c s
	c=$(echo "${SAMPLES[$1]:-}" | field 3 | cut -d/ -f1 | median)
	s=$(echo "${SAMPLES[$1]:-}" | field 3 | grep / | cut -d/ -f2 | median)
	echo "$c${s:+ (served $s)}"
}

coldstart() {
	start_link
	# Another boot image, pulled past the link where a run needs a node
	# that already has bootinit's layer.
	KEEP=127.0.0.1:$REG/coldstart/keep:bootfs
	IMAGES+=("$KEEP")
	[ -f "$WORK/busybox/bin/busybox" ] || scripts/busybox-rootfs.sh "$WORK/busybox" >&2
	"$MKBOOTFS" convert --bootinit "$BOOTINIT" --store "$WORK/store" --index "$WORK/keep.idx" "dir:$WORK/busybox" "$KEEP" >/dev/null ||
		die "mkbootfs convert of the busybox rootfs failed"
	if [[ ,$STORES, == *,http,* ]]; then
		"$MKBOOTFS" serve --http "127.0.0.1:$CHUNK" "$WORK/store" >"$WORK/serve.log" 2>&1 &
		PIDS+=($!)
		wait_http "http://127.0.0.1:$CHUNK/healthz" "mkbootfs serve" "$WORK/serve.log"
	fi
	local w kind prof r t=$SECONDS
	for w in ${WORKLOADS//,/ }; do prepare "$w"; done
	log "prepared in $((SECONDS - t)) s"
	for r in $(seq "$RUNS"); do
		t=$SECONDS
		for w in ${WORKLOADS//,/ }; do
			plain_cold "$w"
			for kind in ${STORES//,/ }; do
				for prof in ${PROFILES//,/ }; do
					boot_fresh "$w" "$kind" "$prof"
					boot_node "$w" "$kind" "$prof"
				done
			done
		done
		log "run $r of $RUNS took $((SECONDS - t)) s"
	done
	report
}

report() {
	local w kind prof row key ps pb pw s b ratio_s ratio_b
	echo "cold start on ${RATE} Mbit/s, ${DELAY} ms each way (Toxiproxy + htb; a new GET /v2/ through it took $LINK_CHECK ms); $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg)"
	echo "medians of $RUNS runs (third on: of $((RUNS * STEADY)) starts); plain and converted starts in turn"
	echo "a command is timed to its exit, the http server to its first response; bytes: moved over the link (tc)"
	echo "chunks from http: mkbootfs serve --http; from oci: the registry, next to the boot image"
	for w in ${WORKLOADS//,/ }; do
		workload "$w"
		ps=$(med "$w|plain|-|cold" 1) pb=$(med "$w|plain|-|cold" 2)
		echo
		echo "$w: CMD $CMD; plain image $(mb "${PLAIN_GZ[$w]}") MB compressed; plain cold (pull + run) ${ps} s, $(mb "$pb") MB moved"
		printf '  %-5s %-10s %-10s %8s %7s %8s %7s %8s  %s\n' store convert start "s" "x plain" "MB" "x plain" "plain s" "chunks fetched (of the image's)"
		for kind in ${STORES//,/ }; do
			for prof in ${PROFILES//,/ }; do
				pw=$(med "$w|$kind|$prof|plainwarm" 1)
				for row in fresh node second steady; do
					key="$w|$kind|$prof|$row"
					s=$(med "$key" 1) b=$(med "$key" 2)
					local base=$ps
					case $row in second | steady) base=$pw ;; esac
					ratio_s=$(div "$s" "$base") ratio_b=$(div "$b" "$pb")
					RATIO[$key.s]=$ratio_s RATIO[$key.b]=$ratio_b
					printf '  %-5s %-10s %-10s %8.3f %7.3f %8s %7.3f %8.3f  %s\n' "$kind" "$prof" "$(rowname "$row")" \
						"$s" "$ratio_s" "$(mb "$b")" "$ratio_b" "$base" "$(med_chunks "$key") of ${CHUNKS_TOTAL[$w.$kind.$prof]}"
				done
			done
		done
		for kind in ${STORES//,/ }; do
			for prof in ${PROFILES//,/ }; do
				[ -z "${PROFILE_NOTE[$w.$kind.$prof]}" ] || echo "  $kind, $prof: ${PROFILE_NOTE[$w.$kind.$prof]}"
			done
		done
	done
	echo
	echo "samples (seconds:bytes:chunks[/served]):"
	for key in $(printf '%s\n' "${!SAMPLES[@]}" | sort); do echo "  $key:${SAMPLES[$key]}"; done
	echo
	echo "bars (issue 19):"
	for w in ${WORKLOADS//,/ }; do
		for kind in ${STORES//,/ }; do
			for prof in ${PROFILES//,/ }; do
				key="$w|$kind|$prof"
				if [ "$prof" = profiled ]; then
					bar "$w, $kind, profiled: fresh node, seconds" "${RATIO[$key|fresh.s]}" 0.07
					bar "$w, $kind, profiled: fresh node, bytes" "${RATIO[$key|fresh.b]}" 0.06
					bar "$w, $kind, profiled: node has bootinit, seconds" "${RATIO[$key|node.s]}" 0.05
					bar "$w, $kind, profiled: node has bootinit, bytes" "${RATIO[$key|node.b]}" 0.03
				else
					bar "$w, $kind, unprofiled: fresh node, seconds" "${RATIO[$key|fresh.s]}" 0.10
					bar "$w, $kind, unprofiled: node has bootinit, seconds" "${RATIO[$key|node.s]}" 0.08
				fi
				bar "$w, $kind, $prof: second start / plain warm" "${RATIO[$key|second.s]}" 1.2
				bar "$w, $kind, $prof: third on / plain warm" "${RATIO[$key|steady.s]}" 1.1
			done
		done
	done
}
declare -A RATIO
rowname() {
	case $1 in
	fresh) echo "fresh" ;;
	node) echo "node" ;;
	second) echo "second" ;;
	steady) echo "third on" ;;
	esac
}

# --- dedup -----------------------------------------------------------------

# Ten related images: minbase (the cached one), then each adds packages to
# the one before.
DEDUP_STEPS=(00-minbase: 01-ca:ca-certificates 02-curl:curl 03-procps:procps,iproute2
	04-editors:less,vim-tiny 05-python:python3 06-ssh:openssh-client 07-gpg:gnupg
	08-git:git 09-build:make,patch,xz-utils,file)

dedup() {
	need casync "apt-get install casync"
	need debootstrap "apt-get install debootstrap"
	[ -f "$MINBASE/etc/debian_version" ] || scripts/debian-rootfs.sh "$MINBASE" >&2
	local trees=("$MINBASE") names=(${DEDUP_STEPS[0]%%:*}) inc= step dir
	for step in "${DEDUP_STEPS[@]:1}"; do
		dir=$ROOTFS_DIR/dedup/${step%%:*}
		inc=${inc:+$inc,}${step#*:}
		DEBOOTSTRAP_CACHE_DIR=$DEBS DEBOOTSTRAP_INCLUDE=$inc scripts/debian-rootfs.sh "$dir" >&2
		trees+=("$dir") names+=("${step%%:*}")
	done

	local dd=$WORK/dedup out data gz own largest=0 largest_name= sum_gz=0 sum_own=0 sum_data=0 rows=()
	mkdir -p "$dd"
	local i
	for i in "${!trees[@]}"; do
		dir=${trees[$i]}
		log "dedup: ${names[$i]} ($dir): gzip layer, own store, combined store, casync"
		gz=$(tar -C "$dir" --xattrs --xattrs-include='*' -cf - . | gzip -6 | wc -c)
		out=$("$MKBOOTFS" convert --store "$dd/own" --index "$dd/x.idx" "dir:$dir" 2>&1) || die "mkbootfs convert dir:$dir: $out"
		data=$(echo "$out" | sed -n 's/.* entries, \([0-9.]*\) MB in .*/\1/p' | head -1)
		own=$(chunk_bytes "$dd/own")
		rm -rf "$dd/own"
		out=$("$MKBOOTFS" convert --store "$dd/all" --index "$dd/x.idx" "dir:$dir" 2>&1) || die "mkbootfs convert dir:$dir into the combined store: $out"
		casync make --digest=sha256 --compression=zstd --store="$dd/casync" "$dd/x.caidx" "$dir" >/dev/null ||
			die "casync make of $dir failed"
		rows+=("${names[$i]} $data $gz $own")
		sum_gz=$((sum_gz + gz)) sum_own=$((sum_own + own))
		sum_data=$(awk -v a="$sum_data" -v b="$data" 'BEGIN { print a + b }')
		if [ "$own" -gt "$largest" ]; then largest=$own largest_name=${names[$i]}; fi
	done
	local all ca
	all=$(chunk_bytes "$dd/all") ca=$(chunk_bytes "$dd/casync")

	echo "dedup: ${#trees[@]} related Debian bookworm images, each one tree rebuilt from scratch by debootstrap (cumulative --include); gzip layer: tar | gzip -6, as docker push writes it"
	printf '%-12s %10s %14s %14s\n' image "data MB" "gzip layer MB" "own store MB"
	local r n d g o
	for r in "${rows[@]}"; do
		read -r n d g o <<<"$r"
		printf '%-12s %10s %14s %14s\n' "$n" "$d" "$(mb "$g")" "$(mb "$o")"
	done
	printf '%-12s %10s %14s %14s\n' sum "$sum_data" "$(mb "$sum_gz")" "$(mb "$sum_own")"
	echo "combined mkbootfs store of all ${#trees[@]}: $(mb "$all") MB in $(chunk_count "$dd/all") chunks"
	echo "combined casync store (make --digest=sha256 --compression=zstd): $(mb "$ca") MB in $(chunk_count "$dd/casync") chunks"
	echo "largest image's own store: $largest_name, $(mb "$largest") MB"
	bar "dedup: combined store / largest image's own store" "$(div "$all" "$largest")" 1.2
	echo "    combined store / sum of gzip layers: $(div "$all" "$sum_gz"); / casync's combined store: $(div "$all" "$ca")"
}

start=$SECONDS
case $MODE in
all) coldstart; echo; dedup ;;
coldstart) coldstart ;;
dedup) dedup ;;
esac
echo "bench/coldstart.sh --mode $MODE took $((SECONDS - start)) s"
