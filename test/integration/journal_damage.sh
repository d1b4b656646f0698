#!/bin/bash
# A damaged journal never takes the daemon down and is reported clearly.
# A write-back importer leaves 8 MiB of pending writes in its journal (the
# exporter is away, the importer is SIGKILLed); copies of that journal are
# then damaged and an importer started on each, the exporter still away:
#   torn tail         the last segment cut mid-record: a clean end, the
#                     records before it pending, the disk in the tree
#   flipped byte      one byte in the middle of the segment: the damage is
#                     logged with segment and offset, later blocks still
#                     replay, the disk is in the tree
#   garbage segment   random bytes as a second segment: logged, no crash
#   --journal-strict  the flipped byte makes the daemon exit 1, naming the
#                     segment
# --journal-dump reports each kind of damage. Then the exporter returns
# to the torn-tail importer and its journal drains to zero. Last, a journal
# locked by another process keeps its disk out of the tree (the daemon up,
# the records kept) until the lock is gone; then it drains.
set -euo pipefail
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/xdisk.sh"
disk_test dmg1 64 fio

PORT=$(free_port)
make_keys "$WORK_DIR/keys" 127.0.0.1

importer() {  # journal-dir [extra args]
  local j=$1
  shift
  start_importer IMP importer "$MNT" "$WORK_DIR/keys" "127.0.0.1:$PORT" -- \
    --sync=journal --journal "$j" "$@"
}

log "make a journal with pending writes"
start_exporter EXP exporter "$PORT" "$WORK_DIR/keys" "$IMG,serno=$SERIAL"
importer "$WORK_DIR/j0"
wait_disk "$MNT" "$SERIAL"
kill -KILL "$EXP"
wait "$EXP" 2>/dev/null || true
wait_for "grep -q 'disk $SERIAL: no path left' '$WORK_DIR/importer.log'" 15 ||
  fail "the importer did not notice the outage"
(cd "$WORK_DIR" && timeout -k 5 60 fio --name=w --filename="$MNT/xa0" --ioengine=libaio --direct=1 \
  --rw=write --bs=64k --size=8M --iodepth=4 --output="$WORK_DIR/w.out") || fail "fio failed"
kill_importer
total=$(journal_pending "$WORK_DIR/j0")
[ "$total" -ge 128 ] || fail "only $total records pending"
SEG=$SERIAL/000001.log
[ -f "$WORK_DIR/j0/$SEG" ] || fail "no segment $SEG in the journal: $(ls -R "$WORK_DIR/j0")"
size=$(stat -c %s "$WORK_DIR/j0/$SEG")
log "journal: $total records pending, segment $size bytes"

# check_started NAME: the importer is up, the disk in the tree, not crashed.
check_started() {
  wait_disk "$MNT" "$SERIAL" 10
  sleep 0.5
  require_alive "$IMP" "on a journal with $1"
}

log "torn tail"
cp -a "$WORK_DIR/j0" "$WORK_DIR/torn"
truncate -s $((size - 1000)) "$WORK_DIR/torn/$SEG"
"$XDISK" --journal-dump "$WORK_DIR/torn" >"$WORK_DIR/dump.torn" || fail "--journal-dump failed"
grep -q "torn tail" "$WORK_DIR/dump.torn" || fail "--journal-dump does not report the torn tail"
importer "$WORK_DIR/torn"
check_started "a torn tail"
left=$(journal_pending "$WORK_DIR/torn")
[ "$left" -ge $((total - 1)) ] && [ "$left" -lt "$total" ] ||
  fail "torn tail: $left of $total records pending (one lost expected)"
kill_importer

log "flipped byte mid-segment"
cp -a "$WORK_DIR/j0" "$WORK_DIR/flip"
printf '\xff' | dd of="$WORK_DIR/flip/$SEG" bs=1 seek=$((size / 2)) conv=notrunc status=none
"$XDISK" --journal-dump "$WORK_DIR/flip" >"$WORK_DIR/dump.flip" || fail "--journal-dump failed"
grep -q "damage: 000001.log @" "$WORK_DIR/dump.flip" ||
  fail "--journal-dump does not report the damage: $(tail -3 "$WORK_DIR/dump.flip")"
importer "$WORK_DIR/flip"
check_started "a flipped byte"
grep -q "disk $SERIAL: journal replay: .*000001.log" "$WORK_DIR/importer.log" ||
  fail "the damage is not logged with its segment"
left=$(journal_pending "$WORK_DIR/flip")
[ "$left" -gt $((total / 2)) ] && [ "$left" -lt "$total" ] ||
  fail "flipped byte: $left of $total records pending"
kill_importer

log "garbage segment"
cp -a "$WORK_DIR/j0" "$WORK_DIR/garbage"
head -c $((200 * 1024)) /dev/urandom >"$WORK_DIR/garbage/$SERIAL/000002.log"
importer "$WORK_DIR/garbage"
check_started "a garbage segment"
kill_importer

log "--journal-strict refuses the flipped byte"
rc=0
timeout 20 "$XDISK" --keys "$WORK_DIR/keys" --state-dir "$WORK_DIR/state-strict" \
  --sync=journal --journal "$WORK_DIR/flip" --journal-strict "$WORK_DIR/mnt" \
  >"$WORK_DIR/strict.log" 2>&1 || rc=$?
[ "$rc" = 1 ] || { cat "$WORK_DIR/strict.log" >&2; fail "--journal-strict: exit status $rc, not 1"; }
grep -q "000001.log" "$WORK_DIR/strict.log" || fail "--journal-strict: the segment is not named"
! grep -q " $WORK_DIR/mnt fuse" /proc/mounts || fail "--journal-strict left a mount"

log "the exporter returns to the torn-tail journal: it drains"
start_exporter EXP exporter "$PORT" "$WORK_DIR/keys" "$IMG,serno=$SERIAL"
importer "$WORK_DIR/torn"
wait_for "journal_pending '$WORK_DIR/torn' | grep -qx 0" 60 || fail "the journal did not drain"
stop_daemon "$IMP" 15 TERM || fail "importer exit status $? after SIGTERM"
stop_daemon "$EXP" 15 TERM || fail "exporter exit status $? after SIGTERM"

log "a journal another process holds: the disk is not imported without it"
# Bypassing it would send new writes now and its old records over them at
# the next start that can open it.
cp -a "$WORK_DIR/j0" "$WORK_DIR/held"
python3 -c 'import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
fcntl.flock(fd, fcntl.LOCK_EX)
time.sleep(600)' "$WORK_DIR/held/$SERIAL" &
HOLDER=$!  # one process: the lock goes with it
cleanup_fn kill "$HOLDER"
wait_for "! flock -n '$WORK_DIR/held/$SERIAL' true" 10 || fail "the lock holder did not start"
start_exporter EXP exporter "$PORT" "$WORK_DIR/keys" "$IMG,serno=$SERIAL"
importer "$WORK_DIR/held"
wait_for "grep -q 'disk $SERIAL: not imported: its journal .*/held/$SERIAL cannot be used' \
  '$WORK_DIR/importer.log'" 15 || fail "the refusal is not logged: $(tail -5 "$WORK_DIR/importer.log")"
sleep 0.5
[ ! -e "$MNT/serno/$SERIAL" ] || fail "the disk was imported without its journal"
require_alive "$IMP" "with its journal held by another process"
left=$(journal_pending "$WORK_DIR/held")
[ "$left" = "$total" ] || fail "held journal: $left of $total records pending"
kill "$HOLDER"
wait "$HOLDER" 2>/dev/null || true
kill_importer
log "the lock released: imported, the journal drains"
importer "$WORK_DIR/held"
wait_disk "$MNT" "$SERIAL" 15
wait_for "journal_pending '$WORK_DIR/held' | grep -qx 0" 60 || fail "the journal did not drain"
stop_daemon "$IMP" 15 TERM || fail "importer exit status $? after SIGTERM"
stop_daemon "$EXP" 15 TERM || fail "exporter exit status $? after SIGTERM"

scan_logs "warning: .*(dropping link|no path left|cannot connect|connection reset|broken pipe|journal replay)|error: disk $SERIAL: (journal|not imported: its journal)"
log "PASS"
