#!/bin/bash
# Where a warm start's time goes: each start of the boot image (its boot
# tree stacked, every chunk in the cache volume), of the plain image, and
# of the plain image with the boot image's docker flags (--device,
# --cap-add, the cache volume), taking turns, traced by the kernel's exec and exit tracepoints (perf
# record -a -e sched:sched_process_exec,sched:sched_process_exit), and
# these milestones of each, in ms from the docker CLI's exec:
#   entry      the container's first program runs (bootinit; the app itself
#              for the plain image): what docker, containerd and runc take
#   app        the app's program runs
#   app exit   the app's process exits
#   entry exit the container's first process exits (bootinit, after the app)
#   docker     the docker CLI exits: what a user waits for
# then the medians of each over --runs, and what the boot image adds to
# each stretch (entry -> app: bootinit's start, its mounts and the switch
# of root; app -> app exit: the app's run through the stacked tree and the
# lazy mount; app exit -> entry exit: bootinit's exit).
#
# Usage: bench/starttrace.sh [--runs N] [--workload py42|apt]
#   py42  Debian + python3, gdb, strace, procps: python3 -c 'print(42)'
#   apt   Debian minbase: apt-get --version
# Env defaults: RUNS (15), STARTTRACE_WORKLOAD (py42), MKBOOTFS (a built
# binary with bootinit beside it; default: built here).
# Needs root, dockerd and the registry on 127.0.0.1:5000 (scripts/setup.sh),
# and tracefs; installs perf (Debian's linux-perf) if missing; the first run
# of py42 builds its Debian tree (~3 minutes). About a minute with --runs 11.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-15}
WORKLOAD=${STARTTRACE_WORKLOAD:-py42}
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

while [ $# -gt 0 ]; do
	case $1 in
	--runs)
		RUNS=$2
		shift 2
		;;
	--workload)
		WORKLOAD=$2
		shift 2
		;;
	*) die "unknown argument $1 (usage: bench/starttrace.sh [--runs N] [--workload py42|apt])" ;;
	esac
done
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "--runs $RUNS: want a positive number"
[ "$(id -u)" -eq 0 ] || die "run as root (perf record -a, docker)"
if ! command -v perf >/dev/null; then
	log "installing perf (apt-get install linux-perf)"
	apt-get install -y -q linux-perf >"/tmp/starttrace-apt.log" 2>&1 || die "apt-get install linux-perf failed: $(tail -n 3 /tmp/starttrace-apt.log)"
fi
need docker "run scripts/setup.sh"
if [ ! -d /sys/kernel/tracing/events/sched ]; then
	mount -t tracefs nodev /sys/kernel/tracing || die "cannot mount tracefs at /sys/kernel/tracing"
fi

case $WORKLOAD in
py42)
	ROOTFS=$ROOTFS_DIR/bookworm-python-tools PACKAGES=python3,gdb,strace,procps,libboost-regex1.74.0
	CMD='["python3","-c","print(42)"]' APP=/usr/bin/python3
	;;
apt)
	ROOTFS=$ROOTFS_DIR/bookworm-minbase PACKAGES=
	CMD='["apt-get","--version"]' APP=/usr/bin/apt-get
	;;
*) die "--workload $WORKLOAD: want py42 or apt" ;;
esac

WORK=$(mktemp -d /var/tmp/starttrace-bench.XXXXXX)
RUN_ID=$(basename "$WORK" | cut -d. -f2 | tr 'A-Z' 'a-z')
PLAIN=127.0.0.1:5000/mkbootfs-bench/starttrace:plain-$RUN_ID
BOOT=127.0.0.1:5000/mkbootfs-bench/starttrace:boot-$RUN_ID
VOL=mkbootfs-starttrace-$RUN_ID
PIDS=()
cleanup() {
	local p
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	docker rmi -f "$PLAIN" "$BOOT" >/dev/null 2>&1 || true
	docker volume rm -f "$VOL" "$VOL-flags" >/dev/null 2>&1 || true
	link_cleanup
	rm -rf "$WORK"
}
trap cleanup EXIT

if [ -z "${MKBOOTFS:-}" ]; then
	make build >&2
	MKBOOTFS=$PWD/bin/mkbootfs
fi

debian_tree "$ROOTFS" "$PACKAGES"
log "$WORKLOAD: docker import of $ROOTFS, push"
push_plain "$ROOTFS" "$PLAIN" --exclude='./var/cache/apt/archives/*.deb' -c "CMD $CMD"
"$MKBOOTFS" convert --profile --store "$WORK/store" "$PLAIN" "$BOOT" >"$WORK/convert.log" 2>&1 ||
	die "convert --profile $PLAIN failed: $(tail -n 5 "$WORK/convert.log")"
docker pull -q "$BOOT" >/dev/null
free_port PORT
"$MKBOOTFS" serve --http "127.0.0.1:$PORT" "$WORK/store" >"$WORK/serve.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$PORT/healthz" "mkbootfs serve" "$WORK/serve.log"

plain_run() { docker run --rm --network host "$PLAIN"; }
boot_run() {
	docker run --rm --network host --device /dev/fuse --cap-add SYS_ADMIN -v "$VOL:/.bootfs/cache" \
		-e MKBOOTFS_STORE="http://127.0.0.1:$PORT" "$@" "$BOOT"
}

# Warm: until two starts in a row stack the boot tree.
stacked=0
for i in $(seq 30); do
	out=$(boot_run -e MKBOOTFS_DEBUG=1 2>&1 >/dev/null) || die "docker run $BOOT failed: $(echo "$out" | tail -n 5)"
	if [[ $out == *"is stacked over the lazy mount"* ]]; then
		stacked=$((stacked + 1))
		[ $stacked -ge 2 ] && break
	else
		stacked=0
	fi
done
[ $stacked -ge 2 ] || die "no boot tree stacked in 30 starts"
log "$WORKLOAD: the boot tree is stacked from start $((i - 1)); $RUNS traced starts of each image, in turn"

# milestones KIND: one traced start of plain, flags (the plain image with
# the boot image's docker flags: what docker takes for them) or boot;
# prints entry app appexit entryexit docker (ms).
milestones() {
	local run=(docker run --rm --network host)
	case $1 in
	plain) run+=("$PLAIN") ;;
	flags) run+=(--device /dev/fuse --cap-add SYS_ADMIN -v "$VOL-flags:/.bootfs/cache" -e MKBOOTFS_STORE="http://127.0.0.1:$PORT" "$PLAIN") ;;
	boot) run+=(--device /dev/fuse --cap-add SYS_ADMIN -v "$VOL:/.bootfs/cache" -e MKBOOTFS_STORE="http://127.0.0.1:$PORT" "$BOOT") ;;
	esac
	perf record -q -o "$WORK/perf.data" -e sched:sched_process_exec,sched:sched_process_exit -a -- "${run[@]}" >/dev/null 2>&1 ||
		die "${run[*]} failed"
	# Fields: comm, pid/tid (a process exits with the exit of its last
	# thread, group_dead=true), time, event, its fields.
	perf script -i "$WORK/perf.data" -F comm,pid,tid,time,event,trace 2>/dev/null | awk -v app="$APP" '
		{ t = $3; sub(":", "", t); t *= 1000; split($2, id, "/"); pid = id[1] }
		/sched_process_exec/ && /filename=[^ ]*\/docker / && !t0 { t0 = t }
		/sched_process_exec/ && $0 ~ "filename=" app " " && !a { a = t; apid = pid }
		/sched_process_exec/ && /filename=\/.bootfs\/bootinit / && !e { e = t; epid = pid }
		/sched_process_exit/ && /group_dead=true/ && pid == apid { ax = t }
		/sched_process_exit/ && /group_dead=true/ && pid == epid { ex = t }
		/sched_process_exit/ && /group_dead=true/ && $1 == "docker" { d = t }
		END {
			if (!e) { e = a; ex = ax }
			if (!t0 || !a || !ax || !ex || !d) { print "incomplete"; exit }
			printf "%.1f %.1f %.1f %.1f %.1f\n", e - t0, a - t0, ax - t0, ex - t0, d - t0
		}'
}

declare -A M
for r in $(seq "$RUNS"); do
	for kind in plain flags boot; do
		m=$(milestones "$kind")
		[ "$m" != incomplete ] || die "run $r, $kind: the trace lacks a milestone (perf script -i $WORK/perf.data)"
		M[$kind]+="$m"$'\n'
	done
done

col() { echo "${M[$1]}" | grep . | cut -d' ' -f"$2" | median; }
echo "where a warm start's time goes: $WORKLOAD ($CMD), boot tree stacked; $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "medians of $RUNS traced starts of each, in turn; ms from the docker CLI's exec (perf sched exec/exit tracepoints)"
printf '  %-6s %8s %8s %9s %11s %8s\n' image entry app "app exit" "entry exit" docker
for kind in plain flags boot; do
	printf '  %-6s %8s %8s %9s %11s %8s\n' "$kind" "$(col "$kind" 1)" "$(col "$kind" 2)" "$(col "$kind" 3)" "$(col "$kind" 4)" "$(col "$kind" 5)"
done
# Each stretch per start, then its median.
stretch() { echo "${M[$1]}" | grep . | awk -v a="$2" -v b="$3" '{ print $b - $a }' | median; }
echo "stretches (medians of each start's): plain / flags / boot"
echo "  docker to entry:         $(col plain 1) / $(col flags 1) / $(col boot 1)"
echo "  entry to app:            0 / 0 / $(stretch boot 1 2)  (bootinit: Go start, index, mounts, the switch of root)"
echo "  the app's run:           $(stretch plain 2 3) / $(stretch flags 2 3) / $(stretch boot 2 3)"
echo "  app exit to entry exit:  0 / 0 / $(stretch boot 3 4)  (bootinit's exit)"
echo "  entry exit to docker:    $(stretch plain 4 5) / $(stretch flags 4 5) / $(stretch boot 4 5)"
echo "  docker run, whole:       $(col plain 5) / $(col flags 5) / $(col boot 5) = $(div "$(col boot 5)" "$(col plain 5)")x plain"
