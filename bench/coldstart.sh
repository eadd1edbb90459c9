#!/bin/bash
# Cold start on an emulated slow link, and dedup of related images (issue 9).
#
# coldstart: for each workload, in one run, the plain image (docker pull +
# docker run, image removed first), the converted image cold (boot image
# pull + lazy run, empty cache volume) and warm (boot image present, cache
# volume kept: the first warm run, the volume's second start, fetches the
# rest of the profiled files and makes the image's boot tree, which the
# others read; the warm row's chunks are those), against plain warm (docker
# run, image present). It reports
# seconds to readiness (the app's first output line, or the first HTTP
# response), bytes moved over the link, chunks fetched, and the ratios
# against DESIGN.md's bars. Workloads:
#   apt   the Debian minbase image running `apt-get --version`
#   http  a Debian image with python3 running `python3 -m http.server`
# The link: every server on 127.0.0.1 behind a Toxiproxy with a latency
# toxic on both streams, and an htb class per proxy on lo (a u32 match on
# the proxy's source port) that limits the download direction to the rate
# and counts its bytes. Containers run with --network host to reach them.
# Its own docker-registry (temp storage) holds both images; chunks come
# from `mkbootfs serve --http` (http) and, in a second converted image,
# from the registry next to the boot image (oci).
#
# dedup: 10 related Debian images, each rebuilt from scratch by debootstrap
# as one tree (minbase, then each adding packages), converted into one
# store, against the sum of their gzip layers, against `casync make` of all
# 10 into one store, and against the largest image's own store.
#
# Usage: bench/coldstart.sh [--mode all|coldstart|dedup] [--rate MBIT]
#   [--delay MS] [--workloads apt,http] [--stores http,oci] [--runs N]
#   [--no-profile]
# Env defaults: COLDSTART_MODE, COLDSTART_RATE_MBIT (25),
# COLDSTART_DELAY_MS (10, each way), COLDSTART_WORKLOADS, COLDSTART_STORES,
# RUNS (warm runs of each, plain and converted in turn, median; 7), COLDSTART_PROFILE (1: convert with the
# workload's access profile, `convert --profile`; 0: without), MKBOOTFS (a built binary with bootinit
# beside it; default: built here), BENCH_TOOLS (where Toxiproxy is
# installed; /var/cache/mkbootfs/toxiproxy-v2.12.0).
# Needs root, dockerd, docker-registry, tc, debootstrap, casync, go (to
# install Toxiproxy once). The first run builds Debian trees into
# /var/cache/mkbootfs/rootfs (python: ~3 minutes; dedup: ~15 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=${COLDSTART_MODE:-all}
RATE=${COLDSTART_RATE_MBIT:-25}
DELAY=${COLDSTART_DELAY_MS:-10}
WORKLOADS=${COLDSTART_WORKLOADS:-apt,http}
STORES=${COLDSTART_STORES:-http,oci}
RUNS=${RUNS:-7}
PROFILE=${COLDSTART_PROFILE:-1}
TOOLS=${BENCH_TOOLS:-/var/cache/mkbootfs/toxiproxy-v2.12.0}
TOXIPROXY_VERSION=v2.12.0
ROOTFS_DIR=/var/cache/mkbootfs/rootfs
MINBASE=${MKBOOTFS_DEBIAN_ROOTFS:-$ROOTFS_DIR/bookworm-minbase}
PYTHON=$ROOTFS_DIR/bookworm-python
DEBS=/var/cache/mkbootfs/debootstrap-debs

usage() { sed -n '/^# Usage:/,/^# Env/p' "$0" | sed '$d; s/^# //'; }
while [ $# -gt 0 ]; do
	case $1 in
	--mode) MODE=$2; shift ;;
	--rate) RATE=$2; shift ;;
	--delay) DELAY=$2; shift ;;
	--workloads) WORKLOADS=$2; shift ;;
	--stores) STORES=$2; shift ;;
	--runs) RUNS=$2; shift ;;
	--no-profile) PROFILE=0 ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; exit 2 ;;
	esac
	shift
done

log() { printf 'coldstart.sh: %s\n' "$*" >&2; }
die() { printf 'coldstart.sh: FAILED: %s\n' "$*" >&2; exit 1; }

case $MODE in all | coldstart | dedup) ;; *) die "--mode $MODE: want all, coldstart or dedup" ;; esac
for kind in ${STORES//,/ }; do
	case $kind in http | oci) ;; *) die "--stores $STORES: want http (mkbootfs serve), oci (the registry), or both: http,oci" ;; esac
done
[[ $RATE =~ ^[0-9]+$ && $RATE -gt 0 ]] || die "--rate $RATE: want a whole number of Mbit/s"
[[ $DELAY =~ ^[0-9]+$ ]] || die "--delay $DELAY: want whole milliseconds"
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "--runs $RUNS: want a positive number"
[ "$(id -u)" -eq 0 ] || die "run as root (tc on lo, docker, debootstrap)"

need() { # tool, what to do
	command -v "$1" >/dev/null || die "$1 missing: $2"
}

# Everything made here is listed, and removed on exit by cleanup.
WORK=$(mktemp -d /var/tmp/coldstart-bench.XXXXXX)
RUN_ID=$(basename "$WORK" | cut -d. -f2 | tr 'A-Z' 'a-z')
PIDS=() VOLUMES=() TC_MADE=
cleanup() {
	local v p
	docker ps -aq --filter "name=^coldstart-$RUN_ID-" | xargs -r docker rm -f >/dev/null 2>&1 || true
	forget_images
	for v in "${VOLUMES[@]}"; do docker volume rm -f "$v" >/dev/null 2>&1 || true; done
	[ -n "$TC_MADE" ] && tc qdisc del dev lo root 2>/dev/null
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

MKBOOTFS=${MKBOOTFS:-}
if [ -z "$MKBOOTFS" ]; then
	need go "install Go, or pass MKBOOTFS=bin/mkbootfs after make build"
	CGO_ENABLED=0 go build -trimpath -o "$WORK/bin/mkbootfs" ./cmd/mkbootfs
	CGO_ENABLED=0 go build -trimpath -o "$WORK/bin/bootinit" ./cmd/bootinit
	MKBOOTFS=$WORK/bin/mkbootfs
fi

# --- helpers -------------------------------------------------------------

# free_port VAR: set VAR to a TCP port nothing listens on, and that no
# earlier free_port of this shell handed out (their servers may not be up).
# It is below the kernel's ephemeral range: there an outgoing connection
# (a container's fetches, the curl polling it) may take it before the
# server binds it.
used_ports=" "
free_port() {
	local p lo
	read -r lo _ </proc/sys/net/ipv4/ip_local_port_range
	for _ in $(seq 200); do
		p=$((10000 + RANDOM % (lo - 10000)))
		case $used_ports in *" $p "*) continue ;; esac
		if ! ss -Hltn "sport = :$p" | grep -q .; then
			used_ports+="$p "
			printf -v "$1" %s "$p"
			return
		fi
	done
	die "no free TCP port on 127.0.0.1 after 200 tries"
}
# wait_http URL WHAT LOG: wait up to 30 s for URL to answer.
wait_http() {
	for _ in $(seq 300); do
		curl -fs -o /dev/null --max-time 1 "$1" && return 0
		sleep 0.1
	done
	die "$2 did not answer $1 within 30 s; last lines of $3: $(tail -n 5 "$3")"
}
chunk_bytes() { find "$1" -name '*.cacnk' -printf '%s\n' | awk '{s += $1} END {print s + 0}'; }
chunk_count() { find "$1" -name '*.cacnk' | wc -l; }
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
mb() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1e6 }'; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }
div() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "inf"; else printf "%.3f", a / b }'; }
bar() { # name ratio limit
	awk -v n="$1" -v r="$2" -v l="$3" 'BEGIN { printf "bar %-52s %7.3f <= %-5s %s\n", n, r, l, (r + 0 <= l + 0 ? "PASS" : "FAIL") }'
}

# --- coldstart -------------------------------------------------------------

# IMAGES are every reference this run made; forget_images removes them
# from the docker daemon (a cold run starts with none of them).
IMAGES=()
forget_images() {
	local i
	for i in "${IMAGES[@]}"; do docker rmi -f "$i" >/dev/null 2>&1 || true; done
}

start_link() {
	need tc "apt-get install iproute2"
	need docker-registry "apt-get install docker-registry (scripts/setup.sh)"
	need curl "apt-get install curl"
	docker info >/dev/null 2>&1 || die "docker does not answer: run scripts/setup.sh (starts dockerd)"
	[ -c /dev/fuse ] || die "/dev/fuse missing: modprobe fuse"
	if [ ! -x "$TOOLS/server" ] || [ ! -x "$TOOLS/cli" ]; then
		need go "install Go to build Toxiproxy, or put its server and cli in $TOOLS"
		log "installing Toxiproxy $TOXIPROXY_VERSION into $TOOLS"
		(cd / && GOBIN=$TOOLS GOFLAGS= go install "github.com/Shopify/toxiproxy/v2/cmd/server@$TOXIPROXY_VERSION" \
			"github.com/Shopify/toxiproxy/v2/cmd/cli@$TOXIPROXY_VERSION") ||
			die "go install of Toxiproxy $TOXIPROXY_VERSION failed (is the Go module proxy reachable?)"
	fi
	local root
	root=$(tc qdisc show dev lo | awk '/ root / { print $2; exit }')
	[ "$root" = noqueue ] || die "lo already has a root qdisc ($root): another coldstart.sh running? If none is, remove it: tc qdisc del dev lo root"

	local port
	for port in REG REGP CHUNK CHUNKP TOXAPI; do free_port "$port"; done
	mkdir -p "$WORK/registry/data"
	cat >"$WORK/registry/config.yml" <<-CONFIG
		version: 0.1
		log:
		  level: warn
		  accesslog:
		    disabled: true
		storage:
		  filesystem:
		    rootdirectory: $WORK/registry/data
		  delete:
		    enabled: true
		http:
		  addr: 127.0.0.1:$REG
	CONFIG
	docker-registry serve "$WORK/registry/config.yml" >"$WORK/registry.log" 2>&1 &
	PIDS+=($!)
	"$TOOLS/server" -host 127.0.0.1 -port "$TOXAPI" >"$WORK/toxiproxy.log" 2>&1 &
	PIDS+=($!)
	wait_http "http://127.0.0.1:$REG/v2/" docker-registry "$WORK/registry.log"
	wait_http "http://127.0.0.1:$TOXAPI/version" Toxiproxy "$WORK/toxiproxy.log"

	# Both proxies add DELAY each way; the htb classes limit what they
	# send towards the client (docker, or bootinit) and count it.
	local name listen upstream class
	TC_MADE=1
	tc qdisc add dev lo root handle 1: htb || die "tc qdisc add dev lo root htb failed: does this kernel have sch_htb?"
	# A buffer of 100 ms at the rate (as a router would have), not lo's
	# 1000 packets of up to 64 KiB, which would queue seconds.
	local limit=$((RATE * 1000000 / 8 / 10))
	[ "$limit" -lt 131072 ] && limit=131072
	for spec in "registry $REGP $REG 10" "chunks $CHUNKP $CHUNK 20"; do
		read -r name listen upstream class <<<"$spec"
		toxi create -l "127.0.0.1:$listen" -u "127.0.0.1:$upstream" "$name"
		if [ "$DELAY" -gt 0 ]; then
			toxi toxic add -t latency -a "latency=$DELAY" -n "$name-down" -d "$name"
			toxi toxic add -t latency -a "latency=$DELAY" -n "$name-up" -u "$name"
		fi
		tc class add dev lo parent 1: classid "1:$class" htb rate "${RATE}mbit" ceil "${RATE}mbit" quantum 65536
		tc qdisc add dev lo parent "1:$class" handle "$class:" bfifo limit "$limit"
		tc filter add dev lo parent 1: protocol ip prio 1 u32 match ip sport "$listen" 0xffff flowid "1:$class"
	done
	# A new connection through a proxy takes one round trip to connect and
	# one per request: at least 4 x DELAY.
	LINK_CHECK=$(curl -fs -o /dev/null -w '%{time_total}' "http://127.0.0.1:$REGP/v2/") ||
		die "the registry does not answer through Toxiproxy at 127.0.0.1:$REGP; see $WORK/toxiproxy.log"
	LINK_CHECK=$(awk -v t="$LINK_CHECK" 'BEGIN { printf "%.0f", t * 1000 }')
	log "link: ${RATE} Mbit/s down, ${DELAY} ms each way (a GET /v2/ through it: $LINK_CHECK ms); registry 127.0.0.1:$REG behind :$REGP, chunk server :$CHUNK behind :$CHUNKP"
}
toxi() { "$TOOLS/cli" -h "http://127.0.0.1:$TOXAPI" "$@" >/dev/null || die "toxiproxy-cli $* failed"; }
# sent: bytes sent so far over the shaped link (both classes).
sent() { tc -s class show dev lo | awk '/^class htb 1:(10|20) / { c = 1; next } c && /Sent/ { s += $2; c = 0 } END { print s + 0 }'; }

# manifest_size REPO TAG: compressed bytes of the layers of a pushed image.
manifest_size() {
	curl -fs -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
		"http://127.0.0.1:$REG/v2/$1/manifests/$2" | tr -d ' \n\t' | sed 's/.*"layers":\[//' |
		grep -o '"size":[0-9]*' | cut -d: -f2 | awk '{s += $1} END {print s + 0}'
}

# prepare W ROOTFS: push the plain image of ROOTFS and, for each store kind,
# its boot image to the registry. A file naming this run makes the plain
# layer one that no image in the daemon shares, so a pull moves all of it.
declare -A PLAIN_GZ CHUNKS_TOTAL CHUNK_URL
prepare() {
	local w=$1 rootfs=$2 out kind boot
	local plain=127.0.0.1:$REG/coldstart/$w:plain
	IMAGES+=("$plain" "127.0.0.1:$REGP/coldstart/$w:plain")
	mkdir -p "$WORK/nonce/etc"
	echo "bench/coldstart.sh run $RUN_ID, workload $w" >"$WORK/nonce/etc/mkbootfs-coldstart"
	log "$w: docker import of $rootfs, push"
	tar -C "$rootfs" --xattrs --xattrs-include='*' -cf - . -C "$WORK/nonce" ./etc/mkbootfs-coldstart |
		docker import - "$plain" >/dev/null
	docker push -q "$plain" >/dev/null || die "docker push $plain failed"
	PLAIN_GZ[$w]=$(manifest_size "coldstart/$w" plain)
	for kind in ${STORES//,/ }; do
		boot=127.0.0.1:$REG/coldstart/$w:bootfs-$kind
		IMAGES+=("$boot" "127.0.0.1:$REGP/coldstart/$w:bootfs-$kind")
		local store=()
		[ "$kind" = http ] && store=(--store "$WORK/store")
		if [ "$PROFILE" = 1 ]; then
			out=$(convert_profiled "$w" "${store[@]}" "docker://$plain" "$boot") || die "mkbootfs convert --profile $plain $boot: $out"
		else
			out=$("$MKBOOTFS" convert "${store[@]}" "docker://$plain" "$boot" 2>&1) || die "mkbootfs convert $plain $boot: $out"
		fi
		log "$w: $(echo "$out" | tr '\n' ' ')"
		CHUNKS_TOTAL[$w]=$(echo "$out" | sed -n 's/.* in \([0-9]*\) chunks.*/\1/p' | head -1)
		if [ "$kind" = http ]; then
			CHUNK_URL[$w.$kind]=http://127.0.0.1:$CHUNKP/
		else
			# The boot image records the registry it was pushed to; its
			# containers read the same repository through the link.
			CHUNK_URL[$w.$kind]=$(echo "$out" | sed -n 's/.*chunks from \(oci:[^ ,]*\).*/\1/p' | sed "s|127.0.0.1:$REG/|127.0.0.1:$REGP/|")
			[ -n "${CHUNK_URL[$w.$kind]}" ] || die "mkbootfs convert did not say where $boot reads its chunks: $out"
		fi
	done
	forget_images
}

# convert_profiled W CONVERT-ARGS...: convert with the access profile of
# workload W's start. The server's profile takes in its first response:
# it is asked for one while the profiling run lasts.
convert_profiled() {
	local w=$1 port pid out
	shift
	case $w in
	apt) "$MKBOOTFS" convert --profile "$@" -- apt-get --version 2>&1 ;;
	http)
		free_port port
		"$MKBOOTFS" convert --profile --profile-timeout 20s "$@" -- python3 -m http.server "$port" --bind 127.0.0.1 >"$WORK/profile.out" 2>&1 &
		pid=$!
		for _ in $(seq 3000); do
			curl -fs -o /dev/null --max-time 5 "http://127.0.0.1:$port/" && break
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.01
		done
		wait "$pid"
		local rc=$?
		cat "$WORK/profile.out"
		return $rc
		;;
	esac
}

# start_app W IMAGE DOCKER-RUN-FLAGS...: run workload W and print the
# time (EPOCHREALTIME) it became ready.
start_app() {
	local w=$1 image=$2
	shift 2
	case $w in
	apt)
		: >"$WORK/ready"
		if ! docker run --rm --network host "$@" "$image" apt-get --version 2>"$WORK/run.err" |
			{ IFS= read -r line && echo "$EPOCHREALTIME $line" >"$WORK/ready"; cat >/dev/null; }; then
			die "docker run $image apt-get --version failed: $(tail -n 5 "$WORK/run.err")"
		fi
		local ready first
		read -r ready first <"$WORK/ready" || true
		[[ $first == apt\ * ]] || die "docker run $image apt-get --version printed '$first', not 'apt ...': $(tail -n 5 "$WORK/run.err")"
		echo "$ready"
		;;
	http)
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
		;;
	*) die "--workloads: unknown workload $w (want apt, http)" ;;
	esac
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
# served KIND N: what fetched's second count adds to a row.
served() { if [ "$1" = http ]; then echo " (served $2)"; fi; }

# ROWS: workload|run|ready seconds|pull seconds|pull bytes|lazy bytes|chunks.
ROWS=()
declare -A SECS BYTES
measure_plain() {
	local w=$1 plain=127.0.0.1:$REGP/coldstart/$w:plain t0 tp ready b0 bp b1
	log "$w: plain cold"
	forget_images
	sync
	b0=$(sent) t0=$EPOCHREALTIME
	docker pull -q "$plain" >/dev/null || die "docker pull $plain failed"
	bp=$(sent) tp=$EPOCHREALTIME
	ready=$(start_app "$w" "$plain")
	b1=$(sent)
	SECS[$w.plain.cold]=$(sub "$ready" "$t0")
	ROWS+=("$w|plain cold (pull + run)|${SECS[$w.plain.cold]}|$(sub "$tp" "$t0")|$((bp - b0))|$((b1 - bp))|-")
}

# cold_run W KIND KEY LABEL [IMAGE]: a cold start of W's boot image from
# KIND's store: no bench image in the daemon (but IMAGE, when given, pulled
# first past the link), an empty cache volume.
cold_run() {
	local w=$1 kind=$2 key=$3 label=$4 keep=${5:-} boot=127.0.0.1:$REGP/coldstart/$1:bootfs-$2
	local vol=coldstart-$RUN_ID-$w-$kind t0 tp ready b0 bp b1 n0 s0 n1 s1 cache
	local conv=(--device /dev/fuse --cap-add SYS_ADMIN -v "$vol:/.bootfs/cache" -e "MKBOOTFS_STORE=${CHUNK_URL[$w.$kind]}")
	log "$w: $label, chunks from $kind"
	forget_images
	[ -z "$keep" ] || docker pull -q "$keep" >/dev/null || die "docker pull $keep failed"
	docker volume rm -f "$vol" >/dev/null
	docker volume create "$vol" >/dev/null
	cache=$(docker volume inspect -f '{{.Mountpoint}}' "$vol")
	sync
	read -r n0 s0 <<<"$(fetched "$kind" "$cache")"
	b0=$(sent) t0=$EPOCHREALTIME
	docker pull -q "$boot" >/dev/null || die "docker pull $boot failed"
	bp=$(sent) tp=$EPOCHREALTIME
	# bootinit's layer (3.7 MB) is pulled unless an image the bench does
	# not own holds it: then this row is really a node that has it.
	[ -n "$keep" ] || [ $((bp - b0)) -gt 1000000 ] ||
		log "WARNING: $w, $kind: the cold pull moved $((bp - b0)) bytes, not bootinit's layer: another image on this node holds it (docker images); remove it for a fully cold run"
	ready=$(start_app "$w" "$boot" "${conv[@]}")
	b1=$(sent)
	read -r n1 s1 <<<"$(fetched "$kind" "$cache")"
	SECS[$w.$kind.$key]=$(sub "$ready" "$t0") BYTES[$w.$kind.$key]=$((b1 - b0)) BYTES[$w.$kind.$key.chunks]=$((b1 - bp))
	ROWS+=("$w|$label|${SECS[$w.$kind.$key]}|$(sub "$tp" "$t0")|$((bp - b0))|$((b1 - bp))|$((n1 - n0))/${CHUNKS_TOTAL[$w]}$(served "$kind" $((s1 - s0)))")
}

measure_converted() {
	local w=$1 kind=$2 boot=127.0.0.1:$REGP/coldstart/$w:bootfs-$2
	local vol=coldstart-$RUN_ID-$w-$kind t0 tp ready b0 bp b1 n0 s0 n1 s1 warm= cache
	local plain=127.0.0.1:$REG/coldstart/$w:plain plainwarm=
	VOLUMES+=("$vol")
	local conv=(--device /dev/fuse --cap-add SYS_ADMIN -v "$vol:/.bootfs/cache" -e "MKBOOTFS_STORE=${CHUNK_URL[$w.$kind]}")

	cold_run "$w" "$kind" cold "converted cold ($kind; pull + lazy run)"
	# A node that has run any boot image has bootinit's layer, as a node
	# of Nydus or eStargz has their snapshotter: the pull is the image's
	# own small layer.
	cold_run "$w" "$kind" node "  ... node has bootinit's layer" "$KEEP"
	cache=$(docker volume inspect -f '{{.Mountpoint}}' "$vol")
	read -r n1 s1 <<<"$(fetched "$kind" "$cache")"

	# Warm runs take turns with the plain image's, so that the ratio is of
	# runs over the same minutes of the machine. The plain image comes
	# from the registry's own port, not over the link.
	docker pull -q "$plain" >/dev/null || die "docker pull $plain failed"
	log "$w: converted warm (chunks from $kind) and plain warm in turn, $RUNS runs each"
	n0=$n1 s0=$s1 b0=$(sent)
	for _ in $(seq "$RUNS"); do
		t0=$EPOCHREALTIME
		ready=$(start_app "$w" "$plain")
		plainwarm+=" $(sub "$ready" "$t0")"
		t0=$EPOCHREALTIME
		ready=$(start_app "$w" "$boot" "${conv[@]}")
		warm+=" $(sub "$ready" "$t0")"
	done
	b1=$(sent)
	read -r n1 s1 <<<"$(fetched "$kind" "$cache")"
	SECS[$w.$kind.plainwarm]=$(echo "$plainwarm" | median)
	SECS[$w.$kind.warm]=$(echo "$warm" | median)
	ROWS+=("$w|plain warm (in turn with the next), median|${SECS[$w.$kind.plainwarm]}|0|0|0|-")
	ROWS+=("$w|converted warm ($kind; cache kept), median|${SECS[$w.$kind.warm]}|0|0|$((b1 - b0))|+$((n1 - n0))$(served "$kind" $((s1 - s0)))")
}

coldstart() {
	[ -f "$MINBASE/etc/debian_version" ] || scripts/debian-rootfs.sh "$MINBASE" >&2
	start_link
	# Another boot image, pulled past the link where a run needs a node
	# that already has bootinit's layer.
	KEEP=127.0.0.1:$REG/coldstart/keep:bootfs
	IMAGES+=("$KEEP")
	[ -f "$WORK/busybox/bin/busybox" ] || scripts/busybox-rootfs.sh "$WORK/busybox" >&2
	"$MKBOOTFS" convert --store "$WORK/store" --index "$WORK/keep.idx" "dir:$WORK/busybox" "$KEEP" >/dev/null ||
		die "mkbootfs convert of the busybox rootfs failed"
	local w kind
	for w in ${WORKLOADS//,/ }; do
		case $w in
		apt) prepare apt "$MINBASE" ;;
		http)
			DEBOOTSTRAP_CACHE_DIR=$DEBS DEBOOTSTRAP_INCLUDE=python3 scripts/debian-rootfs.sh "$PYTHON" >&2
			prepare http "$PYTHON"
			;;
		*) die "--workloads: unknown workload $w (want apt, http)" ;;
		esac
	done
	if [[ ,$STORES, == *,http,* ]]; then
		"$MKBOOTFS" serve --http "127.0.0.1:$CHUNK" "$WORK/store" >"$WORK/serve.log" 2>&1 &
		PIDS+=($!)
		wait_http "http://127.0.0.1:$CHUNK/healthz" "mkbootfs serve" "$WORK/serve.log"
	fi
	for w in ${WORKLOADS//,/ }; do
		measure_plain "$w"
		for kind in ${STORES//,/ }; do measure_converted "$w" "$kind"; done
	done

	echo "cold start on ${RATE} Mbit/s, ${DELAY} ms each way (Toxiproxy + htb on lo; a new GET /v2/ through it took $LINK_CHECK ms); $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg)"
	echo "apt: Debian minbase, apt-get --version, to its first output line; http: Debian + python3, python3 -m http.server, to the first HTTP response"
	echo "chunks from http: mkbootfs serve --http; from oci: the registry, next to the boot image"
	printf '%-8s %-44s %8s %8s %9s %9s  %s\n' workload run "ready s" "pull s" "pull MB" "lazy MB" "chunks fetched/in image"
	local row a b c d e f g
	for row in "${ROWS[@]}"; do
		IFS='|' read -r a b c d e f g <<<"$row"
		printf '%-8s %-44s %8.2f %8.2f %9s %9s  %s\n' "$a" "$b" "$c" "$d" "$(mb "$e")" "$(mb "$f")" "$g"
	done
	for w in ${WORKLOADS//,/ }; do
		echo
		echo "$w: plain image $(mb "${PLAIN_GZ[$w]}") MB compressed in the registry"
		for kind in ${STORES//,/ }; do
			bar "$w, $kind: converted cold / plain cold, seconds" "$(div "${SECS[$w.$kind.cold]}" "${SECS[$w.plain.cold]}")" 0.10
			bar "$w, $kind: converted cold bytes / plain compressed" "$(div "${BYTES[$w.$kind.cold]}" "${PLAIN_GZ[$w]}")" 0.06
			bar "$w, $kind: ... node has bootinit's layer, seconds" "$(div "${SECS[$w.$kind.node]}" "${SECS[$w.plain.cold]}")" 0.10
			bar "$w, $kind: ... node has bootinit's layer, bytes" "$(div "${BYTES[$w.$kind.node]}" "${PLAIN_GZ[$w]}")" 0.06
			echo "    (chunks alone, without the boot image pull: $(div "${BYTES[$w.$kind.cold.chunks]}" "${PLAIN_GZ[$w]}"))"
			bar "$w, $kind: converted warm / plain warm, seconds" "$(div "${SECS[$w.$kind.warm]}" "${SECS[$w.$kind.plainwarm]}")" 1.2
		done
	done
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
