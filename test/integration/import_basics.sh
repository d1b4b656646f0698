#!/bin/bash
# One exporter and one importer over TCP loopback: the exported file shows up
# once in the importer's tree (xa0, serno/, by-label/<host>/<file>, by-uuid/
# all one inode with nlink 4) with the exported size and a 512-byte
# st_blksize; random data written through the FUSE file, buffered and with
# O_DIRECT at a non-zero offset, reads back the same and lands at the same
# offset in the exported image; SIGTERM stops both daemons with exit 0 and
# the mount goes; neither log has anything suspicious.
set -euo pipefail
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/xdisk.sh"
disk_test basic1 1024 cmp dd python3 hostname

start_pair

log "listing and size"
[ "$(ls "$MNT/serno")" = "$SERIAL" ] || fail "serno/ lists '$(ls "$MNT/serno" | tr '\n' ' ')'"
size=$(stat -c %s "$MNT/serno/$SERIAL")
[ "$size" = $((1024 * MIB)) ] || fail "size $size, want $((1024 * MIB))"

log "one inode under four names"
# The exporter's default label is <its hostname>/<basename of the path>.
host=$(hostname)
uuid=$(ls "$MNT/by-uuid")
[ "$(ls "$MNT/by-uuid" | wc -l)" = 1 ] || fail "by-uuid/ lists '$uuid'"
names=(xa0 "serno/$SERIAL" "by-label/$host/$(basename "$IMG")" "by-uuid/$uuid")
ino=$(stat -c %i "$MNT/xa0")
for n in "${names[@]}"; do
  [ -e "$MNT/$n" ] || fail "$n missing (tree: $(cd "$MNT" && find . | tr '\n' ' '))"
  [ "$(stat -c %i "$MNT/$n")" = "$ino" ] || fail "$n is inode $(stat -c %i "$MNT/$n"), not $ino"
  [ "$(stat -c %h "$MNT/$n")" = 4 ] || fail "$n has nlink $(stat -c %h "$MNT/$n"), want 4"
done
[ ! -e "$MNT/xa1" ] || fail "a second disk xa1 appeared"
# The uuid comes from the exporter's state directory (keyed by serial).
[ "$(cat "$WORK_DIR/state-exporter/exports/$SERIAL.uuid")" = "$uuid" ] ||
  fail "by-uuid name $uuid is not the exporter's uuid"
blksize=$(python3 -c 'import os,sys; print(os.stat(sys.argv[1]).st_blksize)' "$MNT/xa0")
[ "$blksize" = 512 ] || fail "st_blksize $blksize, want 512"

log "32 MiB round trips, buffered and O_DIRECT"
RAND=$WORK_DIR/rand
head -c $((32 * MIB)) /dev/urandom >"$RAND"
# Buffered at 100 MiB + 4 KiB: neither MiB- nor chunk-aligned.
boff=$((100 * MIB + 4096))
dd if="$RAND" of="$MNT/serno/$SERIAL" bs=4096 seek=$((boff / 4096)) conv=notrunc,fsync status=none
dd if="$MNT/xa0" bs=4096 skip=$((boff / 4096)) count=$((32 * MIB / 4096)) status=none |
  cmp - "$RAND" || fail "buffered round trip"
# O_DIRECT at 300 MiB + 512: sector- but not page-aligned offset.
doff=$((300 * MIB + 512))
dd if="$RAND" of="$MNT/by-label/$host/$(basename "$IMG")" bs=1M seek=$doff \
  oflag=direct,seek_bytes conv=notrunc status=none
dd if="$MNT/by-uuid/$uuid" bs=1M skip=$doff count=32 iflag=direct,skip_bytes status=none |
  cmp - "$RAND" || fail "O_DIRECT round trip"

log "the data is in the exported image"
cmp -n $((32 * MIB)) -i "$boff:0" "$IMG" "$RAND" || fail "image at $boff differs"
cmp -n $((32 * MIB)) -i "$doff:0" "$IMG" "$RAND" || fail "image at $doff differs"
# Untouched ranges stay zero (the image is sparse).
cmp -n $MIB -i $((200 * MIB)):0 "$IMG" /dev/zero || fail "image at 200 MiB not zero"
cmp -n $MIB <(dd if="$MNT/xa0" bs=1M skip=200 count=1 status=none) /dev/zero ||
  fail "disk at 200 MiB not zero"

log "SIGTERM: importer unmounts and exits 0, then the exporter exits 0"
stop_pair

scan_logs ""
log "PASS"
