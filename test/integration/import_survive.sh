#!/bin/bash
# The importing daemon dies and comes back under a mounted ext4 on a loop
# device, and the application never notices (fusedev/fuse_server.h,
# ADOPTION; daemon/import/keeper.h). In each --sync mode, with fio writing and
# verifying (crc32c) through ext4 on `losetup --direct-io=on` the whole time:
#   1. ROUNDS times SIGKILL of the serving daemon at a random moment; its
#      keeper starts it again and it takes the mount over;
#   2. the exporter stopped (SIGSTOP: requests wait for the remote), and the
#      importer SIGKILLed twice in quick succession during that outage;
#   3. SIGKILL within the first second after a start;
#   4. `xdiskctl restart` (live re-exec) three times.
# Then fio must have finished without an error, the kernel must have logged
# no I/O error for the loop device, e2fsck -fn must find the filesystem
# clean, and a SIGTERM to the keeper stops everything and unmounts.
set -euo pipefail
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/xdisk.sh"
fuse_test fusermount3 mountpoint truncate ss losetup mkfs.ext4 e2fsck fio dmesg

ROUNDS=${SURVIVE_ROUNDS:-20}
FS=$WORK_DIR/fs
CTL=$WORK_DIR/ctl.sock
PORT=$(free_port)
make_keys "$WORK_DIR/keys" 127.0.0.1
mkdir -p "$FS"

# Waits until the serving daemon answers on its control socket.
wait_serving() {
  wait_for "ctl status >/dev/null 2>&1" 20 || fail "$1: the importer does not answer"
}
pause() { sleep "$(python3 -c "import random; print($1 + random.random() * $2)")"; }

for MODE in remote journal; do
  SERIAL=survive-$MODE
  IMG=$WORK_DIR/$SERIAL.img
  truncate -s $((256 * MIB)) "$IMG"
  start_exporter EXP "exporter-$MODE" "$PORT" "$WORK_DIR/keys" "$IMG,serno=$SERIAL"
  start_importer IMP "importer-$MODE" "$MNT" "$WORK_DIR/keys" "127.0.0.1:$PORT" -- \
    --sync="$MODE" --control "$CTL"
  wait_disk "$MNT" "$SERIAL"
  [ "$(daemon_field protection)" = keeper ] || fail "xdiskctl status does not name the keeper"
  # What the kernel and scripts know the disk by must mean the same after
  # every restart: its inode, its xaN name.
  ino_before=$(stat -c %i "$MNT/serno/$SERIAL")
  xa_before=$(stat -c %i "$MNT/xa0")
  attach_loop LOOP "$MNT/serno/$SERIAL" --direct-io=on
  mkfs.ext4 -q -F "$LOOP"
  timeout 30 mount "$LOOP" "$FS"
  mount_cleanup "$FS"
  dmesg_start=$(dmesg | wc -l)

  fio --name=survive --directory="$FS" --size=64M --rw=randwrite --bs=4k --bsrange=4k-64k \
    --ioengine=libaio --iodepth=16 --direct=1 --verify=crc32c --verify_backlog=512 \
    --time_based --runtime=$((ROUNDS + 25)) --output="$WORK_DIR/fio-$MODE.out" \
    >/dev/null 2>"$WORK_DIR/fio-$MODE.err" &
  FIO=$!
  # SIGKILL without waiting: fio cannot exit while its I/O is blocked.
  cleanup_fn kill -KILL "$FIO"
  sleep 1

  log "--sync=$MODE: 1. $ROUNDS SIGKILLs of the importer under fio"
  for ((round = 1; round <= ROUNDS; round++)); do
    pause 0.2 0.8
    crash_importer
  done
  wait_serving "after the kills"

  log "--sync=$MODE: 2. two SIGKILLs during an exporter outage"
  kill -STOP "$EXP"
  sleep 1
  crash_importer
  sleep 0.3
  crash_importer
  sleep 1
  kill -CONT "$EXP"
  wait_serving "after the outage"

  log "--sync=$MODE: 3. SIGKILL in the first second after a start"
  crash_importer
  sleep 0.2
  crash_importer
  wait_serving "after the early kill"

  log "--sync=$MODE: 4. xdiskctl restart under fio, three times"
  for r in 1 2 3; do
    pid=$(importer_daemon)
    ctl restart >/dev/null || fail "xdiskctl restart refused"
    # A re-exec keeps the pid; it serves again once the control socket
    # answers with a new start time.
    sleep 0.5
    wait_serving "after restart $r"
    [ "$(importer_daemon)" = "$pid" ] || fail "restart $r: the daemon was replaced, not re-executed"
    pause 0.5 0.5
  done
  # The re-executed daemon still has its keeper.
  [ "$(daemon_field protection)" = keeper ] || fail "after xdiskctl restart: protection $(daemon_field protection)"
  restarts=$(daemon_field restarts)
  [ "$restarts" -eq $((ROUNDS + 7)) ] || fail "xdiskctl status counts $restarts restarts"

  [ "$(stat -c %i "$MNT/serno/$SERIAL")" = "$ino_before" ] || fail "the disk's inode changed"
  [ "$(stat -c %i "$MNT/xa0")" = "$xa_before" ] || fail "xa0 names another inode"
  rc=0
  wait_exit "$FIO" $((ROUNDS + 120)) || rc=$?
  [ "$rc" = 0 ] || { cat "$WORK_DIR/fio-$MODE.out" "$WORK_DIR/fio-$MODE.err" >&2; fail "--sync=$MODE: fio exit status $rc"; }
  ! grep -qE 'err= *[1-9]|verify: bad|crc32c: verify failed' "$WORK_DIR/fio-$MODE.out" ||
    { cat "$WORK_DIR/fio-$MODE.out" >&2; fail "--sync=$MODE: fio saw errors"; }
  log "--sync=$MODE: fio: $(grep -m1 -oE 'write: IOPS=[^,]*' "$WORK_DIR/fio-$MODE.out")"
  timeout 60 umount "$FS"
  e2fsck -fn "$LOOP" >"$WORK_DIR/fsck.out" 2>&1 || { cat "$WORK_DIR/fsck.out" >&2; fail "--sync=$MODE: e2fsck"; }
  if dmesg | tail -n +$((dmesg_start + 1)) | grep -E "$(basename "$LOOP")|EXT4-fs error|Buffer I/O" | grep -iE 'error|abort'; then
    fail "--sync=$MODE: the kernel logged I/O errors"
  fi
  losetup -d "$LOOP"
  stop_daemon "$IMP" 20 TERM || fail "--sync=$MODE: keeper exit status $? after SIGTERM"
  ! grep -q " $MNT fuse" /proc/mounts || fail "--sync=$MODE: still mounted after the keeper's SIGTERM"
  stop_daemon "$EXP" 15 TERM || fail "exporter exit status $? after SIGTERM"
  log "--sync=$MODE: PASS"
done

# The kills are the point; each restart logs it, and links drop.
# A SIGKILL may tear the write-back journal's last record (never
# acknowledged, so harmless): replay reports it.
scan_logs "keeper: daemon pid .* killed by signal 9|warning: .*(dropping link|no path left|cannot connect|connection reset|broken pipe|link lost|journal replay: .*torn)"
log "PASS"
