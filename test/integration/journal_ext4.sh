#!/bin/bash
# Write-back through a whole outage with a real filesystem: ext4 is made on
# the imported disk (losetup --direct-io=on) and mounted; the exporter goes
# down and 256 MiB of files are written; the filesystem is unmounted and the
# importer SIGKILLed and restarted during the outage (the disk is in the
# tree at once, from the journal); then the exporter returns, the journal
# drains to zero, and `e2fsck -fn` on the exported image is clean and the
# files' hashes match.
#
# Before the outage the loop device is read once, so the metadata ext4 reads
# while it allocates comes from the page cache: with the remote away, only
# blocks the journal holds can be read.
set -euo pipefail
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/xdisk.sh"
disk_test wbext4 1024 losetup mkfs.ext4 e2fsck sha256sum

FS=$WORK_DIR/fs
JDIR=$WORK_DIR/journal
mkdir -p "$FS" "$WORK_DIR/src"
PORT=$(free_port)
make_keys "$WORK_DIR/keys" 127.0.0.1

importer() {
  start_importer IMP importer "$MNT" "$WORK_DIR/keys" "127.0.0.1:$PORT" -- \
    --sync=journal --journal "$JDIR"
}

for i in 1 2 3 4 5 6 7 8; do
  head -c $((32 * MIB)) /dev/urandom >"$WORK_DIR/src/f$i"
done
(cd "$WORK_DIR/src" && sha256sum f*) >"$WORK_DIR/sums"

start_exporter EXP exporter "$PORT" "$WORK_DIR/keys" "$IMG,serno=$SERIAL"
importer
wait_disk "$MNT" "$SERIAL"

attach_loop LOOP "$MNT/xa0" --direct-io=on
mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$LOOP"
mount -o noinit_itable "$LOOP" "$FS"
mount_cleanup "$FS"
dd if="$LOOP" of=/dev/null bs=1M status=none

log "outage: the exporter is killed"
kill -KILL "$EXP"
wait "$EXP" 2>/dev/null || true
wait_for "grep -q 'disk $SERIAL: no path left' '$WORK_DIR/importer.log'" 15 ||
  fail "the importer did not notice the outage"
cp "$WORK_DIR"/src/f* "$FS/"
sync
umount "$FS"
losetup -d "$LOOP"
pending=$(journal_pending "$JDIR")
log "256 MiB written during the outage: $pending records pending"
[ "$pending" -ge 256 ] || fail "only $pending records pending after 256 MiB of writes"

log "importer SIGKILLed and restarted during the outage"
kill_importer
importer
wait_disk "$MNT" "$SERIAL" 5
[ "$(journal_pending "$JDIR")" = "$pending" ] || fail "the restart changed what is pending"

log "the exporter returns: the journal drains"
start_exporter EXP exporter "$PORT" "$WORK_DIR/keys" "$IMG,serno=$SERIAL"
wait_for "journal_pending '$JDIR' | grep -qx 0" 120 ||
  fail "the journal did not drain ($(journal_pending "$JDIR") pending)"
stop_daemon "$IMP" 15 TERM || fail "importer exit status $? after SIGTERM"
stop_daemon "$EXP" 15 TERM || fail "exporter exit status $? after SIGTERM"

e2fsck -fn "$IMG" >"$WORK_DIR/fsck.out" 2>&1 || { cat "$WORK_DIR/fsck.out" >&2; fail "e2fsck -fn found problems"; }
attach_loop LOOP "$IMG" -r
mount -o ro "$LOOP" "$FS"
(cd "$FS" && sha256sum -c --quiet "$WORK_DIR/sums") || fail "hashes differ on the exported image"
umount "$FS"
log "exported image: e2fsck clean, hashes match"

scan_logs "warning: .*(dropping link|no path left|cannot connect|connection reset|broken pipe)"
log "PASS"
