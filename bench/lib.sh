# Shared by the bench/*.sh scripts; source it, don't run it (make bench
# runs only the executable files here).
#
# The emulated slow link: every server on 127.0.0.1 behind a Toxiproxy
# with a latency toxic on both streams, and an htb class per proxy (what
# lo sends from the proxy's port) that limits the download direction to
# the rate and counts its bytes. Its own docker-registry, with temporary
# storage. And the plain images the benchmarks start:
# a Debian tree imported with a file that names the run, pushed.
#
# A script that sources it sets WORK (a directory it removes on exit) and
# PIDS (an array of the processes it kills on exit), and calls link_cleanup
# from its exit trap.

BENCH=${0##*/}
BENCH=${BENCH%.sh}
TOXIPROXY_VERSION=v2.12.0
TOOLS=${BENCH_TOOLS:-/var/cache/mkbootfs/toxiproxy-v2.12.0}
ROOTFS_DIR=/var/cache/mkbootfs/rootfs
DEBS=/var/cache/mkbootfs/debootstrap-debs

log() { printf '%s.sh: %s\n' "$BENCH" "$*" >&2; }
die() {
	printf '%s.sh: FAILED: %s\n' "$BENCH" "$*" >&2
	exit 1
}
need() { # tool, what to do
	command -v "$1" >/dev/null || die "$1 missing: $2"
}

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
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
mb() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1e6 }'; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }
div() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "inf"; else printf "%.3f", a / b }'; }
bar() { # name ratio limit
	awk -v n="$1" -v r="$2" -v l="$3" 'BEGIN { printf "bar %-56s %7.3f <= %-5s %s\n", n, r, l, (r + 0 <= l + 0 ? "PASS" : "FAIL") }'
}

# --- the link --------------------------------------------------------------

# link_start: the registry (REG) and Toxiproxy (its API on TOXAPI), with no
# proxy yet.
LINK_PROXIES=() LINK_TC=
link_start() {
	need tc "apt-get install iproute2"
	need docker-registry "apt-get install docker-registry (scripts/setup.sh)"
	need curl "apt-get install curl"
	if [ ! -x "$TOOLS/server" ] || [ ! -x "$TOOLS/cli" ]; then
		need go "install Go to build Toxiproxy, or put its server and cli in $TOOLS"
		log "installing Toxiproxy $TOXIPROXY_VERSION into $TOOLS"
		(cd / && GOBIN=$TOOLS GOFLAGS= go install "github.com/Shopify/toxiproxy/v2/cmd/server@$TOXIPROXY_VERSION" \
			"github.com/Shopify/toxiproxy/v2/cmd/cli@$TOXIPROXY_VERSION") ||
			die "go install of Toxiproxy $TOXIPROXY_VERSION failed (is the Go module proxy reachable?)"
	fi
	free_port REG
	free_port TOXAPI
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
}
toxi() { "$TOOLS/cli" -h "http://127.0.0.1:$TOXAPI" "$@" >/dev/null || die "toxiproxy-cli $* failed"; }

# link_proxy NAME VAR UPSTREAM-PORT CLASS: a proxy to UPSTREAM-PORT on a
# free port, set in VAR; link_shape makes it slow, its htb class 1:CLASS.
link_proxy() {
	local name=$1 upstream=$3 class=$4 port
	free_port port
	printf -v "$2" %s "$port"
	toxi create -l "127.0.0.1:$port" -u "127.0.0.1:$upstream" "$name"
	LINK_PROXIES+=("$name $port $class")
}

# link_shape RATE DELAY: DELAY ms each way on every proxy, and the rate on
# what they send towards the client (docker, containerd, a mount), counted
# per class. Until then a proxy is a plain relay: what a benchmark
# prepares through it costs nothing.
#
# The rate is an htb class per proxy with a buffer of 100 ms, on an ifb
# device of the run's own, to which a filter on lo's egress (clsact, a u32
# match on the proxy's source port) sends the proxy's packets: lo's root
# qdisc stays free, so that benches, each with its own ports and device,
# shape lo at once. The clsact qdisc is shared; the last filter out
# removes it, under a lock.
LINK_LOCK=/run/lock/mkbootfs-bench-lo.lock
link_shape() {
	local rate=$1 delay=$2 spec name port class
	# A buffer of 100 ms at the rate (as a router would have), not lo's
	# 1000 packets of up to 64 KiB, which would queue seconds.
	local limit=$((rate * 1000000 / 8 / 10))
	[ "$limit" -lt 131072 ] && limit=131072
	LINK_IFB=mkb${WORK##*.}
	LINK_IFB=${LINK_IFB:0:15}
	LINK_TC=1
	ip link add "$LINK_IFB" type ifb || die "ip link add $LINK_IFB type ifb failed: does this kernel have ifb?"
	ip link set "$LINK_IFB" up
	tc qdisc add dev "$LINK_IFB" root handle 1: htb
	for spec in "${LINK_PROXIES[@]}"; do
		read -r name port class <<<"$spec"
		if [ "$delay" -gt 0 ]; then
			toxi toxic add -t latency -a "latency=$delay" -n "$name-down" -d "$name"
			toxi toxic add -t latency -a "latency=$delay" -n "$name-up" -u "$name"
		fi
		tc class add dev "$LINK_IFB" parent 1: classid "1:$class" htb rate "${rate}mbit" ceil "${rate}mbit" quantum 65536
		tc qdisc add dev "$LINK_IFB" parent "1:$class" handle "$class:" bfifo limit "$limit"
		tc filter add dev "$LINK_IFB" parent 1: protocol ip prio 1 u32 match ip sport "$port" 0xffff flowid "1:$class"
		(
			flock -w 60 9 || die "$LINK_LOCK: held for a minute"
			tc qdisc show dev lo | grep -q '^qdisc clsact' || tc qdisc add dev lo clsact
			tc filter add dev lo egress protocol ip pref "$port" u32 match ip sport "$port" 0xffff action mirred egress redirect dev "$LINK_IFB"
		) 9>"$LINK_LOCK" || die "tc filter on lo's egress for port $port failed"
	done
	# A request through a proxy waits DELAY each way: at least 2 x DELAY
	# (Toxiproxy's toxics act on the stream, not on the TCP handshake).
	read -r name port class <<<"${LINK_PROXIES[0]}"
	LINK_CHECK=$(curl -fs -o /dev/null -w '%{time_total}' "http://127.0.0.1:$port/v2/") ||
		die "nothing answers through Toxiproxy at 127.0.0.1:$port; see $WORK/toxiproxy.log"
	LINK_CHECK=$(awk -v t="$LINK_CHECK" 'BEGIN { printf "%.0f", t * 1000 }')
}

# link_sent: bytes sent so far over the shaped link (every class).
link_sent() {
	tc -s class show dev "$LINK_IFB" | awk '/^class htb 1:[0-9]+ / { c = 1; next } c && /Sent/ { s += $2; c = 0 } END { print s + 0 }'
}

# link_cleanup removes the shaping, if this script made it.
link_cleanup() {
	[ -n "$LINK_TC" ] || return 0
	local spec name port class
	(
		flock -w 60 9
		for spec in "${LINK_PROXIES[@]}"; do
			read -r name port class <<<"$spec"
			tc filter del dev lo egress pref "$port" 2>/dev/null
		done
		[ -n "$(tc filter show dev lo egress; tc filter show dev lo ingress)" ] || tc qdisc del dev lo clsact 2>/dev/null
	) 9>"$LINK_LOCK" || true
	ip link del "$LINK_IFB" 2>/dev/null || true
	LINK_TC=
}

# --- images ----------------------------------------------------------------

# debian_tree DIR [PACKAGES]: a cached Debian bookworm minbase tree with
# PACKAGES (comma-separated), made by debootstrap the first time.
debian_tree() {
	DEBOOTSTRAP_CACHE_DIR=$DEBS DEBOOTSTRAP_INCLUDE=${2:-} scripts/debian-rootfs.sh "$1" >&2
}

# push_plain ROOTFS REF [--exclude=PATTERN...] [DOCKER-IMPORT-ARGS...]:
# docker import of ROOTFS, without what the tar PATTERNs match, as REF,
# pushed. A file naming the run (/etc/mkbootfs-bench) makes its layer one
# that no image in any daemon shares, so a pull moves all of it.
push_plain() {
	local rootfs=$1 ref=$2 excludes=()
	shift 2
	while [ $# -gt 0 ] && [[ $1 == --exclude=* ]]; do
		excludes+=("$1")
		shift
	done
	mkdir -p "$WORK/nonce/etc"
	echo "bench/$BENCH.sh run $WORK, $ref" >"$WORK/nonce/etc/mkbootfs-bench"
	tar -C "$rootfs" --xattrs --xattrs-include='*' "${excludes[@]}" -cf - . -C "$WORK/nonce" ./etc/mkbootfs-bench |
		docker import "$@" - "$ref" >/dev/null || die "docker import of $rootfs as $ref failed"
	docker push -q "$ref" >/dev/null || die "docker push $ref failed"
}

# manifest_size REPO TAG: compressed bytes of the layers of an image in
# the registry.
manifest_size() {
	curl -fs -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
		"http://127.0.0.1:$REG/v2/$1/manifests/$2" | tr -d ' \n\t' | sed 's/.*"layers":\[//' |
		grep -o '"size":[0-9]*' | cut -d: -f2 | awk '{s += $1} END {print s + 0}'
}
