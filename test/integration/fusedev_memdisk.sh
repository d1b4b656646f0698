#!/usr/bin/env bash
# The FUSE layer over memory disks: tree shape, hard links, sizes, data
# round trips with and without O_DIRECT, loop + ext4, hole punching, the
# offline-while-open rule, and both ways of stopping (SIGTERM, fusermount3 -u).
set -euo pipefail
# shellcheck source=functions.sh
source "$(dirname "$0")/functions.sh"

require_root
require_fuse
for c in fusermount3 losetup mkfs.ext4 e2fsck fallocate cmp dd mountpoint md5sum truncate; do
  requires "$c"
done
MEMDISK=$BUILD_DIR/test/xdisk-memdisk
[ -x "$MEMDISK" ] || fail "missing $MEMDISK (build first)"

MNT=$WORK_DIR/mnt
mkdir -p "$MNT"
mount_fuse_cleanup "$MNT"
MIB=1048576

start_daemon PID memdisk "$MEMDISK" "$MNT" \
  --disk S1,host1/da0,uuid-1,64 --disk S2,host2/da1,,16 --async-ms 0
wait_for "mountpoint -q '$MNT'" 10 || fail "not mounted"

log "tree shape"
got=$(cd "$MNT" && find . | sort | tr '\n' ' ')
want=". ./by-label ./by-label/host1 ./by-label/host1/da0 ./by-label/host2 ./by-label/host2/da1 \
./by-uuid ./by-uuid/uuid-1 ./serno ./serno/S1 ./serno/S2 ./xa0 ./xa1 "
[ "$got" = "$want" ] || fail "tree: got '$got', want '$want'"

log "one inode per disk"
ino=$(stat -c %i "$MNT/xa0")
for n in serno/S1 by-label/host1/da0 by-uuid/uuid-1; do
  [ "$(stat -c %i "$MNT/$n")" = "$ino" ] || fail "$n is not inode $ino"
done
[ "$(stat -c %h "$MNT/xa0")" = 4 ] || fail "xa0 nlink $(stat -c %h "$MNT/xa0") != 4"
[ "$(stat -c %h "$MNT/xa1")" = 3 ] || fail "xa1 nlink != 3"
[ "$(stat -c %i "$MNT/serno/S2")" = "$(stat -c %i "$MNT/xa1")" ] || fail "S2 inode"
[ "$(stat -c %i "$MNT/xa1")" != "$ino" ] || fail "two disks share an inode"

log "sizes and modes"
[ "$(stat -c %s "$MNT/xa0")" = $((64 * MIB)) ] || fail "xa0 size"
[ "$(stat -c %s "$MNT/xa1")" = $((16 * MIB)) ] || fail "xa1 size"
[ "$(stat -c %a "$MNT/xa0")" = 600 ] || fail "xa0 mode"
[ "$(stat -c %F "$MNT/xa0")" = "regular file" ] || fail "xa0 type"

log "dd round trips, buffered and O_DIRECT"
head -c $((4 * MIB)) /dev/urandom >"$WORK_DIR/rand"
dd if="$WORK_DIR/rand" of="$MNT/xa0" bs=1M seek=3 conv=notrunc,fsync status=none
dd if="$MNT/serno/S1" bs=1M skip=3 count=4 status=none | cmp - "$WORK_DIR/rand" ||
  fail "buffered round trip"
dd if="$WORK_DIR/rand" of="$MNT/by-label/host1/da0" bs=256k seek=40 oflag=direct conv=notrunc \
  status=none
dd if="$MNT/xa0" bs=256k skip=40 count=16 iflag=direct status=none | cmp - "$WORK_DIR/rand" ||
  fail "O_DIRECT round trip"
# The other disk is untouched.
cmp -n $((16 * MIB)) "$MNT/xa1" /dev/zero || fail "xa1 not zero"

log "end of media"
[ "$(dd if="$MNT/xa1" bs=1M skip=16 count=1 status=none | wc -c)" = 0 ] || fail "read past end"
[ "$(dd if="$MNT/xa1" bs=1M skip=15 count=4 status=none | wc -c)" = $MIB ] || fail "short read"
if dd if=/dev/zero of="$MNT/xa1" bs=1M seek=16 count=1 conv=notrunc status=none 2>"$WORK_DIR/dd.err"; then
  fail "write past end succeeded"
fi
grep -q "No space left" "$WORK_DIR/dd.err" || fail "write past end: $(cat "$WORK_DIR/dd.err")"
truncate -s $((16 * MIB)) "$MNT/xa1" || fail "truncate to the same size"
if truncate -s $MIB "$MNT/xa1" 2>/dev/null; then fail "truncate shrank a disk"; fi
if touch "$MNT/newfile" 2>/dev/null; then fail "created a file in the tree"; fi

log "punch hole reaches the device as Trim"
fallocate --punch-hole --keep-size --offset $((3 * MIB)) --length $MIB "$MNT/xa0"
cmp -n $MIB <(dd if="$MNT/xa0" bs=1M skip=3 count=1 status=none) /dev/zero ||
  fail "punched range is not zero"
dd if="$MNT/xa0" bs=1M skip=4 count=3 status=none | cmp - <(tail -c +$((MIB + 1)) "$WORK_DIR/rand") ||
  fail "punch hole touched its neighbours"
grep -q "S1: trim $((3 * MIB))+$MIB" "$WORK_DIR/memdisk.log" || fail "trim not seen by the device"

log "loop --direct-io=on, ext4, e2fsck"
attach_loop LOOP "$MNT/xa0" --direct-io=on
dio=$(cat "/sys/block/$(basename "$LOOP")/loop/dio" 2>/dev/null || echo "?")
log "loop dio=$dio"
[ "$dio" = 1 ] || fail "loop device did not get direct I/O"
mkfs.ext4 -q -F -E nodiscard "$LOOP"
FS=$WORK_DIR/fs
mkdir -p "$FS"
mount "$LOOP" "$FS"
mount_cleanup "$FS"
head -c $((8 * MIB)) /dev/urandom >"$FS/big"
for i in $(seq 1 50); do echo "file $i" >"$FS/small.$i"; done
(cd "$FS" && md5sum big small.* >"$WORK_DIR/sums")
if command -v fstrim >/dev/null; then fstrim "$FS" || fail "fstrim"; fi
umount "$FS"
mount "$LOOP" "$FS"
(cd "$FS" && md5sum -c --quiet "$WORK_DIR/sums") || fail "ext4 contents after remount"
umount "$FS"
e2fsck -fn "$LOOP" >"$WORK_DIR/e2fsck.log" 2>&1 || {
  cat "$WORK_DIR/e2fsck.log" >&2
  fail "e2fsck"
}
losetup -d "$LOOP"

log "offline while open"
# ext4 owns the start of the disk now; keep a marker past its end.
dd if="$WORK_DIR/rand" of="$MNT/xa0" bs=1M seek=60 conv=notrunc status=none
ino1=$(stat -c %i "$MNT/xa0")
exec 3<"$MNT/xa0"
kill -USR1 "$PID"
wait_for "grep -q 'disk S1 offline' '$WORK_DIR/memdisk.log'" 5 || fail "SIGUSR1 not seen"
[ -e "$MNT/xa0" ] || fail "xa0 vanished while open"
[ -e "$MNT/by-label/host1/da0" ] || fail "label name vanished while open"
[ "$(dd bs=1M skip=5 count=1 status=none <&3 | wc -c)" = $MIB ] || fail "read through the open fd"
exec 3<&-
wait_for "[ ! -e '$MNT/xa0' ]" 5 || fail "xa0 still there after the last close"
[ ! -e "$MNT/serno/S1" ] || fail "serno/S1 still there"
[ ! -e "$MNT/by-label/host1" ] || fail "empty label directory still there"
[ ! -e "$MNT/by-uuid/uuid-1" ] || fail "by-uuid name still there"
[ -e "$MNT/xa1" ] || fail "xa1 disappeared too"
if dd if="$MNT/xa0" count=1 status=none 2>/dev/null; then fail "opened an offline disk"; fi
kill -USR1 "$PID"
wait_for "[ -e '$MNT/xa0' ]" 5 || fail "xa0 did not come back"
[ "$(stat -c %i "$MNT/xa0")" = "$ino1" ] || fail "xa0 came back with another inode"
dd if="$MNT/xa0" bs=1M skip=60 count=4 status=none | cmp - "$WORK_DIR/rand" ||
  fail "data after coming back"

log "SIGTERM: clean unmount, exit 0"
stop_ok "$PID" 10 "memdisk"
! mountpoint -q "$MNT" || fail "still mounted after SIGTERM"
grep -q "server stopped, status 0" "$WORK_DIR/memdisk.log" || fail "no clean stop in the log"

log "fusermount3 -u from outside: exit 0"
start_daemon PID2 memdisk2 "$MEMDISK" "$MNT" --disk S3,h/d,,4 --sync
wait_for "mountpoint -q '$MNT'" 10 || fail "not mounted (second run)"
[ "$(stat -c %s "$MNT/xa0")" = $((4 * MIB)) ] || fail "second run size"
fusermount3 -u "$MNT"
rc=0
wait_exit "$PID2" 10 || rc=$?
[ "$rc" = 0 ] || fail "memdisk exit status $rc after fusermount3 -u"
! mountpoint -q "$MNT" || fail "still mounted after fusermount3 -u"

scan_logs ""
log "PASS"
