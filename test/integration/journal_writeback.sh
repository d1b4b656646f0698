#!/bin/bash
# Write-back (--sync=journal) while the remote is away, across an importer
# restart, and with the journal full:
#  1. the exporter is SIGKILLed; fio writes 48 MiB with crc32c verify
#     headers (writes complete: they are durable in the local journal);
#  2. the importer is SIGKILLed and started again, the exporter still gone:
#     the disk is in the tree at once (from the journal's disk header), and
#     fio verifies every block it wrote, read from the journal;
#  3. more writes and an fsync(2) complete during the outage;
#  4. the exporter returns: the journal drains to zero, and the exported
#     image holds what fio wrote (fio verifies the image file directly);
#  5. with --journal-max 8M and the exporter gone again, writes beyond the
#     limit wait (never fail) and complete once the exporter returns;
#  6. a journal with records, left to a --sync=remote start: its records
#     reach the remote before new writes to the same blocks.
set -euo pipefail
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/xdisk.sh"
disk_test wb1 256 fio cmp

JDIR=$WORK_DIR/journal
PORT=$(free_port)
make_keys "$WORK_DIR/keys" 127.0.0.1

importer() {
  start_importer IMP importer "$MNT" "$WORK_DIR/keys" "127.0.0.1:$PORT" -- \
    --sync=journal --journal "$JDIR" "$@"
}
exporter() { start_exporter EXP exporter "$PORT" "$WORK_DIR/keys" "$IMG,serno=$SERIAL"; }
kill_exporter() {
  kill -KILL "$EXP"
  wait "$EXP" 2>/dev/null || true
}
fio_job() {
  local name=$1 file=$2
  shift 2
  # A read that blocks on the absent remote instead of coming from the
  # journal would hang: time out instead.
  (cd "$WORK_DIR" && timeout -k 5 120 fio --name="$name" --filename="$file" --ioengine=libaio --direct=1 \
    --verify=crc32c --verify_fatal=1 --output="$WORK_DIR/$name.out" "$@") ||
    { cat "$WORK_DIR/$name.out" >&2; fail "fio $name failed"; }
  grep -q "err= 0" "$WORK_DIR/$name.out" || fail "fio $name: errors"
  log "fio $name: ok"
}
region=(--bs=64k --size=48M --offset=$((16 * MIB)))

exporter
importer
wait_disk "$MNT" "$SERIAL"

log "1. outage: writes complete into the journal"
kill_exporter
wait_for "grep -q 'disk $SERIAL: no path left' '$WORK_DIR/importer.log'" 15 ||
  fail "the importer did not notice the outage"
fio_job w1 "$MNT/xa0" --rw=write --iodepth=8 "${region[@]}" --do_verify=0
[ "$(journal_pending "$JDIR")" -gt 0 ] || fail "nothing pending in the journal during the outage"

log "2. importer SIGKILLed and restarted during the outage"
kill_importer
importer
wait_disk "$MNT" "$SERIAL" 5
grep -q "disk $SERIAL: journal: [0-9]* pending records" "$WORK_DIR/importer.log" ||
  fail "the restarted importer did not report the journal's backlog"
fio_job r1 "$MNT/xa0" --rw=read --iodepth=8 "${region[@]}"

log "3. writes and fsync during the outage"
fio_job w2 "$MNT/xa0" --rw=randwrite --bs=4k --size=4M --offset=$((128 * MIB)) --iodepth=16 \
  --do_verify=0 --fsync=32
fio_job r2 "$MNT/xa0" --bs=4k --size=4M --offset=$((128 * MIB)) --iodepth=16 \
  --verify_only=1 --rw=randwrite

log "4. the exporter returns: the journal drains"
exporter
wait_for "journal_pending '$JDIR' | grep -qx 0" 60 ||
  fail "the journal did not drain ($(journal_pending "$JDIR") pending)"
fio_job img1 "$IMG" --rw=read --iodepth=8 "${region[@]}"
fio_job img2 "$IMG" --rw=randwrite --bs=4k --size=4M --offset=$((128 * MIB)) --iodepth=16 \
  --verify_only=1
stop_daemon "$IMP" 15 TERM || fail "importer exit status $? after SIGTERM"

log "5. a full journal holds writes back until the remote drains it"
importer --journal-max 8M
wait_disk "$MNT" "$SERIAL"
kill_exporter
wait_for "[ \$(grep -c 'disk $SERIAL: no path left' '$WORK_DIR/importer.log') -ge 2 ]" 15 ||
  fail "the importer did not notice the second outage"
(cd "$WORK_DIR" && exec fio --name=full --filename="$MNT/xa0" --ioengine=libaio --direct=1 \
  --rw=write --bs=1M --size=24M --offset=$((192 * MIB)) --iodepth=4 --verify=crc32c \
  --do_verify=0 --output="$WORK_DIR/full.out") &
FIO=$!
cleanup_fn kill -KILL "$FIO"
sleep 3
kill -0 "$FIO" 2>/dev/null || fail "24 MiB of writes went through an 8 MiB journal with no remote"
used=$(journal_bytes "$JDIR")
[ "$used" -le $((12 * MIB)) ] || fail "the journal grew to $used bytes past --journal-max 8M"
log "writes wait with the journal at $used bytes"
exporter
wait_exit "$FIO" 60 || fail "fio did not finish after the exporter returned"
grep -q "err= 0" "$WORK_DIR/full.out" || fail "fio full: errors"
wait_for "journal_pending '$JDIR' | grep -qx 0" 60 || fail "the journal did not drain"
fio_job img3 "$IMG" --rw=write --bs=1M --size=24M --offset=$((192 * MIB)) --verify_only=1

log "6. a write-back journal left to a --sync=remote start drains before new writes"
# Old data A goes into the journal during an outage; the importer dies and
# comes back in the default mode, which appends nothing. New data B for the
# same blocks is written while the remote is still away, then the remote
# returns: the journal's A must reach it before B, or A (resent later)
# would overwrite B.
head -c $((8 * MIB)) /dev/urandom >"$WORK_DIR/a.bin"
head -c $((8 * MIB)) /dev/urandom >"$WORK_DIR/b.bin"
kill_exporter
wait_for "[ \$(grep -c 'disk $SERIAL: no path left' '$WORK_DIR/importer.log') -ge 3 ]" 15 ||
  fail "the importer did not notice the third outage"
timeout 60 dd if="$WORK_DIR/a.bin" of="$MNT/serno/$SERIAL" bs=1M seek=64 oflag=direct \
  conv=notrunc status=none || fail "writing A into the journal failed"
[ "$(journal_pending "$JDIR")" -gt 0 ] || fail "A is not pending in the journal"
kill_importer
start_importer IMP importer "$MNT" "$WORK_DIR/keys" "127.0.0.1:$PORT" -- --journal "$JDIR"
wait_disk "$MNT" "$SERIAL" 5
(exec timeout 90 dd if="$WORK_DIR/b.bin" of="$MNT/serno/$SERIAL" bs=1M seek=64 oflag=direct \
  conv=notrunc status=none) &
DD=$!
cleanup_fn kill -KILL "$DD"
sleep 1
exporter
wait_exit "$DD" 60 || fail "writing B failed or hung (status $?)"
wait_for "journal_pending '$JDIR' | grep -qx 0" 60 || fail "the journal did not drain"
cmp -n $((8 * MIB)) -i $((64 * MIB)):0 "$IMG" "$WORK_DIR/b.bin" ||
  fail "the exported image does not hold B: the journal's older A overtook it"
stop_daemon "$IMP" 15 TERM || fail "importer exit status $? after SIGTERM"
stop_daemon "$EXP" 15 TERM || fail "exporter exit status $? after SIGTERM"
[ ! -e "$JDIR/$SERIAL" ] || fail "the drained journal of $SERIAL was not removed"

scan_logs "warning: .*(dropping link|no path left|cannot connect|connection reset|broken pipe)"
log "PASS"
