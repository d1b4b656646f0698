#!/bin/bash
# ext4 on an imported disk: a direct-I/O loop device over MNT/xa0 takes
# mkfs.ext4, ~50 MiB of files of random sizes, an unmount, a clean
# `e2fsck -fn` and a remount with every file's sha256 intact; the exported
# image file holds the same bytes, so e2fsck on it is clean too. Both daemons
# then exit 0 on SIGTERM and their logs are clean.
set -euo pipefail
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/xdisk.sh"
disk_test ext4disk 256 losetup mkfs.ext4 e2fsck sha256sum

FS=$WORK_DIR/fs
mkdir -p "$FS"

start_pair

log "loop --direct-io=on over xa0, mkfs.ext4"
attach_loop LOOP "$MNT/xa0" --direct-io=on
dio=$(cat "/sys/block/$(basename "$LOOP")/loop/dio" 2>/dev/null || echo "?")
[ "$dio" = 1 ] || fail "loop device did not get direct I/O (dio=$dio)"
mkfs.ext4 -q -F "$LOOP"
mount "$LOOP" "$FS"
mount_cleanup "$FS"

log "20 files of random sizes, ~50 MiB"
total=0
for i in $(seq -w 1 20); do
  # 1..4 MiB plus an odd tail, so that not every file ends on a block.
  kib=$((1024 + RANDOM % 3072))
  head -c $((kib * 1024 + RANDOM % 4096)) /dev/urandom >"$FS/f$i"
  total=$((total + kib))
done
mkdir "$FS/sub"
for i in $(seq 1 50); do echo "small $i" >"$FS/sub/s$i"; done
(cd "$FS" && sha256sum f* sub/* >"$WORK_DIR/sums")
log "wrote $((total / 1024)) MiB"
umount "$FS"

log "e2fsck -fn on the loop device"
e2fsck -fn "$LOOP" >"$WORK_DIR/e2fsck-loop.log" 2>&1 || {
  cat "$WORK_DIR/e2fsck-loop.log" >&2
  fail "e2fsck on $LOOP"
}

log "remount and verify"
mount "$LOOP" "$FS"
(cd "$FS" && sha256sum -c --quiet "$WORK_DIR/sums") || fail "contents after remount"
umount "$FS"
losetup -d "$LOOP"

log "e2fsck -fn on the exported image"
e2fsck -fn "$IMG" >"$WORK_DIR/e2fsck-img.log" 2>&1 || {
  cat "$WORK_DIR/e2fsck-img.log" >&2
  fail "e2fsck on the exported image"
}

log "SIGTERM: both daemons exit 0"
stop_pair

scan_logs ""
log "PASS"
