#!/bin/bash
# Runtime exports and their resources:
#  - `xdiskctl export add` of a path inside the daemon's own FUSE mount is
#    refused with exit 1 and a message, before any system call touches it
#    (resolving it on the loop thread would wait for the loop itself), also
#    when the way in is a symbolic link or a bind mount of it;
#  - `xdiskctl export remove` closes the exported file once its I/O drained:
#    after five add/remove cycles the exporter holds no descriptor of it;
#  - a daemon whose --control socket is in use exits 1 at start, also with
#    --connect given (no connector is left behind in the loop).
set -euo pipefail
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/xdisk.sh"
disk_test ctlx1 64
need_xdiskctl

EXTRA=$WORK_DIR/extra.img
truncate -s $((64 * MIB)) "$EXTRA"
ESOCK=$WORK_DIR/exp.sock
ISOCK=$WORK_DIR/imp.sock
PORT=$(free_port)
make_keys "$WORK_DIR/keys" 127.0.0.1
start_exporter EXP exporter "$PORT" "$WORK_DIR/keys" "$IMG,serno=$SERIAL" -- --control "$ESOCK"
start_importer IMP importer "$MNT" "$WORK_DIR/keys" "127.0.0.1:$PORT" -- --control "$ISOCK"
wait_disk "$MNT" "$SERIAL"
wait_for "[ -S '$ISOCK' ]" 10 || fail "no control socket $ISOCK"

# refused PATH: export add of PATH is refused with exit 1 and a clear
# message, and the importer still answers and serves its mount.
refused() {
  local rc=0
  timeout 20 "$XDISKCTL" --control "$ISOCK" export add "$1,serno=loop1" \
    >"$WORK_DIR/out" 2>&1 || rc=$?
  [ "$rc" = 1 ] || { cat "$WORK_DIR/out" >&2; fail "$1: exit status $rc, not 1"; }
  grep -q "inside this daemon's mount" "$WORK_DIR/out" ||
    fail "$1: no clear message: $(cat "$WORK_DIR/out")"
  timeout 20 "$XDISKCTL" --control "$ISOCK" status >/dev/null ||
    fail "$1: the importer does not answer any more"
  timeout -k 5 20 dd if="$MNT/xa0" of=/dev/null bs=1M count=4 iflag=direct status=none ||
    fail "$1: the mount is stuck"
}
log "export add inside the daemon's own mount is refused"
refused "$MNT/xa0"
log "... also through a symbolic link, a relative one, and a bind mount"
ln -s "$MNT/serno" "$WORK_DIR/link"
refused "$WORK_DIR/link/$SERIAL"
mkdir -p "$WORK_DIR/d"
ln -s ../link "$WORK_DIR/d/up"
refused "$WORK_DIR/d/up/$SERIAL"
mkdir -p "$WORK_DIR/bound"
mount --bind "$MNT" "$WORK_DIR/bound"
cleanup_fn umount -l "$WORK_DIR/bound"
refused "$WORK_DIR/bound/xa0"
umount "$WORK_DIR/bound"

log "export remove closes the file"
held() { ls -l "/proc/$EXP/fd" 2>/dev/null | grep -c "$EXTRA" || true; }
for i in 1 2 3 4 5; do
  "$XDISKCTL" --control "$ESOCK" export add "$EXTRA,serno=extra" >/dev/null || fail "export add $i"
  wait_disk "$MNT" extra
  "$XDISKCTL" --control "$ESOCK" export remove extra >/dev/null || fail "export remove $i"
  wait_for "[ ! -e '$MNT/serno/extra' ]" 10 || fail "serno/extra still there after remove $i"
done
wait_for "[ \$(held) = 0 ]" 10 || fail "the exporter still holds $(held) descriptors of $EXTRA"

log "a busy --control socket: exit 1, with --connect too, nothing left in the loop"
rc=0
timeout 20 "$XDISK" --keys "$WORK_DIR/keys" --state-dir "$WORK_DIR/state-x" --control "$ESOCK" \
  --connect "127.0.0.1:$PORT" --listen "127.0.0.1:$(free_port)" >"$WORK_DIR/busy.log" 2>&1 || rc=$?
[ "$rc" = 1 ] || { cat "$WORK_DIR/busy.log" >&2; fail "exit status $rc, not 1"; }
! grep -q "loop closed with handles open" "$WORK_DIR/busy.log" ||
  fail "handles left open: $(cat "$WORK_DIR/busy.log")"

stop_pair
scan_logs "warning: .*(dropping link|no path left|cannot connect|connection reset|broken pipe)"
log "PASS"
