# Shared helpers for the scripts in this directory; source it, don't run it.

# step prints one progress line, prefixed with the script's name.
step() { printf '%s: %s\n' "${0##*/}" "$*"; }

# die prints what failed and what to do, then exits non-zero.
die() {
	printf '%s: FAILED: %s\n' "${0##*/}" "$*" >&2
	exit 1
}

# need_root stops early with a clear message: installing packages, starting
# daemons, debootstrap and docker all need root.
need_root() {
	[ "$(id -u)" -eq 0 ] || die "run as root (it installs packages and starts daemons)"
}
