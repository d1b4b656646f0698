#!/bin/bash
# Importing from the independent peer (the issue's done-criterion): the
# python block server exports an image as serial pysrv1, label
# pyhost/pydisk; our importer --connects to it and shows serno/pysrv1,
# by-label/pyhost/pydisk, by-uuid/<pfs_id> and an xaN, all one inode with
# nlink 4; data written with dd (O_DIRECT, fsync) through the FUSE file lands
# in the image. Then the server is killed with SIGKILL in the middle of a
# 64 MiB O_DIRECT dd and restarted 2 s later on the same image: the dd blocks
# meanwhile, then completes with exit 0, and the image holds exactly what
# was written. The importer exits 0 on SIGTERM, the mount is gone, and the
# server saw no protocol violation.
set -euo pipefail
source "$(dirname "$0")/functions.sh"
source "$(dirname "$0")/xdisk.sh"
fuse_test python3 timeout mountpoint cmp

IMG=$WORK_DIR/py.img
SLOG=$WORK_DIR/pysrv.log

# start_server VAR: the python block server on $PORT, log appended to $SLOG
# (not scanned: it logs stats such as io_error=0).
start_server() {
  start_peer_server "$1" "$SLOG" "$PORT" python3 "$PEER" server --listen "127.0.0.1:$PORT" \
    --image "$IMG" --serial pysrv1 --label pyhost/pydisk --fail-on-violation
  log "python server pid ${!1} on $PORT"
}

make_keys "$WORK_DIR/keys" 127.0.0.1
truncate -s $((96 * MIB)) "$IMG"
PORT=$(free_port)
start_server SRV
start_importer PID imp "$MNT" "$WORK_DIR/keys" "127.0.0.1:$PORT" -- --link-timeout 3000
ILOG=$WORK_DIR/imp.log
wait_disk "$MNT" pysrv1

log "one inode under every name"
UUID=$(python3 -c 'import hashlib,sys,uuid; print(uuid.UUID(bytes_le=hashlib.md5(b"pfs:pysrv1").digest()))')
XA=$(cd "$MNT" && ls -d xa* | head -n 1)
[ -n "$XA" ] || fail "no xaN: $(ls "$MNT")"
ino=$(stat -c %i "$MNT/serno/pysrv1")
for n in by-label/pyhost/pydisk "$XA"; do
  [ "$(stat -c %i "$MNT/$n")" = "$ino" ] || fail "$n is not inode $ino"
done
byuuid=$(cd "$MNT/by-uuid" && ls)
[ "$(printf '%s\n' "$byuuid" | wc -l)" = 1 ] || fail "by-uuid holds: $byuuid"
[ "$(stat -c %i "$MNT/by-uuid/$byuuid")" = "$ino" ] || fail "by-uuid/$byuuid is not inode $ino"
[ "$byuuid" = "$UUID" ] || log "note: by-uuid name $byuuid (pfs_id in DragonFly order would be $UUID)"
[ "$(stat -c %h "$MNT/serno/pysrv1")" = 4 ] || fail "nlink $(stat -c %h "$MNT/serno/pysrv1"), want 4"
[ "$(stat -c %s "$MNT/$XA")" = $((96 * MIB)) ] || fail "size $(stat -c %s "$MNT/$XA")"

log "dd through FUSE lands in the image"
head -c $((4 * MIB)) /dev/urandom >"$WORK_DIR/four"
dd if="$WORK_DIR/four" of="$MNT/serno/pysrv1" bs=1M seek=2 oflag=direct conv=notrunc,fsync status=none ||
  fail "dd write"
cmp <(dd if="$IMG" bs=1M skip=2 count=4 status=none) "$WORK_DIR/four" || fail "the image does not hold the write"
cmp <(dd if="$MNT/$XA" bs=1M skip=2 count=4 iflag=direct status=none) "$WORK_DIR/four" ||
  fail "reading back through FUSE"

log "SIGKILL the server in the middle of a 64 MiB write, restart it 2 s later"
head -c $((64 * MIB)) /dev/urandom >"$WORK_DIR/big"
dd if="$WORK_DIR/big" of="$MNT/serno/pysrv1" bs=1M seek=16 oflag=direct conv=notrunc,fsync \
  status=none 2>"$WORK_DIR/dd.err" &
DD=$!
cleanup_fn kill "$DD"
# Wait until the write has visibly started reaching the image.
wait_for "cmp -s -n $MIB <(dd if='$IMG' bs=1M skip=16 count=1 status=none) '$WORK_DIR/big'" 20 ||
  fail "the big write does not reach the image"
kill -0 "$DD" 2>/dev/null || fail "dd finished before the kill; the test needs a longer write"
kill -KILL "$SRV"
wait "$SRV" 2>/dev/null || true
killed_at=$(wc -l <"$ILOG")
log "killed the server"
sleep 2
kill -0 "$DD" 2>/dev/null || fail "dd ended while the server was down: $(cat "$WORK_DIR/dd.err")"
wait_for "grep -q 'disk pysrv1: no path left' '$ILOG'" 5 || fail "the importer did not notice the loss"
start_server SRV
rc=0
wait_exit "$DD" 60 || rc=$?
[ "$rc" = 0 ] || fail "dd exit status $rc across the restart: $(cat "$WORK_DIR/dd.err")"
[ ! -s "$WORK_DIR/dd.err" ] || fail "dd reported: $(cat "$WORK_DIR/dd.err")"
tail -n +$((killed_at + 1)) "$ILOG" | grep -q "disk pysrv1: path via .*resuming blocked I/O" ||
  fail "the importer did not log resuming the blocked I/O"
tail -n +$((killed_at + 1)) "$ILOG" | grep -q "disk pysrv1: open via .*, [1-9][0-9]* requests to (re)send" ||
  fail "no re-open with requests to resend logged"
cmp <(dd if="$IMG" bs=1M skip=16 count=64 status=none) "$WORK_DIR/big" ||
  fail "the image does not hold exactly the 64 MiB written"
cmp <(dd if="$IMG" bs=1M skip=2 count=4 status=none) "$WORK_DIR/four" || fail "the first write was lost"
cmp -n $((2 * MIB)) "$IMG" /dev/zero || fail "the write spilled before its range"
cmp <(dd if="$IMG" bs=1M skip=80 count=16 status=none) <(head -c $((16 * MIB)) /dev/zero) ||
  fail "the write spilled past its range"

log "SIGTERM: exit 0, unmounted"
stop_importer_quietly "$PID" "$ILOG"
rc=0
stop_daemon "$SRV" 10 TERM || rc=$?
[ "$rc" = 0 ] || fail "python server exit status $rc: $(tail -n 3 "$SLOG")"

# Expected: the outage while the server was down.
scan_logs "warning: disk pysrv1: no path left|warning: (link|connect) 127\.0\.0\.1:$PORT: (cannot connect: connection refused|dropping link: read error: connection reset by peer)"
log "PASS"
