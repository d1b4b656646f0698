#!/bin/bash
# A diamond: A exports; relays a and b each link to A; the importer C links
# to a and b only, so it sees the disk on two relayed paths, both with
# dist 1. While fio writes random 4 KiB blocks with crc32c verification,
# the relay the disk is open through is SIGKILLed: C moves its I/O to the
# other relay without the disk going offline. The killed relay comes back
# and C regains its path; then the other relay is killed and I/O fails
# back. fio ends with exit 0, err=0. A, C and the surviving relay exit 0 on
# SIGTERM; the only warnings are the dropped links.
set -euo pipefail
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/xdisk.sh"
disk_test diamond1 512 fio

ILOG=$WORK_DIR/c.log
make_keys "$WORK_DIR/keys" 127.0.0.1
declare -A PORT PID
read -r PE PORT[a] PORT[b] <<<"$(free_ports 3)"

relay() {
  start_relay NEW_PID "relay-$1" "${PORT[$1]}" "$WORK_DIR/keys" "127.0.0.1:$PE"
  PID[$1]=$NEW_PID
}
start_exporter EXP exp "$PE" "$WORK_DIR/keys" "$IMG,serno=$SERIAL"
relay a
relay b
start_importer IMP c "$MNT" "$WORK_DIR/keys" "127.0.0.1:${PORT[a]}" "127.0.0.1:${PORT[b]}" \
  -- --log-level debug
wait_disk "$MNT" "$SERIAL"
dist1() { grep -c "disk $SERIAL: path via link 127\.0\.0\.1:${PORT[$1]} (dist 1)" "$ILOG" || true; }
wait_for '[ "$(dist1 a)" = 1 ] && [ "$(dist1 b)" = 1 ]' 10 || fail "not two relayed paths with dist 1"
[ ! -e "$MNT/xa1" ] || fail "the second path became a second disk xa1"

start_fio_verify 384M 256M
sleep 2

log "kill the active relay under fio"
fail_over relay
sleep 1
log "restart relay $FIRST"
before=$(paths_via "$FIRST")
relay "$FIRST"
wait_for "[ \$(paths_via $FIRST) -gt $before ]" 15 || fail "C did not regain the path via $FIRST"
sleep 1
log "kill the other relay: I/O fails back"
fail_over relay
no_outage "during the run"

wait_fio "$FIO" "$WORK_DIR/rand.out" 120
log "fio: exit 0, err=0"
no_outage "by the end of fio"

log "SIGTERM: C, the surviving relay and A exit 0"
stop_all "$IMP" "${PID[$(path_other "$FIRST")]}" "$EXP"
! mountpoint -q "$MNT" || fail "still mounted after C's SIGTERM"

# Each SIGKILL drops a link at A and at C; reconnecting to a dead relay is
# refused until it is back (or to the end, for the last one).
ports="${PORT[a]}|${PORT[b]}"
scan_logs "warning: (link 127\.0\.0\.1:[0-9]+: dropping link: (read|write) error: (connection reset by peer|broken pipe)$|(link|connect) 127\.0\.0\.1:($ports): cannot connect: connection refused \(will retry\)$)"
log "PASS"
