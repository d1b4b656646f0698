#!/bin/bash
# Trim reaches the exported image: after 64 MiB of random data written with
# O_DIRECT through MNT/xa0, punching a hole in the first 32 MiB of the FUSE
# file frees ~32 MiB of the image's blocks, and a blkdiscard of the next
# 16 MiB on a direct-I/O loop device over xa0 frees ~16 MiB more. Both
# ranges read back as zeros through the importer and in the image, and the
# last 16 MiB keep their data. Clean SIGTERM exits and logs.
set -euo pipefail
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/xdisk.sh"
disk_test trim1 256 losetup blkdiscard fallocate cmp dd

start_pair

# kib_allocated: the image's allocated space in KiB (st_blocks is in 512 B).
kib_allocated() { echo $(($(stat -c %b "$IMG") * $(stat -c %B "$IMG") / 1024)); }
# zero_range FILE OFFSET LENGTH: FILE holds only zeros there.
zero_range() { cmp -n "$3" <(dd if="$1" bs=1M skip="$2" count="$3" iflag=skip_bytes,count_bytes \
  status=none) /dev/zero; }

log "64 MiB of random data with O_DIRECT"
RAND=$WORK_DIR/rand
head -c $((64 * MIB)) /dev/urandom >"$RAND"
dd if="$RAND" of="$MNT/xa0" bs=1M oflag=direct conv=notrunc status=none
sync "$IMG"
cmp -n $((64 * MIB)) "$IMG" "$RAND" || fail "image does not hold the data"
full=$(kib_allocated)
log "image allocation: $full KiB"
[ "$full" -ge $((63 * 1024)) ] || fail "only $full KiB allocated after writing 64 MiB"

log "punch a hole in the first 32 MiB of xa0"
fallocate --punch-hole --keep-size --offset 0 --length $((32 * MIB)) "$MNT/xa0"
[ "$(stat -c %s "$MNT/xa0")" = $((256 * MIB)) ] || fail "punching changed the disk size"
[ "$(stat -c %s "$IMG")" = $((256 * MIB)) ] || fail "punching changed the image size"
punched=$(kib_allocated)
log "image allocation: $punched KiB"
freed=$((full - punched))
if [ "$freed" -lt $((31 * 1024)) ] || [ "$freed" -gt $((33 * 1024)) ]; then
  fail "punching 32 MiB freed $freed KiB of the image"
fi
zero_range "$MNT/xa0" 0 $((32 * MIB)) || fail "punched range of xa0 is not zero"
zero_range "$IMG" 0 $((32 * MIB)) || fail "punched range of the image is not zero"
cmp -n $((32 * MIB)) -i $((32 * MIB)) "$MNT/xa0" "$RAND" || fail "punching touched 32..64 MiB"

log "blkdiscard 32..48 MiB through a direct-I/O loop device"
attach_loop LOOP "$MNT/xa0" --direct-io=on
dio=$(cat "/sys/block/$(basename "$LOOP")/loop/dio" 2>/dev/null || echo "?")
[ "$dio" = 1 ] || fail "loop device did not get direct I/O (dio=$dio)"
blkdiscard -o $((32 * MIB)) -l $((16 * MIB)) "$LOOP"
discarded=$(kib_allocated)
log "image allocation: $discarded KiB"
freed=$((punched - discarded))
if [ "$freed" -lt $((15 * 1024)) ] || [ "$freed" -gt $((17 * 1024)) ]; then
  fail "discarding 16 MiB freed $freed KiB of the image"
fi
zero_range "$LOOP" $((32 * MIB)) $((16 * MIB)) || fail "discarded range of the loop device is not zero"
zero_range "$MNT/xa0" $((32 * MIB)) $((16 * MIB)) || fail "discarded range of xa0 is not zero"
zero_range "$IMG" $((32 * MIB)) $((16 * MIB)) || fail "discarded range of the image is not zero"
cmp -n $((16 * MIB)) -i $((48 * MIB)) "$IMG" "$RAND" || fail "discarding touched 48..64 MiB"
cmp -n $((16 * MIB)) -i $((48 * MIB)) "$LOOP" "$RAND" || fail "48..64 MiB via the loop device"
losetup -d "$LOOP"

log "SIGTERM: both daemons exit 0"
stop_pair
# --sync=remote writes no journal: the default journal directory
# (STATE-DIR/journal) holds no segment afterwards (it need not exist).
left=$({ find "$WORK_DIR/state-importer/journal" -name '*.log' 2>/dev/null || true; } | wc -l)
[ "$left" = 0 ] || fail "a clean shutdown left $left journal segments: $(ls -lR "$WORK_DIR/state-importer/journal")"

scan_logs ""
log "PASS"
