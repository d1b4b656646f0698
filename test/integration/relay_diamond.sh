#!/bin/bash
# A diamond: A exports; relays B1 and B2 each link to A; the importer C
# links to B1 and B2 only, so it sees the disk on two relayed paths, both
# with dist 1. While fio writes random 4 KiB blocks with crc32c
# verification, the relay the disk is open through is SIGKILLed: C moves
# its I/O to the other relay without the disk going offline. The killed
# relay comes back and C regains its path; then the other relay is killed
# and I/O fails back. fio ends with exit 0, err=0. A, C and the surviving
# relay exit 0 on SIGTERM; the only warnings are the dropped links.
set -euo pipefail
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/xdisk.sh"
require_root
require_fuse
for c in fusermount3 mountpoint fio truncate ss; do requires "$c"; done

MIB=1048576
SERIAL=diamond1
IMG=$WORK_DIR/diamond.img
MNT=$WORK_DIR/mnt
ILOG=$WORK_DIR/c.log
truncate -s $((512 * MIB)) "$IMG"
make_keys "$WORK_DIR/keys" 127.0.0.1

declare -A PORT PID
PA=$(free_port)
for r in b1 b2; do
  PORT[$r]=$(free_port)
  while [ "${PORT[$r]}" = "$PA" ] || { [ $r = b2 ] && [ "${PORT[b2]}" = "${PORT[b1]}" ]; }; do
    PORT[$r]=$(free_port)
  done
done

relay() {
  start_relay NEW_PID "$1" "${PORT[$1]}" "$WORK_DIR/keys" "127.0.0.1:$PA"
  PID[$1]=$NEW_PID
}
paths_via() { grep -c "disk $SERIAL: path via link 127\.0\.0\.1:${PORT[$1]} (dist 1)" "$ILOG" || true; }
active() {
  local port
  port=$(sed -n "s/.*disk $SERIAL: BLK_OPEN via link 127\.0\.0\.1:\([0-9]*\)$/\1/p" "$ILOG" | tail -n1)
  if [ "$port" = "${PORT[b1]}" ]; then echo b1; elif [ "$port" = "${PORT[b2]}" ]; then echo b2; fi
}
other() { if [ "$1" = b1 ]; then echo b2; else echo b1; fi; }
opens_via() { grep -c "disk $SERIAL: BLK_OPEN via link 127\.0\.0\.1:${PORT[$1]}$" "$ILOG" || true; }
no_outage() {
  ! grep -qE "disk $SERIAL: (no path left|offline)" "$ILOG" || fail "the disk went offline: $1"
}

start_exporter EXP a "$PA" "$WORK_DIR/keys" "$IMG,serno=$SERIAL"
relay b1
relay b2
start_importer IMP c "$MNT" "$WORK_DIR/keys" "127.0.0.1:${PORT[b1]}" "127.0.0.1:${PORT[b2]}" \
  -- --log-level debug
wait_disk "$MNT" "$SERIAL"
wait_for '[ "$(paths_via b1)" = 1 ] && [ "$(paths_via b2)" = 1 ]' 10 ||
  fail "not two relayed paths with dist 1"
[ ! -e "$MNT/xa1" ] || fail "the second path became a second disk xa1"

(cd "$WORK_DIR" && exec fio --name=rand --filename="$MNT/xa0" --ioengine=libaio --direct=1 \
  --rw=randwrite --bs=4k --size=384M --io_size=256M --iodepth=16 --verify=crc32c \
  --verify_backlog=256 --verify_fatal=1 --output="$WORK_DIR/rand.out") &
FIO=$!
cleanup_fn kill -KILL "$FIO"
sleep 2

fail_over() {
  local victim survivor opens
  victim=$(active)
  [ -n "$victim" ] || fail "cannot tell which relay the disk is open through"
  survivor=$(other "$victim")
  kill -0 "$FIO" 2>/dev/null || fail "fio finished before killing relay $victim"
  opens=$(opens_via "$survivor")
  kill -KILL "${PID[$victim]}"
  wait "${PID[$victim]}" 2>/dev/null || true
  log "killed relay $victim (port ${PORT[$victim]}), the active path"
  wait_for "[ \$(opens_via $survivor) -gt $opens ]" 10 ||
    fail "the disk did not reopen through relay $survivor"
  log "I/O moved to relay $survivor"
  no_outage "after killing relay $victim"
  FIRST=$victim
}

log "kill the active relay under fio"
fail_over
sleep 1
log "restart relay $FIRST"
before=$(paths_via "$FIRST")
relay "$FIRST"
wait_for "[ \$(paths_via $FIRST) -gt $before ]" 15 || fail "C did not regain the path via $FIRST"
sleep 1
log "kill the other relay: I/O fails back"
fail_over
no_outage "during the run"

rc=0
wait_exit "$FIO" 120 || rc=$?
if [ "$rc" != 0 ] || ! grep -q "err= 0" "$WORK_DIR/rand.out"; then
  cat "$WORK_DIR/rand.out" >&2 || true
  fail "fio: exit status $rc"
fi
log "fio: exit 0, err=0"
no_outage "by the end of fio"

log "SIGTERM: C, the surviving relay and A exit 0"
survivor=$(other "$FIRST")
for pid in "$IMP" "${PID[$survivor]}" "$EXP"; do
  rc=0
  stop_daemon "$pid" 15 TERM || rc=$?
  [ "$rc" = 0 ] || fail "pid $pid: exit status $rc after SIGTERM"
done
! mountpoint -q "$MNT" || fail "still mounted after C's SIGTERM"

# Each SIGKILL drops a link at A and at C; reconnecting to a dead relay is
# refused until it is back (or to the end, for the last one).
ports="${PORT[b1]}|${PORT[b2]}"
scan_logs "warning: (link 127\.0\.0\.1:[0-9]+: dropping link: (read|write) error: (connection reset by peer|broken pipe)$|(link|connect) 127\.0\.0\.1:($ports): cannot connect: connection refused \(will retry\)$)"
log "PASS"
