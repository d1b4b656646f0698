# shellcheck shell=bash
# Shared helpers for test/integration/*.sh. Source it right after
# `set -euo pipefail`:
#
#   set -euo pipefail
#   source "$(dirname "$0")/functions.sh"
#
# What a test gets:
#   SOURCE_DIR, BUILD_DIR  set by meson; default to the repo and build/rel.
#   TEST_NAME, WORK_DIR    a private directory under ${TMPDIR:-/tmp}, removed
#                          at exit (never crossing into a mount).
#   requires CMD [ARGS...] exit 77 (skip) unless CMD exists; with ARGS, unless
#                          running `CMD ARGS...` succeeds.
#   require_root, require_fuse
#   cleanup_fn CMD [ARGS...]  push a command; at EXIT, INT or TERM they run in
#                          reverse order, errors ignored, and the exit status
#                          of the test is kept.
#   start_daemon VAR NAME CMD [ARGS...]
#                          run CMD in the background, log in $WORK_DIR/NAME.log,
#                          pid in $VAR; a cleanup kills it if still alive.
#   stop_daemon PID [TIMEOUT] [SIGNAL]  signal, wait, return its exit status.
#   wait_exit PID [TIMEOUT]  wait for an exit without signalling; its status.
#   wait_for 'COND' TIMEOUT  poll a shell condition every 0.1 s; 1 on timeout.
#   mount_fuse_cleanup DIR  register an unmount of DIR (lazy if busy).
#   attach_loop VAR FILE [LOSETUP OPTS...]  losetup, device in $VAR, detach
#                          registered.
#   mount_cleanup DIR      register a umount of DIR (lazy if busy).
#   scan_logs [ALLOW_ERE]  fail if any daemon log matches
#                          error|warning|abort|sanitizer, except lines that
#                          match ALLOW_ERE.
#   log MSG, fail MSG, skip MSG

TEST_NAME=$(basename "$0" .sh)
: "${SOURCE_DIR:=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
: "${BUILD_DIR:=$SOURCE_DIR/build/rel}"
export SOURCE_DIR BUILD_DIR

log() { printf '[%s] %s\n' "$TEST_NAME" "$*" >&2; }
fail() {
  log "FAIL: $*"
  exit 1
}
skip() {
  log "SKIP: $*"
  exit 77
}

requires() {
  if [ $# -eq 1 ]; then
    command -v "$1" >/dev/null 2>&1 || skip "missing command: $1"
  else
    "$@" >/dev/null 2>&1 || skip "requirement failed: $*"
  fi
}

require_root() {
  [ "$(id -u)" -eq 0 ] || skip "must run as root"
}

require_fuse() {
  [ -c /dev/fuse ] || skip "no /dev/fuse"
}

# ---- cleanup stack ---------------------------------------------------------

_CLEANUP=()
_DAEMON_LOGS=()

cleanup_fn() {
  local quoted
  quoted=$(printf '%q ' "$@")
  _CLEANUP+=("$quoted")
}

_run_cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  local i
  for ((i = ${#_CLEANUP[@]} - 1; i >= 0; i--)); do
    eval "${_CLEANUP[i]}" >/dev/null 2>&1
  done
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 77 ]; then
    log "exit status $rc"
  fi
  exit "$rc"
}
trap _run_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- work directory ----------------------------------------------------------

WORK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/xdisk-$TEST_NAME.XXXXXX")
export WORK_DIR
# Registered first, so it runs last, after every unmount. --one-file-system
# keeps a mount that failed to go away from being emptied.
# KEEP_WORK_DIR=1 keeps the logs and files of a run for a look afterwards.
[ -n "${KEEP_WORK_DIR:-}" ] || cleanup_fn rm -rf --one-file-system "$WORK_DIR"

# ---- waiting -----------------------------------------------------------------

wait_for() {
  local cond=$1 timeout=${2:-10}
  local deadline=$((SECONDS + timeout))
  while ! eval "$cond"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "timed out after ${timeout}s waiting for: $cond"
      return 1
    fi
    sleep 0.1
  done
}

# ---- daemons ---------------------------------------------------------------

_kill_quietly() {
  local pid=$1
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null
  local i
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null || true
}

start_daemon() {
  local var=$1 name=$2
  shift 2
  local logf="$WORK_DIR/$name.log"
  "$@" >>"$logf" 2>&1 &
  local pid=$!
  printf -v "$var" '%s' "$pid"
  _DAEMON_LOGS+=("$logf")
  cleanup_fn _kill_quietly "$pid"
  log "started $name (pid $pid): $*"
}

# Waits for PID to exit by itself; returns its exit status (124 on timeout).
wait_exit() {
  local pid=$1 timeout=${2:-10}
  wait_for "! kill -0 $pid 2>/dev/null" "$timeout" || return 124
  local rc=0
  wait "$pid" || rc=$?
  return "$rc"
}

stop_daemon() {
  local pid=$1 timeout=${2:-10} sig=${3:-TERM}
  kill "-$sig" "$pid" 2>/dev/null || true
  local rc=0
  wait_exit "$pid" "$timeout" || rc=$?
  return "$rc"
}

# stop_ok PID [TIMEOUT] [WHAT]: SIGTERM, and fail unless PID exits 0 in time.
stop_ok() {
  local rc=0
  stop_daemon "$1" "${2:-10}" TERM || rc=$?
  [ "$rc" = 0 ] || fail "${3:-the daemon}: exit status $rc after SIGTERM"
}

# ---- mounts and loop devices -------------------------------------------------

_umount_any() {
  local dir=$1
  # Not mountpoint(1): it cannot stat a FUSE mount whose daemon died, and
  # such a mount must go too.
  awk -v d="$dir" '$2 == d {found = 1} END {exit !found}' /proc/mounts || return 0
  umount "$dir" 2>/dev/null || fusermount3 -u "$dir" 2>/dev/null || umount -l "$dir" 2>/dev/null ||
    fusermount3 -uz "$dir" 2>/dev/null
}

mount_fuse_cleanup() { cleanup_fn _umount_any "$1"; }
mount_cleanup() { cleanup_fn _umount_any "$1"; }

attach_loop() {
  local var=$1 file=$2
  shift 2
  local dev
  dev=$(losetup -f --show "$@" "$file")
  printf -v "$var" '%s' "$dev"
  cleanup_fn losetup -d "$dev"
  log "attached $dev to $file"
}

# ---- logs ----------------------------------------------------------------------

scan_logs() {
  local allow=${1:-}
  local logf bad=0 hits
  for logf in "${_DAEMON_LOGS[@]}"; do
    [ -f "$logf" ] || continue
    hits=$(grep -inE 'error|warning|abort|sanitizer' "$logf" || true)
    if [ -n "$allow" ] && [ -n "$hits" ]; then
      hits=$(printf '%s\n' "$hits" | grep -vE "$allow" || true)
    fi
    if [ -n "$hits" ]; then
      log "suspicious lines in $logf:"
      printf '%s\n' "$hits" >&2
      bad=1
    fi
  done
  [ "$bad" -eq 0 ] || fail "log scan found problems"
}
