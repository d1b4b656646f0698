#!/bin/bash
# Two paths to one disk: two exporters serve the same image file under the
# same serial and uuid, and the importer, connected to both, shows it once
# (xa0 only). While fio writes random 4 KiB blocks with crc32c verification,
# the exporter the disk is open on is SIGKILLed: I/O moves to the other path
# without the disk ever going offline. The killed exporter comes back, then
# the other one is killed, and I/O fails back. fio ends with exit 0, err=0
# and every block verified; the only warnings are the dropped links and the
# refused reconnects.
set -euo pipefail
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/xdisk.sh"
disk_test mpath1 1024 fio

UUID=6f1c2a9e-3b7d-4c58-9e21-0a4b5c6d7e8f
ILOG=$WORK_DIR/importer.log
make_keys "$WORK_DIR/keys" 127.0.0.1

declare -A PORT PID
PORT[a]=$(free_port)
PORT[b]=$(free_port)
while [ "${PORT[b]}" = "${PORT[a]}" ]; do PORT[b]=$(free_port); done

# exporter X: start exporter X (a or b) with the same arguments every time.
exporter() {
  start_exporter NEW_PID "exp-$1" "${PORT[$1]}" "$WORK_DIR/keys" "$IMG,serno=$SERIAL,uuid=$UUID"
  PID[$1]=$NEW_PID
}
exporter a
exporter b
# Debug level logs which path each BLK_OPEN takes.
start_importer IMP importer "$MNT" "$WORK_DIR/keys" "127.0.0.1:${PORT[a]}" "127.0.0.1:${PORT[b]}" \
  -- --log-level debug
wait_disk "$MNT" "$SERIAL"
wait_for '[ "$(paths_via a)" = 1 ] && [ "$(paths_via b)" = 1 ]' 10 || fail "not two paths"

log "one disk, two paths"
[ "$(ls "$MNT/serno")" = "$SERIAL" ] || fail "serno/ lists '$(ls "$MNT/serno" | tr '\n' ' ')'"
[ "$(ls "$MNT/by-uuid")" = "$UUID" ] || fail "by-uuid/ lists '$(ls "$MNT/by-uuid" | tr '\n' ' ')'"
[ ! -e "$MNT/xa1" ] || fail "the second path became a second disk xa1"
[ "$(stat -c %h "$MNT/xa0")" = 4 ] || fail "xa0 has nlink $(stat -c %h "$MNT/xa0"), want 4"

start_fio_verify 768M 512M
sleep 2

log "kill the active path under fio"
fail_over exporter
sleep 1
log "restart exporter $FIRST"
before=$(paths_via "$FIRST")
exporter "$FIRST"
wait_for "[ \$(paths_via $FIRST) -gt $before ]" 15 ||
  fail "the importer did not reconnect to exporter $FIRST"
sleep 1
log "kill the other path: I/O fails back"
fail_over exporter
no_outage "during the run"

wait_fio "$FIO" "$WORK_DIR/rand.out" 60
reads=$(sed -n 's/.*issued rwts: total=\([0-9]*\),.*/\1/p' "$WORK_DIR/rand.out")
[ "${reads:-0}" -gt 0 ] || fail "fio verified nothing"
log "fio: exit 0, err=0, $reads verify reads"
no_outage "by the end of fio"

log "SIGTERM: the importer and the surviving exporter exit 0"
stop_ok "$IMP" 15 "importer"
! mountpoint -q "$MNT" || fail "still mounted after the importer's SIGTERM"
survivor=$(path_other "$FIRST")
stop_ok "${PID[$survivor]}" 15 "exporter $survivor"

# Each SIGKILL drops one link at the importer, and reconnecting to the dead
# exporter is refused until it is back (or to the end, for the last one).
scan_logs "warning: (link 127\.0\.0\.1:(${PORT[a]}|${PORT[b]}): dropping link: (read|write) error: (connection reset by peer|broken pipe)$|(link|connect) 127\.0\.0\.1:(${PORT[a]}|${PORT[b]}): cannot connect: connection refused \(will retry\)$)"
log "PASS"
