#!/bin/bash
# A write-back journal that cannot start a new segment at startup (its
# file system is full) opens switched off: what it holds is still sent,
# flushed and retired, and only then are its files deleted. Writes that
# arrive meanwhile wait for that, because a later start would otherwise
# resend the old records over them. The importer (--sync=journal) takes
# 4 MiB of writes A while the exporter is away and is killed; its journal's
# tmpfs is then filled up. After the restart, with the exporter back, a
# write elsewhere completes only once the journal has no segment left;
# 4 MiB of writes B over A then leave B in the image, and the daemon
# stays up. Then the same with the journal's file system read-only: the
# backlog is sent, but its files cannot be deleted, so a new write waits
# until the file system is writable again (retried every second).
set -euo pipefail
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/xdisk.sh"
disk_test off1 64 dd cmp mount umount

JFS=$WORK_DIR/jfs
mkdir -p "$JFS"
mount -t tmpfs -o size=16M tmpfs "$JFS"
mount_cleanup "$JFS"
head -c $((4 * MIB)) /dev/urandom >"$WORK_DIR/a"
head -c $((4 * MIB)) /dev/urandom >"$WORK_DIR/b"

PORT=$(free_port)
make_keys "$WORK_DIR/keys" 127.0.0.1
importer() {
  start_importer IMP importer "$MNT" "$WORK_DIR/keys" "127.0.0.1:$PORT" -- \
    --sync=journal --journal "$JFS/j"
}

# backlog FILE: writes FILE at offset 0 into the journal while the exporter
# is away (write-back completes them), then kills the importer.
backlog() {
  start_exporter EXP exporter "$PORT" "$WORK_DIR/keys" "$IMG,serno=$SERIAL"
  importer
  wait_disk "$MNT" "$SERIAL"
  kill -KILL "$EXP"
  wait "$EXP" 2>/dev/null || true
  wait_for "grep -q 'disk $SERIAL: no path left' '$WORK_DIR/importer.log'" 15 ||
    fail "the importer did not notice the outage"
  timeout -k 5 60 dd if="$1" of="$MNT/serno/$SERIAL" bs=64k oflag=direct conv=notrunc \
    status=none || fail "write-back writes of $1 failed"
  kill_importer
}

log "4 MiB of writes A into the journal while the exporter is away"
backlog "$WORK_DIR/a"
pending=$(journal_pending "$JFS/j")
[ "$pending" -ge 64 ] || fail "only $pending records pending"

log "the journal's file system fills up; restart, the exporter back but stopped"
dd if=/dev/zero of="$JFS/filler" bs=64k status=none 2>/dev/null || true
start_exporter EXP exporter "$PORT" "$WORK_DIR/keys" "$IMG,serno=$SERIAL"
kill -STOP "$EXP"
cleanup_fn kill -CONT "$EXP"
importer
wait_disk "$MNT" "$SERIAL" 15 # from its journal, before the exporter answers
grep -q "disk $SERIAL: journal: .*No space left on device.*journaling is off" \
  "$WORK_DIR/importer.log" || fail "no log line says the journal is off: $(cat "$WORK_DIR/importer.log")"

log "a write elsewhere completes only after the old records are gone"
# It overlaps none of them, so only the gate keeps it from going out (and
# completing) beside them once the exporter answers.
timeout -k 5 60 dd if="$WORK_DIR/b" of="$MNT/serno/$SERIAL" bs=64k count=1 seek=512 oflag=direct \
  conv=notrunc status=none &
DD=$!
sleep 0.5
kill -0 "$DD" 2>/dev/null || fail "the write completed while the exporter was stopped"
kill -CONT "$EXP"
wait "$DD" || fail "the write elsewhere failed"
left=$(find "$JFS/j" -name '*.log')
[ -z "$left" ] || fail "a write completed with journal segments still there: $left"

log "writes B over A"
timeout -k 5 60 dd if="$WORK_DIR/b" of="$MNT/serno/$SERIAL" bs=1M oflag=direct conv=notrunc \
  status=none || fail "writes B failed"
require_alive "$IMP" "with a journal that opened switched off"
cmp "$WORK_DIR/b" "$MNT/serno/$SERIAL" -n $((4 * MIB)) || fail "the FUSE file does not hold B"

stop_pair
cmp -n $((4 * MIB)) "$WORK_DIR/b" "$IMG" || fail "the exported image does not hold B"
cmp -n $((64 * 1024)) "$WORK_DIR/b" <(dd if="$IMG" bs=64k skip=512 count=1 status=none) ||
  fail "the exported image does not hold the write elsewhere"
log "again on a read-only journal: its files cannot go, so writes wait until they can"
rm -f "$JFS/filler"
head -c $((4 * MIB)) /dev/urandom >"$WORK_DIR/c"
backlog "$WORK_DIR/c"
mount -o remount,ro "$JFS"
start_exporter EXP exporter "$PORT" "$WORK_DIR/keys" "$IMG,serno=$SERIAL"
importer
wait_disk "$MNT" "$SERIAL" 15
grep -q "disk $SERIAL: journal: .*Read-only file system.*journaling is off" \
  "$WORK_DIR/importer.log" || fail "no log line says the journal is off: $(tail -5 "$WORK_DIR/importer.log")"
timeout -k 5 60 dd if="$WORK_DIR/b" of="$MNT/serno/$SERIAL" bs=64k count=1 seek=768 oflag=direct \
  conv=notrunc status=none &
DD=$!
wait_for "cmp -s -n $((4 * MIB)) '$WORK_DIR/c' '$IMG'" 30 || fail "the backlog C was not sent"
sleep 1
kill -0 "$DD" 2>/dev/null || fail "a write completed while the old records' files were still there"
mount -o remount,rw "$JFS"
wait "$DD" || fail "the write failed after the journal's file system became writable"
left=$(find "$JFS/j" -name '*.log')
[ -z "$left" ] || fail "journal segments left: $left"
require_alive "$IMP" "after its read-only journal"
stop_pair
cmp -n $((64 * 1024)) "$WORK_DIR/b" <(dd if="$IMG" bs=64k skip=768 count=1 status=none) ||
  fail "the exported image does not hold the write"
scan_logs "warning: .*(dropping link|no path left|cannot connect|connection reset|broken pipe|journal retire: .*Read-only)|error: disk $SERIAL: journal: .*(No space left on device|Read-only file system)"
log "PASS"
