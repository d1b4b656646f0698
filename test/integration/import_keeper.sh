#!/bin/bash
# The keeper's own failures and edges (daemon/import/keeper.h):
#   1. the keeper SIGKILLed while the daemon lives: the daemon says once
#      what protection is gone, xdiskctl status shows it, I/O goes on, and
#      a SIGTERM still stops the daemon cleanly;
#   2. a daemon that can never take the mount over again (its state file
#      damaged): the keeper gives up after five starts, unmounts, exits 1,
#      and I/O waiting in the mount fails instead of hanging;
#   3. a daemon that fails before it ever served (a bad export): the keeper
#      exits with its status 2 and leaves nothing mounted;
#   4. a dead mount left by a daemon without a keeper (--no-keeper,
#      SIGKILL) is taken away by the next start, which then serves;
#   5. after a restart with the remote away, the disk is listed at once;
#   6. a SIGTERM right after `xdiskctl restart` stops and unmounts;
#   7. restarted daemons that fail for a while (their control socket path
#      taken) leave the mount to the keeper: a write waiting in it
#      completes, without error, once a daemon starts again.
set -euo pipefail
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/xdisk.sh"
disk_test keep1 32 dd cmp

CTL=$WORK_DIR/ctl.sock
head -c $((4 * MIB)) /dev/urandom >"$WORK_DIR/data"

start_pair -- --control "$CTL"

log "1. the keeper SIGKILLed: the daemon goes on without protection"
daemon=$(importer_daemon)
[ "$(daemon_field keeper_pid)" = "$IMP" ] || fail "status names keeper $(daemon_field keeper_pid), not $IMP"
kill -KILL "$IMP"
wait "$IMP" 2>/dev/null || true
wait_for "grep -q 'keeper (pid $IMP) is gone' '$WORK_DIR/importer.log'" 10 ||
  fail "the daemon did not notice its keeper's death"
[ "$(grep -c 'keeper (pid .*) is gone' "$WORK_DIR/importer.log")" = 1 ] || fail "said more than once"
[ "$(daemon_field protection)" = none ] || fail "status still shows protection $(daemon_field protection)"
[ "$(daemon_field keeper_pid)" = 0 ] || fail "status still shows a keeper pid"
timeout 30 dd if="$WORK_DIR/data" of="$MNT/xa0" bs=1M oflag=direct conv=notrunc status=none ||
  fail "a write failed after the keeper died"
timeout 30 cmp -n $((4 * MIB)) "$WORK_DIR/data" "$MNT/xa0" || fail "read back differs"
kill -TERM "$daemon"
wait_for "proc_gone $daemon" 15 || fail "the daemon did not stop on SIGTERM"
wait_for "! grep -q ' $MNT fuse' /proc/mounts" 10 || fail "still mounted after SIGTERM"
grep -q 'main: exit 0' "$WORK_DIR/importer.log" || fail "the daemon did not exit 0"

log "2. a daemon that can never take over: the keeper gives up and unmounts"
start_importer IMP importer2 "$MNT" "$WORK_DIR/keys" "127.0.0.1:$PORT" -- --control "$CTL"
wait_disk "$MNT" "$SERIAL"
state=$(ls "$WORK_DIR"/state-importer2/mount-*.state)
# A reader that will wait in the kernel while no daemon serves.
printf 'garbage' >"$state"
kill -STOP "$EXP"
timeout 60 dd if="$MNT/xa0" of=/dev/null bs=1M count=1 iflag=direct status=none 2>/dev/null &
reader=$!
sleep 0.5
kill -KILL "$(importer_daemon)"
rc=0
wait_exit "$IMP" 30 || rc=$?
[ "$rc" = 1 ] || fail "the keeper's exit status is $rc, expected 1 after giving up"
grep -q "keeper: daemon failed 5 starts in a row" "$WORK_DIR/importer2.log" || fail "no give-up line"
! grep -q " $MNT fuse" /proc/mounts || fail "still mounted after the keeper gave up"
rc=0
wait_exit "$reader" 20 || rc=$?
[ "$rc" != 0 ] && [ "$rc" != 124 ] || fail "the waiting read did not fail (status $rc)"
kill -CONT "$EXP"

log "3. a daemon that fails before it served: the keeper exits 2, nothing mounted"
rc=0
timeout 20 "$XDISK" --keys "$WORK_DIR/keys" --state-dir "$WORK_DIR/state-bad" --control none \
  --export "$WORK_DIR/nonexistent" "$MNT" >"$WORK_DIR/bad.log" 2>&1 || rc=$?
[ "$rc" = 2 ] || { cat "$WORK_DIR/bad.log" >&2; fail "exit status $rc for a bad export, expected 2"; }
! grep -q " $MNT fuse" /proc/mounts || fail "a failed start left a mount"

log "4. a dead mount of a keeperless daemon is taken away by the next start"
start_importer IMP importer3 "$MNT" "$WORK_DIR/keys" "127.0.0.1:$PORT" -- --control "$CTL" --no-keeper
wait_disk "$MNT" "$SERIAL"
[ -z "$(importer_daemon)" ] || fail "--no-keeper still runs a keeper"
[ "$(daemon_field protection)" = none ] || fail "--no-keeper: status shows protection"
kill -KILL "$IMP"
wait "$IMP" 2>/dev/null || true
grep -q " $MNT fuse" /proc/mounts || fail "the dead mount vanished by itself?"
# Not start_importer: its mkdir -p fails on the dead mount (ENOTCONN),
# exactly what the daemon has to get past.
start_daemon IMP importer4 "$XDISK" --keys "$WORK_DIR/keys" --state-dir "$WORK_DIR/state-importer4" \
  --connect "127.0.0.1:$PORT" --control "$CTL" "$MNT"
wait_for "grep -q 'took away the dead FUSE mount at' '$WORK_DIR/importer4.log'" 10 ||
  fail "no line about the dead mount"
wait_disk "$MNT" "$SERIAL" 20
[ "$(grep -c " $MNT fuse" /proc/mounts)" = 1 ] || fail "mounts stacked at $MNT"
timeout 30 cmp -n $((4 * MIB)) "$WORK_DIR/data" "$MNT/xa0" || fail "read back differs after the restart"

log "5. after a restart with the remote away, the disk is listed at once"
kill -STOP "$EXP"
crash_importer
timeout 10 ls "$MNT/serno/$SERIAL" >/dev/null || fail "serno/$SERIAL is not listed after the restart"
timeout 10 ls "$MNT/xa0" >/dev/null || fail "xa0 is not listed after the restart"
kill -CONT "$EXP"

log "6. a stop during xdiskctl restart stops and unmounts"
ctl restart >/dev/null || fail "xdiskctl restart refused"
kill -TERM "$IMP"
rc=0
wait_exit "$IMP" 20 || rc=$?
[ "$rc" = 0 ] || fail "keeper exit status $rc after SIGTERM during a restart"
! grep -q " $MNT fuse" /proc/mounts || fail "still mounted after a stop during a restart"

log "7. failing restarts leave the mount to the keeper; a waiting write completes"
start_importer IMP importer5 "$MNT" "$WORK_DIR/keys" "127.0.0.1:$PORT" -- --control "$CTL"
wait_disk "$MNT" "$SERIAL"
head -c $((2 * MIB)) /dev/urandom >"$WORK_DIR/data2"
kill -STOP "$EXP"
(exec timeout 60 dd if="$WORK_DIR/data2" of="$MNT/serno/$SERIAL" bs=1M oflag=direct \
  conv=notrunc status=none) &
writer=$!
cleanup_fn kill -KILL "$writer"
sleep 0.5
daemon=$(importer_daemon)
kill -STOP "$IMP"
kill -KILL "$daemon"
wait_for "proc_gone $daemon" 10 || fail "daemon $daemon survived SIGKILL"
rm -f "$CTL"
: >"$CTL" # not a socket: the next daemons fail to start their control server
kill -CONT "$IMP"
wait_for "[ \$(grep -c 'keeper: daemon pid .* exit status 1; starting it again' '$WORK_DIR/importer5.log') -ge 2 ]" 15 ||
  fail "the restarted daemons did not fail as arranged"
grep -q " $MNT fuse" /proc/mounts || fail "a failing restart took the mount away"
rm -f "$CTL"
kill -CONT "$EXP"
rc=0
wait_exit "$writer" 30 || rc=$?
[ "$rc" = 0 ] || fail "the write waiting in the mount failed (status $rc)"
timeout 30 cmp -n $((2 * MIB)) "$WORK_DIR/data2" "$MNT/serno/$SERIAL" || fail "read back differs"
stop_daemon "$IMP" 15 TERM || fail "keeper exit status $? after SIGTERM"
stop_daemon "$EXP" 15 TERM || fail "exporter exit status $? after SIGTERM"

scan_logs "keeper \\(pid [0-9]+\\) is gone|keeper: daemon (pid .* (killed by signal 9|exit status 1)|failed 5 starts)|cannot take over the mount|ctl\.sock|session ended|garbage|mount-.*state|warning: .*(dropping link|no path left|cannot connect|connection reset|link lost)"
log "PASS"
