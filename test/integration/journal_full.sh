#!/bin/bash
# A journal whose filesystem fills up (ENOSPC) loses no write. The importer
# (--sync=journal, write-back; --sync=remote writes no journal) keeps its
# journals on a 4 MiB tmpfs. Disk 1 gets 48 MiB in 1 MiB O_DIRECT writes,
# and an append fails. Disk 2 then gets 8 MiB in 4 KiB writes, and one of
# their appends fails. Every write still completes (the
# journal is switched off for that disk, with one error line naming the
# cause), the exported images hold exactly the data written, later writes
# work too, the daemon stays up and exits 0 on SIGTERM, and it leaves no
# segment behind.
set -euo pipefail
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/xdisk.sh"
disk_test full1 64 dd cmp mount umount

IMG2=$WORK_DIR/full2.img
JFS=$WORK_DIR/jfs
truncate -s $((64 * MIB)) "$IMG2"
mkdir -p "$JFS"
mount -t tmpfs -o size=4M tmpfs "$JFS"
mount_cleanup "$JFS"

PORT=$(free_port)
make_keys "$WORK_DIR/keys" 127.0.0.1
start_exporter EXP exporter "$PORT" "$WORK_DIR/keys" "$IMG,serno=$SERIAL" "$IMG2,serno=full2"
start_importer IMP importer "$MNT" "$WORK_DIR/keys" "127.0.0.1:$PORT" -- --journal "$JFS/j" \
  --sync=journal
wait_disk "$MNT" "$SERIAL"
wait_disk "$MNT" full2

log "48 MiB in 1 MiB writes into a 4 MiB journal"
head -c $((48 * MIB)) /dev/urandom >"$WORK_DIR/data"
dd if="$WORK_DIR/data" of="$MNT/serno/$SERIAL" bs=1M oflag=direct conv=notrunc status=none ||
  fail "a write failed although the journal only ran out of space"
grep -q "disk $SERIAL: journal: .*No space left on device.*journaling is off" \
  "$WORK_DIR/importer.log" || fail "no log line says why the journal went off: $(cat "$WORK_DIR/importer.log")"
require_alive "$IMP" "after its journal filled up"

log "4 KiB writes after the journal went off"
dd if="$WORK_DIR/data" of="$MNT/serno/$SERIAL" bs=4k count=256 seek=$((48 * 256)) skip=0 oflag=direct \
  conv=notrunc status=none || fail "4 KiB writes failed"

cmp -n $((48 * MIB)) "$WORK_DIR/data" "$MNT/serno/$SERIAL" || fail "the FUSE file differs from what was written"
cmp -n $((MIB)) "$WORK_DIR/data" <(dd if="$MNT/serno/$SERIAL" bs=1M skip=48 count=1 iflag=direct status=none) ||
  fail "the 4 KiB writes did not land"

log "8 MiB in 4 KiB writes into the other disk's journal"
dd if="$WORK_DIR/data" of="$MNT/serno/full2" bs=4k count=2048 oflag=direct conv=notrunc \
  status=none || fail "a 4 KiB write failed although the journal only ran out of space"
grep -q "disk full2: journal: .*No space left on device.*journaling is off" \
  "$WORK_DIR/importer.log" || fail "no log line says why disk 2's journal went off"
dd if="$WORK_DIR/data" of="$MNT/serno/full2" bs=4k count=256 seek=2048 skip=2048 oflag=direct \
  conv=notrunc status=none || fail "4 KiB writes after the journal went off failed"
cmp -n $((9 * MIB)) "$WORK_DIR/data" "$MNT/serno/full2" || fail "disk 2 differs from what was written"
require_alive "$IMP" "after both journals filled up"

stop_pair
cmp -n $((9 * MIB)) "$WORK_DIR/data" "$IMG2" || fail "disk 2's image differs from what was written"
cmp -n $((48 * MIB)) "$WORK_DIR/data" "$IMG" || fail "the exported image differs from what was written"
cmp -n $((MIB)) "$WORK_DIR/data" <(dd if="$IMG" bs=1M skip=48 count=1 status=none) ||
  fail "the 4 KiB writes are not in the image"
left=$(find "$JFS" -name '*.log' | wc -l)
[ "$left" = 0 ] || fail "$left journal segments left behind: $(ls -lR "$JFS")"
scan_logs "journal: .*No space left on device|journal retire: .*No space left on device"
log "PASS"
